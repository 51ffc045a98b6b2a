//! A gRPC backend on the wire protocol (HTTP/2 with prior knowledge, length-prefixed
//! messages, status in trailers), and a client for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

type GrpcBody =
    StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// One gRPC message frame: not compressed, 4-byte big-endian length, the message.
pub fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

/// The gRPC backend: `/echo.Echo/Unary` echoes its message; `/echo.Echo/Stream` sends
/// `one`, then waits for `release` and sends `two` and `three`. Both end with trailers
/// `grpc-status: 0`, `grpc-message: done` and `x-trailer: kept`.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    pub release: Arc<Notify>,
    /// The headers of the last call.
    pub last: Arc<Mutex<Option<HeaderMap>>>,
}

pub async fn grpc_backend() -> GrpcBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let last = Arc::new(Mutex::new(None));
    let (r, l) = (Arc::clone(&release), Arc::clone(&last));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (r, l) = (Arc::clone(&r), Arc::clone(&l));
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (release, last) = (Arc::clone(&r), Arc::clone(&l));
                    async move { Ok::<_, Infallible>(answer(req, release, last).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    GrpcBackend {
        addr,
        release,
        last,
    }
}

async fn answer(
    req: Request<Incoming>,
    release: Arc<Notify>,
    last: Arc<Mutex<Option<HeaderMap>>>,
) -> Response<GrpcBody> {
    *last.lock().unwrap() = Some(req.headers().clone());
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "done".parse().unwrap());
        trailers.insert("x-trailer", "kept".parse().unwrap());
        if path == "/echo.Echo/Stream" {
            let _ = tx.send(Ok(Frame::data(frame(b"one")))).await;
            release.notified().await;
            let _ = tx.send(Ok(Frame::data(frame(b"two")))).await;
            let _ = tx.send(Ok(Frame::data(frame(b"three")))).await;
        } else {
            let _ = tx.send(Ok(Frame::data(body))).await;
        }
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .unwrap()
}

/// An h2c client to `addr`.
pub async fn h2c(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A gRPC call's request to `path` carrying `msg`.
pub fn call(addr: SocketAddr, path: &str, msg: &[u8]) -> Request<http_body_util::Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(frame(msg)))
        .unwrap()
}

/// The next frame of a response body.
pub async fn next_frame(body: &mut Incoming) -> Option<Frame<Bytes>> {
    tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
        .await
        .expect("a frame in time")
        .map(|f| f.expect("a good frame"))
}
