//! The HTTP/1.1 lane, on the wire: bodiless requests answered without hyper's server, the
//! rest handed to hyper and the connection taken back, pipelining, `HEAD`, `Connection:
//! close`, streamed (chunked) answers, a client that leaves while its answer streams, and
//! what a client sends behind the answer in flight at shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A backend that answers `METHOD PATH BODYLEN`; `/stream` sends its answer in two pieces
/// with no length (chunked to the client), `/hold` one piece and then nothing until the
/// client goes away, counted in `gone`.
async fn backend(gone: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Backend {
    spawn_backend(move |req| {
        let gone = std::sync::Arc::clone(&gone);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let len = body.collect().await.map_or(0, |b| b.to_bytes().len());
            let path = parts.uri.path().to_owned();
            if path == "/stream" || path == "/hold" {
                let (tx, body) = channel_body();
                let hold = path == "/hold";
                tokio::spawn(async move {
                    tx.send(Bytes::from("first,")).await.ok();
                    if hold {
                        tx.closed().await;
                        gone.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    tx.send(Bytes::from("second")).await.ok();
                });
                return Response::new(body);
            }
            Response::new(full(format!("{} {path} {len}", parts.method)))
        })
    })
    .await
}

async fn setup() -> (
    Backend,
    Proxy,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let gone = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let b = backend(std::sync::Arc::clone(&gone)).await;
    let p = proxy_to(&b);
    (b, p, gone)
}

/// A proxy in front of `b` alone.
fn proxy_to(b: &Backend) -> Proxy {
    spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        b.addr
    )))
}

/// Connects to `proxy` and sends `GET /`.
async fn first_request(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(addr(proxy)).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    s
}

/// Writes each of `writes` (a pause between them), then reads until the proxy closes the
/// connection (the last request asks it to).
async fn exchange(addr: std::net::SocketAddr, writes: &[&[u8]]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    for w in writes {
        s.write_all(w).await.expect("write");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn addr(p: &Proxy) -> std::net::SocketAddr {
    p.url("public", "/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("proxy address")
}

/// The body of the first whole response at the start of `wire` (framed by its
/// `content-length`, none meaning empty), and how many bytes that response takes.
fn first_answer(wire: &[u8]) -> Option<(String, usize)> {
    let end = wire.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&wire[..end]);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().expect("length"));
    let body = wire.get(end + 4..end + 4 + len)?;
    Some((String::from_utf8_lossy(body).into_owned(), end + 4 + len))
}

/// The bodies of the responses in `wire`, in order (each with a `content-length`).
fn bodies(wire: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = wire.as_bytes();
    while let Some((body, taken)) = first_answer(rest) {
        out.push(body);
        rest = &rest[taken..];
    }
    out
}

#[tokio::test]
async fn pipelined_requests_in_one_write_are_answered_in_order() {
    let (_b, p, _) = setup().await;
    let wire = exchange(
        addr(&p),
        &[
            b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nHEAD /two HTTP/1.1\r\nHost: a\r\n\r\n\
            GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ],
    )
    .await;
    assert_eq!(wire.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{wire}");
    // The HEAD answer says the length a GET's would have ("HEAD /two 0"), with no body.
    let heads: Vec<&str> = wire.split("HTTP/1.1 ").skip(1).collect();
    assert!(heads[1].contains("content-length: 11\r\n"), "{wire}");
    assert!(heads[1].ends_with("\r\n\r\n"), "{wire}");
    assert!(heads[2].contains("connection: close\r\n"), "{wire}");
    let b = bodies(&wire.replace("content-length: 11\r\n", ""));
    assert_eq!(b, ["GET /one 0", "", "GET /three 0"], "{wire}");
}

#[tokio::test]
async fn a_connection_goes_to_hyper_for_a_body_and_comes_back() {
    let (b, p, _) = setup().await;
    let wire = exchange(
        addr(&p),
        &[
            b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            // A head that comes in two pieces is hyper's too.
            b"GET /c HTTP/1.1\r\nHo",
            b"st: a\r\n\r\n",
            b"GET /d HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        ],
    )
    .await;
    assert_eq!(
        bodies(&wire),
        ["GET /a 0", "POST /b 5", "GET /c 0", "GET /d 0"],
        "{wire}"
    );
    assert_eq!(b.hits(), 4);
    // Every answer, hyper's and the lane's, has the same form.
    for head in wire.split("HTTP/1.1 ").skip(1) {
        assert!(head.starts_with("200 OK\r\n"), "{wire}");
        assert!(
            head.contains("\r\ndate: ") && head.contains("\r\nvia: "),
            "{wire}"
        );
    }
}

#[tokio::test]
async fn a_streamed_answer_goes_out_chunked() {
    let (_b, p, _) = setup().await;
    let wire = exchange(
        addr(&p),
        &[b"GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"],
    )
    .await;
    let (head, body) = wire.split_once("\r\n\r\n").expect("a head");
    assert!(head.contains("transfer-encoding: chunked"), "{wire}");
    assert!(!head.contains("content-length"), "{wire}");
    assert_eq!(body, "6\r\nfirst,\r\n6\r\nsecond\r\n0\r\n\r\n");
}

#[tokio::test]
async fn a_client_that_leaves_mid_answer_lets_the_backend_go() {
    let (_b, p, gone) = setup().await;
    let mut s = TcpStream::connect(addr(&p)).await.expect("connect");
    s.write_all(b"GET /hold HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = vec![0u8; 4096];
    let mut n = 0;
    while !String::from_utf8_lossy(&got[..n]).contains("first,") {
        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut got[n..]))
            .await
            .expect("the first piece in time")
            .expect("read");
        assert!(k > 0, "closed early");
        n += k;
    }
    drop(s);
    wait_until(|| gone.load(std::sync::atomic::Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn a_bad_request_is_refused_as_before() {
    let (b, p, _) = setup().await;
    let wire = exchange(addr(&p), &[b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"]).await;
    assert!(wire.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{wire}");
    assert_eq!(b.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_request_pipelined_behind_the_answer_in_flight_is_served_with_close() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let b = held_backend("start;", "done", std::sync::Arc::clone(&release)).await;
    let proxy = proxy_to(&b);
    let mut s = first_request(&proxy).await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("start;") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the first piece in time")
            .expect("read");
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    // The head went out before shutdown and could not say close, so the client may send
    // more: the request pipelined behind it is served, with close, and then the connection
    // closes.
    proxy.terminate();
    s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // One release for each request (a permit waits for the second).
    release.notify_one();
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the proxy closed the connection after the answers")
        .expect("read");
    let wire = String::from_utf8_lossy(&got);
    let answers: Vec<&str> = wire.split("HTTP/1.1 200 OK\r\n").skip(1).collect();
    assert_eq!(answers.len(), 2, "{wire}");
    assert!(!answers[0].contains("connection: close"), "{wire}");
    assert!(answers[1].contains("connection: close\r\n"), "{wire}");
    for a in answers {
        assert!(
            a.ends_with("6\r\nstart;\r\n4\r\ndone\r\n0\r\n\r\n"),
            "{wire}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_an_answer_that_says_close_is_the_last_on_its_connection() {
    let b = slow_backend("late", Duration::from_millis(600)).await;
    let proxy = proxy_to(&b);
    let mut s = first_request(&proxy).await;
    // Shutdown begins while the backend has not answered: the answer says close, so the
    // request pipelined behind it is not served.
    proxy.terminate();
    s.write_all(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the proxy closed the connection after the answer")
        .expect("read");
    let wire = String::from_utf8_lossy(&got);
    assert_eq!(wire.matches("HTTP/1.1 200 OK\r\n").count(), 1, "{wire}");
    assert!(wire.contains("connection: close\r\n"), "{wire}");
    assert!(wire.ends_with("\r\n\r\nlate"), "{wire}");
    assert_eq!(b.hits(), 1);
}

/// Reads one answer with a `content-length` off `s`, and returns its body; `pending`
/// keeps what was read past it.
async fn read_answer(s: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some((body, taken)) = first_answer(pending) {
            pending.drain(..taken);
            return body;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the proxy closed the connection");
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn heads_read_side_by_side_into_the_shared_read_room_stay_whole() {
    // Three connections send 300 requests each at the same time, one after the other on
    // each: about 90 KiB of heads, read by one worker into the room its connections share,
    // which is taken anew several times. Each request's target (which shares that room while
    // its request lasts) must reach the backend as it was sent.
    let (_b, p, _) = setup().await;
    let to = addr(&p);
    let mut clients = Vec::new();
    for c in 0..3 {
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(to).await.expect("connect");
            let mut pending = Vec::new();
            for i in 0..300 {
                let pad = "x".repeat((i * 7 + c * 13) % 90);
                let req =
                    format!("GET /c{c}/{i}/{pad} HTTP/1.1\r\nHost: a\r\nX-Pad: {pad}\r\n\r\n");
                s.write_all(req.as_bytes()).await.expect("write");
                let body = read_answer(&mut s, &mut pending).await;
                assert_eq!(body, format!("GET /c{c}/{i}/{pad} 0"));
            }
        }));
    }
    for c in clients {
        tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("the requests were answered in time")
            .expect("client");
    }
}
