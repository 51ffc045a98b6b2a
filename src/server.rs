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
        // The answer comes from error.rs like every other error; only its framing is written
        // here, since no HTTP connection is served.
        let resp =
            ProxyError::Overloaded("too many connections").response(&headers::new_request_id());
        let mut out = format!("HTTP/1.1 {}\r\n", resp.status()).into_bytes();
        for (name, value) in resp.headers() {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                resp.body().len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(resp.body());
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
    let http = Arc::clone(&snap.http);
    let tls = snap
        .listener(&ctx.conn.listener)
        .and_then(|l| l.tls.clone());
    let handshake_timeout = snap.limits.header_read_timeout;
    drop(snap);
    match tls {
        None => serve_http(stream, ctx, &http, shutdown).await,
        Some(acceptor) => {
            ctx.conn.tls = true;
            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve_http(tls_stream, ctx, &http, shutdown).await,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %ctx.conn.peer, error = %e, "TLS handshake failed")
                }
                Err(_) => tracing::debug!(peer = %ctx.conn.peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_http<S>(
    stream: S,
    ctx: ConnCtx,
    http: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = ctx.conn.peer;
    let ctx = Arc::new(ctx);
    let svc = service_fn(move |req| {
        let ctx = Arc::clone(&ctx);
        async move { Ok::<_, Infallible>(proxy::handle(&ctx, req).await) }
    });
    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            // Finish the requests in flight, then close; idle connections close at once.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
