//! Priority classes in the wait queue: with one slot held, 5 low waiters and then 5 high
//! ones; on release the high ones are served first, in arrival order, then the low ones. A
//! request may lower its class with `Sandgate-Priority`, and raise it only from a trusted
//! proxy.

mod common;

use std::sync::{Arc, Mutex};

use common::queueing::recording_backend;
use common::*;

fn config(backend: std::net::SocketAddr, trusted: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n{trusted}\
         routes:\n  - {{ name: interactive, pool: p, priority: high, match: {{ path_prefix: /hi }} }}\n\
         \x20 - {{ name: batch, pool: p, priority: low, match: {{ path_prefix: /batch }} }}\n\
         \x20 - {{ name: other, pool: p }}\n\
         pools:\n  p:\n    max_connections: 1\n    queue: {{ max: 20, timeout: 20s, max_wait_low: 20s }}\n\
         \x20   backends: [{{ address: {backend} }}]\n"
    )
}

async fn depth(proxy: &Proxy, class: &str) -> u64 {
    let c = get(&proxy.admin_url("/admin/capacity")).await.json();
    c["pools"][0]["queue_depth_by_priority"][class]
        .as_u64()
        .unwrap_or(0)
}

/// Sends GETs to `paths` one after another, each once the previous one waits in the queue
/// as `class`; returns the tasks.
async fn enqueue(
    proxy: &Proxy,
    paths: &[String],
    headers: &'static [(&'static str, &'static str)],
    class: &str,
) -> Vec<tokio::task::JoinHandle<u16>> {
    let before = depth(proxy, class).await;
    let mut tasks = Vec::new();
    for (n, p) in paths.iter().enumerate() {
        let url = proxy.url("public", p);
        tasks.push(tokio::spawn(async move {
            get_with(&url, headers).await.status.as_u16()
        }));
        let want = before + n as u64 + 1;
        wait_until_async(|| async { depth(proxy, class).await >= want }).await;
    }
    tasks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_waiters_are_served_before_low_ones_in_arrival_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = recording_backend(Arc::clone(&seen)).await;
    let proxy = spawn_proxy(&config(backend.addr, ""));
    let held = open_stream(&proxy.url("public", "/hold")).await;

    let low: Vec<String> = (0..5).map(|i| format!("/batch/{i}")).collect();
    let high: Vec<String> = (0..5).map(|i| format!("/hi/{i}")).collect();
    let mut tasks = enqueue(&proxy, &low, &[], "low").await;
    tasks.extend(enqueue(&proxy, &high, &[], "high").await);
    assert!(
        seen.lock().unwrap().is_empty(),
        "all wait behind the held slot"
    );

    drop(held);
    for t in tasks {
        assert_eq!(t.await.expect("request"), 200);
    }
    let order = seen.lock().unwrap().clone();
    let want: Vec<String> = high.iter().chain(&low).cloned().collect();
    assert_eq!(order, want);
    let text = metrics_text(&proxy).await;
    assert!(
        text.contains("sandgate_queue_wait_seconds_count{pool=\"p\",priority=\"high\"} 5"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_may_lower_its_class_but_raise_it_only_from_a_trusted_proxy() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = recording_backend(Arc::clone(&seen)).await;
    let proxy = spawn_proxy(&config(backend.addr, ""));
    let held = open_stream(&proxy.url("public", "/hold")).await;
    // An interactive request that asks to be low waits as low; a batch one that asks to be
    // high, from an untrusted peer, stays low.
    let mut tasks = enqueue(
        &proxy,
        &["/hi/lowered".to_owned()],
        &[("sandgate-priority", "low")],
        "low",
    )
    .await;
    tasks.extend(
        enqueue(
            &proxy,
            &["/batch/raised".to_owned()],
            &[("sandgate-priority", "high")],
            "low",
        )
        .await,
    );
    assert_eq!(depth(&proxy, "high").await, 0);
    drop(held);
    for t in tasks {
        assert_eq!(t.await.expect("request"), 200);
    }
    drop(proxy);

    // From a trusted proxy, the header may raise the class.
    let seen2 = Arc::new(Mutex::new(Vec::new()));
    let backend2 = recording_backend(Arc::clone(&seen2)).await;
    let proxy = spawn_proxy(&config(backend2.addr, "trusted_proxies: [127.0.0.0/8]\n"));
    let held = open_stream(&proxy.url("public", "/hold")).await;
    let tasks = enqueue(
        &proxy,
        &["/batch/raised".to_owned()],
        &[("sandgate-priority", "high")],
        "high",
    )
    .await;
    drop(held);
    for t in tasks {
        assert_eq!(t.await.expect("request"), 200);
    }
}
