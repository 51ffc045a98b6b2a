//! Runtime backend control through the admin API: drain with wait-drained, weight, disable,
//! a forced breaker; overrides survive reloads, DELETE clears them, and every change needs
//! the token.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::cache::{admin_post, spawn_caching_proxy, TOKEN};
use common::*;
use http::Request;
use http_body_util::Full;

fn config(strategy: &str, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n  token_file: token\n\
         routes:\n  - name: all\n    pool: p\n\
         pools:\n  p:\n    strategy: {strategy}\n    backends: [{{ address: {a} }}, {{ address: {b} }}]\n"
    )
}

/// Which backend answered each of `n` GETs (by body).
async fn spread(proxy: &Proxy, n: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for _ in 0..n {
        let got = get(&proxy.url("public", "/")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        *seen.entry(got.text()).or_default() += 1;
    }
    seen
}

async fn delete(url: &str, token: Option<&str>) -> Got {
    let mut b = Request::delete(url);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    send(&client(), b.body(Full::new(Bytes::new())).unwrap()).await
}

fn backend_view(backends: &serde_json::Value, addr: SocketAddr) -> serde_json::Value {
    backends["pools"][0]["backends"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["address"] == addr.to_string()))
        .cloned()
        .unwrap_or_else(|| panic!("{addr} in {backends}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_in_flight_work_and_survives_a_reload() {
    let release = Arc::new(tokio::sync::Notify::new());
    let a = held_backend("a-first", "a-rest", Arc::clone(&release)).await;
    let b = named_backend("b").await;
    let yaml = config("round_robin", a.addr, b.addr);
    let proxy = spawn_caching_proxy(&yaml);
    let control = proxy.admin_url(&format!("/admin/pools/p/backends/{}", a.addr));

    // A request held open on `a`, then `a` drained.
    let mut held = None;
    for _ in 0..2 {
        let mut body = open_stream(&proxy.url("public", "/")).await;
        if next_chunk(&mut body).await == "a-first" {
            held = Some(body);
            break;
        }
    }
    let held = held.expect("a request on a");
    let refused = admin_post(&control, None, r#"{"drain": true}"#).await;
    assert_eq!(refused.status, 401, "changes need the token");
    let got = admin_post(&control, Some(TOKEN), r#"{"drain": true}"#).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.json()["override"]["drain"], true);
    assert_eq!(
        spread(&proxy, 6).await,
        HashMap::from([("b".to_owned(), 6)])
    );

    // wait-drained answers only once the held request is done.
    let wait = get(&format!("{control}/wait-drained?timeout=200ms")).await;
    assert_eq!(wait.status, 504, "{}", wait.text());
    assert_eq!(wait.json()["inflight"], 1);
    let waiter = tokio::spawn({
        let url = format!("{control}/wait-drained?timeout=10s");
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    release.notify_one();
    assert_eq!(rest_of(held).await, Bytes::from("a-rest"));
    let done = waiter.await.unwrap();
    assert_eq!(done.status, 200, "{}", done.text());
    assert_eq!(done.json()["drained"], true);

    // A reload keeps the override; /admin/backends shows it.
    proxy.reload(&yaml.replace("round_robin", "least_connections"));
    let view = backend_view(
        &get(&proxy.admin_url("/admin/backends")).await.json(),
        a.addr,
    );
    assert_eq!(view["override"]["drain"], true, "{view}");
    assert_eq!(view["usable"], false);
    assert_eq!(
        spread(&proxy, 4).await,
        HashMap::from([("b".to_owned(), 4)])
    );

    // DELETE clears it (with the token only).
    assert_eq!(delete(&control, None).await.status, 401);
    let cleared = delete(&control, Some(TOKEN)).await;
    assert_eq!(cleared.status, 200, "{}", cleared.text());
    assert!(cleared.json()["override"].is_null());
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(&m, "sandgate_admin_actions_total{action=\"drain\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sandgate_admin_actions_total{action=\"clear\"}"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_disable_and_a_forced_breaker_apply_at_once() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let proxy = spawn_caching_proxy(&config("weighted", a.addr, b.addr));
    let control = proxy.admin_url(&format!("/admin/pools/p/backends/{}", a.addr));
    assert_eq!(
        spread(&proxy, 10).await,
        HashMap::from([("a".to_owned(), 5), ("b".to_owned(), 5)])
    );

    let got = admin_post(&control, Some(TOKEN), r#"{"weight": 3}"#).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(
        spread(&proxy, 40).await,
        HashMap::from([("a".to_owned(), 30), ("b".to_owned(), 10)])
    );
    let view = backend_view(
        &get(&proxy.admin_url("/admin/backends")).await.json(),
        a.addr,
    );
    assert_eq!(view["weight"], 3);

    for (body, want) in [
        (
            r#"{"disabled": true}"#,
            HashMap::from([("b".to_owned(), 6)]),
        ),
        (
            r#"{"disabled": false, "breaker": "open"}"#,
            HashMap::from([("b".to_owned(), 6)]),
        ),
    ] {
        let got = admin_post(&control, Some(TOKEN), body).await;
        assert_eq!(got.status, 200, "{body}: {}", got.text());
        assert_eq!(spread(&proxy, 6).await, want, "{body}");
    }
    let got = admin_post(&control, Some(TOKEN), r#"{"breaker": "auto"}"#).await;
    assert_eq!(got.status, 200);
    assert!(spread(&proxy, 8).await.contains_key("a"));

    for bad in [
        r#"{"weight": 0}"#,
        r#"{"breaker": "ajar"}"#,
        r#"{"drian": true}"#,
    ] {
        let got = admin_post(&control, Some(TOKEN), bad).await;
        assert_eq!(got.status, 400, "{bad}: {}", got.text());
    }
    let nowhere = proxy.admin_url("/admin/pools/p/backends/127.0.0.1:1");
    assert_eq!(
        admin_post(&nowhere, Some(TOKEN), r#"{"drain": true}"#)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_s_affinity_keys_move_and_come_back() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let yaml = config("affinity", a.addr, b.addr).replace(
        "    strategy: affinity\n",
        "    strategy: affinity\n    affinity: { key: header:x-session }\n",
    );
    let proxy = spawn_caching_proxy(&yaml);
    let url = proxy.url("public", "/");
    let who = |key: String| {
        let url = url.clone();
        async move { get_with(&url, &[("x-session", &key)]).await.text() }
    };
    let home = who("s-1".into()).await;
    let addr = if home == "a" { a.addr } else { b.addr };
    let control = proxy.admin_url(&format!("/admin/pools/p/backends/{addr}"));
    assert_eq!(
        admin_post(&control, Some(TOKEN), r#"{"drain": true}"#)
            .await
            .status,
        200
    );
    let moved = who("s-1".into()).await;
    assert_ne!(moved, home, "the key moves off the drained backend");
    assert_eq!(who("s-1".into()).await, moved, "and stays where it moved");
    assert_eq!(
        admin_post(&control, Some(TOKEN), r#"{"drain": false}"#)
            .await
            .status,
        200
    );
    assert_eq!(
        who("s-1".into()).await,
        home,
        "it comes back after the drain"
    );
}
