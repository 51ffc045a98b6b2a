//! The response cache end to end, memory tier: hits and misses, conditionals, ranges and HEAD,
//! coalescing, purges and warming behind the admin token, a fill outliving its client, and
//! bounded memory (the rules are in `cache_rules.rs`). Real backends
//! and the real binary on 127.0.0.1; stale entries come from an `Age` header, not from sleeps.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::cache::*;
use common::*;
use http::Request;
use http_body_util::BodyExt;

fn hdr<'a>(pairs: &'a [(&'static str, &'a str)]) -> &'a [(&'static str, &'a str)] {
    pairs
}

#[tokio::test]
async fn a_stored_response_answers_the_next_request_with_age_and_cache_status() {
    let b = shaped_backend(Shape::ok(
        hdr(&[
            ("cache-control", "max-age=60"),
            ("etag", "\"v1\""),
            ("surrogate-key", "a b"),
        ]),
        "0123456789",
    ))
    .await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", ""));
    let url = proxy.url("public", "/item?x=1");

    let first = get(&url).await;
    assert_eq!(first.status, 200);
    assert_eq!(cache_status(&first), "sandgate; fwd=uri-miss; stored");
    assert!(
        first.header("surrogate-key").is_none(),
        "purge tags never reach clients"
    );
    let second = get(&url).await;
    assert_eq!(second.text(), "0123456789");
    assert!(
        cache_status(&second).starts_with("sandgate; hit; ttl="),
        "{}",
        cache_status(&second)
    );
    assert!(second.header("age").is_some());
    assert_eq!(second.header("via"), Some("1.1 sandgate"));
    assert_eq!(b.hits(), 1, "the second request never reached the backend");

    // A different query is a different URL.
    assert_eq!(
        cache_status(&get(&proxy.url("public", "/item?x=2")).await),
        "sandgate; fwd=uri-miss; stored"
    );

    // A conditional request is answered 304 from the stored response; a range 206; HEAD too.
    let nm = get_with(&url, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(nm.status, 304);
    assert_eq!(nm.header("etag"), Some("\"v1\""));
    let part = get_with(&url, &[("range", "bytes=2-4")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.text(), "234");
    assert_eq!(part.header("content-range"), Some("bytes 2-4/10"));
    let head = send(&client(), Request::head(&url).body(empty()).unwrap()).await;
    assert_eq!(head.status, 200);
    assert!(cache_status(&head).contains("hit"));
    assert_eq!(b.hits(), 2, "only the second URL reached the backend");

    let m = metrics_text(&proxy).await;
    assert!(
        metric(
            &m,
            "sandgate_cache_requests_total{route=\"api\",result=\"hit\"}"
        )
        .unwrap()
            >= 4.0
    );
    assert_eq!(
        metric(&m, "sandgate_cache_store_total{result=\"stored\"}"),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "sandgate_cache_entries{tier=\"memory\"}"),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_send_one_request_to_a_backend() {
    let mut shape = Shape::ok(hdr(&[("cache-control", "max-age=60")]), "shared body");
    shape.delay = Duration::from_millis(400);
    let b = shaped_backend(shape).await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "lock_timeout: 10s", "", ""));
    let url = proxy.url("public", "/popular");
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut collapsed = 0;
    for t in tasks {
        let g = t.await.unwrap();
        assert_eq!(g.status, 200);
        assert_eq!(g.text(), "shared body");
        if cache_status(&g).contains("collapsed") {
            collapsed += 1;
        }
    }
    assert_eq!(b.hits(), 1, "one fill for fifty misses");
    assert!(collapsed >= 40, "followers say collapsed: {collapsed}");
    let m = metrics_text(&proxy).await;
    assert!(
        metric(
            &m,
            "sandgate_cache_requests_total{route=\"api\",result=\"coalesced\"}"
        )
        .unwrap()
            >= 40.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncacheable_response_sends_followers_to_backends_in_parallel() {
    let mut shape = Shape::ok(hdr(&[("cache-control", "private, max-age=60")]), "mine");
    shape.delay = Duration::from_millis(300);
    let b = shaped_backend(shape).await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", ""));
    let url = proxy.url("public", "/private");
    let batch = |n: usize| {
        let url = url.clone();
        async move {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let url = url.clone();
                    tokio::spawn(async move { get(&url).await })
                })
                .collect();
            for t in tasks {
                assert_eq!(t.await.unwrap().text(), "mine");
            }
        }
    };
    batch(10).await;
    assert_eq!(
        b.hits(),
        10,
        "nothing stored, every request reached the backend"
    );
    // The URL is now known to be uncacheable: nobody queues behind a lock.
    b.max_inflight.store(0, Ordering::SeqCst);
    batch(10).await;
    assert_eq!(b.hits(), 20);
    assert_eq!(
        b.max_inflight.load(Ordering::SeqCst),
        10,
        "all ten went at once"
    );
    let m = metrics_text(&proxy).await;
    assert!(metric(&m, "sandgate_cache_store_total{result=\"uncacheable\"}").unwrap() >= 2.0);
}

#[tokio::test]
async fn purges_by_url_prefix_and_tag_need_the_admin_token() {
    let b = shaped_backend(Shape::ok(
        hdr(&[
            ("cache-control", "max-age=600"),
            ("surrogate-key", "sandbox-1 all"),
            ("cache-tag", "blue"),
        ]),
        "body",
    ))
    .await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", ""));
    let host = proxy.listeners["public"];
    let purge = proxy.admin_url("/admin/cache/purge");
    for p in ["/v1/a", "/v1/b", "/v2/c", "/v2/d"] {
        get(&proxy.url("public", p)).await;
    }
    assert_eq!(b.hits(), 4);
    let hit = |p: &'static str| {
        let url = proxy.url("public", p);
        async move { cache_status(&get(&url).await).contains("hit") }
    };
    assert!(hit("/v1/a").await && hit("/v2/d").await);

    // No token, or a wrong one: 401, and nothing is purged.
    assert_eq!(
        admin_post(&purge, None, r#"{"all":true}"#).await.status,
        401
    );
    assert_eq!(
        admin_post(&purge, Some("wrong"), r#"{"all":true}"#)
            .await
            .status,
        401
    );
    assert!(hit("/v1/a").await);

    let by_url = admin_post(
        &purge,
        Some(TOKEN),
        &format!(r#"{{"urls":["http://{host}/v1/a"]}}"#),
    )
    .await;
    assert_eq!(by_url.status, 200);
    assert_eq!(by_url.json()["purged"], 1);
    assert!(!hit("/v1/a").await);
    assert!(hit("/v1/b").await);

    let by_prefix = admin_post(
        &purge,
        Some(TOKEN),
        &format!(r#"{{"prefixes":["http://{host}/v2/"]}}"#),
    )
    .await;
    assert_eq!(by_prefix.json()["purged"], 2);
    assert!(!hit("/v2/c").await);

    let by_tag = admin_post(&purge, Some(TOKEN), r#"{"tags":["blue"]}"#).await;
    assert!(by_tag.json()["purged"].as_u64().unwrap() >= 1);
    assert!(!hit("/v1/b").await);
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(&m, "sandgate_cache_purges_total{kind=\"url\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "sandgate_cache_purges_total{kind=\"prefix\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "sandgate_cache_purges_total{kind=\"tag\"}"),
        Some(1.0)
    );
}

#[tokio::test]
async fn admin_posts_are_refused_without_a_token_file() {
    let b = named_backend("x").await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        b.addr
    )));
    let r = admin_post(
        &proxy.admin_url("/admin/cache/purge"),
        Some(TOKEN),
        r#"{"all":true}"#,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        get(&proxy.admin_url("/healthz")).await.status,
        200,
        "GETs stay open"
    );
}

#[tokio::test]
async fn warming_fetches_through_the_pipeline_and_stores() {
    let b = shaped_backend(Shape::ok(hdr(&[("cache-control", "max-age=600")]), "warm")).await;
    let proxy = spawn_caching_proxy(&cache_config(b.backend.addr, "", "", ""));
    let host = proxy.listeners["public"];
    let body = format!(r#"{{"urls":["http://{host}/w/1","http://{host}/w/2","not a url"]}}"#);
    let r = admin_post(&proxy.admin_url("/admin/cache/warm"), Some(TOKEN), &body).await;
    assert_eq!(r.status, 200);
    let results = r.json()["results"].clone();
    assert_eq!(results[0]["status"], 200);
    assert_eq!(results[0]["cache_status"], "sandgate; fwd=uri-miss; stored");
    assert!(results[2]["error"].is_string());
    assert_eq!(b.hits(), 2);
    assert!(cache_status(&get(&proxy.url("public", "/w/2")).await).contains("hit"));
    assert_eq!(b.hits(), 2);
}

#[tokio::test]
async fn a_fill_completes_when_its_client_leaves_and_large_bodies_stream_unstored() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let r2 = std::sync::Arc::clone(&release);
    let b = spawn_backend(move |req| {
        let r = std::sync::Arc::clone(&r2);
        let big = req.uri().path() == "/big";
        Box::pin(async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                if big {
                    for _ in 0..8 {
                        tx.send(Bytes::from(vec![b'b'; 1024])).await.ok();
                    }
                    return;
                }
                tx.send(Bytes::from("first ")).await.ok();
                r.notified().await;
                tx.send(Bytes::from("second")).await.ok();
            });
            let mut resp = http::Response::new(body);
            resp.headers_mut()
                .insert("cache-control", "max-age=600".parse().unwrap());
            resp
        })
    })
    .await;
    let proxy = spawn_caching_proxy(&cache_config(
        b.addr,
        "",
        "",
        "cache:\n  max_object_size: 4KiB\n",
    ));
    let url = proxy.url("public", "/slow");
    let mut body = open_stream(&url).await;
    assert_eq!(next_chunk(&mut body).await, "first ");
    drop(body); // the client leaves mid-body
    release.notify_one();
    wait_until_async(|| async { cache_status(&get(&url).await).contains("hit") }).await;
    assert_eq!(
        get(&url).await.text(),
        "first second",
        "the whole body was stored"
    );
    assert_eq!(b.hits(), 1);

    // 8 KiB against a 4 KiB limit: streamed whole, never stored.
    let big = proxy.url("public", "/big");
    assert_eq!(get(&big).await.body.len(), 8192);
    assert_eq!(get(&big).await.body.len(), 8192);
    assert_eq!(b.hits(), 3);
    let m = metrics_text(&proxy).await;
    assert!(metric(&m, "sandgate_cache_store_total{result=\"too_large\"}").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_max_size_while_three_times_as_much_is_written() {
    let b = shaped_backend(Shape::ok(
        hdr(&[("cache-control", "max-age=600")]),
        &"x".repeat(16 * 1024),
    ))
    .await;
    let proxy = spawn_caching_proxy(&cache_config(
        b.backend.addr,
        "",
        "",
        "cache:\n  max_size: 1MiB\n  max_object_size: 64KiB\n",
    ));
    let c = client();
    // 3 MiB of distinct 16 KiB responses.
    for i in 0..192 {
        let g = send(
            &c,
            Request::get(proxy.url("public", &format!("/blob/{i}")))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(g.body.len(), 16 * 1024);
    }
    let m = metrics_text(&proxy).await;
    let bytes = metric(&m, "sandgate_cache_bytes{tier=\"memory\"}").unwrap();
    assert!(bytes <= 1024.0 * 1024.0, "{bytes} bytes stored");
    assert!(bytes > 0.0);
    assert!(metric(&m, "sandgate_cache_evictions_total{tier=\"memory\"}").unwrap() > 0.0);
    // The body collected above is dropped; the proxy keeps serving.
    let last = c
        .request(
            Request::get(proxy.url("public", "/blob/191"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        last.into_body().collect().await.unwrap().to_bytes().len(),
        16 * 1024
    );
}
