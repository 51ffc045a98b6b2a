//! The cache's rules end to end: stale-while-revalidate and stale-if-error, revalidation and
//! request directives, Vary, invalidation by unsafe methods, and what is never stored. Real
//! backends and the real binary on 127.0.0.1; stale entries come from an `Age` header, not
//! from sleeps.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::cache::*;
use common::*;
use http::Request;
use http_body_util::Full;

fn hdr<'a>(pairs: &'a [(&'static str, &'a str)]) -> &'a [(&'static str, &'a str)] {
    pairs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_at_once_and_revalidates_once_in_the_background() {
    // Stored already 5 s past its freshness, within its 60 s stale-while-revalidate.
    let b = shaped_backend(Shape::ok(
        hdr(&[
            ("cache-control", "max-age=10, stale-while-revalidate=60"),
            ("age", "15"),
            ("etag", "\"v1\""),
        ]),
        "old",
    ))
    .await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", ""));
    let url = proxy.url("public", "/swr");
    assert_eq!(get(&url).await.text(), "old");
    // The revalidation takes a while and returns a fresh response.
    let mut fresh = Shape::ok(
        hdr(&[("cache-control", "max-age=60"), ("etag", "\"v2\"")]),
        "new",
    );
    fresh.delay = Duration::from_millis(500);
    b.set(fresh);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.text(), "old", "served stale at once");
        assert!(
            cache_status(&g).contains("detail=stale-while-revalidate"),
            "{}",
            cache_status(&g)
        );
    }
    wait_until(|| b.hits() == 2).await;
    assert_eq!(
        b.last_request().get("if-none-match").unwrap(),
        "\"v1\"",
        "revalidated with the validator"
    );
    wait_until_async(|| async { get(&url).await.text() == "new" }).await;
    assert_eq!(b.hits(), 2, "exactly one background request");
}

#[tokio::test]
async fn stale_if_error_stands_in_for_a_killed_backend() {
    let b = shaped_backend(Shape::ok(
        hdr(&[("cache-control", "max-age=10"), ("age", "12")]),
        "kept",
    ))
    .await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "stale_if_error: 5m", "", ""));
    let url = proxy.url("public", "/sie");
    assert_eq!(get(&url).await.text(), "kept");
    b.backend.stop();
    let g = get(&url).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.text(), "kept");
    let cs = cache_status(&g);
    assert!(
        cs.starts_with("sandgate; fwd=stale; fwd-status=502; ttl=-"),
        "{cs}"
    );
    assert!(cs.ends_with("detail=stale-if-error"), "{cs}");
    // Without stale_if_error the failure reaches the client.
    let other = proxy.url("public", "/never-stored");
    assert_eq!(get(&other).await.status, 502);
}

#[tokio::test]
async fn stale_if_error_stands_in_for_errors_and_an_open_breaker_without_replacing_the_entry() {
    let b = shaped_backend(Shape::ok(
        hdr(&[("cache-control", "max-age=10"), ("age", "12")]),
        "good",
    ))
    .await;
    let pool = "    circuit_breaker: { consecutive_failures: 2, open_for: 60s, failure_on: [5xx, connect_error] }\n";
    let proxy = spawn_caching_proxy(&cache_config(
        b.backend.addr,
        "stale_if_error: 5m",
        pool,
        "",
    ));
    let url = proxy.url("public", "/breaker");
    assert_eq!(get(&url).await.text(), "good");
    // The backend now fails with a cacheable 503: the stale entry stands in, twice.
    b.set(Shape {
        status: 503,
        headers: vec![("cache-control", "max-age=600".into())],
        body: Bytes::from("down"),
        delay: Duration::ZERO,
    });
    for _ in 0..2 {
        let g = get(&url).await;
        assert_eq!(g.text(), "good");
        assert!(
            cache_status(&g).contains("fwd-status=503"),
            "{}",
            cache_status(&g)
        );
    }
    assert_eq!(b.hits(), 3);
    // The breaker is open now: no backend is tried, and the stale entry still answers.
    let g = get(&url).await;
    assert_eq!(g.text(), "good");
    assert!(cache_status(&g).contains("detail=stale-if-error"));
    assert_eq!(
        b.hits(),
        3,
        "the open breaker kept the request from the backend"
    );
}

#[tokio::test]
async fn unsafe_methods_invalidate_the_url_and_its_location() {
    let b = shaped_backend(Shape::ok(
        hdr(&[("cache-control", "max-age=600"), ("location", "/doc/2")]),
        "x",
    ))
    .await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", ""));
    let (one, two) = (proxy.url("public", "/doc/1"), proxy.url("public", "/doc/2"));
    get(&one).await;
    get(&two).await;
    assert!(cache_status(&get(&one).await).contains("hit"));
    let post = send(
        &client(),
        Request::post(&one)
            .body(Full::new(Bytes::from("change")))
            .unwrap(),
    )
    .await;
    assert_eq!(cache_status(&post), "sandgate; fwd=method");
    assert!(
        !cache_status(&get(&one).await).contains("hit"),
        "the POSTed URL is gone"
    );
    assert!(
        !cache_status(&get(&two).await).contains("hit"),
        "its Location too"
    );
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let b = spawn_backend(|req| {
        let lang = req
            .headers()
            .get("accept-language")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        Box::pin(async move {
            let mut r = http::Response::new(full(lang.unwrap_or_else(|| "none".into())));
            r.headers_mut()
                .insert("cache-control", "max-age=600".parse().unwrap());
            r.headers_mut()
                .insert("vary", "Accept-Language".parse().unwrap());
            r
        })
    })
    .await;
    let proxy = spawn_caching_proxy(&cache_config(b.addr, "", "", ""));
    let url = proxy.url("public", "/greeting");
    assert_eq!(
        get_with(&url, &[("accept-language", "en")]).await.text(),
        "en"
    );
    let de = get_with(&url, &[("accept-language", "de")]).await;
    assert_eq!(de.text(), "de");
    assert_eq!(cache_status(&de), "sandgate; fwd=vary-miss; stored");
    let en = get_with(&url, &[("accept-language", "en")]).await;
    assert_eq!(en.text(), "en");
    assert!(cache_status(&en).contains("hit"));
    assert_eq!(
        get(&url).await.text(),
        "none",
        "no header is its own variant"
    );
    assert_eq!(b.hits(), 3);
}

#[tokio::test]
async fn request_directives_revalidate_bypass_and_only_if_cached() {
    let b = shaped_backend(Shape::ok(
        hdr(&[("cache-control", "max-age=600"), ("etag", "\"e1\"")]),
        "body",
    ))
    .await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", ""));
    let url = proxy.url("public", "/r");
    let miss = get_with(
        &proxy.url("public", "/never"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(miss.status, 504);
    get(&url).await;
    // no-cache: revalidated with the stored validator; a 304 refreshes and a full answer goes
    // to a client that sent no conditional.
    b.set(Shape {
        status: 304,
        headers: vec![
            ("cache-control", "max-age=600".into()),
            ("etag", "\"e1\"".into()),
            ("x-fresh", "yes".into()),
        ],
        body: Bytes::new(),
        delay: Duration::ZERO,
    });
    let r = get_with(&url, &[("cache-control", "no-cache")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "body");
    assert_eq!(
        r.header("x-fresh"),
        Some("yes"),
        "the 304's fields are applied"
    );
    assert_eq!(
        cache_status(&r),
        format!(
            "sandgate; fwd=request; fwd-status=304; ttl={}",
            600 - r.header("age").unwrap().parse::<i64>().unwrap()
        )
    );
    assert_eq!(b.last_request().get("if-none-match").unwrap(), "\"e1\"");
    // no-store: straight to the backend, nothing stored.
    let hits = b.hits();
    let bypass = get_with(&url, &[("cache-control", "no-store")]).await;
    assert_eq!(cache_status(&bypass), "sandgate; fwd=bypass");
    assert_eq!(b.hits(), hits + 1);
    let hit = get_with(&url, &[("cache-control", "only-if-cached")]).await;
    assert_eq!(hit.status, 200);
    assert_eq!(
        hit.header("x-fresh"),
        Some("yes"),
        "the stored headers were refreshed"
    );
}

#[tokio::test]
async fn cookies_private_and_authorized_responses_are_not_stored() {
    let b = shaped_backend(Shape::ok(
        hdr(&[("cache-control", "max-age=600"), ("set-cookie", "s=1")]),
        "c",
    ))
    .await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", ""));
    let url = proxy.url("public", "/c");
    get(&url).await;
    let again = get(&url).await;
    assert_eq!(again.header("set-cookie"), Some("s=1"));
    assert!(!cache_status(&again).contains("hit"));
    b.set(Shape::ok(hdr(&[("cache-control", "max-age=600")]), "a"));
    let auth = proxy.url("public", "/auth");
    get_with(&auth, &[("authorization", "Bearer x")]).await;
    assert!(
        !cache_status(&get(&auth).await).contains("hit"),
        "a response to Authorization is not shared"
    );
    b.set(Shape::ok(
        hdr(&[("cache-control", "max-age=600, public")]),
        "p",
    ));
    let public = proxy.url("public", "/public");
    get_with(&public, &[("authorization", "Bearer x")]).await;
    assert!(
        cache_status(&get(&public).await).contains("hit"),
        "public allows it"
    );
}
