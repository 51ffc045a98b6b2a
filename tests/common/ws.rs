//! WebSocket helpers: an echo backend (hyper with upgrades, tokio-tungstenite after the
//! switch), and clients over HTTP/1.1 and over HTTP/2 extended CONNECT (RFC 8441).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{full, spawn_backend, Backend};

/// A WebSocket echo backend.
pub struct WsBackend {
    pub backend: Backend,
    /// Sessions open now.
    pub open: Arc<AtomicUsize>,
    /// The head of the last upgrade request.
    pub last: Arc<Mutex<Option<HeaderMap>>>,
}

impl WsBackend {
    pub fn addr(&self) -> SocketAddr {
        self.backend.addr
    }
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
    pub fn last_header(&self, name: &str) -> Option<String> {
        let last = self.last.lock().unwrap();
        let v = last.as_ref()?.get(name)?;
        Some(v.to_str().ok()?.to_owned())
    }
}

/// Echoes every text and binary message. A path under `/refuse` answers 403 instead of
/// switching; a request that is not an upgrade gets `plain`. The first subprotocol asked
/// for is accepted.
pub async fn ws_backend(plain: &'static str) -> WsBackend {
    let open = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(Mutex::new(None));
    let (o, l) = (Arc::clone(&open), Arc::clone(&last));
    let backend = spawn_backend(move |mut req: Request<hyper::body::Incoming>| {
        let (open, last) = (Arc::clone(&o), Arc::clone(&l));
        Box::pin(async move {
            *last.lock().unwrap() = Some(req.headers().clone());
            let key = req.headers().get("sec-websocket-key").cloned();
            let Some(key) = key else {
                return Response::new(full(plain));
            };
            if req.uri().path().starts_with("/refuse") {
                let mut r = Response::new(full("refused"));
                *r.status_mut() = StatusCode::FORBIDDEN;
                return r;
            }
            let proto = req
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|p| p.trim().to_owned());
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                open.fetch_add(1, Ordering::SeqCst);
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_close() {
                        break;
                    }
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        break;
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
            let mut r = Response::new(full(""));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            h.insert("upgrade", "websocket".parse().unwrap());
            h.insert("connection", "Upgrade".parse().unwrap());
            h.insert(
                "sec-websocket-accept",
                derive_accept_key(key.as_bytes()).parse().unwrap(),
            );
            if let Some(p) = proto {
                h.insert("sec-websocket-protocol", p.parse().unwrap());
            }
            r
        })
    })
    .await;
    WsBackend {
        backend,
        open,
        last,
    }
}

/// A WebSocket client over HTTP/1.1 to `addr` (a sandgate listener), at `path`.
pub async fn ws_connect(
    addr: SocketAddr,
    path: &str,
) -> Result<WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}{path}"), tcp).await?;
    Ok(ws)
}

/// A WebSocket client over h2c extended CONNECT to `addr`, at `path`; the response head too.
pub async fn ws_connect_h2(
    addr: SocketAddr,
    path: &str,
) -> (http::response::Parts, WebSocketStream<TokioIo<Upgraded>>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    ws_over_h2(tcp, &format!("http://{addr}"), path).await
}

/// The same over any connection that speaks HTTP/2 (h2c, or TLS with ALPN h2); `origin` is
/// `scheme://authority` for the requests.
pub async fn ws_over_h2<T>(
    io: T,
    origin: &str,
    path: &str,
) -> (http::response::Parts, WebSocketStream<TokioIo<Upgraded>>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    // A first request lets the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) arrive.
    let warm = Request::get(format!("{origin}/"))
        .body(super::empty())
        .unwrap();
    let _ = send.send_request(warm).await;
    let req = Request::builder()
        .method("CONNECT")
        .uri(format!("{origin}{path}"))
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(super::empty())
        .unwrap();
    let mut resp = send.send_request(req).await.expect("extended CONNECT");
    assert_eq!(resp.status(), 200, "extended CONNECT answer: {resp:?}");
    let up = hyper::upgrade::on(&mut resp).await.expect("h2 upgrade");
    let (parts, _) = resp.into_parts();
    // The h2 connection lives as long as its SendRequest: keep it with the stream's task.
    tokio::spawn(async move {
        let _send = send;
        std::future::pending::<()>().await
    });
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, None).await;
    (parts, ws)
}

/// Sends `m` and expects it echoed.
pub async fn echo<S>(ws: &mut WebSocketStream<S>, m: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(m.clone()).await.expect("send");
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("a good message");
    assert_eq!(got, m);
}

/// Closes a WebSocket carried on an HTTP/2 stream (RFC 8441). Once the backend has answered
/// the close frame and gone, sandgate ends the stream, and HTTP/2 tells the client to stop
/// sending with `RST_STREAM(NO_ERROR)` (RFC 9113 section 8.1): a flush that comes after that
/// reports the reset, though the frame went out (the caller checks that the backend saw it
/// close). Any other error fails.
pub async fn close_h2<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = ws.close(None).await {
        assert!(
            format!("{e:?}").contains("NO_ERROR"),
            "closing failed: {e:?}"
        );
    }
}
