//! `/admin/capacity` and the pool gauges: slots, in-flight peaks, the last minute's rate and
//! latency, utilisation by Little's law, and the backends needed for a target.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_follows_the_load_a_pool_carries() {
    let a = slow_backend("a", Duration::from_millis(200)).await;
    let b = slow_backend("b", Duration::from_millis(200)).await;
    let yaml = basic_config(&format!(
        "    max_connections: 4\n    backends: [{{ address: {} }}, {{ address: {} }}]\n",
        a.addr, b.addr
    ));
    let proxy = spawn_proxy(&yaml);

    // Four clients back to back for 2.5 s: about 4 requests in flight all along.
    let url = proxy.url("public", "/");
    let until = Instant::now() + Duration::from_millis(2500);
    let mut clients = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < until && n < 100 {
                assert_eq!(get(&url).await.status, 200);
                n += 1;
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }

    let report = get(&proxy.admin_url("/admin/capacity")).await.json();
    let p = &report["pools"][0];
    assert_eq!(report["target"], 0.7, "{report}");
    assert_eq!(p["pool"], "p");
    assert_eq!(p["slots"], 8, "{p}");
    assert_eq!(p["backends"], 2);
    assert_eq!(p["in_flight"], 0);
    assert_eq!(p["queue_depth"], 0);
    let peak = p["peak_1m"].as_u64().expect("peak");
    assert!((3..=4).contains(&peak), "{p}");
    assert!(p["peak_15m"].as_u64() >= Some(peak));
    let p50 = p["latency_p50_ms"].as_f64().expect("p50");
    assert!((200.0..=400.0).contains(&p50), "{p}");
    assert!(p["request_rate"].as_f64().is_some_and(|r| r > 0.0), "{p}");
    // Little's law: about 4 of 8 slots busy.
    let concurrency = p["concurrency"].as_f64().expect("concurrency");
    assert!((2.8..=4.4).contains(&concurrency), "{p}");
    let u = p["utilisation"].as_f64().expect("utilisation");
    assert!((u - concurrency / 8.0).abs() < 1e-9, "{p}");
    // 4 slots per backend: 70% of them is 2.8, so 2 backends hold ~4.
    assert_eq!(p["backends_needed"], 2, "{p}");
    let strict = get(&proxy.admin_url("/admin/capacity?target=25%25"))
        .await
        .json();
    let needed = strict["pools"][0]["backends_needed"]
        .as_u64()
        .expect("needed");
    assert_eq!(needed, (concurrency / 1.0).ceil() as u64, "{strict}");
    assert_eq!(strict["target"], 0.25);

    let bad = get(&proxy.admin_url("/admin/capacity?target=150%25")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["error"], "bad_target");

    // The gauges follow once a second.
    wait_until_async(|| async {
        let text = metrics_text(&proxy).await;
        metric(&text, "sandgate_pool_slots{pool=\"p\"}") == Some(8.0)
            && metric(&text, "sandgate_pool_utilisation{pool=\"p\"}").is_some_and(|v| v > 0.2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_without_caps_has_no_utilisation() {
    let a = named_backend("a").await;
    let yaml = basic_config(&format!("    backends: [{{ address: {} }}]\n", a.addr));
    let proxy = spawn_proxy(&yaml);
    assert_eq!(get(&proxy.url("public", "/")).await.status, 200);
    let report = get(&proxy.admin_url("/admin/capacity")).await.json();
    let p = &report["pools"][0];
    assert!(p["slots"].is_null(), "{p}");
    assert!(p["utilisation"].is_null(), "{p}");
    assert!(p["backends_needed"].is_null(), "{p}");
}
