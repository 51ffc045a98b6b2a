//! Slow and careless clients, with raw sockets, bounded counts and bounded time: the head
//! timeout answers 408, idle keep-alive connections have their own timer (GOAWAY on h2), slow
//! bodies are cut, a client that reads nothing is cut and frees its backend slot, and none of
//! this blames a backend. Also: HTTP/1.0 backends do not end keep-alive, and error bodies
//! never show backend addresses.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config with one route to `backend` and these `limits` (flow style, without braces).
fn config(backend: std::net::SocketAddr, limits: &str, pool: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         limits: {{ {limits} }}\nroutes:\n  - name: all\n    pool: p\n\
         pools:\n  p:\n{pool}    backends: [{{ address: {backend} }}]\n"
    )
}

/// Reads until the peer closes (at most `limit`); returns what came and when it closed.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&out).into(), Some(start.elapsed()))
            }
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), None),
        }
    }
}

#[tokio::test]
async fn a_stalled_head_gets_408_and_the_connection_closes() {
    let b = named_backend("x").await;
    let proxy = spawn_proxy(&config(b.addr, "header_read_timeout: 300ms", ""));
    let mut s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "closed");
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains("Connection: close"), "{text}");
    assert!(text.contains("\"error\":\"request_timeout\""), "{text}");
    assert_eq!(b.hits(), 0);
    // The admin listener has the same head timer.
    let mut a = TcpStream::connect(proxy.admin.unwrap()).await.unwrap();
    a.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    let (text, closed) = read_until_closed(&mut a, Duration::from_secs(5)).await;
    assert!(
        closed.is_some() && text.starts_with("HTTP/1.1 408 "),
        "{text}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_nothing_gets_408_at_the_head_timeout() {
    let b = named_backend("x").await;
    let proxy = spawn_proxy(&config(
        b.addr,
        "header_read_timeout: 300ms, keepalive_timeout: 60s",
        "",
    ));
    let mut s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    // Closed by the head timer, not the keep-alive one.
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "closed");
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
}

#[tokio::test]
async fn idle_keepalive_connections_have_their_own_timer() {
    let b = named_backend("x").await;
    let proxy = spawn_proxy(&config(
        b.addr,
        "header_read_timeout: 300ms, keepalive_timeout: 2s",
        "",
    ));
    let mut s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    s.write_all(req).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Idle for longer than the head timeout, and long enough to be parked (1 s): still open,
    // and it serves the next request.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    s.write_all(req).await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then idle past keepalive_timeout: closed without a word.
    let (text, closed) = read_until_closed(&mut s, Duration::from_secs(6)).await;
    assert!(closed.is_some(), "closed by keepalive_timeout");
    assert_eq!(text, "");
}

/// One HTTP/2 GET through a proxy with `keepalive_timeout: 500ms` in front of `backend`
/// (which answers `x`); then, with no stream open, the server must say GOAWAY and the
/// connection end cleanly.
async fn one_h2_get_then_goaway(backend: &Backend) {
    let proxy = spawn_proxy(&config(backend.addr, "keepalive_timeout: 500ms", ""));
    let s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(s),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let r = send
        .send_request(
            Request::get("http://a/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.into_body().collect().await.unwrap().to_bytes(), "x");
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "{ended:?}");
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway() {
    one_h2_get_then_goaway(&named_backend("x").await).await;
}

#[tokio::test]
async fn keepalive_counts_again_after_a_request_that_outlived_it() {
    // The request is still in flight when the first idle deadline (from accept) passes; the
    // connection must still be closed once it has been idle for keepalive_timeout after it.
    one_h2_get_then_goaway(&slow_backend("x", Duration::from_millis(900)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_are_cut_while_other_clients_are_served() {
    let sink = sink_backend().await;
    let proxy = spawn_proxy(&config(sink.addr, "body_read_timeout: 500ms", ""));
    let addr = proxy.listeners["public"];
    // 500 clients announce 100 bytes and send one byte a second.
    let slow: Vec<_> = (0..500)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nx")
                    .await
                    .unwrap();
                let start = Instant::now();
                let mut out = Vec::new();
                let mut buf = [0u8; 1024];
                for _ in 0..10 {
                    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            return (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
                        }
                        Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
                        Err(_) => {
                            // Still open: one more byte, as a slow client does.
                            if s.write_all(b"x").await.is_err() {
                                return (
                                    String::from_utf8_lossy(&out).into_owned(),
                                    start.elapsed(),
                                );
                            }
                        }
                    }
                }
                (String::from_utf8_lossy(&out).into_owned(), Duration::MAX)
            })
        })
        .collect();
    // Meanwhile a normal client is served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = send(
        &client(),
        Request::post(proxy.url("public", "/fast"))
            .body(http_body_util::Full::new(Bytes::from("abc")))
            .unwrap(),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "3");
    for t in slow {
        let (text, took) = t.await.unwrap();
        assert!(
            took <= Duration::from_millis(2500),
            "closed within body_read_timeout + 2s: {took:?}"
        );
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408 "),
            "{text}"
        );
    }
    let m = metrics_text(&proxy).await;
    assert!(
        metric(&m, "sandgate_requests_total{route=\"all\",code=\"408\"}").unwrap_or(0.0) >= 400.0
    );
    assert!(
        metric(
            &m,
            &format!(
                "sandgate_upstream_requests_total{{pool=\"p\",backend=\"{}\",code=\"error\"}}",
                sink.addr
            )
        )
        .is_none(),
        "a slow client is not the backend's failure"
    );
}

#[tokio::test]
async fn a_steady_upload_longer_than_response_header_succeeds() {
    let sink = sink_backend().await;
    let pool = "    timeouts: { response_header: 1s }\n";
    let proxy = spawn_proxy(&config(sink.addr, "body_read_timeout: 1s", pool));
    let mut s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n\r\n")
        .await
        .unwrap();
    // 30 bytes over 3 s: three times the response_header timeout.
    for _ in 0..30 {
        s.write_all(b"y").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("30"), "{text}");
}

#[tokio::test]
async fn a_client_that_leaves_mid_request_blames_no_backend() {
    let sink = sink_backend().await;
    let pool = "    circuit_breaker: { consecutive_failures: 1, failure_on: [error, 5xx, connect_error, timeout] }\n";
    let proxy = spawn_proxy(&config(sink.addr, "", pool));
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nhalf")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(s);
    }
    wait_until_async(|| async {
        let m = metrics_text(&proxy).await;
        metric(&m, "sandgate_client_aborts_total{route=\"all\"}").unwrap_or(0.0) >= 3.0
    })
    .await;
    wait_until(|| proxy.logs.count(|v| v["error"] == "client_abort") >= 3).await;
    let backends = get(&proxy.admin_url("/admin/backends")).await.json();
    assert_eq!(
        backends["pools"][0]["backends"][0]["breaker"], "closed",
        "{backends}"
    );
    assert_eq!(get(&proxy.url("public", "/after")).await.status, 200);
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_cut_and_frees_its_backend_slot() {
    let big = spawn_backend(|_req| {
        Box::pin(async move { Response::new(full(vec![b'z'; 32 * 1024 * 1024])) })
    })
    .await;
    let proxy = spawn_proxy(&config(big.addr, "send_timeout: 500ms", ""));
    let mut s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Read nothing. The backend's slot is held while its response is stuck...
    let inflight = || async {
        get(&proxy.admin_url("/admin/backends")).await.json()["pools"][0]["backends"][0]["inflight"]
            .as_u64()
            .unwrap()
    };
    wait_until_async(|| async { inflight().await == 1 }).await;
    // ...and freed once send_timeout cuts the client.
    wait_until_async(|| async { inflight().await == 0 }).await;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => total += n,
            Err(_) => panic!("the connection was not closed"),
        }
    }
    assert!(total < 32 * 1024 * 1024, "cut before the end: {total}");
}

#[tokio::test]
async fn an_http10_backend_does_not_end_keepalive_and_errors_show_no_address() {
    // A backend that answers HTTP/1.0 and closes, as python's http.server does.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..20 {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let dead = closed_port();
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nroutes:\n  - name: old\n    pool: old\n    match: {{ path_prefix: /old }}\n  - name: dead\n    pool: dead\n\
         pools:\n  old:\n    backends: [{{ address: {addr} }}]\n  dead:\n    backends: [{{ address: {dead} }}]\n"
    );
    let proxy = spawn_proxy(&yaml);
    let mut s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /old HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
    let e = get(&proxy.url("public", "/x")).await;
    assert_eq!(e.status, 502);
    assert_eq!(e.json()["error"], "connect_error");
    assert!(!e.text().contains("127.0.0.1"), "{}", e.text());
    assert!(!e.text().contains("dead"), "no pool name: {}", e.text());
    let logged = proxy.logs.wait_for(Duration::from_secs(5), |v| {
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&dead.to_string()))
    });
    assert!(logged.is_some(), "the log has it");
}
