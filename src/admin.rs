//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz` and
//! `/admin/backends`. Read-only views of the current snapshot.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::SharedState;

/// What the admin handlers read.
pub struct Admin {
    /// Current snapshot.
    pub state: SharedState,
    /// Renders the Prometheus exposition.
    pub prometheus: PrometheusHandle,
}

/// Serves the admin API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(admin.handle(&req)) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "admin connection error");
            }
        });
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl Admin {
    /// Routes one admin request.
    pub fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return json(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            );
        }
        match req.uri().path() {
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(self.prometheus.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            "/healthz" => json(StatusCode::OK, json!({"status": "ok"})),
            "/readyz" => self.readyz(),
            "/admin/backends" => self.backends(),
            _ => json(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        }
    }

    fn readyz(&self) -> Response<Full<Bytes>> {
        let snap = self.state.load();
        let down: Vec<&str> = snap
            .pools
            .iter()
            .filter(|p| !p.pool.has_usable())
            .map(|p| &*p.pool.name)
            .collect();
        if down.is_empty() {
            json(
                StatusCode::OK,
                json!({"status": "ready", "generation": snap.generation}),
            )
        } else {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "not_ready", "generation": snap.generation, "pools_without_usable_backend": down}),
            )
        }
    }

    fn backends(&self) -> Response<Full<Bytes>> {
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
                        let healthy = b.state.is_healthy();
                        let out = if !healthy {
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
                            // Health as checked, panic mode aside.
                            "usable": b.has_slot() && b.can_serve(now, false),
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
        json(
            StatusCode::OK,
            json!({"generation": snap.generation, "pools": pools}),
        )
    }
}
