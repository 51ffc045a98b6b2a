//! Stage: log. Request metrics and one access log line per request.

use http::{Method, Uri};

use crate::proxy::exchange::{ConnInfo, Exchange};
use crate::state::Snapshot;

/// Counts the request under its route and writes its access log line.
pub fn finish(
    snap: &Snapshot,
    conn: &ConnInfo,
    method: &Method,
    uri: &Uri,
    status: u16,
    x: &Exchange,
) {
    let elapsed = x.start.elapsed();
    let stats = x.route.and_then(|i| snap.route_stats.get(i));
    if let Some(stats) = stats {
        stats.requests.status(status);
        stats.duration.record(elapsed.as_secs_f64());
    }
    let backend = x
        .pool
        .zip(x.tried.backend)
        .and_then(|(p, b)| snap.pools.get(p)?.pool.backends.get(b))
        .map_or("-", |b| b.authority.as_str());
    tracing::info!(
        target: "sandgate::access",
        request_id = x.request_id.to_str().unwrap_or("-"),
        client = %conn.peer.ip(),
        listener = &*conn.listener,
        method = method.as_str(),
        path = uri.path(),
        status,
        route = stats.map_or("-", |s| &*s.name),
        backend,
        attempts = x.tried.attempts,
        decision = x.tried.decision.unwrap_or("-"),
        error = x.error.unwrap_or("-"),
        detail = x.error_detail.as_deref().unwrap_or("-"),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
}
