//! The wait queue keeps the strategy's promises: a strict affinity request waits for its own
//! backend, a geo request for its region; and a retry away from a sticky backend that can
//! still serve does not move the session.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http::Response;

/// A backend that answers `name`; on `/hold` it sends `name` and then waits for `release`.
async fn holding_backend(name: &'static str, release: Arc<tokio::sync::Notify>) -> Backend {
    spawn_backend(move |req| {
        let r = Arc::clone(&release);
        let hold = req.uri().path() == "/hold";
        Box::pin(async move {
            if !hold {
                return Response::new(full(name));
            }
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from(name)).await.ok();
                r.notified().await;
            });
            Response::new(body)
        })
    })
    .await
}

/// The `name` a request with `headers` to `path` gets, and its streaming body kept open.
async fn open(url: &str, headers: &[(&str, &str)]) -> (String, hyper::body::Incoming) {
    let mut b = http::Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client().request(b.body(empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = next_chunk(&mut body).await;
    (String::from_utf8_lossy(&first).into_owned(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_affinity_request_waits_for_its_own_backend() {
    let (ra, rb) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let a = holding_backend("a", Arc::clone(&ra)).await;
    let b = holding_backend("b", Arc::clone(&rb)).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    strategy: affinity\n    affinity: {{ key: header:x-session, on_unusable: strict }}\n    max_connections: 1\n    queue: {{ max: 10, timeout: 10s }}\n    backends:\n      - {{ address: {} }}\n      - {{ address: {} }}\n",
        a.addr, b.addr
    )));
    let key = [("x-session", "s-42")];
    // Which backend the key lives on, and its slot held by an open response.
    let (own, held) = open(&proxy.url("public", "/hold"), &key).await;
    let (own_release, other) = if own == "a" { (ra, "b") } else { (rb, "a") };
    // The key's request waits for its backend although the other one is free.
    let url = proxy.url("public", "/work");
    let waiting =
        tokio::spawn(async move { get_with(&url, &[("x-session", "s-42")]).await.text() });
    wait_until_async(|| async {
        get(&proxy.admin_url("/admin/backends")).await.json()["pools"][0]["queue_depth"] == 1
    })
    .await;
    assert_eq!(
        get(&proxy.url("public", "/free")).await.text(),
        other,
        "the other backend is free"
    );
    own_release.notify_one();
    drop(held);
    assert_eq!(waiting.await.unwrap(), own, "served by its own backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_geo_request_waits_for_its_region() {
    let (re, ru) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    let eu = holding_backend("eu", Arc::clone(&re)).await;
    let us = holding_backend("us", Arc::clone(&ru)).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    strategy: geo\n    geo:\n      client_region: [{{ header: x-region }}]\n      trusted_proxies: [127.0.0.1/32]\n    max_connections: 1\n    queue: {{ max: 10, timeout: 10s }}\n    backends:\n      - {{ address: {}, region: eu }}\n      - {{ address: {}, region: us }}\n",
        eu.addr, us.addr
    )));
    let (got, held) = open(&proxy.url("public", "/hold"), &[("x-region", "eu")]).await;
    assert_eq!(got, "eu");
    let url = proxy.url("public", "/work");
    let waiting = tokio::spawn(async move { get_with(&url, &[("x-region", "eu")]).await.text() });
    wait_until_async(|| async {
        get(&proxy.admin_url("/admin/backends")).await.json()["pools"][0]["queue_depth"] == 1
    })
    .await;
    assert_eq!(
        get_with(&proxy.url("public", "/x"), &[("x-region", "us")])
            .await
            .text(),
        "us"
    );
    re.notify_one();
    drop(held);
    assert_eq!(
        waiting.await.unwrap(),
        "eu",
        "served in its region, not by us"
    );
}

#[tokio::test]
async fn a_retry_away_from_a_sticky_backend_keeps_the_session_pinned() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cookie.key"),
        "0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    // Each backend fails its next request when its flag is set.
    let flaky = |name: &'static str, fail: Arc<AtomicBool>| {
        spawn_backend(move |_req| {
            let fail = Arc::clone(&fail);
            Box::pin(async move {
                let mut r = Response::new(full(name));
                if fail.swap(false, Ordering::SeqCst) {
                    *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                }
                r
            })
        })
    };
    let (fa, fb) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let a = flaky("a", Arc::clone(&fa)).await;
    let b = flaky("b", Arc::clone(&fb)).await;
    let proxy = spawn_proxy_in(
        dir,
        &basic_config(&format!(
            "    strategy: affinity\n    affinity: {{ cookie: {{ name: sg, secret_file: cookie.key }} }}\n    retry: {{ attempts: 2, on: [503], backoff: {{ base: 1ms, max: 2ms }} }}\n    backends:\n      - {{ address: {} }}\n      - {{ address: {} }}\n",
            a.addr, b.addr
        )),
    );
    let url = proxy.url("public", "/");
    let first = get(&url).await;
    let pinned = first.text();
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The pinned backend fails once: the retry goes to the other, without a new cookie.
    if pinned == "a" { &fa } else { &fb }.store(true, Ordering::SeqCst);
    let retried = get_with(&url, &[("cookie", &cookie)]).await;
    assert_eq!(retried.status, 200);
    assert_ne!(
        retried.text(),
        pinned,
        "served by the other backend this once"
    );
    assert!(
        retried.header("set-cookie").is_none(),
        "the session was not moved"
    );
    // And the next request goes back to the pinned backend.
    let back = get_with(&url, &[("cookie", &cookie)]).await;
    assert_eq!(back.text(), pinned);
}
