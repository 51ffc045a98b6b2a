//! Read-only views: `/healthz`, `/readyz`, `/admin/backends`.

use http::StatusCode;
use serde_json::json;

use super::{reply, Admin, AdminResponse};

impl Admin {
    pub(super) fn readyz(&self) -> AdminResponse {
        let snap = self.state.load();
        let down: Vec<&str> = snap
            .pools
            .iter()
            .filter(|p| !p.pool.has_usable())
            .map(|p| &*p.pool.name)
            .collect();
        if down.is_empty() {
            reply(
                StatusCode::OK,
                json!({"status": "ready", "generation": snap.generation}),
            )
        } else {
            reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "generation": snap.generation, "pools_without_usable_backend": down}),
            )
        }
    }

    pub(super) fn backends(&self) -> AdminResponse {
        let snap = self.state.load();
        let now = std::time::Instant::now();
        let pools: Vec<_> = snap
            .pools
            .iter()
            .map(|p| {
                let backends: Vec<_> = p
                    .pool
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let (breaker, breaker_reason) = b.state.breaker_view(now);
                        let (opened, reused) = p.conns.get(i).map_or((0, 0), |c| c.stats());
                        let healthy = b.state.is_healthy();
                        let out = if let Some(why) = b.state.overrides.out() {
                            Some(format!("{why} (admin override)"))
                        } else if !healthy {
                            Some(format!(
                                "unhealthy{}",
                                b.state.last_check_error().map(|e| format!(": last check failed: {e}")).unwrap_or_default()
                            ))
                        } else {
                            breaker_reason
                        };
                        json!({
                            "address": b.addr().to_string(),
                            "weight": b.weight,
                            "effective_weight": (p.pool.effective_weight(i, now) * 100.0).round() / 100.0,
                            "region": b.region.as_deref(),
                            "inflight": b.state.inflight(),
                            "max_connections": (b.max_connections > 0).then_some(b.max_connections),
                            "healthy": healthy,
                            "breaker": breaker,
                            "out": out,
                            "override": b.state.overrides.view(),
                            // Health as checked, panic mode aside.
                            "usable": b.has_slot() && b.can_serve(now, false),
                            "connections_opened": opened,
                            "requests_reused": reused,
                            "reuse_ratio": (opened + reused > 0).then(|| {
                                (reused as f64 / (opened + reused) as f64 * 1000.0).round() / 1000.0
                            }),
                        })
                    })
                    .collect();
                json!({
                    "name": &*p.pool.name,
                    "strategy": p.pool.kind.as_str(),
                    "slow_start": p.pool.slow_start.map(|d| humantime::format_duration(d).to_string()),
                    "panic_mode": p.pool.in_panic(),
                    "queue_depth": p.queue.depth(),
                    "backends": backends,
                })
            })
            .collect();
        reply(
            StatusCode::OK,
            json!({"generation": snap.generation, "pools": pools}),
        )
    }
}
