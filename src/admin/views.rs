//! Read-only views: `/healthz`, `/readyz`, `/admin/backends`, `/admin/capacity`.

use http::StatusCode;
use serde_json::json;

use super::{error, reply, Admin, AdminResponse};
use crate::capacity::DEFAULT_TARGET;

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
                        let idle = p.conns.get(i).map_or(0, |c| c.idle());
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
                            "connections_parked": idle,
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

    /// `GET /admin/capacity?target=70%`: per pool, slots, in flight and its peaks, queue,
    /// rate and latency over the last minute, utilisation, and the backends needed to stay
    /// under the target (`0.7`, `70` or `70%`; default 70%).
    pub(super) fn capacity(&self, query: Option<&str>) -> AdminResponse {
        let target = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix("target="));
        let target = match target.map(parse_target) {
            None => DEFAULT_TARGET,
            Some(Some(t)) => t,
            Some(None) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_target",
                    "target must be a utilisation above 0 and at most 100%, e.g. 0.7 or 70%",
                )
            }
        };
        let snap = self.state.load();
        reply(StatusCode::OK, self.services.capacity.report(&snap, target))
    }
}

/// `0.7`, `70` or `70%` (URL-encoded `70%25` too) as a share in (0, 1].
fn parse_target(s: &str) -> Option<f64> {
    let s = s.trim();
    let (n, percent) = match s.strip_suffix("%25").or_else(|| s.strip_suffix('%')) {
        Some(n) => (n, true),
        None => (s, false),
    };
    let v: f64 = n.parse().ok()?;
    let share = if percent || v > 1.0 { v / 100.0 } else { v };
    (share > 0.0 && share <= 1.0).then_some(share)
}
