//! Live reload (file change and SIGHUP), rejection of bad files, requests in flight across a
//! reload, and SIGTERM draining.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;

fn one_pool(addr: std::net::SocketAddr) -> String {
    basic_config(&format!("    backends: [{{ address: {addr} }}]\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_reload_applies_and_invalid_reload_is_rejected() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let proxy = spawn_proxy(&one_pool(a.addr));
    assert_eq!(get(&proxy.url("public", "/")).await.text(), "a");

    // Rename-replace, as editors do: picked up by the directory watch.
    assert_eq!(proxy.reload(&one_pool(b.addr)), Reload::Applied(2));
    assert_eq!(get(&proxy.url("public", "/")).await.text(), "b");

    // A bad file: rejected, logged with its line, and b keeps serving.
    let bad = one_pool(b.addr).replace(
        "address: 127.0.0.1:0\nadmin",
        "address: 127.0.0.1:0\n    colour: red\nadmin",
    );
    assert_eq!(proxy.reload(&bad), Reload::Rejected);
    let err = proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| {
            msg(v).contains("unknown field `colour`")
        })
        .expect("error logged");
    assert!(
        msg(&err).contains("line 4: listeners[0]: unknown field `colour`"),
        "{err}"
    );
    for _ in 0..5 {
        assert_eq!(get(&proxy.url("public", "/")).await.text(), "b");
    }
    let bad_weight = one_pool(b.addr).replace("}]", ", weight: 0 }]");
    assert_eq!(proxy.reload(&bad_weight), Reload::Rejected);
    assert_eq!(get(&proxy.url("public", "/")).await.text(), "b");

    let m = get(&proxy.admin_url("/metrics")).await.text();
    assert!(
        m.contains("sandgate_config_reloads_total{result=\"success\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("sandgate_config_reloads_total{result=\"error\"} 2"),
        "{m}"
    );
    assert!(m.contains("sandgate_config_generation 2"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_always_reloads_and_bumps_the_generation() {
    let a = named_backend("a").await;
    let proxy = spawn_proxy(&one_pool(a.addr));
    assert_eq!(proxy.sighup(), Reload::Applied(2));
    assert_eq!(proxy.sighup(), Reload::Applied(3));
    let ready = get(&proxy.admin_url("/readyz")).await.json();
    assert_eq!(ready["generation"], 3);
    assert_eq!(get(&proxy.url("public", "/")).await.text(), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_change_needs_restart_but_the_rest_applies() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let proxy = spawn_proxy(&one_pool(a.addr));
    let moved = one_pool(b.addr).replacen(
        "address: 127.0.0.1:0",
        &format!("address: {}", closed_port()),
        1,
    );
    assert_eq!(proxy.reload(&moved), Reload::Applied(2));
    proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| {
            msg(v).contains("needs a restart")
        })
        .expect("restart warning");
    // Same socket as before, new pool.
    assert_eq!(get(&proxy.url("public", "/")).await.text(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_flight_across_a_reload_completes() {
    let release = Arc::new(tokio::sync::Notify::new());
    let slow = held_backend("start;", "old", Arc::clone(&release)).await;
    let fresh = named_backend("new").await;
    let proxy = spawn_proxy(&one_pool(slow.addr));
    let mut body = open_stream(&proxy.url("public", "/")).await;
    assert_eq!(next_chunk(&mut body).await, "start;");

    // Reload to a config without the slow backend while its response is mid-body.
    assert_eq!(proxy.reload(&one_pool(fresh.addr)), Reload::Applied(2));
    assert_eq!(get(&proxy.url("public", "/")).await.text(), "new");

    release.notify_one();
    let rest = rest_of(body).await;
    assert_eq!(rest, "old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_during_reloads_under_load() {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    // One worker thread: the current-thread runtime serves while reloads happen.
    let one_worker =
        |addr| one_pool(addr).replace("admin:\n", "runtime: { worker_threads: 1 }\nadmin:\n");
    let proxy = spawn_proxy(&one_worker(a.addr));
    let url = proxy.url("public", "/");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers = load_workers(&url, 4, &stop);
    for i in 0..6 {
        let next = if i % 2 == 0 { b.addr } else { a.addr };
        assert!(matches!(
            proxy.reload(&one_worker(next)),
            Reload::Applied(_)
        ));
        let bad = one_worker(next).replace("pool: p", "pool: nope");
        assert_eq!(proxy.reload(&bad), Reload::Rejected);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load_totals(workers).await;
    assert!(ok > 0);
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across reloads",
        ok + failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let release = Arc::new(tokio::sync::Notify::new());
    let slow = held_backend("start;", "done", Arc::clone(&release)).await;
    let mut proxy = spawn_proxy(
        &one_pool(slow.addr).replace("admin:\n", "runtime: { worker_threads: 1 }\nadmin:\n"),
    );
    let url = proxy.url("public", "/");
    let mut body = open_stream(&url).await;
    assert_eq!(next_chunk(&mut body).await, "start;");

    proxy.terminate();
    proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| {
            msg(v) == "stopped accepting connections"
        })
        .expect("listener closed");
    // New connections are refused while the old request drains.
    assert!(tokio::net::TcpStream::connect(proxy.listeners["public"])
        .await
        .is_err());
    assert!(
        proxy.wait_exit(Duration::from_millis(300)).is_none(),
        "exited before draining"
    );

    release.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "done");
    let status =
        tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10))).expect("exited");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_after_shutdown_grace() {
    let release = Arc::new(tokio::sync::Notify::new());
    let slow = held_backend("start;", "never", Arc::clone(&release)).await;
    let yaml =
        one_pool(slow.addr).replace("admin:\n", "runtime: { shutdown_grace: 300ms }\nadmin:\n");
    let mut proxy = spawn_proxy(&yaml);
    let _body = open_stream(&proxy.url("public", "/")).await;
    proxy.signal("TERM");
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(10)))
        .expect("exited within grace");
    assert!(status.success());
    assert!(
        proxy
            .logs
            .count(|v| msg(v).starts_with("shutdown grace expired"))
            == 1
    );
}
