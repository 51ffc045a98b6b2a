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
