//! Stage: upgrade. A WebSocket upgrade (HTTP/1.1 `Upgrade: websocket`, or RFC 8441 extended
//! CONNECT on HTTP/2) is routed, limited and balanced like any request, and goes to the
//! backend as an HTTP/1.1 upgrade with its `Sec-WebSocket-*` headers. A `101` turns into a
//! [`tunnel`](crate::tunnel) on its own task, holding the backend's slot until it closes; any
//! other answer is an ordinary response, and the client connection stays usable.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Extensions, Method, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::accesslog::{self, TunnelLog};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::headers;
use crate::limit::InflightSlot;
use crate::proxy::exchange::{Client, ConnCtx, Exchange};
use crate::proxy::forward;
use crate::proxy::route::Routed;
use crate::state::Snapshot;
use crate::tunnel::{self, stats::OpenTunnel, Spec};

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
static WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// How the client asked for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// HTTP/1.1 `GET` with `Upgrade: websocket` and `Connection: upgrade`.
    Http1,
    /// HTTP/2 extended CONNECT with `:protocol websocket` (RFC 8441).
    Http2,
}

/// Whether the request asks for a WebSocket, and how. Other upgrade tokens (`h2c`) are not
/// honoured: such requests go on as ordinary ones, without their upgrade headers.
pub fn asked(parts: &Parts) -> Option<Ask> {
    if parts.method == Method::CONNECT {
        let p = parts.extensions.get::<hyper::ext::Protocol>()?;
        return p
            .as_str()
            .eq_ignore_ascii_case("websocket")
            .then_some(Ask::Http2);
    }
    let h = &parts.headers;
    (parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && headers::has_token(h, &header::UPGRADE, "websocket")
        && headers::has_token(h, &header::CONNECTION, "upgrade"))
    .then_some(Ask::Http1)
}

/// Stage: forwards the upgrade and, on a `101`, starts the tunnel and answers the client
/// (`101` on HTTP/1.1, `200` on HTTP/2).
#[allow(clippy::too_many_arguments)]
pub async fn tunnel(
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    routed: &Routed,
    ask: Ask,
    mut parts: Parts,
    client: Client,
    x: &mut Exchange,
    inflight: InflightSlot,
) -> Result<Response<ProxyBody>, ProxyError> {
    let stats = snap
        .route_stats
        .get(routed.index)
        .ok_or(ProxyError::NoRoute)?;
    let entry = snap.pools.get(routed.pool).ok_or(ProxyError::NoRoute)?;
    let counters = Arc::clone(&stats.tunnels);
    let on_client = parts.extensions.remove::<OnUpgrade>();
    parts.extensions = Extensions::new();
    let line = Line {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        route: Arc::clone(&stats.name),
        listener: Arc::clone(&ctx.conn.listener),
        request_id: x.request_id.clone(),
        trace: x.trace,
        client: client.ip,
        start: x.start,
    };
    if ask == Ask::Http2 {
        // The backend gets the HTTP/1.1 form: a GET with a key of its own.
        parts.method = Method::GET;
        let key =
            base64::engine::general_purpose::STANDARD.encode(fastrand::u128(..).to_le_bytes());
        if let Ok(k) = HeaderValue::from_str(&key) {
            parts.headers.insert(SEC_WEBSOCKET_KEY.clone(), k);
        }
        if !parts.headers.contains_key(&SEC_WEBSOCKET_VERSION) {
            parts.headers.insert(
                SEC_WEBSOCKET_VERSION.clone(),
                HeaderValue::from_static("13"),
            );
        }
    }
    let fetched = async {
        let mut out = forward::prepare(snap, routed, parts, None, client, x).await?;
        out.upgrade = true;
        out.head.headers.insert(header::UPGRADE, WEBSOCKET.clone());
        out.head.headers.insert(header::CONNECTION, UPGRADE.clone());
        forward::fetch(snap, routed.pool, out, &mut x.tried).await
    };
    let mut fetched = match fetched.await {
        Ok(f) => f,
        Err(e) => {
            counters.error.increment(1);
            return Err(e);
        }
    };
    x.via = true;
    x.set_cookie = fetched.set_cookie.take();
    if fetched.resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        counters.refused.increment(1);
        return Ok(fetched.into_response(inflight));
    }
    let Some(on_client) = on_client else {
        counters.error.increment(1);
        return Err(ProxyError::BadRequest("this connection cannot be upgraded"));
    };
    let Some(backend_io) = fetched.resp.body_mut().take_upgraded() else {
        counters.error.increment(1);
        return Err(ProxyError::Upstream(
            "-".to_owned(),
            "a 101 that is not from an HTTP/1.1 connection".to_owned(),
        ));
    };
    let (mut head, _) = fetched.resp.into_parts();
    match ask {
        Ask::Http1 => {
            head.headers.insert(header::UPGRADE, WEBSOCKET.clone());
            head.headers.insert(header::CONNECTION, UPGRADE.clone());
        }
        Ask::Http2 => {
            head.status = StatusCode::OK;
            head.headers.remove(&SEC_WEBSOCKET_ACCEPT);
        }
    }
    counters.upgraded.increment(1);
    x.tunnel = true;
    drop(inflight);

    let backend = x
        .tried
        .backend
        .and_then(|b| entry.pool.backends.get(b))
        .map_or_else(|| "-".to_owned(), |b| b.authority.to_string());
    let (attempts, decision) = (x.tried.attempts, x.tried.decision.unwrap_or("-"));
    let spec = Spec {
        idle: entry.timeouts.tunnel_idle,
        websocket: true,
        closing: ctx.services.closing.clone(),
    };
    // An HTTP/2 connection carrying a tunnel is not idle.
    let busy = ctx.activity.as_ref().map(|a| a.busy());
    let slot = fetched.slot;
    ctx.services.tasks.spawn(async move {
        let (_slot, _busy) = (slot, busy);
        let c = match on_client.await {
            Ok(c) => c,
            Err(e) => {
                counters.error.increment(1);
                return tracing::debug!(error = %e, "the upgrade did not complete");
            }
        };
        let open = OpenTunnel::new(&counters.open);
        let done = tunnel::run(TokioIo::new(c), backend_io, spec, &counters).await;
        drop(open);
        line.write(&backend, attempts, decision, done);
    });
    Ok(Response::from_parts(head, ProxyBody::full(Bytes::new())))
}

/// What a tunnel's access log line needs, owned by its task.
struct Line {
    method: String,
    path: String,
    route: Arc<str>,
    listener: Arc<str>,
    request_id: HeaderValue,
    trace: Option<crate::trace::TraceId>,
    client: std::net::IpAddr,
    start: Instant,
}

impl Line {
    fn write(&self, backend: &str, attempts: u32, decision: &str, done: tunnel::Done) {
        if !accesslog::enabled() {
            return;
        }
        let error = if done.end == tunnel::End::Error {
            "tunnel_error"
        } else {
            "-"
        };
        accesslog::write(&accesslog::Record {
            request_id: self.request_id.to_str().unwrap_or("-"),
            trace_id: self.trace.as_ref().map_or("-", |t| t.as_str()),
            client: self.client,
            listener: &self.listener,
            method: &self.method,
            path: &self.path,
            status: 101,
            route: &self.route,
            backend,
            attempts,
            decision,
            error,
            detail: "-",
            duration_ms: self.start.elapsed().as_secs_f64() * 1000.0,
            tunnel: Some(TunnelLog {
                bytes_up: done.up,
                bytes_down: done.down,
                end: done.end.as_str(),
            }),
        });
    }
}
