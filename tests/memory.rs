//! Bounded memory under load: idle upstream connections are capped per backend.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

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
