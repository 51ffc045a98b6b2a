//! Active health checks. One task schedules checks for every backend of every pool that has a
//! `health_check`; each tick reads the current snapshot, so a reload that adds or removes a
//! backend takes effect on the next tick. Checks run concurrently on their own tasks and never
//! touch the request path. Every check is counted; only flips are logged.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_util::sync::CancellationToken;

use crate::backend::BackendState;
use crate::config::Transport;
use crate::config::{HealthConfig, HealthProbe};
use crate::state::SharedState;
use crate::upstream::connect;

/// Most of a check response body read for `expect_body`.
const MAX_CHECK_BODY: usize = 64 * 1024;

/// One probe of `addr`, reached as the pool's `transport` says (TLS, HTTP/2); Err says why
/// it failed.
pub async fn probe(
    addr: SocketAddr,
    hc: &HealthConfig,
    transport: &Transport,
) -> Result<(), String> {
    let work = async {
        let opened = connect::open(addr, transport, hc.timeout, false).await?;
        let HealthProbe::Http { path } = &hc.probe else {
            return Ok(());
        };
        let host = hc.host.clone().unwrap_or_else(|| addr.to_string());
        let io = TokioIo::new(opened.stream);
        let resp = if opened.h2 {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            // Ends when the check is done and `send` is dropped, or abandoned.
            tokio::spawn(conn);
            let scheme = if transport.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let req = Request::get(format!("{scheme}://{host}{path}"))
                .header(header::USER_AGENT, "sandgate-health-check")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            send.send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(async move {
                // Ends when the check is done (Connection: close) or abandoned.
                let _ = conn.await;
            });
            let req = Request::get(path.as_str())
                .header(header::HOST, host)
                .header(header::USER_AGENT, "sandgate-health-check")
                .header(header::CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))?;
            send.send_request(req)
                .await
                .map_err(|e| format!("request: {e}"))?
        };
        let status = resp.status().as_u16();
        if !hc
            .expect_status
            .iter()
            .any(|(a, b)| (*a..=*b).contains(&status))
        {
            return Err(format!("status {status}"));
        }
        if let Some(want) = &hc.expect_body {
            let body = Limited::new(resp.into_body(), MAX_CHECK_BODY)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            if !String::from_utf8_lossy(&body).contains(want.as_str()) {
                return Err(format!("body lacks {want:?}"));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(hc.timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {:?}", hc.timeout)),
    }
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    let f = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
    interval.mul_f64(f.max(0.01))
}

/// Runs one check and applies its result.
async fn check(
    state: SharedState,
    pool: Arc<str>,
    backend: Arc<BackendState>,
    hc: Arc<HealthConfig>,
    transport: Arc<Transport>,
) {
    let result = probe(backend.addr, &hc, &transport).await;
    if let Err(why) = &result {
        backend.set_last_check_error(why.clone());
    }
    let Some(now_healthy) =
        backend.record_check(result.is_ok(), hc.healthy_threshold, hc.unhealthy_threshold)
    else {
        return;
    };
    if now_healthy {
        tracing::info!(pool = &*pool, backend = %backend.addr, "backend is healthy again");
    } else {
        tracing::warn!(
            pool = &*pool,
            backend = %backend.addr,
            reason = result.err().as_deref().unwrap_or("-"),
            failures = hc.unhealthy_threshold,
            "backend is unhealthy"
        );
    }
    let snap = state.load();
    if let Some(p) = snap.pools.iter().find(|p| p.pool.name == pool) {
        p.pool.update_panic();
    }
}

/// The health checker; it runs until `shutdown`.
pub async fn run(state: SharedState, shutdown: CancellationToken) {
    {
        // Per (pool, backend): when its next check is due, and the tick that last saw it in
        // the snapshot (entries not seen this tick were removed by a reload).
        let mut due: HashMap<(Arc<str>, SocketAddr), (Instant, u64)> = HashMap::new();
        for tick in 0u64.. {
            let snap = state.load_full();
            let now = Instant::now();
            let mut wake = now + Duration::from_secs(1);
            for p in &snap.pools {
                let Some(hc) = &p.health else { continue };
                for (b, conns) in p.pool.backends.iter().zip(&p.conns) {
                    // A backend seen for the first time is checked at once.
                    let (at, seen) = due
                        .entry((Arc::clone(&p.pool.name), b.addr()))
                        .or_insert((now, tick));
                    *seen = tick;
                    if *at <= now {
                        tokio::spawn(check(
                            Arc::clone(&state),
                            Arc::clone(&p.pool.name),
                            Arc::clone(&b.state),
                            Arc::clone(hc),
                            Arc::clone(&conns.settings().transport),
                        ));
                        *at = now + jittered(hc.interval, hc.jitter);
                    }
                    wake = wake.min(*at);
                }
            }
            due.retain(|_, (_, seen)| *seen == tick);
            drop(snap);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }
}
