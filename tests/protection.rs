//! Protecting the backends: health checks (failure, recovery, panic mode), circuit breakers,
//! and concurrency caps with the FIFO queue (retries, rate limits and shedding are in
//! `limits.rs`). Faults are injected by the tests; waits are bounded and driven by signals.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::{Response, StatusCode};

/// A backend whose `/healthz` answers 200 or 503 as `up` says, and whose other paths answer
/// `name`.
async fn checked_backend(name: &'static str, up: Arc<AtomicBool>) -> Backend {
    spawn_backend(move |req| {
        let up = Arc::clone(&up);
        Box::pin(async move {
            if req.uri().path() == "/healthz" {
                let mut r = Response::new(full("ok"));
                if !up.load(Ordering::SeqCst) {
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                }
                return r;
            }
            Response::new(full(name))
        })
    })
    .await
}

const FAST_CHECKS: &str = "    health_check: { path: /healthz, interval: 200ms, jitter: 0%, timeout: 150ms, healthy_threshold: 1, unhealthy_threshold: 1 }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_under_load_with_retries_loses_no_request() {
    let up = Arc::new(AtomicBool::new(true));
    let a = checked_backend("a", Arc::clone(&up)).await;
    let b = checked_backend("b", Arc::clone(&up)).await;
    let c = checked_backend("c", Arc::clone(&up)).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "{FAST_CHECKS}    retry: {{ attempts: 3, budget: 100%, backoff: {{ base: 5ms, max: 20ms }} }}\n    backends:\n      - {{ address: {} }}\n      - {{ address: {} }}\n      - {{ address: {} }}\n",
        a.addr, b.addr, c.addr
    )));
    let url = proxy.url("public", "/work");
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load_workers(&url, 4, &stop);
    // Let traffic flow, then kill b.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.hits() > 0);
    let killed = Instant::now();
    b.stop();
    let line = tokio::task::block_in_place(|| {
        proxy.logs.wait_for(Duration::from_secs(10), |v| {
            msg(v) == "backend is unhealthy" && v["backend"] == b.addr.to_string()
        })
    })
    .expect("the dead backend is marked unhealthy");
    let detected = killed.elapsed();
    assert!(
        detected < Duration::from_millis(200 + 150 + 1000),
        "took {detected:?}"
    );
    assert_eq!(line["pool"], "p");

    // From now on no request is even tried on b.
    let b_label = format!(
        "sandgate_upstream_requests_total{{pool=\"p\",backend=\"{}\",code=\"connect_error\"}}",
        b.addr
    );
    let before = metric(&metrics_text(&proxy).await, &b_label).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load_totals(workers).await;
    let after = metric(&metrics_text(&proxy).await, &b_label).unwrap_or(0.0);
    assert_eq!(before, after, "requests still reached the dead backend");
    assert!(ok > 100, "{ok}");
    let bad: Vec<_> = proxy
        .logs
        .all()
        .into_iter()
        .filter(|v| v["target"] == "sandgate::access" && v["status"] != 200)
        .collect();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {bad:#?}",
        ok + failed
    );
    let admin = get(&proxy.admin_url("/admin/backends")).await.json();
    let dead = &admin["pools"][0]["backends"][1];
    assert_eq!(dead["healthy"], false);
    assert!(
        dead["out"]
            .as_str()
            .unwrap()
            .starts_with("unhealthy: last check failed: connect"),
        "{dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_gets_504_and_its_breaker_opens() {
    let hang = slow_backend("late", Duration::from_secs(30)).await;
    let good = named_backend("good").await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    timeouts: {{ response_header: 200ms }}\n    circuit_breaker: {{ consecutive_failures: 2, open_for: 1m }}\n    backends:\n      - {{ address: {} }}\n      - {{ address: {} }}\n",
        hang.addr, good.addr
    )));
    let url = proxy.url("public", "/");
    let mut timeouts = 0;
    for _ in 0..4 {
        let r = get(&url).await;
        match r.status.as_u16() {
            504 => timeouts += 1,
            200 => assert_eq!(r.text(), "good"),
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(
        timeouts, 2,
        "round-robin sends every other request to the hanging backend"
    );
    // Open: every request now goes to the good backend, without waiting.
    for _ in 0..6 {
        assert_eq!(get(&url).await.text(), "good");
    }
    let m = metrics_text(&proxy).await;
    let h = hang.addr.to_string();
    assert_eq!(
        metric(
            &m,
            &format!("sandgate_breaker_state{{pool=\"p\",backend=\"{h}\"}}")
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "sandgate_breaker_transitions_total{{pool=\"p\",backend=\"{h}\",to=\"open\"}}"
            )
        ),
        Some(1.0)
    );
    let admin = get(&proxy.admin_url("/admin/backends")).await.json();
    let b = &admin["pools"][0]["backends"][0];
    assert_eq!(b["breaker"], "open");
    let out = b["out"].as_str().unwrap();
    assert!(
        out.starts_with("breaker open for another")
            && out.contains("2 consecutive failures (last: timeout)"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_health_checks_pass_again() {
    let up_a = Arc::new(AtomicBool::new(true));
    let up_b = Arc::new(AtomicBool::new(true));
    let a = checked_backend("a", Arc::clone(&up_a)).await;
    let b = checked_backend("b", Arc::clone(&up_b)).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "{}    backends:\n      - {{ address: {} }}\n      - {{ address: {} }}\n",
        FAST_CHECKS.replace("healthy_threshold: 1,", "healthy_threshold: 2,"),
        a.addr,
        b.addr
    )));
    let url = proxy.url("public", "/");
    up_b.store(false, Ordering::SeqCst);
    let wait_log = |m: &'static str| {
        let addr = b.addr.to_string();
        tokio::task::block_in_place(|| {
            proxy.logs.wait_for(Duration::from_secs(10), |v| {
                msg(v) == m && v["backend"] == addr
            })
        })
    };
    wait_log("backend is unhealthy").expect("b goes down");
    for _ in 0..6 {
        assert_eq!(get(&url).await.text(), "a");
    }
    up_b.store(true, Ordering::SeqCst);
    wait_log("backend is healthy again").expect("b comes back after two passing checks");
    let mut seen_b = false;
    for _ in 0..6 {
        seen_b |= get(&url).await.text() == "b";
    }
    assert!(seen_b);
    let m = metrics_text(&proxy).await;
    let bl = b.addr.to_string();
    assert_eq!(
        metric(
            &m,
            &format!("sandgate_backend_healthy{{pool=\"p\",backend=\"{bl}\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(metric(&m, &format!("sandgate_backend_transitions_total{{pool=\"p\",backend=\"{bl}\",to=\"unhealthy\"}}")), Some(1.0));
    assert_eq!(
        metric(
            &m,
            &format!(
                "sandgate_backend_transitions_total{{pool=\"p\",backend=\"{bl}\",to=\"healthy\"}}"
            )
        ),
        Some(1.0)
    );
    assert!(
        metric(
            &m,
            &format!("sandgate_health_checks_total{{pool=\"p\",backend=\"{bl}\",result=\"fail\"}}")
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &m,
            &format!("sandgate_health_checks_total{{pool=\"p\",backend=\"{bl}\",result=\"pass\"}}")
        )
        .unwrap()
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_unhealthy_gives_503_and_panic_mode_routes_to_all() {
    let down = Arc::new(AtomicBool::new(false));
    let up = Arc::new(AtomicBool::new(true));
    let a = checked_backend("a", Arc::clone(&up)).await;
    let b = checked_backend("b", Arc::clone(&down)).await;
    let c = checked_backend("c", Arc::clone(&down)).await;
    let hc = FAST_CHECKS.replace(
        "unhealthy_threshold: 1 }",
        "unhealthy_threshold: 1, initial_state: unhealthy }",
    );
    // Pool `strict`: no panic mode. Pool `lenient`: panic below 50% healthy.
    let yaml = format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\nadmin: {{ address: 127.0.0.1:0 }}\nroutes:\n\
         \x20 - {{ name: strict, match: {{ path_prefix: /strict }}, pool: strict }}\n\
         \x20 - {{ name: lenient, pool: lenient }}\npools:\n\
         \x20 strict:\n{hc}    backends: [{{ address: {} }}]\n\
         \x20 lenient:\n{}    backends: [{{ address: {} }}, {{ address: {} }}, {{ address: {} }}]\n",
        b.addr,
        hc.replace("initial_state: unhealthy }", "initial_state: unhealthy, panic_threshold: 50% }"),
        a.addr, b.addr, c.addr
    );
    let proxy = spawn_proxy(&yaml);
    // Before any check passes, `strict` has no usable backend.
    let r = get(&proxy.url("public", "/strict")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_backend");
    assert_eq!(r.header("retry-after"), Some("1"));
    let ready = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 503);
    assert!(ready.json()["pools_without_usable_backend"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "strict"));

    // `lenient`: a passes its checks; 1 of 3 healthy is below 50%, so all three serve.
    let a_addr = a.addr.to_string();
    tokio::task::block_in_place(|| {
        proxy.logs.wait_for(Duration::from_secs(10), |v| {
            msg(v) == "backend is healthy again" && v["backend"] == a_addr
        })
    })
    .expect("a becomes healthy");
    proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| msg(v).starts_with("panic mode"))
        .expect("panic mode is logged");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..9 {
        let r = get(&proxy.url("public", "/x")).await;
        assert_eq!(r.status, 200);
        seen.insert(r.text());
    }
    assert_eq!(
        seen.len(),
        3,
        "panic mode routes to every backend: {seen:?}"
    );
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(&m, "sandgate_panic_mode{pool=\"lenient\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sandgate_panic_mode{pool=\"strict\"}"),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_serves_waiters_in_order_and_rejects_when_full() {
    let release = Arc::new(tokio::sync::Notify::new());
    let order = Arc::new(Mutex::new(Vec::new()));
    let (r, o) = (Arc::clone(&release), Arc::clone(&order));
    let backend = spawn_backend(move |req| {
        let (r, o) = (Arc::clone(&r), Arc::clone(&o));
        Box::pin(async move {
            let tag = req
                .headers()
                .get("x-order")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?")
                .to_owned();
            o.lock().unwrap().push(tag.clone());
            r.notified().await;
            Response::new(full(tag))
        })
    })
    .await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    max_connections: 1\n    queue: {{ max: 2, timeout: 10s }}\n    backends: [{{ address: {} }}]\n",
        backend.addr
    )));
    let url = proxy.url("public", "/");
    let admin = proxy.admin_url("/admin/backends");
    let depth = || async {
        get(&admin).await.json()["pools"][0]["queue_depth"]
            .as_u64()
            .unwrap()
    };
    let send_tagged = |tag: &'static str| {
        let url = url.clone();
        tokio::spawn(async move { get_with(&url, &[("x-order", tag)]).await })
    };
    let first = send_tagged("1");
    wait_until(|| backend.hits() == 1).await;
    let second = send_tagged("2");
    wait_until_async(|| async { depth().await == 1 }).await;
    let third = send_tagged("3");
    wait_until_async(|| async { depth().await == 2 }).await;

    // A fourth finds the queue full.
    let fourth = get_with(&url, &[("x-order", "4")]).await;
    assert_eq!(fourth.status, 503);
    assert_eq!(fourth.json()["error"], "queue_full");
    assert!(fourth.header("retry-after").is_some());

    for (i, h) in [first, second, third].into_iter().enumerate() {
        release.notify_one();
        let got = h.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), (i + 1).to_string());
    }
    assert_eq!(*order.lock().unwrap(), ["1", "2", "3"]);
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "sandgate_queue_rejected_total{pool=\"p\",reason=\"full\",priority=\"normal\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sandgate_queue_depth{pool=\"p\",priority=\"normal\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m,
            "sandgate_queue_wait_seconds_count{pool=\"p\",priority=\"normal\"}"
        ),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeout_and_client_disconnect_leave_the_queue() {
    let release = Arc::new(tokio::sync::Notify::new());
    let backend = held_backend("held;", "done", Arc::clone(&release)).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    max_connections: 1\n    queue: {{ max: 5, timeout: 300ms }}\n    backends: [{{ address: {} }}]\n",
        backend.addr
    )));
    let url = proxy.url("public", "/");
    let body = open_stream(&url).await; // holds the only slot
    let r = get(&url).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "queue_timeout");

    // A client that gives up while queued leaves at once.
    let waiter = tokio::spawn({
        let url = url.clone();
        async move { get(&url).await }
    });
    let admin = proxy.admin_url("/admin/backends");
    wait_until_async(|| async { get(&admin).await.json()["pools"][0]["queue_depth"] == 1 }).await;
    waiter.abort();
    wait_until_async(|| async { get(&admin).await.json()["pools"][0]["queue_depth"] == 0 }).await;
    release.notify_one();
    drop(body);
}
