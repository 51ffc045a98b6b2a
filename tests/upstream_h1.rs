//! sandgate's HTTP/1.1 client against raw backends that misbehave on purpose: a response
//! framed two ways, an answer that comes before the upload is done, keep-alive connections
//! closed without a word.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A raw backend: each connection reads request heads and answers each with `answer(n)`, n
/// counting requests over all connections; after it, the connection closes when `close_after`
/// says so, else waits for the next head. Counts the connections it accepted.
async fn raw_backend(
    answer: fn(usize) -> &'static [u8],
    close_after: fn(usize) -> bool,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let a = Arc::clone(&accepted);
    tokio::spawn(async move {
        for _ in 0..200 {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let requests = Arc::clone(&requests);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let n = requests.fetch_add(1, Ordering::SeqCst);
                        if s.write_all(answer(n)).await.is_err() {
                            return;
                        }
                        if close_after(n) {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_framed_two_ways_is_a_502_and_its_connection_is_closed() {
    let (addr, accepted) = raw_backend(
        |n| match n {
            // Chunked and sized at once: a backend trying to be read two ways.
            0 => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\nabc",
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        },
        |_| false,
    )
    .await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {addr} }}]\n"
    )));
    let first = get(&proxy.url("public", "/two-ways")).await;
    assert_eq!(first.status, 502, "{}", first.text());
    let line = proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| v["path"] == "/two-ways")
        .expect("an access log line");
    let detail = line["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("Transfer-Encoding and Content-Length"),
        "{detail}"
    );
    let next = get(&proxy.url("public", "/next")).await;
    assert_eq!((next.status.as_u16(), next.text().as_str()), (200, "ok"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the connection that answered two ways was not used again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_the_backend_closes_silently_lose_no_request() {
    // Every answer says keep-alive, and the backend closes the connection right after it:
    // the pool finds each one closed when it looks, or sends on it as the close arrives, and
    // a GET that got no byte of answer goes again on a fresh connection.
    let (addr, accepted) = raw_backend(
        |_| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        |_| true,
    )
    .await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {addr} }}]\n"
    )));
    let url = proxy.url("public", "/");
    for i in 0..40 {
        let got = get(&url).await;
        assert_eq!(
            (got.status.as_u16(), got.text().as_str()),
            (200, "ok"),
            "request {i}"
        );
    }
    assert!(accepted.load(Ordering::SeqCst) >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_upload_is_done_reaches_the_client() {
    // The backend reads the head alone and refuses the upload at once, holding the
    // connection open (closing with the body unread would reset it).
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let refuse = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!";
        let _ = s.write_all(refuse).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {addr} }}]\n"
    )));
    let mut c = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: sandbox\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .unwrap();
    c.write_all(&[b'x'; 16 * 1024]).await.unwrap();
    // The rest of the megabyte never comes: the answer must not wait for it.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.ends_with(b"too big!") {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the answer came while the upload was still going");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.ends_with("too big!"), "{text}");
}
