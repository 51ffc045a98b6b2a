//! Fleet-wide rate limits: three sandgate processes share one `scope: global` limit through a
//! real `redis-server`, and keep answering (200 or 429, nothing else) once Redis is killed.

mod common;

use std::time::Duration;

use common::cache::Redis;
use common::*;
use http::Request;
use http_body_util::BodyExt;

fn config(backend: std::net::SocketAddr, redis: &Redis) -> String {
    format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\nadmin: {{ address: 127.0.0.1:0 }}\n\
         cache:\n  redis: {{ url: '{}', key_prefix: rltest, timeout: 100ms }}\n\
         routes:\n  - name: api\n    pool: p\n    rate_limit: {{ key: 'header:x-api-key', rate: 50/s, scope: global }}\n\
         pools:\n  p: {{ backends: [{{ address: {backend} }}] }}\n",
        redis.url()
    )
}

/// What paced load on one instance came to.
#[derive(Default, Debug)]
struct Tally {
    ok: u32,
    limited: u32,
    other: Vec<String>,
}

/// One request every `every` to `url` for `ticks` ticks, all with the same key.
fn paced(url: String, every: Duration, ticks: u32) -> tokio::task::JoinHandle<Tally> {
    tokio::spawn(async move {
        let c = client();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut t = Tally::default();
        for _ in 0..ticks {
            tick.tick().await;
            let req = Request::get(&url)
                .header("x-api-key", "fleet")
                .body(empty())
                .expect("request");
            match tokio::time::timeout(Duration::from_secs(5), c.request(req)).await {
                Ok(Ok(r)) => {
                    let status = r.status().as_u16();
                    let _ = r.into_body().collect().await;
                    match status {
                        200 => t.ok += 1,
                        429 => t.limited += 1,
                        s => t.other.push(format!("status {s}")),
                    }
                }
                Ok(Err(e)) => t.other.push(format!("error {e}")),
                Err(_) => t.other.push("timeout".to_owned()),
            }
        }
        t
    })
}

async fn run(proxies: &[Proxy], every: Duration, ticks: u32) -> Vec<Tally> {
    let tasks: Vec<_> = proxies
        .iter()
        .map(|p| paced(p.url("public", "/"), every, ticks))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("load task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_hold_one_limit_and_fall_back_when_redis_dies() {
    let mut redis = Redis::start();
    let backend = named_backend("b").await;
    let yaml = config(backend.addr, &redis);
    let proxies: Vec<Proxy> = (0..3).map(|_| spawn_proxy(&yaml)).collect();
    // Each instance announces itself every 100 ms; let all three see one another.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 150 requests/s offered (50/s on each instance) against 50/s for the fleet, for 10 s.
    let tallies = run(&proxies, Duration::from_millis(20), 500).await;
    let passed: u32 = tallies.iter().map(|t| t.ok).sum();
    let limited: u32 = tallies.iter().map(|t| t.limited).sum();
    eprintln!("fleet over 10 s: {passed} passed, {limited} limited");
    assert!(
        tallies.iter().all(|t| t.other.is_empty()),
        "only 200 and 429: {tallies:?}"
    );
    assert!(
        (450..=550).contains(&passed),
        "45-55 requests/s over 10 s for the fleet, got {passed} passed, {limited} limited: {tallies:?}"
    );
    assert!(
        tallies.iter().all(|t| t.ok > 0 && t.limited > 0),
        "every instance passes its share and refuses the rest: {tallies:?}"
    );
    let m = metrics_text(&proxies[0]).await;
    assert!(
        metric(
            &m,
            "sandgate_rate_limited_total{route=\"api\",scope=\"global\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{m}"
    );

    // Redis dies: the limit goes on locally at 50/s / 3 instances, and no request fails.
    redis.kill();
    let tallies = run(&proxies, Duration::from_millis(20), 150).await;
    assert!(
        tallies.iter().all(|t| t.other.is_empty()),
        "with Redis gone, still only 200 and 429: {tallies:?}"
    );
    let passed: u32 = tallies.iter().map(|t| t.ok).sum();
    assert!(passed > 0, "the fallback passes requests: {tallies:?}");
    for p in &proxies {
        let m = metrics_text(p).await;
        assert!(
            metric(&m, "sandgate_rate_limit_fallback_total{route=\"api\"}").unwrap_or(0.0) > 0.0,
            "{m}"
        );
    }
    // Logged once per instance, not once per request.
    let warned = proxies[0]
        .logs
        .count(|v| msg(v).contains("Redis unreachable, limiting locally"));
    assert_eq!(warned, 1);
}
