//! Backends over TLS (verified against a test CA, by name; mutual TLS) and over HTTP/2 (with
//! TLS and ALPN, or h2c), and gRPC through sandgate with its trailers.

mod common;

use std::time::Duration;

use common::grpc::*;
use common::pki::{make_pki, tls_backend};
use common::*;

fn pool_config(pool: &str) -> String {
    basic_config(pool)
}

/// sandgate in front of `backend` with `protocol: http2`, and an h2c client to it.
async fn grpc_proxy(
    backend: std::net::SocketAddr,
) -> (
    Proxy,
    std::net::SocketAddr,
    hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>,
) {
    let proxy = spawn_proxy(&pool_config(&format!(
        "    protocol: http2\n    backends: [{{ address: {backend} }}]\n"
    )));
    let addr = proxy.listeners["public"];
    let send = h2c(addr).await;
    (proxy, addr, send)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_backends_are_verified_by_name_and_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), &["sandbox.internal"]);
    let good = tls_backend(dir.path(), "sandbox.internal", None).await;
    let yaml = pool_config(&format!(
        "    tls: {{ ca_file: ca.pem, server_name: sandbox.internal }}\n    backends: [{{ address: {good} }}]\n"
    ));
    let proxy = spawn_proxy_in(dir, &yaml);
    let got = get(&proxy.url("public", "/over-tls")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "proto=HTTP/1.1 client_cert=false");

    // The same backend, named wrongly: the certificate does not fit, 502, and the log says why.
    let yaml = pool_config(&format!(
        "    tls: {{ ca_file: ca.pem, server_name: other.internal }}\n    backends: [{{ address: {good} }}]\n"
    ));
    proxy.reload(&yaml);
    let got = get(&proxy.url("public", "/wrong-name")).await;
    assert_eq!(got.status, 502, "{}", got.text());
    let line = proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| v["path"] == "/wrong-name")
        .expect("an access log line");
    assert_eq!(line["error"], "connect_error");
    let detail = line["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains("TLS handshake") && detail.contains("certificate"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_sends_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), &["sandbox.internal", "sandgate.client"]);
    let backend = tls_backend(dir.path(), "sandbox.internal", Some(&pki.ca)).await;
    let without = pool_config(&format!(
        "    tls: {{ ca_file: ca.pem, server_name: sandbox.internal }}\n    backends: [{{ address: {backend} }}]\n"
    ));
    let proxy = spawn_proxy_in(dir, &without);
    let got = get(&proxy.url("public", "/no-cert")).await;
    assert_eq!(
        got.status, 502,
        "a backend that requires a client certificate refuses"
    );

    let with = pool_config(&format!(
        "    tls:\n      ca_file: ca.pem\n      server_name: sandbox.internal\n      client_cert: {{ cert: sandgate.client.pem, key: sandgate.client.key }}\n    backends: [{{ address: {backend} }}]\n"
    ));
    proxy.reload(&with);
    let got = get(&proxy.url("public", "/with-cert")).await;
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.text(), "proto=HTTP/1.1 client_cert=true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_backends_over_tls_and_h2c_multiplexes_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), &["sandbox.internal"]);
    let tls = tls_backend(dir.path(), "sandbox.internal", None).await;
    let grpc = grpc_backend().await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         routes:\n  - {{ name: tls, pool: tls, match: {{ path_prefix: /tls }} }}\n  - {{ name: auto, pool: auto, match: {{ path_prefix: /auto }} }}\n  - {{ name: h2c, pool: h2c }}\n\
         pools:\n\
         \x20 tls: {{ protocol: http2, tls: {{ ca_file: ca.pem, server_name: sandbox.internal }}, backends: [{{ address: {tls} }}] }}\n\
         \x20 auto: {{ protocol: auto, tls: {{ ca_file: ca.pem, server_name: sandbox.internal }}, backends: [{{ address: {tls} }}] }}\n\
         \x20 h2c: {{ protocol: http2, backends: [{{ address: {} }}] }}\n",
        grpc.addr
    );
    let proxy = spawn_proxy_in(dir, &yaml);
    for path in ["/tls/a", "/auto/b"] {
        let got = get(&proxy.url("public", path)).await;
        assert_eq!(got.status, 200, "{path}: {}", got.text());
        assert_eq!(got.text(), "proto=HTTP/2.0 client_cert=false", "{path}");
    }
    // Twenty concurrent calls over h2c share one connection.
    let addr = proxy.listeners["public"];
    let calls = (0..20).map(|i| {
        tokio::spawn(async move {
            let mut send = h2c(addr).await;
            let msg = format!("call {i}");
            let resp = send
                .send_request(call(addr, "/echo.Echo/Unary", msg.as_bytes()))
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        })
    });
    for c in calls {
        c.await.unwrap();
    }
    let backends = get(&proxy.admin_url("/admin/backends")).await.json();
    let h2c_pool = backends["pools"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "h2c"))
        .unwrap_or_else(|| panic!("{backends}"));
    let b = &h2c_pool["backends"][0];
    assert!(
        b["connections_opened"].as_u64().unwrap() <= 2,
        "few connections for 20 calls: {b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_server_streaming_keep_their_trailers_and_are_not_buffered() {
    let grpc = grpc_backend().await;
    let (_proxy, addr, mut send) = grpc_proxy(grpc.addr).await;

    let resp = send
        .send_request(call(addr, "/echo.Echo/Unary", b"ping"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let last = grpc.last.lock().unwrap().clone().unwrap();
    assert_eq!(last["te"], "trailers", "te: trailers reaches the backend");
    assert_eq!(last["content-type"], "application/grpc");
    let mut body = resp.into_body();
    let data = next_frame(&mut body).await.unwrap().into_data().unwrap();
    assert_eq!(data, frame(b"ping"));
    let trailers = next_frame(&mut body)
        .await
        .unwrap()
        .into_trailers()
        .unwrap();
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
    assert_eq!(trailers["x-trailer"], "kept");

    let resp = send
        .send_request(call(addr, "/echo.Echo/Stream", b""))
        .await
        .unwrap();
    let mut body = resp.into_body();
    // The first message arrives while the backend still holds the others.
    let first = next_frame(&mut body).await.unwrap().into_data().unwrap();
    assert_eq!(first, frame(b"one"));
    grpc.release.notify_one();
    let mut rest = Vec::new();
    let trailers = loop {
        let f = next_frame(&mut body).await.expect("trailers at the end");
        match f.into_data() {
            Ok(d) => rest.extend_from_slice(&d),
            Err(f) => break f.into_trailers().unwrap(),
        }
    };
    let mut want = frame(b"two").to_vec();
    want.extend_from_slice(&frame(b"three"));
    assert_eq!(rest, want);
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_grpc_call_is_answered_the_grpc_way() {
    let (_proxy, addr, mut send) = grpc_proxy(closed_port()).await;
    let resp = send
        .send_request(call(addr, "/echo.Echo/Unary", b"ping"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    assert_eq!(resp.headers()["grpc-status"], "14", "UNAVAILABLE: {resp:?}");
    assert!(resp.headers().contains_key("grpc-message"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_reach_tls_and_http2_backends_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), &["sandbox.internal"]);
    let tls = tls_backend(dir.path(), "sandbox.internal", None).await;
    // Both start unhealthy: only a check that speaks TLS (and HTTP/2) makes them usable.
    let checks = "health_check: { path: /healthz, interval: 200ms, jitter: 0%, timeout: 150ms, healthy_threshold: 1, initial_state: unhealthy }";
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         routes:\n  - {{ name: h1, pool: h1, match: {{ path_prefix: /h1 }} }}\n  - {{ name: h2, pool: h2 }}\n\
         pools:\n\
         \x20 h1: {{ {checks}, tls: {{ ca_file: ca.pem, server_name: sandbox.internal }}, backends: [{{ address: {tls} }}] }}\n\
         \x20 h2: {{ {checks}, protocol: http2, tls: {{ ca_file: ca.pem, server_name: sandbox.internal }}, backends: [{{ address: {tls} }}] }}\n"
    );
    let proxy = spawn_proxy_in(dir, &yaml);
    for path in ["/h1/x", "/h2/x"] {
        let url = proxy.url("public", path);
        wait_until_async(|| async { get(&url).await.status == 200 }).await;
    }
    assert_eq!(
        get(&proxy.url("public", "/h2/x")).await.text(),
        "proto=HTTP/2.0 client_cert=false"
    );
}
