//! The client against real sockets on 127.0.0.1: a scripted backend answers each request
//! with the bytes the test gives it.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// The fields a first hop from 127.0.0.1 adds.
fn hop() -> Hop {
    Hop::new(
        &mut http::HeaderMap::new(),
        std::net::Ipv4Addr::LOCALHOST.into(),
        false,
        None,
        None,
        &http::HeaderValue::from_static("id1"),
        None,
    )
}

/// The lines [`hop`] adds to each request head.
const HOP_LINES: &str =
    "x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nvia: 1.1 sandgate\r\nx-request-id: id1\r\n";

/// A backend that reads one request head (and `body` more bytes), answers `answer`, and
/// returns what it read.
async fn backend(
    answer: &'static [u8],
    body: usize,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before a head");
            got.extend_from_slice(&buf[..n]);
        }
        let head_end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| i + 4);
        while got.len() < head_end + body {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer).await.expect("write");
        // Hold the connection open a moment, so that an unread end is the client's doing.
        let _ = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        got
    });
    (addr, task)
}

async fn conn(addr: std::net::SocketAddr) -> Conn {
    Conn::new(crate::upstream::connect::Stream::Plain(
        TcpStream::connect(addr).await.expect("connect"),
    ))
}

/// A backend that reads once and writes `pieces` one after another (none: it closes
/// without a byte of answer).
async fn scripted(pieces: &'static [&'static [u8]]) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.expect("accept");
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        for piece in pieces {
            s.write_all(piece).await.expect("write");
        }
    });
    addr
}

/// The response to `req` sent on a fresh connection to `addr`, which must come.
async fn respond(addr: std::net::SocketAddr, req: Request<UpstreamBody>) -> http::Response<Body> {
    send(conn(addr).await, req, Some(&hop()), false, false)
        .await
        .ok()
        .expect("response")
}

/// How sending `req` on a connection to `addr` that carried a request before fails.
async fn fail_reused(addr: std::net::SocketAddr, req: Request<UpstreamBody>) -> Failed {
    match send(conn(addr).await, req, Some(&hop()), true, false).await {
        Err(f) => f,
        Ok(_) => panic!("no response was sent"),
    }
}

fn get(path: &str) -> Request<UpstreamBody> {
    Request::get(path)
        .header("host", "sandbox")
        .body(Either::Right(Full::new(Bytes::new())))
        .expect("request")
}

async fn read_all(
    mut resp: http::Response<Body>,
) -> (Vec<u8>, Option<http::HeaderMap>, Option<Conn>) {
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(f) = resp.body_mut().frame().await {
        let f = f.expect("body");
        match f.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    let conn = resp.body_mut().take_reusable();
    (data, trailers, conn)
}

#[tokio::test]
async fn a_sized_response_gives_the_connection_back() {
    let (addr, seen) = backend(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 0).await;
    let resp = send(conn(addr).await, get("/a?b=c"), Some(&hop()), false, true)
        .await
        .ok()
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let (data, _, back) = read_all(resp).await;
    assert_eq!(data, b"hello");
    let mut back = back.expect("reusable");
    assert!(
        back.buf.is_empty() && back.buf.capacity() == 0,
        "an idle connection holds no buffer"
    );
    assert!(back.usable());
    let seen = seen.await.expect("backend");
    assert_eq!(
        String::from_utf8(seen).expect("ascii"),
        format!("GET /a?b=c HTTP/1.1\r\nhost: sandbox\r\n{HOP_LINES}\r\n")
    );
}

#[tokio::test]
async fn chunked_with_trailers_then_interim_skipped() {
    let (addr, _seen) = backend(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 9\r\n\r\n",
        0,
    )
    .await;
    let resp = respond(addr, get("/")).await;
    let (data, trailers, back) = read_all(resp).await;
    assert_eq!(data, b"abc");
    assert_eq!(trailers.expect("trailers")["x-sum"], "9");
    assert!(
        back.is_some(),
        "a complete chunked body leaves the connection usable"
    );
}

#[tokio::test]
async fn bytes_past_the_end_or_close_retire_the_connection() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA"[..],
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    ] {
        let (addr, _seen) = backend(answer, 0).await;
        let resp = respond(addr, get("/")).await;
        let (data, _, back) = read_all(resp).await;
        assert_eq!(data, b"ok");
        assert!(back.is_none(), "{:?}", String::from_utf8_lossy(answer));
    }
}

#[tokio::test]
async fn a_close_delimited_body_reads_to_eof() {
    let addr = scripted(&[b"HTTP/1.1 200 OK\r\n\r\nuntil", b" close"]).await;
    let resp = respond(addr, get("/")).await;
    let (data, _, back) = read_all(resp).await;
    assert_eq!(data, b"until close");
    assert!(back.is_none());
}

#[tokio::test]
async fn a_truncated_body_is_an_error() {
    let addr = scripted(&[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]).await;
    let mut resp = respond(addr, get("/")).await;
    let mut errored = false;
    while let Some(f) = resp.body_mut().frame().await {
        if f.is_err() {
            errored = true;
        }
    }
    assert!(errored, "a body cut short must not look complete");
    assert!(resp.body_mut().take_reusable().is_none());
}

#[tokio::test]
async fn a_buffered_body_goes_with_its_length() {
    let (addr, seen) = backend(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 4).await;
    let req = Request::post("/up")
        .header("host", "sandbox")
        .body(Either::Right(Full::new(Bytes::from_static(b"data"))))
        .expect("request");
    let resp = respond(addr, req).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let seen = seen.await.expect("backend");
    assert_eq!(
        String::from_utf8(seen).expect("ascii"),
        format!("POST /up HTTP/1.1\r\nhost: sandbox\r\ncontent-length: 4\r\n{HOP_LINES}\r\ndata")
    );
}

#[tokio::test]
async fn a_buffered_body_that_is_not_its_declared_length_is_not_sent() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let req = Request::post("/up")
        .header("content-length", "9")
        .body(Either::Right(Full::new(Bytes::from_static(b"data"))))
        .expect("request");
    let c = conn(addr).await;
    let (mut s, _) = l.accept().await.expect("accept");
    let failed = match send(c, req, Some(&hop()), false, false).await {
        Err(f) => f,
        Ok(_) => panic!("a body of 4 bytes went as 9"),
    };
    assert!(matches!(failed.error, Error::BodyLength));
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the connection closes")
        .expect("read");
    assert_eq!(n, 0, "nothing reached the backend");
}

#[tokio::test]
async fn a_reused_connection_closed_by_the_backend_gives_an_idempotent_request_back() {
    // Closed without a byte of answer, as a backend whose keep-alive timer fired.
    let failed = fail_reused(scripted(&[]).await, get("/again")).await;
    assert!(matches!(failed.error, Error::Closed));
    let back = failed
        .unsent
        .expect("a GET on a reused connection may go again");
    assert_eq!(back.uri(), "/again");

    let post = Request::post("/once")
        .body(Either::Right(Full::new(Bytes::from_static(b"x"))))
        .expect("request");
    let failed = fail_reused(scripted(&[]).await, post).await;
    assert!(
        failed.unsent.is_none(),
        "a POST that went out is not sent twice"
    );
}

#[tokio::test]
async fn an_idle_connection_the_backend_closed_is_not_usable() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let mut c = conn(addr).await;
    let (s, _) = l.accept().await.expect("accept");
    assert!(c.usable());
    drop(s);
    let closed = async {
        while c.usable() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the close is noticed");
}

#[tokio::test]
async fn a_batched_request_is_written_after_the_tasks_ready_before_it() {
    for batch in [false, true] {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let c = conn(addr).await;
        let (mut s, _) = l.accept().await.expect("accept");
        // Ready before the request is sent: it runs as soon as the request's task waits.
        let backend = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let arrived = s.try_read(&mut buf).is_ok_and(|n| n > 0);
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .expect("write");
            (arrived, s)
        });
        let resp = send(c, get("/"), Some(&hop()), false, batch)
            .await
            .ok()
            .expect("response");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let (arrived, _s) = backend.await.expect("backend");
        assert_eq!(
            arrived, !batch,
            "batch {batch}: the request is written after the ready tasks ran"
        );
    }
}
