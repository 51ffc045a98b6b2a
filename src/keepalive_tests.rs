//! Tests of [`crate::keepalive`]: the head scan, and parked connections served by hyper on a
//! real loopback socket.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::body::Tracked;
use crate::conn::{ConnState, TimedIo, Timers};

fn framing_of(chunks: &[&[u8]]) -> Framing {
    let mut f = Framing::new(0);
    for c in chunks {
        f.saw(c);
    }
    f
}

#[test]
fn the_head_end_is_found_across_reads() {
    let whole: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for split in 0..=whole.len() {
        let (a, b) = whole.split_at(split);
        let f = framing_of(&[a, b]);
        assert!(f.clean(1, 0), "split at {split}");
        assert!(!f.clean(1, 1), "a body was announced but not delivered");
    }
    for split in 0..whole.len() {
        let (a, rest) = whole.split_at(split);
        let (b, c) = rest.split_at(1);
        assert!(framing_of(&[a, b, c]).clean(1, 0), "three reads at {split}");
    }
}

#[test]
fn bare_lf_heads_and_bodies_count() {
    assert!(framing_of(&[b"GET / HTTP/1.1\nHost: a\n\n"]).clean(1, 0));
    assert!(framing_of(&[b"GET / HTTP/1.1\nHost: a\n\r\n"]).clean(1, 0));
    let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    let f = framing_of(&[&post[..20], &post[20..]]);
    assert!(f.clean(1, 5));
    assert!(!f.clean(1, 4), "a byte hyper has not used");
    assert!(
        !f.clean(1, u64::MAX),
        "an unknown (chunked) length never parks"
    );
}

#[test]
fn pipelined_or_oddly_started_connections_stay_with_hyper() {
    let two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    let f = framing_of(&[two]);
    assert!(!f.clean(1, 0), "the second request is unread");
    assert!(!f.clean(2, 0), "two requests in one hyper connection");
    assert!(!f.may_be_clean(2));
    let f = framing_of(&[b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"]);
    assert!(!f.may_be_clean(1) && !f.clean(1, 0), "leading empty line");
    assert!(!framing_of(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]).clean(1, 0));
}

#[test]
fn framing_counts_from_its_start() {
    let mut f = Framing::new(7);
    f.saw(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(f.may_be_clean(8) && f.clean(8, 0));
    assert!(!f.clean(7, 0), "its request was not counted yet");
}

struct Server {
    addr: std::net::SocketAddr,
    state: Arc<std::sync::Mutex<Option<Arc<ConnState>>>>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Head and send timers that never fire in these tests, and the given keep-alive time.
fn timers(keepalive: Duration) -> Timers {
    Timers {
        header_read: Duration::from_secs(10),
        keepalive,
        send: Duration::from_secs(10),
    }
}

/// One-connection HTTP/1 server, parkable as sandgate's plain listeners are. Answers
/// `METHOD PATH LEN`, LEN being the body bytes it read.
async fn server(keepalive: Duration) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let slot = Arc::new(std::sync::Mutex::new(None));
    let shutdown = CancellationToken::new();
    let (slot2, shut2) = (Arc::clone(&slot), shutdown.clone());
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let state = ConnState::new();
        *slot2.lock().expect("slot") = Some(Arc::clone(&state));
        let timers = timers(keepalive);
        let st = Arc::clone(&state);
        let svc = service_fn(move |req: Request<Incoming>| {
            st.note_body(hyper::body::Body::size_hint(req.body()).exact());
            let inflight = st.request();
            async move {
                let head = format!("{} {}", req.method(), req.uri().path());
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                let text = format!("{head} {}", body.map_or(0, |b| b.len()));
                let body = Tracked::new(Full::new(Bytes::from(text)), inflight);
                Ok::<_, Infallible>(Response::new(body))
            }
        });
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(None);
        let io = Box::new(TimedIo::new(stream, Arc::clone(&state), timers, false).parkable());
        let served = serve_h1(io, svc, &builder, &state, timers, &shut2, None).await;
        assert!(served.is_ok(), "{served:?}");
    });
    Server {
        addr,
        state: slot,
        shutdown,
        task,
    }
}

impl Server {
    fn parks(&self) -> u64 {
        self.state
            .lock()
            .expect("slot")
            .as_ref()
            .map_or(0, |s| s.parks())
    }

    /// A client whose first request was answered, on a connection since parked.
    async fn parked_client(&self) -> TcpStream {
        let mut c = TcpStream::connect(self.addr).await.expect("connect");
        c.write_all(GET).await.expect("write");
        read_answers(&mut c, &["GET /a 0"]).await;
        self.parked(1).await;
        c
    }

    /// Waits (at most 5 s) for the server's connection to end; `why` says what should end it.
    async fn ended(self, why: &str) {
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect(why)
            .expect("server task");
    }

    /// Waits (at most 5 s) until the connection was parked `n` times.
    async fn parked(&self, n: u64) {
        for _ in 0..100 {
            if self.parks() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("parked {} times, not {n}", self.parks());
    }
}

/// Reads responses until `n` bodies ending the given texts have arrived; returns them all.
async fn read_answers(c: &mut TcpStream, bodies: &[&str]) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if bodies.iter().all(|b| text.contains(b)) {
            return text;
        }
        let n = tokio::time::timeout_at(deadline, c.read(&mut buf))
            .await
            .expect("answers in time")
            .expect("read");
        assert!(n > 0, "closed early; got {text:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n";

#[tokio::test]
async fn a_parked_connection_serves_the_next_requests() {
    let s = server(Duration::from_secs(60)).await;
    let mut c = s.parked_client().await;

    // A POST with a length, its head split across two writes.
    c.write_all(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.write_all(b"Length: 5\r\n\r\nhello").await.expect("write");
    read_answers(&mut c, &["POST /p 5"]).await;
    s.parked(2).await;

    c.write_all(GET).await.expect("write");
    read_answers(&mut c, &["GET /a 0"]).await;
    s.parked(3).await;
    drop(c);
    s.ended("the server sees the close").await;
}

#[tokio::test]
async fn pipelined_requests_after_parking_are_answered_in_order() {
    let s = server(Duration::from_secs(60)).await;
    let mut c = s.parked_client().await;

    // Three requests in one write after parking: hyper reads them together, so this hyper
    // connection keeps the socket; all three are answered, in order.
    let three = b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\nPOST /2 HTTP/1.1\r\nHost: t\r\n\
Content-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: t\r\n\r\n";
    c.write_all(three).await.expect("write");
    let text = read_answers(&mut c, &["GET /1 0", "POST /2 3", "GET /3 0"]).await;
    let (p1, p2, p3) = (
        text.find("GET /1 0"),
        text.find("POST /2 3"),
        text.find("GET /3 0"),
    );
    assert!(p1 < p2 && p2 < p3, "{text}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        s.parks(),
        1,
        "this hyper connection served several requests"
    );
    c.write_all(GET).await.expect("write");
    read_answers(&mut c, &["GET /a 0"]).await;
}

#[tokio::test]
async fn a_chunked_upload_keeps_its_hyper_connection() {
    let s = server(Duration::from_secs(60)).await;
    let mut c = s.parked_client().await;
    let chunked = b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
4\r\nabcd\r\n0\r\n\r\n";
    c.write_all(chunked).await.expect("write");
    read_answers(&mut c, &["POST /c 4"]).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        s.parks(),
        1,
        "its length was unknown: hyper may hold bytes it read"
    );
    c.write_all(GET).await.expect("write");
    read_answers(&mut c, &["GET /a 0"]).await;
}

#[tokio::test]
async fn keepalive_timeout_and_shutdown_close_parked_connections() {
    let s = server(Duration::from_millis(2500)).await;
    let mut c = s.parked_client().await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed by the keep-alive timeout")
        .expect("read");
    assert_eq!(n, 0, "closed without a word");
    s.ended("ended").await;

    let s = server(Duration::from_secs(60)).await;
    let mut c = s.parked_client().await;
    s.shutdown.cancel();
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("closed by shutdown")
        .expect("read");
    assert_eq!(n, 0);
    s.ended("ended").await;
}

#[tokio::test]
async fn a_request_that_arrives_while_draining_gets_one_last_answer() {
    let s = server(Duration::from_secs(60)).await;
    let mut c = s.parked_client().await;
    // The client sends its next request just as the shutdown starts: it is answered, with
    // keep-alive off, and then the connection closes.
    s.shutdown.cancel();
    c.write_all(b"GET /last HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
        .await
        .expect("closed after the last answer")
        .expect("read");
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    assert!(text.ends_with("get /last 0"), "{text}");
    s.ended("ended").await;
}

#[tokio::test]
async fn a_parked_connection_keeps_no_hyper_connection_inline() {
    // What a connection's task holds while parked is its serve future: any hyper connection
    // kept inline in it (the draining path's, say) would weigh on every idle connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).await;
    let (stream, _) = listener.accept().await.expect("accept");
    let state = ConnState::new();
    let timers = timers(Duration::from_secs(10));
    let builder = http1::Builder::new();
    let shutdown = CancellationToken::new();
    let io = Box::new(TimedIo::new(stream, Arc::clone(&state), timers, false).parkable());
    let serving = serve_h1(io, Empty, &builder, &state, timers, &shutdown, None);
    let hyper_conn = std::mem::size_of::<
        http1::UpgradeableConnection<hyper_util::rt::TokioIo<Box<TimedIo<TcpStream>>>, Empty>,
    >();
    let size = std::mem::size_of_val(&serving);
    assert!(
        size < 512 && size < hyper_conn,
        "serve future {size} B (a hyper connection is {hyper_conn} B)"
    );
    drop((serving, client));
}

/// Answers every request with an empty 200.
struct Empty;

impl Service<Request<Incoming>> for Empty {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn call(&self, _req: Request<Incoming>) -> Self::Future {
        std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
    }
}
