//! Retries and their budget, rate limits, and global shedding. Faults are injected by the
//! tests; waits are bounded and driven by signals.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_to_another_backend_and_respect_the_method() {
    let dead = closed_port();
    let good = named_backend("good").await;
    let busy = spawn_backend(|_req| {
        Box::pin(async move {
            let mut r = Response::new(full("busy"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        })
    })
    .await;
    let yaml = format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\nadmin: {{ address: 127.0.0.1:0 }}\nroutes:\n\
         \x20 - {{ name: dead, match: {{ path_prefix: /dead }}, pool: dead }}\n\
         \x20 - {{ name: busy, pool: busy }}\npools:\n\
         \x20 dead:\n    retry: {{ attempts: 2, backoff: {{ base: 1ms, max: 5ms }} }}\n    backends: [{{ address: {dead} }}, {{ address: {} }}]\n\
         \x20 busy:\n    retry: {{ attempts: 2, backoff: {{ base: 1ms, max: 5ms }} }}\n    backends: [{{ address: {} }}, {{ address: {} }}]\n",
        good.addr, busy.addr, good.addr
    );
    let proxy = spawn_proxy(&yaml);
    // Connect errors are retried for any method, with the small body replayed.
    for method in ["GET", "POST"] {
        for _ in 0..4 {
            let req = Request::builder()
                .method(method)
                .uri(proxy.url("public", "/dead"))
                .body(Full::new(Bytes::from_static(b"payload")))
                .unwrap();
            let r = send(&client(), req).await;
            assert_eq!(
                (r.status.as_u16(), r.text().as_str()),
                (200, "good"),
                "{method}"
            );
        }
    }
    // A 503 is retried for GET (on the other backend) but not for POST.
    for _ in 0..4 {
        assert_eq!(get(&proxy.url("public", "/b")).await.text(), "good");
    }
    let mut post_503 = 0;
    for _ in 0..4 {
        let req = Request::post(proxy.url("public", "/b"))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        post_503 += usize::from(send(&client(), req).await.status == 503);
    }
    assert_eq!(
        post_503, 2,
        "round-robin: half the POSTs hit the busy backend and are not retried"
    );
    let m = metrics_text(&proxy).await;
    assert!(
        metric(
            &m,
            "sandgate_retries_total{pool=\"dead\",reason=\"connect_error\"}"
        )
        .unwrap()
            >= 4.0,
        "{m}"
    );
    assert!(
        metric(&m, "sandgate_retries_total{pool=\"busy\",reason=\"503\"}").unwrap() >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_stops_a_retry_storm() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut failing = Vec::new();
    for _ in 0..2 {
        let n = Arc::clone(&attempts);
        failing.push(
            spawn_backend(move |_req| {
                n.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let mut r = Response::new(full("down"));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r
                })
            })
            .await,
        );
    }
    let proxy = spawn_proxy(&basic_config(&format!(
        "    retry: {{ attempts: 5, budget: 10%, backoff: {{ base: 1ms, max: 2ms }} }}\n    backends: [{{ address: {} }}, {{ address: {} }}]\n",
        failing[0].addr, failing[1].addr
    )));
    let url = proxy.url("public", "/");
    let requests = 40;
    let mut tasks = Vec::new();
    for _ in 0..requests {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { get(&url).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    let total = attempts.load(Ordering::SeqCst);
    // Without a budget this would be 5 tries per request.
    assert!(
        total < requests * 2,
        "{total} upstream attempts for {requests} requests"
    );
    let m = metrics_text(&proxy).await;
    assert!(
        metric(&m, "sandgate_retry_budget_exhausted_total{pool=\"p\"}").unwrap() > 0.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_headers() {
    let a = named_backend("a").await;
    let yaml = format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\nadmin: {{ address: 127.0.0.1:0 }}\nroutes:\n\
         \x20 - {{ name: api, pool: p, rate_limit: {{ key: 'header:x-api-key', rate: 1/m, burst: 2 }} }}\n\
         pools:\n  p: {{ backends: [{{ address: {} }}] }}\n",
        a.addr
    );
    let proxy = spawn_proxy(&yaml);
    let url = proxy.url("public", "/");
    let r1 = get_with(&url, &[("x-api-key", "alice")]).await;
    assert_eq!(r1.status, 200);
    assert_eq!(r1.header("ratelimit-limit"), Some("2"));
    assert_eq!(r1.header("ratelimit-remaining"), Some("1"));
    let r2 = get_with(&url, &[("x-api-key", "alice")]).await;
    assert_eq!(
        (r2.status.as_u16(), r2.header("ratelimit-remaining")),
        (200, Some("0"))
    );
    let r3 = get_with(&url, &[("x-api-key", "alice")]).await;
    assert_eq!(r3.status, 429);
    assert_eq!(r3.json()["error"], "rate_limited");
    assert_eq!(r3.header("ratelimit-remaining"), Some("0"));
    let retry_after: u64 = r3.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let reset: u64 = r3.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!(reset >= retry_after && reset <= 120, "{reset}");
    // Another key has its own bucket.
    assert_eq!(get_with(&url, &[("x-api-key", "bob")]).await.status, 200);
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "sandgate_rate_limited_total{route=\"api\",scope=\"local\"}"
        ),
        Some(1.0)
    );
    assert!(m.contains("sandgate_requests_total{route=\"api\",code=\"429\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheds_requests_past_max_inflight_and_connections_past_max_connections() {
    let release = Arc::new(tokio::sync::Notify::new());
    let backend = held_backend("held;", "done", Arc::clone(&release)).await;
    let yaml = basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        backend.addr
    ))
    .replace(
        "admin:\n",
        "limits: { max_inflight: 2, max_connections: 4 }\nadmin:\n",
    );
    let proxy = spawn_proxy(&yaml);
    let url = proxy.url("public", "/");
    let b1 = open_stream(&url).await;
    let b2 = open_stream(&url).await;
    let r = get(&url).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    release.notify_one();
    b1.collect().await.unwrap();
    release.notify_one();
    b2.collect().await.unwrap();
    // Slots are free again (each probe pre-releases the held backend).
    wait_until_async(|| async {
        release.notify_one();
        get(&url).await.status == 200
    })
    .await;

    // Connections: four stay open; the fifth is answered 503 and closed.
    let admin = proxy.admin_url("/metrics");
    wait_until_async(|| async {
        metric(
            &get(&admin).await.text(),
            "sandgate_connections_open{listener=\"public\"}",
        ) == Some(0.0)
    })
    .await;
    let addr = proxy.listeners["public"];
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.ok();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .ok();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("Connection: close"));
    drop(held);
    let m = metrics_text(&proxy).await;
    assert!(metric(&m, "sandgate_shed_total{reason=\"inflight\"}").unwrap() >= 1.0);
    assert!(metric(&m, "sandgate_shed_total{reason=\"connections\"}").unwrap() >= 1.0);
}
