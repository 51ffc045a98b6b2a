//! Bounded memory under load: idle upstream connections are capped per backend, hold only
//! their sockets, and are used again.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_capped_per_backend() {
    // A backend that counts its open connections.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = Arc::new(AtomicUsize::new(0));
    let o = Arc::clone(&open);
    tokio::spawn(async move {
        for _ in 0..1000 {
            let Ok((s, _)) = l.accept().await else { return };
            let o = Arc::clone(&o);
            o.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok::<_, Infallible>(http::Response::new(full("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    let proxy = spawn_proxy(&basic_config(&format!(
        "    max_idle_per_backend: 4\n    backends: [{{ address: {addr} }}]\n"
    )));
    let url = proxy.url("public", "/");
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert!(open.load(Ordering::SeqCst) >= 1);
    // 40 connections were needed at once; only 4 stay idle afterwards.
    wait_until(|| open.load(Ordering::SeqCst) <= 4).await;
}

#[tokio::test]
async fn metric_series_of_removed_backends_are_dropped_and_live_ones_kept() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let yaml = |backends: &str| {
        format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
             runtime: {{ metrics_idle_timeout: 2s }}\nroutes:\n  - name: all\n    pool: p\n\
             pools:\n  p:\n    backends: [{backends}]\n"
        )
    };
    let both = format!("{{ address: {} }}, {{ address: {} }}", a.addr, b.addr);
    let proxy = spawn_proxy(&yaml(&both));
    for _ in 0..4 {
        assert_eq!(get(&proxy.url("public", "/")).await.status, 200);
    }
    let series = |backend: std::net::SocketAddr| {
        format!("sandgate_upstream_requests_total{{pool=\"p\",backend=\"{backend}\",code=\"200\"}}")
    };
    let m = metrics_text(&proxy).await;
    assert!(metric(&m, &series(a.addr)).is_some() && metric(&m, &series(b.addr)).is_some());
    assert!(matches!(
        proxy.reload(&yaml(&format!("{{ address: {} }}", a.addr))),
        Reload::Applied(_)
    ));
    // Nobody sends a request any more: b's series go idle and are dropped...
    wait_until_async(|| async { metric(&metrics_text(&proxy).await, &series(b.addr)).is_none() })
        .await;
    // ...while a's, just as idle but still configured, are kept.
    let m = metrics_text(&proxy).await;
    assert_eq!(metric(&m, &series(a.addr)), Some(2.0), "{m}");
    assert!(m.contains(&format!(
        "sandgate_backend_healthy{{pool=\"p\",backend=\"{}\"}}",
        a.addr
    )));
    assert!(
        !m.contains(&format!("backend=\"{}\"", b.addr)),
        "every series of b is gone"
    );
}

/// A raw HTTP/1.1 backend: every connection answers each request head with `200 ok` and
/// stays open until `close` turns true. Counts the connections it accepted.
async fn raw_backend(close: watch::Receiver<bool>) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let a = Arc::clone(&accepted);
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let mut close = close.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => match r {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        },
                        _ = close.wait_for(|c| *c) => return,
                    }
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The first backend of `/admin/backends`.
async fn first_backend(proxy: &Proxy) -> serde_json::Value {
    let v = get(&proxy.admin_url("/admin/backends")).await.json();
    v["pools"][0]["backends"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_upstream_connection_is_kept_and_used_again() {
    let (_close, rx) = watch::channel(false);
    let (addr, accepted) = raw_backend(rx).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {addr} }}]\n"
    )));
    let url = proxy.url("public", "/");
    let first = get(&url).await;
    assert_eq!((first.status.as_u16(), first.text().as_str()), (200, "ok"));
    // Given back as soon as its response was read, with no buffer left on it.
    wait_until_async(|| async { first_backend(&proxy).await["connections_parked"] == 1 }).await;
    let again = get(&url).await;
    assert_eq!((again.status.as_u16(), again.text().as_str()), (200, "ok"));
    let b = first_backend(&proxy).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the same connection: {b}"
    );
    assert_eq!(b["connections_opened"], 1, "{b}");
    assert_eq!(b["requests_reused"], 1, "{b}");
    assert_eq!(
        b["connections_parked"], 1,
        "idle again after its second answer: {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_the_backend_closed_is_retired_not_used() {
    let (close, rx) = watch::channel(false);
    let (addr, accepted) = raw_backend(rx).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {addr} }}]\n"
    )));
    let url = proxy.url("public", "/");
    assert_eq!(get(&url).await.status, 200);
    wait_until_async(|| async { first_backend(&proxy).await["connections_parked"] == 1 }).await;
    // The backend closes every connection it has; the idle one is noticed and closed.
    close.send_replace(true);
    wait_until_async(|| async { first_backend(&proxy).await["connections_parked"] == 0 }).await;
    close.send_replace(false);
    let next = get(&url).await;
    assert_eq!((next.status.as_u16(), next.text().as_str()), (200, "ok"));
    let b = first_backend(&proxy).await;
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a new connection: {b}");
    assert_eq!(b["connections_opened"], 2, "{b}");
    assert_eq!(b["requests_reused"], 0, "{b}");
}
