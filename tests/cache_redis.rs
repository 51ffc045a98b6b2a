//! The Redis tier with a real `redis-server` on a free loopback port: two sandgate instances
//! share stored responses and purges, and Redis dying mid-load fails no client request.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use common::cache::*;
use common::*;

fn redis_top(redis: &Redis) -> String {
    format!(
        "cache:\n  redis:\n    url: {}\n    key_prefix: sgtest\n    timeout: 100ms\n",
        redis.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_stored_responses_and_purges() {
    let redis = Redis::start();
    let b = shaped_backend(Shape::ok(
        &[("cache-control", "max-age=600"), ("surrogate-key", "fleet")],
        "shared",
    ))
    .await;
    let yaml = cache_config(b.backend.addr, "", "", &redis_top(&redis));
    let a = spawn_caching_proxy(&yaml);
    let bb = spawn_caching_proxy(&yaml);
    // Both instances answer for the same host, as behind an L4 balancer.
    let host = "api.example.com";
    let on = |p: &Proxy, path: &str| p.url("public", path);

    let first = get_with(&on(&a, "/obj"), &[("host", host)]).await;
    assert_eq!(cache_status(&first), "sandgate; fwd=uri-miss; stored");
    // The write to Redis is queued in the background: wait until it lands.
    let key = format!("sgtest:obj:http://{host}/obj");
    wait_until(|| redis.exists(&key)).await;
    let on_b = get_with(&on(&bb, "/obj"), &[("host", host)]).await;
    assert!(
        cache_status(&on_b).starts_with("sandgate; hit"),
        "{}",
        cache_status(&on_b)
    );
    assert_eq!(on_b.text(), "shared");
    assert_eq!(b.hits(), 1, "B hit what A stored");

    // A purge on A reaches B through the invalidation channel, within a second.
    let purge = admin_post(
        &a.admin_url("/admin/cache/purge"),
        Some(TOKEN),
        &format!(r#"{{"urls":["http://{host}/obj"]}}"#),
    )
    .await;
    assert_eq!(purge.status, 200);
    wait_until_async(|| async {
        let m = metrics_text(&bb).await;
        metric(&m, "sandgate_cache_purges_total{kind=\"invalidation\"}").unwrap_or(0.0) >= 1.0
    })
    .await;
    let after = get_with(&on(&bb, "/obj"), &[("host", host)]).await;
    assert_eq!(
        cache_status(&after),
        "sandgate; fwd=uri-miss; stored",
        "purged on B and in Redis"
    );
    assert_eq!(b.hits(), 2);

    // A tag purge on B reaches A.
    wait_until_async(|| async {
        cache_status(&get_with(&on(&a, "/obj"), &[("host", host)]).await).contains("hit")
    })
    .await;
    let by_tag = admin_post(
        &bb.admin_url("/admin/cache/purge"),
        Some(TOKEN),
        r#"{"tags":["fleet"]}"#,
    )
    .await;
    assert_eq!(by_tag.status, 200);
    wait_until_async(|| async {
        !cache_status(&get_with(&on(&a, "/obj"), &[("host", host)]).await).contains("hit")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_fails_no_client_request() {
    let mut redis = Redis::start();
    let b = shaped_backend(Shape::ok(&[("cache-control", "max-age=1")], "ok")).await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", &redis_top(&redis)));
    let url = proxy.url("public", "/load");
    assert_eq!(get(&url).await.status, 200);

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load_workers(&url, 8, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    // Misses after the kill look in Redis and find it gone: they must still be answered.
    let other: Vec<_> = (0..50)
        .map(|i| proxy.url("public", &format!("/after-kill/{i}")))
        .collect();
    for u in &other {
        let g = get(u).await;
        assert_eq!(g.status, 200, "{u}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load_totals(workers).await;
    assert!(ok > 100, "load ran: {ok}");
    assert_eq!(failed, 0, "no client error while Redis died");
    let m = metrics_text(&proxy).await;
    assert!(
        proxy
            .logs
            .count(|v| msg(v).starts_with("redis unavailable"))
            == 1,
        "the state change is logged once: {:?}",
        proxy
            .logs
            .count(|v| msg(v).starts_with("redis unavailable"))
    );
    let errors: f64 = m
        .lines()
        .filter(|l| l.starts_with("sandgate_cache_redis_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors >= 1.0, "errors are counted");

    // Redis comes back on the same port: the instance reconnects and uses it again.
    let _back = Redis::start_on(redis.port);
    wait_until(|| proxy.logs.count(|v| msg(v) == "redis available again") >= 1).await;
}
