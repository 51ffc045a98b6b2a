//! `Sandgate-Explain: 1`: the route, pool, strategy and its reasons, skipped backends and
//! why, the tries and the cache status, for clients in `admin.explain_from` only.

mod common;

use common::cache::{admin_post, spawn_caching_proxy, TOKEN};
use common::*;

fn explained(got: &Got) -> String {
    got.header("sandgate-explain")
        .unwrap_or_else(|| panic!("no Sandgate-Explain: {:?}", got.headers))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_tries_the_skipped_backends_and_why() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let dead = closed_port();
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n  token_file: token\n\
         routes:\n  - name: all\n    pool: p\n\
         pools:\n  p:\n    strategy: round_robin\n    retry: {{ attempts: 2, backoff: {{ base: 1ms, max: 1ms }} }}\n\
         \x20   backends: [{{ address: {dead} }}, {{ address: {} }}, {{ address: {} }}]\n",
        a.addr, b.addr
    );
    let proxy = spawn_caching_proxy(&yaml);
    let url = proxy.url("public", "/");
    let plain = get(&url).await;
    assert!(
        plain.header("sandgate-explain").is_none(),
        "only when asked"
    );

    // `b` drained: it is skipped, and says why.
    let control = proxy.admin_url(&format!("/admin/pools/p/backends/{}", b.addr));
    assert_eq!(
        admin_post(&control, Some(TOKEN), r#"{"drain": true}"#)
            .await
            .status,
        200
    );
    let mut retried = None;
    for _ in 0..4 {
        let got = get_with(&url, &[("sandgate-explain", "1")]).await;
        assert_eq!(got.status, 200);
        let text = explained(&got);
        assert!(
            text.starts_with("route=all; pool=p strategy=round_robin; try 1: "),
            "{text}"
        );
        assert!(
            text.contains(&format!("{} (drained by the admin API)", b.addr)),
            "{text}"
        );
        assert!(text.ends_with("status=200"), "{text}");
        if text.contains("try 2:") {
            retried = Some(text);
        }
    }
    let text = retried.expect("one request met the dead backend first");
    assert!(
        text.contains(&format!("try 1: {dead} by round_robin (next in rotation)")),
        "{text}"
    );
    assert!(text.contains("-> connect_error"), "{text}");
    assert!(
        text.contains(&format!("try 2: {} by round_robin", a.addr)),
        "{text}"
    );
    assert!(text.contains(&format!("{dead} (tried already)")), "{text}");
    assert!(text.contains("-> 200"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_the_affinity_key_and_least_connection_scores() {
    let a = named_backend("a").await;
    let b = named_backend("b").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         routes:\n  - {{ name: s, pool: s, match: {{ path_prefix: /s }} }}\n  - {{ name: l, pool: l }}\n\
         pools:\n  s:\n    strategy: affinity\n    affinity: {{ key: 'header:x-session' }}\n\
         \x20   backends: [{{ address: {a} }}, {{ address: {b} }}]\n\
         \x20 l:\n    strategy: least_connections\n    backends: [{{ address: {a} }}, {{ address: {b}, weight: 2 }}]\n",
        a = a.addr,
        b = b.addr
    );
    let proxy = spawn_proxy(&yaml);
    let got = get_with(
        &proxy.url("public", "/s"),
        &[("sandgate-explain", "1"), ("x-session", "alice")],
    )
    .await;
    let text = explained(&got);
    assert!(text.contains("pool=s strategy=affinity"), "{text}");
    assert!(
        text.contains("by affinity:hit (key header:x-session hashes to "),
        "{text}"
    );
    assert!(text.contains("on_unusable repin"), "{text}");

    let got = get_with(&proxy.url("public", "/l"), &[("sandgate-explain", "1")]).await;
    let text = explained(&got);
    assert!(text.contains("lowest (in-flight+1)/weight: "), "{text}");
    assert!(text.contains(&format!("{}=1.00", a.addr)), "{text}");
    assert!(text.contains(&format!("{}=0.50", b.addr)), "{text}");
    assert!(
        text.contains(&format!("try 1: {} by least_connections", b.addr)),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_is_for_the_listed_clients_only() {
    let a = named_backend("a").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n  explain_from: [10.0.0.0/8]\n\
         routes:\n  - name: all\n    pool: p\n\
         pools:\n  p:\n    backends: [{{ address: {} }}]\n",
        a.addr
    );
    let proxy = spawn_proxy(&yaml);
    let got = get_with(&proxy.url("public", "/"), &[("sandgate-explain", "1")]).await;
    assert_eq!(got.status, 200);
    assert!(got.header("sandgate-explain").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_gives_the_geo_region_and_failover_step() {
    let eu = named_backend("eu").await;
    let us = named_backend("us").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n  token_file: token\n\
         routes:\n  - name: all\n    pool: g\n\
         pools:\n  g:\n    strategy: geo\n\
         \x20   geo: {{ client_region: [{{ header: x-region }}], trusted_proxies: [127.0.0.0/8], failover: {{ eu: [us] }} }}\n\
         \x20   backends: [{{ address: {}, region: eu }}, {{ address: {}, region: us }}]\n",
        eu.addr, us.addr
    );
    let proxy = spawn_caching_proxy(&yaml);
    let ask = [("sandgate-explain", "1"), ("x-region", "eu")];
    let text = explained(&get_with(&proxy.url("public", "/"), &ask).await);
    assert!(
        text.contains("by geo:local (client region eu; order eu > us; chose region eu (step 1 of 2); within: round_robin"),
        "{text}"
    );
    let control = proxy.admin_url(&format!("/admin/pools/g/backends/{}", eu.addr));
    assert_eq!(
        admin_post(&control, Some(TOKEN), r#"{"disabled": true}"#)
            .await
            .status,
        200
    );
    let text = explained(&get_with(&proxy.url("public", "/"), &ask).await);
    assert!(text.contains("by geo:failover"), "{text}");
    assert!(text.contains("chose region us (step 2 of 2)"), "{text}");
    assert!(
        text.contains(&format!("{} (disabled by the admin API)", eu.addr)),
        "{text}"
    );
}
