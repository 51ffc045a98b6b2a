//! Client listeners: accept, optional TLS handshake, hyper's auto HTTP/1.1 + HTTP/2 (h2c prior
//! knowledge on plain listeners, ALPN on TLS), and graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conn::{self, ConnState, Graceful, TimedIo, Tracked};
use crate::error::ProxyError;
use crate::headers;
use crate::limit::{ConnSlot, Shedder};
use crate::metrics::CONNECTIONS_OPEN;
use crate::proxy::{self, ConnCtx, ConnInfo};
use crate::services::Services;
use crate::state::{SharedState, Snapshot};

/// Accepts connections on `listener` until `shutdown` fires. Connection tasks are spawned on
/// `tracker` so shutdown can wait for them.
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    state: SharedState,
    shed: Arc<Shedder>,
    services: Arc<Services>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let open = metrics::gauge!(CONNECTIONS_OPEN, "listener" => name.to_string());
    loop {
        let Some((stream, peer)) = accept(&listener, &shutdown, &name).await else {
            break;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "set_nodelay failed");
        }
        // One snapshot load per connection: its limits, HTTP settings and TLS acceptor.
        let snap = state.load_full();
        let Some(conn_slot) = shed.connection(snap.limits.max_connections) else {
            let tls = snap.listener(&name).is_some_and(|l| l.tls.is_some());
            tracker.spawn(refuse(stream, tls));
            continue;
        };
        let ctx = ConnCtx {
            shed: Arc::clone(&shed),
            state: Arc::clone(&state),
            services: Arc::clone(&services),
            conn: ConnInfo {
                listener: Arc::clone(&name),
                peer,
                tls: false,
            },
        };
        tracker.spawn(connection(
            stream,
            ctx,
            snap,
            open.clone(),
            shutdown.clone(),
            conn_slot,
        ));
    }
    // Close the socket before saying so: new connections are refused from here on.
    drop(listener);
    tracing::info!(listener = &*name, "stopped accepting connections");
}

/// The next connection on `listener`, or None once `shutdown` fires. Accept errors (typically
/// EMFILE/ENFILE) are logged and retried after a short pause instead of spinning.
pub async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    name: &str,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Counts an open connection for as long as it lives.
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Sheds a connection over `limits.max_connections`: a plain listener answers 503 with
/// `Connection: close` (without reading the request), a TLS one just closes.
async fn refuse(mut stream: TcpStream, tls: bool) {
    if !tls {
        let out =
            ProxyError::Overloaded("too many connections").raw_http1(&headers::new_request_id());
        // Best effort: the client may already be gone.
        let write = async {
            stream.write_all(&out).await?;
            stream.shutdown().await
        };
        if let Err(e) = tokio::time::timeout(Duration::from_secs(1), write)
            .await
            .unwrap_or(Ok(()))
        {
            tracing::debug!(error = %e, "writing the overload answer failed");
        }
    }
}

async fn connection(
    stream: TcpStream,
    mut ctx: ConnCtx,
    snap: Arc<Snapshot>,
    open: Gauge,
    shutdown: CancellationToken,
    _slot: ConnSlot,
) {
    open.increment(1.0);
    let _open = OpenGuard(open);
    let state = ConnState::new();
    let timers = conn::Timers {
        header_read: snap.limits.header_read_timeout,
        keepalive: snap.limits.keepalive_timeout,
        send: snap.limits.send_timeout,
    };
    let tls = snap
        .listener(&ctx.conn.listener)
        .and_then(|l| l.tls.clone());
    let (http, http2) = (Arc::clone(&snap.http), Arc::clone(&snap.http2));
    drop(snap);
    match tls {
        None => {
            let io = TimedIo::new(stream, Arc::clone(&state), timers, false);
            serve_http(io, ctx, &http, false, state, timers, shutdown).await
        }
        Some(acceptor) => {
            ctx.conn.tls = true;
            match tokio::time::timeout(timers.header_read, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    // ALPN chose HTTP/2: serve HTTP/2 only, so a bad preface gets a GOAWAY.
                    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = TimedIo::new(tls_stream, Arc::clone(&state), timers, h2);
                    let builder = if h2 { &http2 } else { &http };
                    serve_http(io, ctx, builder, h2, state, timers, shutdown).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %ctx.conn.peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(peer = %ctx.conn.peer, "TLS handshake timed out"),
            }
        }
    }
}

impl<I, S, E> Graceful for hyper_util::server::conn::auto::Connection<'_, I, S, E>
where
    Self: std::future::Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> Graceful for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    Self: std::future::Future,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + Send + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shut_down(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

async fn serve_http<S>(
    stream: S,
    ctx: ConnCtx,
    http: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    h2: bool,
    state: Arc<ConnState>,
    timers: conn::Timers,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = ctx.conn.peer;
    let ctx = Arc::new(ctx);
    let st = Arc::clone(&state);
    let svc = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        let inflight = st.request();
        async move {
            let resp = proxy::handle(&ctx, req).await;
            Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, inflight)))
        }
    });
    let result = if h2 {
        // ALPN chose HTTP/2: only the plain connection honours the builder's HTTP/2-only
        // setting, and HTTP/2 has no HTTP/1 upgrades anyway.
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        conn::watch(conn, &state, timers.keepalive, &shutdown).await
    } else {
        let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        conn::watch(conn, &state, timers.keepalive, &shutdown).await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
