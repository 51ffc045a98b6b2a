//! Stage: log. Request metrics and one access log line per request.

use http::{Method, Uri};

use crate::accesslog;
use crate::otlp::{Otlp, RequestSpan};
use crate::proxy::exchange::{ConnInfo, Exchange};
use crate::state::Snapshot;

/// A request on its way; its metrics and log line are written when it is dropped. hyper drops
/// the handler of a request whose client went away: such a request has no status, and is
/// logged and counted as `client_abort` (499).
pub struct Logged<'a> {
    snap: &'a Snapshot,
    conn: &'a ConnInfo,
    otlp: Option<&'a Otlp>,
    method: Method,
    uri: Uri,
    /// The request's record.
    pub x: Exchange,
    /// The status answered, once there is one.
    pub status: Option<u16>,
}

impl<'a> Logged<'a> {
    /// Starts the record of a request.
    pub fn new(
        snap: &'a Snapshot,
        conn: &'a ConnInfo,
        otlp: Option<&'a Otlp>,
        method: Method,
        uri: Uri,
        x: Exchange,
    ) -> Self {
        Self {
            snap,
            conn,
            otlp,
            method,
            uri,
            x,
            status: None,
        }
    }
}

impl Drop for Logged<'_> {
    fn drop(&mut self) {
        let status = match self.status {
            Some(s) => s,
            None => {
                self.x.error = Some("client_abort");
                499
            }
        };
        finish(
            self.snap,
            self.conn,
            &self.method,
            &self.uri,
            status,
            &self.x,
        );
        if let (Some(otlp), Some(trace)) = (self.otlp, self.x.trace) {
            let backend = self
                .x
                .pool
                .zip(self.x.tried.backend)
                .and_then(|(p, b)| self.snap.pools.get(p)?.pool.backends.get(b));
            otlp.record(&RequestSpan {
                trace,
                started: self.x.start,
                method: self.method.as_str(),
                path: self.uri.path(),
                status,
                route: self
                    .x
                    .route
                    .and_then(|i| self.snap.route_stats.get(i))
                    .map(|s| &*s.name),
                backend: backend.map(|b| b.authority.as_str()),
                attempts: self.x.tried.attempts,
                error: self.x.error,
            });
        }
    }
}

/// Counts the request under its route and writes its access log line.
fn finish(snap: &Snapshot, conn: &ConnInfo, method: &Method, uri: &Uri, status: u16, x: &Exchange) {
    let elapsed = x.start.elapsed();
    let stats = x.route.and_then(|i| snap.route_stats.get(i));
    if let Some(stats) = stats {
        stats.requests.status(status);
        stats.duration.record(elapsed.as_secs_f64());
        if x.error == Some("client_abort") {
            stats.client_aborts.increment(1);
        }
    }
    // A tunnel writes its own line when it closes (`proxy::upgrade`).
    if x.tunnel || !accesslog::enabled() {
        return;
    }
    let backend = x
        .pool
        .zip(x.tried.backend)
        .and_then(|(p, b)| snap.pools.get(p)?.pool.backends.get(b))
        .map_or("-", |b| b.authority.as_str());
    accesslog::write(&accesslog::Record {
        request_id: x.request_id.to_str().unwrap_or("-"),
        trace_id: x.trace.as_ref().map_or("-", |t| t.as_str()),
        client: x.client.unwrap_or_else(|| conn.peer.ip()),
        listener: &conn.listener,
        method: method.as_str(),
        path: uri.path(),
        status,
        route: stats.map_or("-", |s| &*s.name),
        backend,
        attempts: x.tried.attempts,
        decision: x.tried.decision.unwrap_or("-"),
        error: x.error.unwrap_or("-"),
        detail: x.error_detail.as_deref().unwrap_or("-"),
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        tunnel: None,
    });
}
