//! Thread-per-core: `runtime.worker_threads: N` serves every listener from N runtimes, each
//! accepting on its own SO_REUSEPORT socket.

mod common;

use common::*;

/// Connections worker `w` accepted on the `public` listener, from the metrics text `m`.
fn accepted(m: &str, w: usize) -> f64 {
    let series = format!("sandgate_worker_connections_total{{listener=\"public\",worker=\"{w}\"}}");
    metric(m, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_connections_and_serve_them_all() {
    let a = named_backend("a").await;
    let yaml = format!(
        "runtime: {{ worker_threads: 2 }}\n{}",
        basic_config(&format!("    backends: [{{ address: {} }}]\n", a.addr))
    );
    let proxy = spawn_proxy(&yaml);
    // Every request on a connection of its own: the kernel spreads them over both sockets.
    for i in 0..40 {
        let got = get(&proxy.url("public", &format!("/w{i}"))).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.text(), "a");
    }
    let m = metrics_text(&proxy).await;
    let (w0, w1) = (accepted(&m, 0), accepted(&m, 1));
    assert!(
        w0 >= 1.0 && w1 >= 1.0,
        "both workers accept: {w0} and {w1}\n{m}"
    );
    assert!(w0 + w1 >= 40.0, "{m}");
    assert!(
        m.contains("sandgate_requests_total{route=\"all\",code=\"200\"} 40"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_requests_of_every_worker() {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let slow = held_backend("start;", "done", std::sync::Arc::clone(&release)).await;
    let yaml = format!(
        "runtime: {{ worker_threads: 2 }}\n{}",
        basic_config(&format!("    backends: [{{ address: {} }}]\n", slow.addr))
    );
    let mut proxy = spawn_proxy(&yaml);
    let url = proxy.url("public", "/");
    let mut bodies = Vec::new();
    // 16 connections: all on one worker by chance once in 30,000 runs.
    for _ in 0..16 {
        let mut body = open_stream(&url).await;
        assert_eq!(next_chunk(&mut body).await, "start;");
        bodies.push(body);
    }
    let m = metrics_text(&proxy).await;
    assert!(accepted(&m, 0) >= 1.0 && accepted(&m, 1) >= 1.0, "{m}");

    proxy.signal("TERM");
    // Both workers close their sockets: new connections are refused.
    for _ in 0..2 {
        proxy
            .logs
            .wait_for(std::time::Duration::from_secs(5), |v| {
                msg(v) == "stopped accepting connections"
            })
            .expect("listener closed");
    }
    let refused = async {
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(proxy.listeners["public"])
                .await
                .is_err()
            {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    };
    assert!(refused.await, "still accepting after SIGTERM");
    assert!(
        proxy
            .wait_exit(std::time::Duration::from_millis(300))
            .is_none(),
        "exited before draining"
    );
    release.notify_waiters();
    for body in bodies {
        let rest = http_body_util::BodyExt::collect(body)
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(rest, "done");
    }
    let status =
        tokio::task::block_in_place(|| proxy.wait_exit(std::time::Duration::from_secs(10)))
            .expect("exited");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_buffered_at_exit_are_written() {
    let a = named_backend("a").await;
    let yaml = format!(
        "runtime: {{ worker_threads: 2 }}\n{}",
        basic_config(&format!("    backends: [{{ address: {} }}]\n", a.addr))
    );
    let mut proxy = spawn_proxy(&yaml);
    let ids: Vec<String> = (0..20).map(|i| format!("last-words-{i}")).collect();
    for id in &ids {
        let got = get_with(&proxy.url("public", "/"), &[("x-request-id", id)]).await;
        assert_eq!(got.status, 200);
    }
    // At once: the lines may still be in the access log's buffer when the process ends.
    proxy.signal("TERM");
    let status =
        tokio::task::block_in_place(|| proxy.wait_exit(std::time::Duration::from_secs(10)))
            .expect("exited");
    assert!(status.success(), "{status:?}");
    for id in &ids {
        let line = proxy
            .logs
            .wait_for(std::time::Duration::from_secs(2), |v| {
                v["request_id"] == id.as_str()
            })
            .unwrap_or_else(|| panic!("no access log line for {id}"));
        assert_eq!(line["target"], "sandgate::access");
        assert_eq!(line["status"], 200);
    }
}
