//! Strict requests: `Host` rules (RFC 9112 section 3.2) and HTTP/2's `:authority`, path
//! normalisation before routing, whole-segment prefixes, and whose `X-Forwarded-For` is
//! believed.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes and returns the status line of the answer.
async fn raw_status(addr: std::net::SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test]
async fn a_bad_host_is_refused_and_never_forwarded() {
    let b = echo_backend("e").await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        b.addr
    )));
    let addr = proxy.listeners["public"];
    for req in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a:port\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
    ] {
        let status = raw_status(addr, req).await;
        assert!(
            status.starts_with("HTTP/1.1 400"),
            "{:?}: {status}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(b.hits(), 0, "nothing was forwarded");
    // HTTP/1.0 may go without Host.
    assert!(raw_status(addr, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .contains(" 200 "));
}

#[tokio::test]
async fn on_http2_the_authority_wins_for_routing_and_upstream() {
    let b = echo_backend("e").await;
    let other = named_backend("other").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         routes:\n  - name: api\n    match: {{ host: api.example }}\n    pool: api\n  - name: rest\n    pool: rest\n\
         pools:\n  api:\n    backends: [{{ address: {} }}]\n  rest:\n    backends: [{{ address: {} }}]\n",
        b.addr, other.addr
    );
    let proxy = spawn_proxy(&yaml);
    let port = proxy.listeners["public"].port();
    // :authority is api.example (through the URI); the host header says something else.
    let req = Request::get(format!("http://api.example:{port}/x"))
        .header("host", "elsewhere.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // Connect to the proxy's real address whatever the URI says.
    let s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = send.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["name"], "e", "routed by :authority");
    assert_eq!(echo["headers"]["host"][0], format!("api.example:{port}"));
}

#[tokio::test]
async fn paths_are_normalised_before_routing_and_upstream() {
    let v1 = echo_backend("v1").await;
    let admin = echo_backend("admin").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         routes:\n  - name: v1\n    match: {{ path_prefix: /v1, path_prefix_segments: true }}\n    pool: v1\n\
         \x20 - name: admin\n    match: {{ path_prefix: /admin }}\n    pool: admin\n\
         \x20 - name: rest\n    pool: v1\n\
         pools:\n  v1:\n    backends: [{{ address: {} }}]\n  admin:\n    backends: [{{ address: {} }}]\n",
        v1.addr, admin.addr
    );
    let proxy = spawn_proxy(&yaml);
    let addr = proxy.listeners["public"];
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /v1/../admin//./x?q=/../y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["name"], "admin", "routed after normalisation");
    assert_eq!(
        echo["path"], "/admin/x?q=/../y",
        "the normalised path went upstream"
    );
    // Whole-segment prefixes: /v10 is not /v1.
    assert_eq!(
        get(&proxy.url("public", "/v1/ok")).await.json()["name"],
        "v1"
    );
    let v10 = get(&proxy.url("public", "/v10")).await.json();
    assert_eq!(v10["name"], "v1");
    assert_eq!(v10["path"], "/v10");
    let m = get(&proxy.url("public", "/%61dmin")).await.json();
    assert_eq!(
        m["name"], "admin",
        "decoded unreserved characters route too"
    );
    // A `%` that starts no escape is refused (as nginx does) and never forwarded.
    let before = (v1.hits(), admin.hits());
    for target in ["/admin%zz", "/%3%30", "/v1/%", "/v1/a%2"] {
        let req = format!("GET {target} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let status = raw_status(addr, req.as_bytes()).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{target}: {status}");
    }
    assert_eq!((v1.hits(), admin.hits()), before, "nothing was forwarded");
}

#[tokio::test]
async fn trusted_proxies_decide_whose_forwarded_for_is_believed() {
    let b = echo_backend("e").await;
    let route = |trusted: &str| {
        format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:0\n{trusted}\
             routes:\n  - name: r\n    pool: p\n    rate_limit: {{ rate: 1/m, burst: 1 }}\n\
             pools:\n  p:\n    backends: [{{ address: {} }}]\n",
            b.addr
        )
    };
    // The peer (127.0.0.1) is a trusted proxy: its clients are told apart by X-Forwarded-For.
    let behind = spawn_proxy(&route("trusted_proxies: [127.0.0.1/32]\n"));
    let url = behind.url("public", "/");
    let g = get_with(&url, &[("x-forwarded-for", "1.1.1.1")]).await;
    assert_eq!(g.status, 200);
    assert_eq!(
        g.json()["headers"]["x-forwarded-for"][0],
        "1.1.1.1, 127.0.0.1"
    );
    assert_eq!(
        get_with(&url, &[("x-forwarded-for", "2.2.2.2")])
            .await
            .status,
        200,
        "another client"
    );
    assert_eq!(
        get_with(&url, &[("x-forwarded-for", "1.1.1.1")])
            .await
            .status,
        429,
        "the same client"
    );
    assert!(
        behind
            .logs
            .wait_for(Duration::from_secs(5), |v| v["client"] == "2.2.2.2")
            .is_some(),
        "the log names the client"
    );

    // The peer is not trusted: its X-Forwarded-For is replaced, and every request is its own.
    let direct = spawn_proxy(&route("trusted_proxies: [10.0.0.0/8]\n"));
    let url = direct.url("public", "/");
    let mut b2 = http::Request::get(&url);
    b2 = b2
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "3.3.3.3");
    let g = send(&client(), b2.body(empty()).unwrap()).await;
    assert_eq!(g.json()["headers"]["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(
        get_with(&url, &[("x-forwarded-for", "9.9.9.9")])
            .await
            .status,
        429,
        "keyed by the peer"
    );

    // No list: appended as nginx does, lines combined in order.
    let plain = spawn_proxy(&route(""));
    let mut b3 = http::Request::get(plain.url("public", "/"));
    b3 = b3
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "3.3.3.3");
    let g = send(&client(), b3.body(empty()).unwrap()).await;
    assert_eq!(
        g.json()["headers"]["x-forwarded-for"][0],
        "1.1.1.1, 3.3.3.3, 127.0.0.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_trace_context_is_continued_started_or_left_out() {
    let echo = echo_backend("e").await;
    let pool = format!("    backends: [{{ address: {} }}]\n", echo.addr);
    let proxy = spawn_proxy(&basic_config(&pool));
    let seen = |got: &Got, name: &str| -> Option<String> {
        got.json()["headers"][name][0].as_str().map(str::to_owned)
    };
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let got = get_with(
        &proxy.url("public", "/traced"),
        &[("traceparent", parent), ("tracestate", "congo=t61rcWkgMzE")],
    )
    .await;
    let tp = seen(&got, "traceparent").expect("traceparent upstream");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{tp}"
    );
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "sandgate's hop has its own span id: {tp}"
    );
    assert_eq!(
        seen(&got, "tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );
    let line = proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| v["path"] == "/traced")
        .expect("an access log line");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    let got = get(&proxy.url("public", "/fresh")).await;
    let tp = seen(&got, "traceparent").expect("a trace started");
    assert_eq!(tp.len(), 55, "{tp}");

    let off = spawn_proxy(&format!(
        "tracing: {{ generate: false }}\n{}",
        basic_config(&pool)
    ));
    let got = get(&off.url("public", "/none")).await;
    assert_eq!(seen(&got, "traceparent"), None);
    let got = get_with(&off.url("public", "/kept"), &[("traceparent", parent)]).await;
    assert!(seen(&got, "traceparent").is_some_and(|t| t.contains("4bf92f3577b34da6")));
}
