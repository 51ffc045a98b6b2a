//! PROXY protocol v1 and v2 on a listener behind an L4 balancer: the address it carries is
//! the client's; untrusted sources and bad headers are closed and counted.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(trusted: &str, backend: SocketAddr) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n    proxy_protocol: {{ trusted: [{trusted}] }}\n\
         admin:\n  address: 127.0.0.1:0\nroutes:\n  - name: all\n    pool: p\n\
         pools:\n  p:\n    backends: [{{ address: {backend} }}]\n"
    )
}

/// Sends `header` and one GET on a fresh connection; returns everything read until close.
async fn exchange(addr: SocketAddr, header: &[u8], path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = header.to_vec();
    out.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

fn forwarded_for(resp: &str) -> String {
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["headers"]["x-forwarded-for"][0]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_headers_from_a_trusted_source_name_the_client() {
    let echo = echo_backend("b").await;
    let proxy = spawn_proxy(&config("127.0.0.1/32", echo.addr));
    let addr = proxy.listeners["public"];

    let v1 = exchange(
        addr,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n",
        "/v1",
    )
    .await;
    assert!(v1.starts_with("HTTP/1.1 200"), "{v1}");
    assert_eq!(forwarded_for(&v1), "203.0.113.7");

    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::9]:40000".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let resp = exchange(addr, &v2, "/v2").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(forwarded_for(&resp), "2001:db8::9");

    // The balancer's own checks (LOCAL) keep the peer's address.
    let local = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::Protocol::Unspecified,
        ppp::v2::Addresses::Unspecified,
    )
    .build()
    .unwrap();
    let resp = exchange(addr, &local, "/local").await;
    assert_eq!(forwarded_for(&resp), "127.0.0.1");

    // The access log names the client from the header.
    let line = proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| v["path"] == "/v1")
        .expect("an access log line");
    assert_eq!(line["client"], "203.0.113.7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_sources_and_bad_headers_are_closed_and_counted() {
    let echo = echo_backend("b").await;
    let proxy = spawn_proxy(&config("10.0.0.0/8", echo.addr));
    let addr = proxy.listeners["public"];
    let resp = exchange(addr, b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n", "/x").await;
    assert_eq!(resp, "", "an untrusted source is closed without an answer");
    assert_eq!(echo.hits(), 0);
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "sandgate_proxy_protocol_rejected_total{listener=\"public\",reason=\"untrusted\"}"
        ),
        Some(1.0),
        "{m}"
    );

    let proxy = spawn_proxy(&config("127.0.0.1/32", echo.addr));
    let addr = proxy.listeners["public"];
    let resp = exchange(addr, b"", "/no-header").await;
    assert_eq!(resp, "", "a missing header closes the connection");
    let resp = exchange(addr, b"PROXY TCP4 not-an-address\r\n", "/bad").await;
    assert_eq!(resp, "");
    assert_eq!(echo.hits(), 0);
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "sandgate_proxy_protocol_rejected_total{listener=\"public\",reason=\"malformed\"}"
        ),
        Some(2.0),
        "{m}"
    );
}
