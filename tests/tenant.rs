//! Per-tenant concurrency: with `tenant: { key: header:X-Tenant, max_share: 50% }`, a tenant
//! holding its share of the pool's slots is served after other tenants' waiters, and gets 503
//! `tenant_limit` when the queue is full.

mod common;

use std::sync::{Arc, Mutex};

use common::queueing::recording_backend;
use common::*;
use http::Request;
use hyper::body::Incoming;

/// Opens `/hold` as `tenant`; the slot is held until the body is dropped.
async fn hold(proxy: &Proxy, tenant: &str) -> Incoming {
    let req = Request::get(proxy.url("public", "/hold"))
        .header("x-tenant", tenant)
        .body(empty())
        .expect("request");
    let mut body = client().request(req).await.expect("request").into_body();
    assert_eq!(next_chunk(&mut body).await, "held");
    body
}

/// Pool `p`: 2 slots, a queue of `queue_max`, and tenants by `X-Tenant` with half the slots
/// each.
fn config(backend: std::net::SocketAddr, queue_max: usize) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         routes:\n  - {{ name: api, pool: p }}\n\
         pools:\n  p:\n    max_connections: 2\n    queue: {{ max: {queue_max}, timeout: 20s }}\n\
         \x20   tenant: {{ key: 'header:X-Tenant', max_share: 50% }}\n\
         \x20   backends: [{{ address: {backend} }}]\n"
    )
}

async fn depth(proxy: &Proxy) -> u64 {
    let c = get(&proxy.admin_url("/admin/capacity")).await.json();
    c["pools"][0]["queue_depth"].as_u64().unwrap_or(0)
}

fn send(proxy: &Proxy, path: &str, tenant: &'static str) -> tokio::task::JoinHandle<Got> {
    let url = proxy.url("public", path);
    tokio::spawn(async move { get_with(&url, &[("x-tenant", tenant)]).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_at_its_share_waits_behind_others_and_is_refused_when_the_queue_is_full() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = recording_backend(Arc::clone(&seen)).await;
    let proxy = spawn_proxy(&config(backend.addr, 2));
    // With nobody waiting, tenant a may take both slots.
    let a1 = hold(&proxy, "a").await;
    let a2 = hold(&proxy, "a").await;
    // b waits for a slot; then a, holding more than its share, waits behind it.
    let b = send(&proxy, "/b", "b");
    wait_until_async(|| async { depth(&proxy).await == 1 }).await;
    let a3 = send(&proxy, "/a3", "a");
    wait_until_async(|| async { depth(&proxy).await == 2 }).await;
    // The queue is full: a, at its share, is refused as tenant_limit; c, below it, as
    // queue_full.
    let refused = get_with(&proxy.url("public", "/a4"), &[("x-tenant", "a")]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"], "tenant_limit");
    assert!(refused.header("retry-after").is_some());
    let other = get_with(&proxy.url("public", "/c"), &[("x-tenant", "c")]).await;
    assert_eq!(other.json()["error"], "queue_full");

    // One of a's slots frees: b, though it came first anyway, is served while a still holds
    // its share; then a's waiter takes the next slot, as nobody else waits.
    drop(a1);
    assert_eq!(b.await.expect("b").status, 200);
    assert_eq!(a3.await.expect("a3").status, 200);
    assert_eq!(*seen.lock().unwrap(), ["/b", "/a3"]);
    drop(a2);
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(&m, "sandgate_tenant_limited_total{pool=\"p\"}"),
        Some(2.0),
        "a3 held back, a4 refused: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_younger_waiter_of_another_tenant_goes_before_a_tenant_at_its_share() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = recording_backend(Arc::clone(&seen)).await;
    let proxy = spawn_proxy(&config(backend.addr, 10));
    // a holds one slot, b the other; a's waiter comes first, then b's and c's.
    let a1 = hold(&proxy, "a").await;
    let b1 = hold(&proxy, "b").await;
    let a2 = send(&proxy, "/a2", "a");
    wait_until_async(|| async { depth(&proxy).await == 1 }).await;
    let c = send(&proxy, "/c", "c");
    wait_until_async(|| async { depth(&proxy).await == 2 }).await;
    // b's slot frees: a (the oldest waiter) holds its share, so c is served first.
    drop(b1);
    assert_eq!(c.await.expect("c").status, 200);
    assert_eq!(a2.await.expect("a2").status, 200);
    assert_eq!(*seen.lock().unwrap(), ["/c", "/a2"]);
    drop(a1);
}
