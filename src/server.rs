//! Client listeners: accept, optional TLS handshake, hyper's auto HTTP/1.1 + HTTP/2 (h2c prior
//! knowledge on plain listeners, ALPN on TLS), and graceful drain on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Tracked;
use crate::conn::{self, ConnState, Graceful, TimedIo};
use crate::error::ProxyError;
use crate::headers;
use crate::keepalive;
use crate::lane::Lane;
use crate::limit::{ConnSlot, Shedder};
use crate::metrics::{CONNECTIONS_OPEN, PROXY_PROTOCOL_REJECTED_TOTAL, WORKER_CONNECTIONS_TOTAL};
use crate::proxy::{self, ConnCtx, ConnInfo};
use crate::proxy_header;
use crate::services::Services;
use crate::state::{SharedState, Snapshot};

/// What every accept loop (one per listener and worker) shares.
#[derive(Clone)]
pub struct Serving {
    pub state: SharedState,
    pub shed: Arc<Shedder>,
    pub services: Arc<Services>,
    /// Stops accepting.
    pub shutdown: CancellationToken,
    /// Connection tasks, so that shutdown can wait for them.
    pub tracker: TaskTracker,
}

/// Accepts connections on `listener` until `shutdown` fires. Connection tasks are spawned on
/// `tracker` so shutdown can wait for them.
pub async fn serve(listener: TcpListener, name: Arc<str>, serving: Serving) {
    let Serving {
        state,
        shed,
        services,
        shutdown,
        tracker,
    } = serving;
    let open = metrics::gauge!(CONNECTIONS_OPEN, "listener" => name.to_string());
    let accepted = metrics::counter!(
        WORKER_CONNECTIONS_TOTAL,
        "listener" => name.to_string(),
        "worker" => crate::worker::index().to_string()
    );
    loop {
        let Some((stream, peer)) = accept(&listener, &shutdown, &name).await else {
            break;
        };
        accepted.increment(1);
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
            activity: None,
        };
        let accepted = Box::new(Accepted {
            stream,
            ctx,
            snap,
            open: open.clone(),
            slot: conn_slot,
        });
        tracker.spawn(connection(accepted, shutdown.clone()));
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

/// An accepted connection on its way to its task. Boxed, and consumed by [`start`]: the
/// task lives as long as the connection, and keeps no room for what only its start needs.
struct Accepted {
    stream: TcpStream,
    ctx: ConnCtx,
    snap: Arc<Snapshot>,
    open: Gauge,
    slot: ConnSlot,
}

/// A connection ready to serve: what lives as long as it does.
struct Ready {
    open: OpenGuard,
    slot: ConnSlot,
    state: Arc<ConnState>,
    ctx: Arc<ConnCtx>,
    protocols: Protocols,
    timers: conn::Timers,
    io: Io,
}

/// How a ready connection is served. On a plain listener the bytes read to tell HTTP/2
/// from HTTP/1 are handed to hyper first.
enum Io {
    /// Plain HTTP/1, parkable.
    H1(Box<TimedIo<TcpStream>>),
    /// Plain HTTP/2 with prior knowledge. Boxed as well: inline, the socket wrapper would
    /// size every connection's task (536 B → 784 B), HTTP/1 ones included.
    H2(Box<TimedIo<TcpStream>>),
    /// A TLS listener, before the handshake.
    Tls(TcpStream, tokio_rustls::TlsAcceptor),
}

async fn connection(accepted: Box<Accepted>, shutdown: CancellationToken) {
    // The start is boxed and the task holds only what serving needs: on a parked HTTP/1
    // connection that is most of what the connection costs.
    let Some(Ready {
        open: _open,
        slot: _slot,
        state,
        ctx,
        protocols,
        timers,
        io,
    }) = Box::pin(start(accepted)).await
    else {
        return;
    };
    let peer = ctx.conn.peer;
    // Each request goes through the proxy pipeline, counted in flight on the connection
    // until its response body is dropped.
    let st = Arc::clone(&state);
    let lane_ctx = Arc::clone(&ctx);
    let svc = service_fn(move |req: Request<Incoming>| {
        let ctx = Arc::clone(&ctx);
        st.note_body(req.body().size_hint().exact());
        let inflight = st.request();
        async move {
            let resp = proxy::handle(&ctx, req).await;
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                inflight.upgraded();
            }
            Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, inflight)))
        }
    });
    let result = match io {
        Io::H2(io) => {
            Box::pin(serve_h2(
                *io,
                svc,
                &protocols.http2,
                &state,
                timers,
                &shutdown,
            ))
            .await
        }
        Io::H1(io) => {
            let lane = Lane { ctx: lane_ctx };
            let h1 = &protocols.http1;
            keepalive::serve_h1(io, svc, h1, &state, timers, &shutdown, Some(&lane))
                .await
                .map_err(Into::into)
        }
        // Boxed, as the HTTP/2 one: the TLS and HTTP/2 states do not weigh on every plain
        // HTTP/1 connection.
        Io::Tls(stream, acceptor) => {
            let tls = tls_connection(stream, acceptor, svc, protocols, &state, timers, &shutdown);
            match Box::pin(tls).await {
                Some(served) => served,
                None => return,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Counts the connection open, reads a PROXY protocol header where the listener expects one,
/// and on a plain listener reads enough to tell HTTP/2 from HTTP/1. None when the connection
/// ends first.
async fn start(accepted: Box<Accepted>) -> Option<Ready> {
    let Accepted {
        mut stream,
        mut ctx,
        snap,
        open,
        slot,
    } = *accepted;
    open.increment(1.0);
    let open = OpenGuard(open);
    let state = ConnState::new();
    let timers = conn::Timers {
        header_read: snap.limits.header_read_timeout,
        keepalive: snap.limits.keepalive_timeout,
        send: snap.limits.send_timeout,
    };
    let listener = snap.listener(&ctx.conn.listener);
    let tls = listener.and_then(|l| l.tls.clone());
    if let Some(trusted) = listener.and_then(|l| l.proxy_protocol.clone()) {
        // Behind an L4 balancer: its PROXY header names the client.
        let deadline = tokio::time::Instant::now() + timers.header_read;
        match proxy_header::read(&mut stream, ctx.conn.peer, &trusted, deadline).await {
            Ok(client) => ctx.conn.peer = client,
            Err(why) => {
                metrics::counter!(
                    PROXY_PROTOCOL_REJECTED_TOTAL,
                    "listener" => ctx.conn.listener.to_string(),
                    "reason" => why.as_str()
                )
                .increment(1);
                tracing::debug!(peer = %ctx.conn.peer, reason = why.as_str(), "PROXY protocol header refused; closing");
                return None;
            }
        }
    }
    let protocols = Protocols {
        http1: Arc::clone(&snap.http1),
        http2: Arc::clone(&snap.http2),
    };
    drop(snap);
    ctx.conn.tls = tls.is_some();
    ctx.activity = Some(Arc::clone(&state));
    let io = match tls {
        Some(acceptor) => Io::Tls(stream, acceptor),
        None => {
            // HTTP/2 with prior knowledge, or HTTP/1: the first bytes tell.
            let head_deadline = tokio::time::Instant::now() + timers.header_read;
            let (h2, first) = match keepalive::sniff(&stream, head_deadline).await {
                Ok(Some(x)) => x,
                Ok(None) => return None,
                Err(e) => {
                    tracing::debug!(peer = %ctx.conn.peer, error = %e, "connection read failed");
                    return None;
                }
            };
            let io = TimedIo::new(stream, Arc::clone(&state), timers, h2).with_replay(first);
            if h2 {
                Io::H2(Box::new(io))
            } else {
                Io::H1(Box::new(io.parkable()))
            }
        }
    };
    Some(Ready {
        open,
        slot,
        state,
        ctx: Arc::new(ctx),
        protocols,
        timers,
        io,
    })
}

/// Handshakes and serves a TLS connection; None when the handshake failed.
async fn tls_connection<S, B>(
    stream: TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    svc: S,
    protocols: Protocols,
    state: &Arc<ConnState>,
    timers: conn::Timers,
    shutdown: &CancellationToken,
) -> Option<Result<(), BoxError>>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Unpin
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let peer = stream.peer_addr().ok();
    let tls_stream = match tokio::time::timeout(timers.header_read, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(?peer, "TLS handshake timed out");
            return None;
        }
    };
    // ALPN chose HTTP/2: serve HTTP/2 only, so a bad preface gets a GOAWAY.
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TimedIo::new(tls_stream, Arc::clone(state), timers, h2);
    Some(if h2 {
        serve_h2(io.alpn_h2(), svc, &protocols.http2, state, timers, shutdown).await
    } else {
        keepalive::serve_h1(
            Box::new(io),
            svc,
            &protocols.http1,
            state,
            timers,
            shutdown,
            None,
        )
        .await
        .map_err(Into::into)
    })
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connection builders of the snapshot a connection was accepted under.
struct Protocols {
    http1: Arc<hyper::server::conn::http1::Builder>,
    http2: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
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

async fn serve_h2<T, S, B>(
    io: TimedIo<T>,
    svc: S,
    http2: &hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    state: &ConnState,
    timers: conn::Timers,
    shutdown: &CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Only the plain auto connection honours its HTTP/2-only setting, and HTTP/2 has no
    // HTTP/1 upgrades anyway.
    let conn = http2.serve_connection(TokioIo::new(io), Boxed(svc));
    tokio::pin!(conn);
    conn::watch(conn, state, timers.keepalive, shutdown).await
}

/// A service whose calls are boxed. hyper's HTTP/2 server spawns each stream as a task that
/// holds its service future, and moving a multi-KiB pipeline future into the task (several
/// copies on the way) cost more than one allocation. HTTP/1 keeps the future in place: hyper
/// holds it in a box of its own, reused for every request on the connection.
struct Boxed<S>(S);

impl<S, R> hyper::service::Service<R> for Boxed<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<S::Future>>;

    fn call(&self, req: R) -> Self::Future {
        Box::pin(self.0.call(req))
    }
}
