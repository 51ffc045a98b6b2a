//! Discovery: a `host:port` backend follows its name's records (from a hosts file handed to
//! the process, never the network), a discovery file is applied without a reload, a failed
//! lookup or a bad file keeps the last good set, and a backend that goes away finishes what
//! it has in flight.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use hyper::Response;
use tokio::net::TcpListener;

/// Which backends answered `n` GETs (by body).
async fn answered(proxy: &Proxy, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let got = get(&proxy.url("public", "/")).await;
        assert_eq!(got.status, 200, "{}", got.text());
        seen.insert(got.text());
    }
    seen
}

fn set(names: &[&str]) -> HashSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// Waits until `n` requests are answered by exactly `want`.
async fn wait_for_set(proxy: &Proxy, want: &[&str]) {
    let want = set(want);
    wait_until_async(|| async { answered(proxy, 8).await == want }).await;
}

/// A backend answering `name` on `ip` at `port`.
async fn backend_at(ip: &str, port: u16, name: &'static str) -> Backend {
    let listener = TcpListener::bind((ip, port)).await.expect("bind backend");
    serve_backend(listener, move |_req| {
        Box::pin(async move { Response::new(full(name)) })
    })
}

fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn config(pool: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         routes:\n  - name: all\n    pool: p\n\
         pools:\n  p:\n{pool}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_backend_follows_its_records_and_keeps_the_last_good_set() {
    // Two workers on one port, on two loopback addresses.
    let a = named_backend("a").await;
    let port = a.addr.port();
    let b = backend_at("127.0.0.2", port, "b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    write(&hosts, "127.0.0.1 sandbox.test\n");
    let yaml = config(&format!(
        "    discovery: {{ dns_refresh: 100ms }}\n    backends: [{{ address: 'sandbox.test:{port}' }}]\n"
    ));
    let hosts_env = hosts.to_str().expect("path").to_owned();
    let proxy = spawn_proxy_env(dir, &yaml, &[("SANDGATE_HOSTS_FILE", &hosts_env)]);
    assert_eq!(answered(&proxy, 6).await, set(&["a"]), "resolved at load");

    write(
        &hosts,
        "127.0.0.1 sandbox.test\n127.0.0.2 sandbox.test other\n",
    );
    wait_for_set(&proxy, &["a", "b"]).await;
    let listed = get(&proxy.admin_url("/admin/backends")).await.json();
    let addrs: HashSet<String> = listed["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["address"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(addrs, set(&[&a.addr.to_string(), &b.addr.to_string()]));

    write(&hosts, "127.0.0.2 sandbox.test\n");
    wait_for_set(&proxy, &["b"]).await;

    // The lookup fails: the last good set stays, and the failure is counted.
    std::fs::remove_file(&hosts).expect("remove hosts");
    wait_until_async(|| async {
        metric(
            &metrics_text(&proxy).await,
            "sandgate_discovery_errors_total{pool=\"p\"}",
        )
        .is_some_and(|v| v >= 2.0)
    })
    .await;
    assert_eq!(answered(&proxy, 6).await, set(&["b"]));
    assert!(proxy
        .logs
        .all()
        .iter()
        .any(|v| msg(v).starts_with("discovery: lookup failed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_file_is_applied_without_a_reload_and_removed_backends_drain() {
    let fixed = named_backend("fixed").await;
    // `/hold` streams a first piece and the rest on release; other paths answer at once.
    let release = Arc::new(tokio::sync::Notify::new());
    let r = Arc::clone(&release);
    let held = spawn_backend(move |req| {
        let r = Arc::clone(&r);
        Box::pin(async move {
            if req.uri().path() != "/hold" {
                return Response::new(full("held"));
            }
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                tx.send(Bytes::from("held-first")).await.ok();
                r.notified().await;
                tx.send(Bytes::from("held-rest")).await.ok();
            });
            Response::new(body)
        })
    })
    .await;
    let other = named_backend("other").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sandboxes.json");
    write(&file, "[]");
    let yaml = config(&format!(
        "    discovery: {{ file: sandboxes.json }}\n    backends: [{{ address: {} }}]\n",
        fixed.addr
    ));
    let proxy = spawn_proxy_in(dir, &yaml);
    assert_eq!(answered(&proxy, 4).await, set(&["fixed"]));

    let entry = |addr: SocketAddr, w: u32| {
        format!(r#"{{"address": "{addr}", "weight": {w}, "region": "eu"}}"#)
    };
    write(
        &file,
        &format!("[{}, {}]", entry(held.addr, 1), entry(other.addr, 2)),
    );
    wait_for_set(&proxy, &["fixed", "held", "other"]).await;
    assert!(
        !proxy.logs.all().iter().any(|v| msg(v) == "config reloaded"),
        "applied without a reload"
    );
    let listed = get(&proxy.admin_url("/admin/backends")).await.json();
    let other_view = listed["pools"][0]["backends"]
        .as_array()
        .and_then(|bs| {
            bs.iter()
                .find(|b| b["address"] == other.addr.to_string())
                .cloned()
        })
        .expect("other listed");
    assert_eq!(other_view["weight"], 2, "{other_view}");
    assert_eq!(other_view["region"], "eu", "{other_view}");

    // A request held open on `held`, then `held` leaves the file: it finishes.
    let mut body = loop {
        let mut body = open_stream(&proxy.url("public", "/hold")).await;
        if next_chunk(&mut body).await == "held-first" {
            break body;
        }
    };
    write(&file, &format!("[{}]", entry(other.addr, 1)));
    wait_for_set(&proxy, &["fixed", "other"]).await;
    release.notify_one();
    assert_eq!(next_chunk(&mut body).await, "held-rest", "drained, not cut");

    // A bad file keeps the last good set, counted.
    write(&file, "[{\"address\": \"not an address\"}]");
    wait_until_async(|| async {
        metric(
            &metrics_text(&proxy).await,
            "sandgate_discovery_errors_total{pool=\"p\"}",
        )
        .is_some_and(|v| v >= 1.0)
    })
    .await;
    assert_eq!(answered(&proxy, 6).await, set(&["fixed", "other"]));
}
