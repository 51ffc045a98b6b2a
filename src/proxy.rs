//! The request pipeline, and the only place that knows the order of its stages:
//!
//! 1. snapshot: one `load_full` per request; the request keeps it to the end
//! 2. route: host + path prefix + headers -> route (404 when none)
//! 3. limits: declared body size over `max_request_body` -> 413
//! 4. select: the pool's strategy picks a usable backend (503 + Retry-After when none)
//! 5. forward: rewrite headers, stream the body upstream, wait for the response head within
//!    `response_header` (502 on connect failure, 504 on timeout)
//! 6. record: upstream metrics by backend and status
//! 7. respond: strip hop-by-hop headers, add Via and X-Request-Id; the body streams back and
//!    holds the backend's in-flight slot until its last byte
//! 8. log: request metrics and one access log line

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::Limited;
use hyper::body::Incoming;

use crate::backend::Backend;
use crate::balance::PickCtx;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers::{self, VIA_VALUE, X_REQUEST_ID};
use crate::state::{SharedState, Snapshot};

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
    /// The connection.
    pub conn: ConnInfo,
}

/// Outcome facts for metrics and the access log.
struct Outcome<'a> {
    route: Option<usize>,
    backend: Option<&'a Backend>,
    decision: Option<&'static str>,
    error: Option<&'static str>,
}

/// Handles one client request end to end. Never fails: every error becomes a response.
pub async fn handle(ctx: &ConnCtx, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let snap = ctx.state.load_full();
    let request_id = headers::request_id(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();

    let (resp, outcome) = forward(&snap, &ctx.conn, req, &request_id, start).await;
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => error_response(&e, &request_id),
    };
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    let status = resp.status();
    let elapsed = start.elapsed();

    let stats = outcome.route.and_then(|i| snap.route_stats.get(i));
    if let Some(stats) = stats {
        stats.requests.status(status.as_u16());
        stats.duration.record(elapsed.as_secs_f64());
    }
    let route = stats.map_or("-", |s| &*s.name);
    let backend = outcome.backend.map(|b| b.authority.as_str()).unwrap_or("-");
    tracing::info!(
        target: "sandgate::access",
        request_id = request_id.to_str().unwrap_or("-"),
        client = %ctx.conn.peer.ip(),
        listener = &*ctx.conn.listener,
        method = method.as_str(),
        path = path.as_str(),
        status = status.as_u16(),
        route,
        backend,
        decision = outcome.decision.unwrap_or("-"),
        error = outcome.error.unwrap_or("-"),
        duration_ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    resp
}

fn error_response(e: &ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    e.response(request_id).map(ProxyBody::full)
}

async fn forward<'s>(
    snap: &'s Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    start: Instant,
) -> (Result<Response<ProxyBody>, ProxyError>, Outcome<'s>) {
    let mut outcome = Outcome {
        route: None,
        backend: None,
        decision: None,
        error: None,
    };
    macro_rules! fail {
        ($e:expr) => {{
            let e = $e;
            outcome.error = Some(e.code());
            return (Err(e), outcome);
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
    outcome.route = Some(route.index);
    if parts.method == Method::CONNECT {
        fail!(ProxyError::BadRequest("CONNECT is not supported"))
    }

    // limits
    let max_body = snap.limits.max_request_body;
    if body.size_hint().lower() > max_body {
        fail!(ProxyError::BodyTooLarge(max_body))
    }

    // select
    let Some(entry) = snap.pools.get(route.pool) else {
        fail!(ProxyError::NoRoute)
    };
    let ctx = PickCtx {
        client_ip: conn.peer.ip(),
        headers: &parts.headers,
        query: parts.uri.query(),
        tls: conn.tls,
        now: start,
    };
    let Some(pick) = entry.pool.select(&ctx, &[]) else {
        fail!(ProxyError::NoBackend(entry.pool.name.to_string()))
    };
    let backend = pick.backend;
    outcome.backend = Some(backend);
    outcome.decision = pick.decision;

    // forward
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(backend.authority.clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri = match Uri::from_parts(uri) {
        Ok(u) => u,
        Err(_) => fail!(ProxyError::BadRequest("invalid request target")),
    };
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
    let body = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX));
    let upstream_req = Request::from_parts(parts, body);

    let guard = backend.state.acquire();
    let sent = Instant::now();
    let result = entry
        .client
        .send(
            upstream_req,
            entry.timeouts.response_header,
            backend.authority.as_str(),
        )
        .await;

    // record
    let stats = &backend.state;
    stats.upstream_duration.record(sent.elapsed().as_secs_f64());
    let resp = match result {
        Ok(r) => {
            stats.upstream_requests.status(r.status().as_u16());
            r
        }
        Err(ProxyError::BodyTooLarge(_)) => {
            // The client's body, not the backend, was at fault.
            fail!(ProxyError::BodyTooLarge(max_body))
        }
        Err(e) => {
            stats.upstream_requests.outcome(match &e {
                ProxyError::Connect(_) => "connect_error",
                ProxyError::Timeout(_) => "timeout",
                _ => "error",
            });
            fail!(e)
        }
    };

    // respond
    let (mut rparts, rbody) = resp.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    rparts.headers.append(header::VIA, VIA_VALUE.clone());
    if let Some(c) = pick.set_cookie {
        rparts.headers.append(header::SET_COOKIE, c);
    }
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrades are not proxied yet: the Upgrade header was stripped on the way in.
        fail!(ProxyError::Upstream(
            backend.authority.to_string(),
            "unexpected 101 Switching Protocols".to_owned()
        ))
    }
    let body = ProxyBody::Upstream { body: rbody, guard };
    (Ok(Response::from_parts(rparts, body)), outcome)
}
