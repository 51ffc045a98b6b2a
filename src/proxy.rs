//! The request pipeline, and the only place that knows the order of its stages:
//!
//! 1. shed: past `limits.max_inflight`, 503 at once
//! 2. snapshot: one `load_full` per request; the request keeps it to the end
//! 3. route: host + path prefix + headers -> route (404 when none)
//! 4. rate limit: the route's token bucket (429 with `RateLimit-*` headers)
//! 5. body: declared size over `max_request_body` -> 413; small bodies are kept for replay
//!    when the pool retries
//! 6. select + admit: the strategy picks a usable backend (healthy, breaker closed, below its
//!    cap); its slot and breaker permit are taken; when every eligible backend is full the
//!    request waits in the pool's FIFO queue; 503 + Retry-After when nothing can serve
//! 7. forward: rewrite headers, send, wait for the response head within the (per-try) timeout
//! 8. record: outcome -> breaker, upstream metrics; a retryable outcome goes back to 6 with the
//!    backends tried so far excluded, after a jittered backoff, within the retry budget
//! 9. respond: strip hop-by-hop headers, add Via, X-Request-Id and sticky cookies; the body
//!    streams back holding the backend slot and the global in-flight slot until its last byte
//! 10. log: request metrics and one access log line

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

use crate::backend::{Backend, BreakerPermit, InflightGuard};
use crate::balance::PickCtx;
use crate::body::ProxyBody;
use crate::config::{Outcome, RetryConfig};
use crate::error::ProxyError;
use crate::headers::{self, VIA_VALUE, X_REQUEST_ID};
use crate::limit::{Decision, InflightSlot, Shedder};
use crate::queue::Rejected;
use crate::state::{PoolEntry, SharedState, Snapshot};
use crate::upstream::UpstreamBody;

/// What the pipeline knows about the client connection.
pub struct ConnInfo {
    /// Listener name.
    pub listener: Arc<str>,
    /// Client address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// Per-connection context handed to every request on it.
pub struct ConnCtx {
    /// The shared snapshot.
    pub state: SharedState,
    /// Global connection and in-flight caps.
    pub shed: Arc<Shedder>,
    /// The connection.
    pub conn: ConnInfo,
}

/// What happened to a request, for metrics and the access log.
#[derive(Default)]
struct Trace<'a> {
    route: Option<usize>,
    backend: Option<&'a Backend>,
    decision: Option<&'static str>,
    attempts: u32,
    error: Option<&'static str>,
    rate: Option<Decision>,
}

/// Handles one client request end to end. Never fails: every error becomes a response.
pub async fn handle(ctx: &ConnCtx, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let snap = ctx.state.load_full();
    let request_id = headers::request_id(req.headers());
    let method = req.method().clone();
    let uri = req.uri().clone();

    let (resp, trace) = match ctx.shed.request(snap.limits.max_inflight) {
        Some(slot) => forward(&snap, &ctx.conn, req, &request_id, start, slot).await,
        None => (
            Err(ProxyError::Overloaded("too many requests in flight")),
            Trace::default(),
        ),
    };
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => e.response(&request_id).map(ProxyBody::full),
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(d) = &trace.rate {
        d.write_headers(resp.headers_mut());
    }
    let status = resp.status();
    let elapsed = start.elapsed();

    let stats = trace.route.and_then(|i| snap.route_stats.get(i));
    if let Some(stats) = stats {
        stats.requests.status(status.as_u16());
        stats.duration.record(elapsed.as_secs_f64());
    }
    tracing::info!(
        target: "sandgate::access",
        request_id = request_id.to_str().unwrap_or("-"),
        client = %ctx.conn.peer.ip(),
        listener = &*ctx.conn.listener,
        method = method.as_str(),
        path = uri.path(),
        status = status.as_u16(),
        route = stats.map_or("-", |s| &*s.name),
        backend = trace.backend.map_or("-", |b| b.authority.as_str()),
        attempts = trace.attempts,
        decision = trace.decision.unwrap_or("-"),
        error = trace.error.unwrap_or("-"),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

/// GET, HEAD, OPTIONS, PUT, DELETE and TRACE may be sent twice.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request body for the tries: replayable when small enough and the pool retries.
enum ReqBody {
    Stream(Option<Limited<Incoming>>),
    Replay(Bytes),
}

impl ReqBody {
    /// Whether another try can still get a body.
    fn can_resend(&self) -> bool {
        matches!(self, ReqBody::Replay(_) | ReqBody::Stream(Some(_)))
    }

    fn take(&mut self) -> Option<UpstreamBody> {
        match self {
            ReqBody::Stream(b) => b.take().map(Either::Left),
            ReqBody::Replay(b) => Some(Either::Right(Full::new(b.clone()))),
        }
    }
}

async fn forward<'s>(
    snap: &'s Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    start: Instant,
    slot: InflightSlot,
) -> (Result<Response<ProxyBody>, ProxyError>, Trace<'s>) {
    let mut trace = Trace::default();
    macro_rules! fail {
        ($e:expr) => {{
            let e = $e;
            trace.error = Some(e.code());
            return (Err(e), trace);
        }};
    }

    // route
    let (mut parts, body) = req.into_parts();
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let Some(route) = snap.router.find(
        host.as_ref().and_then(|h| h.to_str().ok()),
        parts.uri.path(),
        &parts.headers,
    ) else {
        fail!(ProxyError::NoRoute)
    };
    trace.route = Some(route.index);
    if parts.method == Method::CONNECT {
        fail!(ProxyError::BadRequest("CONNECT is not supported"))
    }

    // rate limit
    if let Some(rl) = snap.rate_limits.get(route.index).and_then(Option::as_ref) {
        let d = rl.check(conn.peer.ip(), &parts.headers, start);
        trace.rate = Some(d);
        if !d.allowed {
            fail!(ProxyError::RateLimited)
        }
    }

    // body
    let max_body = snap.limits.max_request_body;
    let Some(entry) = snap.pools.get(route.pool) else {
        fail!(ProxyError::NoRoute)
    };
    let declared = body.size_hint().exact();
    if body.size_hint().lower() > max_body {
        fail!(ProxyError::BodyTooLarge(max_body))
    }
    let limited = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX));
    let retry = entry.retry.as_ref().filter(|r| r.attempts > 1);
    let mut req_body = match (retry, declared) {
        (Some(r), Some(n)) if n <= r.max_replay_body => match limited.collect().await {
            Ok(b) => ReqBody::Replay(b.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                fail!(ProxyError::BodyTooLarge(max_body))
            }
            Err(_) => fail!(ProxyError::BadRequest("the request body could not be read")),
        },
        _ => ReqBody::Stream(Some(limited)),
    };

    // the upstream request head, reused for every try
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(h) = &host {
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, h.clone());
        }
    }
    headers::add_forwarded(&mut parts.headers, conn.peer.ip(), conn.tls, host.as_ref());
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    let may_replay = idempotent(&parts.method);
    // The retry budget's base: only pools that retry count their requests.
    let _active = retry.map(|_| Active::new(entry));
    // The retry in flight, if any: it counts against the budget until its try is over.
    let mut _retrying: Option<Retrying<'_>> = None;
    let mut tried: Vec<usize> = Vec::new();
    let max_attempts = retry.map_or(1, |r| r.attempts);
    loop {
        trace.attempts += 1;
        let attempt = trace.attempts;

        // select + admit
        let admitted = match admit(entry, conn, &parts, &tried, start).await {
            Ok(a) => a,
            Err(e) => fail!(e),
        };
        let backend = &entry.pool.backends[admitted.index];
        trace.backend = Some(backend);
        trace.decision = admitted.decision;

        // forward
        let Some(body) = req_body.take() else {
            fail!(ProxyError::Upstream(
                backend.authority.to_string(),
                "request body already sent".into()
            ))
        };
        // Only a try that may be followed by another needs a copy of the head; the last one
        // (usually the only one) takes it, and the loop ends with it.
        let mut head = if attempt < max_attempts {
            clone_head(&parts)
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        head.uri = match upstream_uri(backend, &path) {
            Some(u) => u,
            None => fail!(ProxyError::BadRequest("invalid request target")),
        };
        let timeout = retry
            .and_then(|r| r.per_try_timeout)
            .unwrap_or(entry.timeouts.response_header);
        let sent = Instant::now();
        let result = entry
            .client
            .send(
                Request::from_parts(head, body),
                timeout,
                backend.authority.as_str(),
            )
            .await;

        // record
        let state = &backend.state;
        state.upstream_duration.record(sent.elapsed().as_secs_f64());
        let upstream_outcome = match &result {
            Ok(r) => Outcome::Status(r.status().as_u16()),
            Err(ProxyError::BodyTooLarge(_)) => fail!(ProxyError::BodyTooLarge(max_body)),
            Err(e) => e.outcome(),
        };
        state.upstream_requests.outcome_of(upstream_outcome);
        if let Some(p) = admitted.permit {
            p.record(upstream_outcome, Instant::now());
        }

        // retry?
        if let Some(r) = retry {
            let again = attempt < max_attempts
                && r.on.contains(upstream_outcome)
                && req_body.can_resend()
                && (may_replay || upstream_outcome == Outcome::ConnectError);
            if again {
                // This request's previous retry (if any) is over: release it before asking.
                _retrying = None;
                if entry.budget.try_retry(r.budget) {
                    _retrying = Some(Retrying(entry));
                    entry.retries.outcome_of(upstream_outcome);
                    drop(result);
                    drop(admitted.guard);
                    tried.push(admitted.index);
                    tokio::time::sleep(backoff(r, attempt)).await;
                    continue;
                }
                entry.budget_exhausted.increment(1);
            }
        }

        let resp = match result {
            Ok(r) => r,
            Err(e) => fail!(e),
        };

        // respond
        let (mut rparts, rbody) = resp.into_parts();
        headers::strip_hop_by_hop(&mut rparts.headers);
        rparts.headers.append(header::VIA, VIA_VALUE.clone());
        if let Some(c) = admitted.set_cookie {
            rparts.headers.append(header::SET_COOKIE, c);
        }
        if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
            // Upgrades are not proxied yet: the Upgrade header was stripped on the way in.
            fail!(ProxyError::Upstream(
                backend.authority.to_string(),
                "unexpected 101 Switching Protocols".to_owned()
            ))
        }
        let body = ProxyBody::Upstream {
            body: rbody,
            guard: admitted.guard,
            slot,
        };
        return (Ok(Response::from_parts(rparts, body)), trace);
    }
}

/// Counts a request as active in its pool (the retry budget's base).
struct Active<'a>(&'a PoolEntry);

impl<'a> Active<'a> {
    fn new(e: &'a PoolEntry) -> Self {
        e.budget.active.fetch_add(1, Ordering::Relaxed);
        Self(e)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.budget.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One retry in flight, counted against the pool's retry budget until dropped.
struct Retrying<'a>(&'a PoolEntry);

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.0.budget.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Full jitter: uniformly random up to min(max, base × 2^(attempt-1)).
fn backoff(r: &RetryConfig, attempt: u32) -> Duration {
    let ceiling = r
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(r.backoff_max);
    ceiling.mul_f64(fastrand::f64())
}

/// A copy of a request head for one try (the URI is set per try).
fn clone_head(p: &Parts) -> Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = p.method.clone();
    head.version = p.version;
    head.headers = p.headers.clone();
    head
}

fn upstream_uri(backend: &Backend, path: &PathAndQuery) -> Option<Uri> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(backend.authority.clone());
    uri.path_and_query = Some(path.clone());
    Uri::from_parts(uri).ok()
}

/// A backend slot taken for one try.
struct Admitted {
    index: usize,
    guard: InflightGuard,
    permit: Option<BreakerPermit>,
    set_cookie: Option<HeaderValue>,
    decision: Option<&'static str>,
}

/// Picks a backend and takes its slot and breaker permit, waiting in the pool's queue when
/// every eligible backend is at its cap.
async fn admit(
    entry: &PoolEntry,
    conn: &ConnInfo,
    parts: &Parts,
    tried: &[usize],
    start: Instant,
) -> Result<Admitted, ProxyError> {
    let pool = &entry.pool;
    let ctx = PickCtx {
        client_ip: conn.peer.ip(),
        headers: &parts.headers,
        query: parts.uri.query(),
        tls: conn.tls,
        now: start,
    };
    let mut skip: Vec<usize> = tried.to_vec();
    // Each pass either admits or skips one more backend, so this ends.
    for _ in 0..=pool.backends.len() {
        let pick = pool.select(&ctx, &skip).or_else(|| {
            // Every backend was tried: a retry may go back to one (it prefers untried ones).
            (!tried.is_empty() && skip.len() >= pool.backends.len())
                .then(|| pool.select(&ctx, &[]))
                .flatten()
        });
        let Some(pick) = pick else { break };
        let b = pick.backend;
        let Some(guard) = b.state.try_acquire(b.max_connections) else {
            // Filled up since selection looked.
            skip.push(pick.index);
            continue;
        };
        match b.state.breaker_permit(Instant::now()) {
            Ok(permit) => {
                return Ok(Admitted {
                    index: pick.index,
                    guard,
                    permit,
                    set_cookie: pick.set_cookie,
                    decision: pick.decision,
                })
            }
            Err(_open) => {
                drop(guard);
                skip.push(pick.index);
            }
        }
    }
    if pool.all_busy(Instant::now(), &[]) {
        let q = entry.queue_cfg;
        match entry.queue.wait(q.max, q.timeout).await {
            Ok(guard) => {
                let Some(index) = pool.index_of(guard.state()) else {
                    return Err(ProxyError::NoBackend(pool.name.to_string()));
                };
                let permit = guard
                    .state()
                    .breaker_permit(Instant::now())
                    .map_err(|_open| ProxyError::NoBackend(pool.name.to_string()))?;
                return Ok(Admitted {
                    index,
                    guard,
                    permit,
                    set_cookie: None,
                    decision: Some("queued"),
                });
            }
            Err(Rejected::Full) => return Err(ProxyError::QueueFull(pool.name.to_string())),
            Err(Rejected::Timeout) => return Err(ProxyError::QueueTimeout(pool.name.to_string())),
        }
    }
    Err(ProxyError::NoBackend(pool.name.to_string()))
}
