//! Request path: routing, balancing sequences, header rewriting, streaming, error statuses,
//! HTTP/2, access logs and metrics, against real backends and a real sandgate.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_wildcard_prefix_and_headers() {
    let names = ["api", "wild", "tenant", "v1", "root"];
    let mut backends = Vec::new();
    for n in names {
        backends.push(named_backend(n).await);
    }
    let mut yaml = String::from(
        "listeners: [{ name: public, address: 127.0.0.1:0 }]\nroutes:\n\
         - { name: api, match: { host: api.example.com, path_prefix: /v1 }, pool: api }\n\
         - { name: wild, match: { host: '*.sandbox.test' }, pool: wild }\n\
         - { name: tenant, match: { path_prefix: /t, headers: { x-tenant: acme } }, pool: tenant }\n\
         - { name: v1, match: { path_prefix: /v1 }, pool: v1 }\n\
         - { name: root, pool: root }\npools:\n",
    );
    for (n, b) in names.iter().zip(&backends) {
        yaml.push_str(&format!(
            "  {n}: {{ backends: [{{ address: {} }}] }}\n",
            b.addr
        ));
    }
    let proxy = spawn_proxy(&yaml);
    let url = |p: &str| proxy.url("public", p);
    // (host, path, extra headers, expected backend)
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("api.example.com", "/v1/run", &[], "api"),
        ("API.Example.com:8080", "/v1", &[], "api"),
        ("other.example.com", "/v1/run", &[], "v1"),
        ("a.sandbox.test", "/", &[], "wild"),
        ("a.b.sandbox.test", "/x", &[], "wild"),
        ("sandbox.test", "/", &[], "root"),
        ("a.sandbox.test", "/v1/x", &[], "v1"),
        ("x", "/t/1", &[("x-tenant", "acme")], "tenant"),
        ("x", "/t/1", &[("x-tenant", "other")], "root"),
        ("x", "/t/1", &[], "root"),
    ];
    for (host, path, hdrs, want) in cases {
        let mut h = vec![("host", *host)];
        h.extend_from_slice(hdrs);
        let got = get_with(&url(path), &h).await;
        assert_eq!(got.status, 200, "{host}{path}");
        assert_eq!(got.text(), *want, "{host}{path} {hdrs:?}");
    }
}

/// The backend names of `n` sequential requests through a pool of backends a, b, c with
/// `strategy` and `weights`.
async fn sequence(strategy: &str, weights: [u32; 3], n: usize) -> String {
    let (a, b, c) = (
        named_backend("a").await,
        named_backend("b").await,
        named_backend("c").await,
    );
    let mut pool = format!("    strategy: {strategy}\n    backends:\n");
    for (be, w) in [&a, &b, &c].iter().zip(weights) {
        pool.push_str(&format!(
            "      - {{ address: {}, weight: {w} }}\n",
            be.addr
        ));
    }
    let proxy = spawn_proxy(&basic_config(&pool));
    let mut seq = String::new();
    for _ in 0..n {
        seq.push_str(&get(&proxy.url("public", "/")).await.text());
    }
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_an_exact_rotation() {
    assert_eq!(sequence("round_robin", [1, 1, 1], 9).await, "abcabcabc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_is_smooth_like_nginx() {
    assert_eq!(sequence("weighted", [5, 1, 1], 14).await, "aabacaaaabacaa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_forwarding_and_hop_by_hop_headers() {
    let echo = spawn_backend(|req| {
        Box::pin(async move {
            let mut seen = serde_json::Map::new();
            for (k, v) in req.headers() {
                seen.insert(k.as_str().to_owned(), v.to_str().unwrap_or("").into());
            }
            Response::builder()
                .header("connection", "x-resp-hop")
                .header("x-resp-hop", "1")
                .header("keep-alive", "timeout=5")
                .header("x-resp-keep", "1")
                .body(full(serde_json::Value::Object(seen).to_string()))
                .unwrap()
        })
    })
    .await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        echo.addr
    )));
    let got = get_with(
        &proxy.url("public", "/h"),
        &[
            ("host", "my.host"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
            ("proxy-authorization", "Basic Zm9v"),
            ("x-keep", "yes"),
        ],
    )
    .await;
    assert_eq!(got.status, 200);
    let seen = got.json();
    assert_eq!(seen["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "my.host");
    assert_eq!(seen["host"], "my.host");
    assert_eq!(seen["via"], "1.1 sandgate");
    assert_eq!(seen["x-keep"], "yes");
    assert!(
        seen.get("x-hop").is_none(),
        "Connection-named header leaked: {seen}"
    );
    assert!(seen.get("proxy-authorization").is_none());
    let rid = seen["x-request-id"]
        .as_str()
        .expect("request id sent upstream");
    assert_eq!(rid.len(), 32);
    assert_eq!(got.header("x-request-id"), Some(rid));
    assert_eq!(got.header("via"), Some("1.1 sandgate"));
    assert_eq!(got.header("x-resp-keep"), Some("1"));
    assert!(got.header("x-resp-hop").is_none());
    assert!(got.header("keep-alive").is_none());

    // A client-sent request id is kept end to end.
    let got = get_with(&proxy.url("public", "/h"), &[("x-request-id", "req-123")]).await;
    assert_eq!(got.json()["x-request-id"], "req-123");
    assert_eq!(got.header("x-request-id"), Some("req-123"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stream_reaches_the_client_chunk_by_chunk() {
    let release = Arc::new(tokio::sync::Notify::new());
    let backend = held_backend("first\n", "second\n", Arc::clone(&release)).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        backend.addr
    )));
    let mut body = open_stream(&proxy.url("public", "/stream")).await;
    // The first chunk arrives while the backend is still holding the second one back.
    assert_eq!(next_chunk(&mut body).await, "first\n");
    release.notify_one();
    let rest = rest_of(body).await;
    assert_eq!(rest, "second\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_status_is_json_with_the_request_id() {
    let hang = slow_backend("late", Duration::from_secs(30)).await;
    let sink = sink_backend().await;
    let dead = closed_port();
    let yaml = format!(
        "listeners: [{{ name: public, address: 127.0.0.1:0 }}]\n\
         limits: {{ max_request_body: 1KiB }}\n\
         routes:\n\
         - {{ name: known, match: {{ host: known.test }}, pool: sink }}\n\
         - {{ name: dead, match: {{ host: dead.test }}, pool: dead }}\n\
         - {{ name: hang, match: {{ host: hang.test }}, pool: hang }}\n\
         pools:\n\
         \x20 sink: {{ backends: [{{ address: {} }}] }}\n\
         \x20 dead: {{ timeouts: {{ connect: 500ms }}, backends: [{{ address: {dead} }}] }}\n\
         \x20 hang: {{ timeouts: {{ response_header: 300ms }}, backends: [{{ address: {} }}] }}\n",
        sink.addr, hang.addr
    );
    let proxy = spawn_proxy(&yaml);
    let url = proxy.url("public", "/x");

    let check = |got: &Got, status: u16, code: &str| {
        assert_eq!(got.status.as_u16(), status, "{}", got.text());
        assert_eq!(got.header("content-type"), Some("application/json"));
        let j = got.json();
        assert_eq!(j["error"], code);
        assert_eq!(j["request_id"].as_str(), got.header("x-request-id"));
    };

    let got = get_with(&url, &[("host", "nowhere.test")]).await;
    check(&got, 404, "no_route");

    let got = get_with(&url, &[("host", "dead.test")]).await;
    check(&got, 502, "connect_error");

    let started = std::time::Instant::now();
    let got = get_with(&url, &[("host", "hang.test")]).await;
    check(&got, 504, "timeout");
    assert!(started.elapsed() < Duration::from_secs(10));

    // Declared length over the limit: 413 before anything is sent upstream.
    let big = Request::post(&url)
        .header("host", "known.test")
        .body(Full::new(Bytes::from(vec![b'x'; 2048])))
        .unwrap();
    let got = send(&client(), big).await;
    check(&got, 413, "body_too_large");
    assert_eq!(sink.hits(), 0);

    // Within the limit it passes.
    let ok = Request::post(&url)
        .header("host", "known.test")
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    let got = send(&client(), ok).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "1000");

    // Head over max_header_bytes (default 64KiB): 431 from the HTTP layer.
    let huge = "a".repeat(80 * 1024);
    let got = get_with(&url, &[("host", "known.test"), ("x-huge", &huge)]).await;
    assert_eq!(got.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_the_limit_gets_413() {
    let sink = sink_backend().await;
    let yaml = basic_config(&format!("    backends: [{{ address: {} }}]\n", sink.addr))
        .replace("admin:\n", "limits: { max_request_body: 1KiB }\nadmin:\n");
    let proxy = spawn_proxy(&yaml);
    // No Content-Length: the limit is enforced while streaming.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::convert::Infallible>>(8);
    let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    tokio::spawn(async move {
        for _ in 0..4 {
            if tx
                .send(Ok(http_body::Frame::data(Bytes::from(vec![b'y'; 512]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        c.request(Request::post(proxy.url("public", "/")).body(body).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_to_the_proxy() {
    let echo = echo_backend("h2-backend").await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        echo.addr
    )));
    let c = h2c_client();
    for i in 0..3 {
        let got = send(
            &c,
            Request::get(proxy.url("public", &format!("/h2/{i}")))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.version, http::Version::HTTP_2);
        let j = got.json();
        assert_eq!(j["name"], "h2-backend");
        assert_eq!(j["path"], format!("/h2/{i}"));
        // The backend speaks HTTP/1.1 and still gets a Host header.
        assert!(j["headers"]["host"][0]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_and_metrics() {
    let a = named_backend("a").await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        a.addr
    )));
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("public", "/m")).await.status, 200);
    }
    let got = get_with(&proxy.url("public", "/m"), &[("x-request-id", "trace-me")]).await;
    assert_eq!(got.status, 200);
    let line = proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| v["request_id"] == "trace-me")
        .expect("access log line with the request id");
    assert_eq!(line["target"], "sandgate::access");
    assert_eq!(line["status"], 200);
    assert_eq!(line["route"], "all");
    assert_eq!(line["backend"], a.addr.to_string());

    let m = get(&proxy.admin_url("/metrics")).await.text();
    let b = a.addr.to_string();
    for needle in [
        "sandgate_requests_total{route=\"all\",code=\"200\"} 4".to_owned(),
        format!("sandgate_upstream_requests_total{{pool=\"p\",backend=\"{b}\",code=\"200\"}} 4"),
        format!("sandgate_backend_inflight{{pool=\"p\",backend=\"{b}\"}} 0"),
        "sandgate_request_duration_seconds_bucket{route=\"all\"".to_owned(),
        format!("sandgate_upstream_duration_seconds_count{{pool=\"p\",backend=\"{b}\"}} 4"),
        "sandgate_connections_open{listener=\"public\"}".to_owned(),
        "sandgate_config_generation 1".to_owned(),
    ] {
        assert!(m.contains(&needle), "missing {needle} in\n{m}");
    }

    let health = get(&proxy.admin_url("/healthz")).await;
    assert_eq!(health.status, 200);
    let ready = get(&proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, 200);
    let backends = get(&proxy.admin_url("/admin/backends")).await.json();
    assert_eq!(backends["pools"][0]["name"], "p");
    assert_eq!(backends["pools"][0]["backends"][0]["address"], b);
    assert_eq!(backends["pools"][0]["backends"][0]["weight"], 1);
    assert_eq!(backends["pools"][0]["backends"][0]["inflight"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inflight_counts_until_the_body_ends() {
    let release = Arc::new(tokio::sync::Notify::new());
    let backend = held_backend("head", "", Arc::clone(&release)).await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        backend.addr
    )));
    let mut body = open_stream(&proxy.url("public", "/")).await;
    next_chunk(&mut body).await;
    let inflight = || async {
        get(&proxy.admin_url("/admin/backends")).await.json()["pools"][0]["backends"][0]["inflight"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        inflight().await,
        1,
        "headers arrived but the body is still streaming"
    );
    release.notify_one();
    assert!(body.collect().await.is_ok());
    let mut n = 1;
    for _ in 0..100 {
        n = inflight().await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(n, 0);
}
