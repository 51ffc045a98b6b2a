//! The request pipeline, and the only place that knows the order of its stages. Each stage is
//! a function in its own file, with typed input and output:
//!
//! 1. [`limit::shed`]: past `limits.max_inflight`, 503 at once
//! 2. snapshot: one `load_full` per request; the request keeps it to the end
//! 3. [`route::normalize`] the path, then [`route::find`]: the authority checked (400), host +
//!    path prefix + headers -> route (404 when none); the client's address (behind trusted
//!    proxies, whom they forwarded for)
//! 4. [`limit::rate`]: the route's token bucket (429 with `RateLimit-*` headers)
//! 5. [`upgrade::tunnel`] for a WebSocket upgrade (HTTP/1.1 `Upgrade`, or HTTP/2 extended
//!    CONNECT): 7 and 8 with the upgrade headers kept; a `101` becomes a tunnel that holds
//!    the backend's slot until it closes, anything else an ordinary response
//! 6. [`cache::serve`] on caching routes: lookup, fresh and stale hits (answered here, before
//!    any upstream work), coalesced fills ([`fill::run`] on its own task); on a miss it goes
//!    through 7 and 8 itself
//! 7. [`forward::prepare`]: declared body size (413), a replay copy when the pool retries, and
//!    the upstream head (hop-by-hop headers out, `X-Forwarded-*` and `Via` in)
//! 8. [`forward::fetch`]: select + admit ([`admit::admit`]: strategy, slot, breaker permit,
//!    wait queue) -> send -> record ([`record::outcome`]: breaker, metrics); a retryable
//!    outcome goes round again on another backend
//! 9. respond: the backend's body streams back holding its slot and the in-flight slot until
//!    its last byte
//! 10. [`decorate::apply`]: the per-request response headers, on every response (with
//!     [`explain::finish`] first, when `Sandgate-Explain` was asked for)
//! 11. [`log::Logged`]: request metrics and the access log line, also for a request whose
//!     client went away before it was answered (`client_abort`)

pub mod admit;
pub mod cache;
pub mod decorate;
pub mod exchange;
pub mod explain;
pub mod fill;
pub mod forward;
pub mod limit;
pub mod log;
pub mod record;
pub mod route;
pub mod upgrade;

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::cache::status::CacheStatus;
use crate::error::ProxyError;
use crate::headers;
use crate::state::Snapshot;

pub use exchange::{Client, ConnCtx, ConnInfo, Exchange};

/// Handles one client request end to end. Never fails: every error becomes a response.
pub async fn handle(ctx: &ConnCtx, req: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    handle_parts(ctx, parts, Some(body)).await
}

/// Like [`handle`], for a request given as its head and its body, if it has one (the admin
/// API's cache warming sends requests without one).
pub async fn handle_parts(
    ctx: &ConnCtx,
    mut parts: Parts,
    body: Option<Incoming>,
) -> Response<ProxyBody> {
    let snap = ctx.state.load_full();
    let grpc = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut done = log::Logged::new(
        &snap,
        &ctx.conn,
        ctx.services.otlp.as_ref(),
        parts.method.clone(),
        parts.uri.clone(),
        Exchange::new(Instant::now(), headers::request_id(&parts.headers)),
    );
    let x = &mut done.x;
    if explain::asked(&snap, &parts.headers, ctx.conn.peer.ip()) {
        x.tried.explain = Some(Box::default());
    }
    // Room for the fields a stage may add (`Host`, and on HTTP/2 to a backend the hop's
    // `X-Forwarded-*`, `Via`, `X-Request-Id`, `traceparent`): the map grows once, not with
    // each of them.
    parts.headers.reserve(8);
    // This hop's place in the trace, for the backend and the access log.
    x.trace = crate::trace::hop(&mut parts.headers, snap.trace_generate);
    let mut resp = match pipeline(ctx, &snap, parts, body, x).await {
        Ok(r) => r,
        Err(e) => {
            x.error = Some(e.code());
            x.error_detail = Some(e.to_string());
            if grpc {
                e.grpc_response(&x.request_id).map(ProxyBody::full)
            } else {
                e.response(&x.request_id).map(ProxyBody::full)
            }
        }
    };
    // Every response of a caching route says what the cache did, also when a stage before
    // the cache answered (a rate limit, a body too large).
    let caching = !x.tunnel
        && x.route
            .and_then(|i| snap.route_cache.get(i))
            .is_some_and(Option::is_some);
    if caching && x.cache.is_none() {
        x.cache = Some(CacheStatus {
            detail: x.error,
            ..CacheStatus::default()
        });
    }
    explain::finish(&snap, x, resp.status().as_u16());
    decorate::apply(&mut resp, x);
    done.status = Some(resp.status().as_u16());
    resp
}

async fn pipeline(
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    mut parts: Parts,
    body: Option<Incoming>,
    x: &mut Exchange,
) -> Result<Response<ProxyBody>, ProxyError> {
    let inflight = limit::shed(&ctx.shed, snap)?;
    route::normalize(&mut parts)?;
    let routed = route::find(snap, &parts)?;
    x.route = Some(routed.index);
    x.pool = Some(routed.pool);
    route::supported(&parts)?;
    let client = ctx
        .conn
        .client(&parts.headers, snap.trusted_proxies.as_deref());
    x.client = Some(client.ip);
    limit::rate(snap, &routed, client.ip, &parts.headers, x)?;
    if let Some(ask) = upgrade::asked(&parts) {
        // Boxed, as the cache: a tunnel's setup would otherwise size every request's future.
        let t = upgrade::tunnel(ctx, snap, &routed, ask, parts, client, x, inflight);
        return Box::pin(t).await;
    }
    if let Some(rc) = snap.route_cache.get(routed.index).and_then(Option::as_ref) {
        let req = cache::ClientRequest {
            parts,
            body,
            client,
        };
        // Boxed: the cache's states would otherwise size every request's future.
        return Box::pin(cache::serve(ctx, snap, rc, &routed, req, inflight, x)).await;
    }
    let out = forward::prepare(snap, &routed, parts, body, client, x).await?;
    let mut fetched = forward::fetch(snap, routed.pool, out, &mut x.tried).await?;
    x.via = true;
    x.set_cookie = fetched.set_cookie.take();
    Ok(fetched.into_response(inflight))
}
