//! Strategies end to end through a real sandgate: least-connections against a slow backend,
//! affinity across a reload and across two processes, sticky cookies, geo decisions.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_less_to_a_slow_backend() {
    let slow = slow_backend("slow", Duration::from_millis(150)).await;
    let (f1, f2) = (named_backend("fast1").await, named_backend("fast2").await);
    let proxy = spawn_proxy(&basic_config(&format!(
        "    strategy: least_connections\n    backends:\n      - {{ address: {} }}\n      - {{ address: {} }}\n      - {{ address: {} }}\n",
        slow.addr, f1.addr, f2.addr
    )));
    let url = proxy.url("public", "/");
    // 12 concurrent clients, 20 requests each (bounded).
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut counts: HashMap<String, u32> = HashMap::new();
            for _ in 0..20 {
                *counts.entry(get(&url).await.text()).or_default() += 1;
            }
            counts
        }));
    }
    let mut total: HashMap<String, u32> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    let slow_share = f64::from(total["slow"]) / 240.0;
    // Round-robin would give it a third.
    assert!(
        slow_share < 0.15,
        "slow backend got {slow_share:.2} of requests: {total:?}"
    );
}

fn affinity_config(addrs: &[std::net::SocketAddr]) -> String {
    let mut y = String::from("    strategy: affinity\n    affinity: { key: 'header:x-sandbox-session', fallback: round_robin }\n    backends:\n");
    for a in addrs {
        y.push_str(&format!("      - {{ address: {a} }}\n"));
    }
    basic_config(&y)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_holds_across_a_reload_and_two_processes() {
    let names = ["s0", "s1", "s2", "s3", "s4"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(named_backend(n).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let one = spawn_proxy(&affinity_config(&addrs));
    let two = spawn_proxy(&affinity_config(&addrs));
    let mut map = HashMap::new();
    for k in 0..40 {
        let key = format!("session-{k}");
        let a = get_with(&one.url("public", "/"), &[("x-sandbox-session", &key)])
            .await
            .text();
        let b = get_with(&two.url("public", "/"), &[("x-sandbox-session", &key)])
            .await
            .text();
        assert_eq!(a, b, "two sandgate processes disagree on {key}");
        map.insert(key, a);
    }
    let distinct: std::collections::HashSet<_> = map.values().collect();
    assert!(distinct.len() >= 3, "keys should spread: {distinct:?}");

    assert_eq!(one.sighup(), Reload::Applied(2));
    for (key, want) in &map {
        assert_eq!(
            &get_with(&one.url("public", "/"), &[("x-sandbox-session", key)])
                .await
                .text(),
            want
        );
    }
    // Remove s2: only its sessions move.
    let fewer: Vec<_> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(one.reload(&affinity_config(&fewer)), Reload::Applied(3));
    for (key, was) in &map {
        let now = get_with(&one.url("public", "/"), &[("x-sandbox-session", key)])
            .await
            .text();
        if was != "s2" {
            assert_eq!(&now, was, "{key} moved although its backend stayed");
        } else {
            assert_ne!(now, "s2");
        }
    }
    let m = get(&one.admin_url("/metrics")).await.text();
    assert!(
        m.contains("sandgate_affinity_total{pool=\"p\",result=\"hit\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_through_the_proxy() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cookie.key"),
        "this-is-a-32-byte-or-longer-sealing-key\n",
    )
    .unwrap();
    let pool = |addrs: &[std::net::SocketAddr]| {
        let mut y = String::from(
            "    strategy: affinity\n    affinity:\n      cookie: { name: sg_route, max_age: 10m, secret_file: cookie.key }\n      on_unusable: repin\n    backends:\n",
        );
        for x in addrs {
            y.push_str(&format!("      - {{ address: {x} }}\n"));
        }
        basic_config(&y)
    };
    let proxy = spawn_proxy_in(dir, &pool(&[a.addr, b.addr]));
    let url = proxy.url("public", "/");
    let first = get(&url).await;
    let set = first
        .header("set-cookie")
        .expect("sticky cookie issued")
        .to_owned();
    assert!(
        set.starts_with("sg_route=") && set.contains("Max-Age=600") && set.contains("HttpOnly")
    );
    let pinned = first.text();
    let cookie = set.split(';').next().unwrap().to_owned();
    for _ in 0..6 {
        let r = get_with(&url, &[("cookie", &cookie)]).await;
        assert_eq!(r.text(), pinned);
        assert!(r.header("set-cookie").is_none());
    }
    // Without the cookie, round-robin spreads new sessions.
    let other = get(&url).await.text();
    assert_ne!(other, pinned);

    // Remove the pinned backend: the session is re-pinned with a fresh cookie.
    let keep = if pinned == "a" { b.addr } else { a.addr };
    assert_eq!(proxy.reload(&pool(&[keep])), Reload::Applied(2));
    let r = get_with(&url, &[("cookie", &cookie)]).await;
    assert_ne!(r.text(), pinned);
    assert!(
        r.header("set-cookie").is_some(),
        "re-pinned sessions get a new cookie"
    );
    let m = get(&proxy.admin_url("/metrics")).await.text();
    for result in ["hit", "new", "repinned"] {
        assert!(
            m.contains(&format!(
                "sandgate_affinity_total{{pool=\"p\",result=\"{result}\"}}"
            )),
            "{result}: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_routes_by_region_and_counts_decisions() {
    let (eu, us) = (named_backend("eu").await, named_backend("us").await);
    let proxy = spawn_proxy(&basic_config(&format!(
        "    strategy: geo\n    geo:\n      client_region: [{{ header: x-client-region }}]\n      trusted_proxies: [127.0.0.0/8]\n      failover: {{ eu-central: [eu-west] }}\n    backends:\n      - {{ address: {}, region: eu-west }}\n      - {{ address: {}, region: us-east }}\n",
        eu.addr, us.addr
    )));
    let url = proxy.url("public", "/");
    for _ in 0..3 {
        assert_eq!(
            get_with(&url, &[("x-client-region", "us-east")])
                .await
                .text(),
            "us"
        );
        assert_eq!(
            get_with(&url, &[("x-client-region", "eu-central")])
                .await
                .text(),
            "eu"
        );
    }
    get(&url).await;
    let line = proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| v["decision"] == "geo:failover")
        .expect("the decision is in the access log");
    assert_eq!(line["target"], "sandgate::access");
    let m = get(&proxy.admin_url("/metrics")).await.text();
    assert!(
        m.contains("sandgate_geo_decisions_total{pool=\"p\",result=\"local\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("sandgate_geo_decisions_total{pool=\"p\",result=\"failover\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("sandgate_geo_decisions_total{pool=\"p\",result=\"unknown\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_shows_effective_weight_during_slow_start() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let pool = |addrs: &[std::net::SocketAddr]| {
        let mut y = String::from("    strategy: weighted\n    slow_start: 10m\n    backends:\n");
        for x in addrs {
            y.push_str(&format!("      - {{ address: {x}, weight: 10 }}\n"));
        }
        basic_config(&y)
    };
    let proxy = spawn_proxy(&pool(&[a.addr]));
    assert_eq!(proxy.reload(&pool(&[a.addr, b.addr])), Reload::Applied(2));
    let j = get(&proxy.admin_url("/admin/backends")).await.json();
    let bs = &j["pools"][0]["backends"];
    assert_eq!(
        bs[0]["effective_weight"], 10.0,
        "present since start: full weight"
    );
    let ramping = bs[1]["effective_weight"].as_f64().unwrap();
    assert!(
        (1.0..1.5).contains(&ramping),
        "just added: about 10% of 10, got {ramping}"
    );
    assert_eq!(bs[1]["weight"], 10);
    assert!(bs[1]["inflight"].is_u64());
}
