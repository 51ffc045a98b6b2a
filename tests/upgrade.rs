//! Binary upgrade on SIGUSR2 under a steady keep-alive load: ten in a row lose no request; a
//! new process that cannot start leaves the old one serving. Socket activation: a listener
//! passed as `LISTEN_FDS` is served instead of bound.

mod common;

use std::net::TcpListener as StdListener;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use common::*;
use serde_json::Value;

fn kill(sig: &str, pid: u64) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

/// Stops the process started last when the test ends, however it ends.
struct Last(Arc<AtomicU64>);

impl Drop for Last {
    fn drop(&mut self) {
        let pid = self.0.load(Ordering::SeqCst);
        if pid != 0 {
            kill("KILL", pid);
        }
    }
}

fn upgraded(v: &Value, old: u64) -> Option<u64> {
    (msg(v) == "upgrade: new process ready; this one stops accepting and drains"
        && v["old_pid"].as_u64() == Some(old))
    .then(|| v["pid"].as_u64())
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_upgrades_under_keep_alive_load_lose_no_request() {
    let backend = named_backend("ok").await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         runtime:\n  worker_threads: 2\n  shutdown_grace: 5s\n\
         routes:\n  - name: all\n    pool: p\n\
         pools:\n  p:\n    backends: [{{ address: {} }}]\n",
        backend.addr
    );
    let mut proxy = spawn_proxy(&yaml);
    let url = proxy.url("public", "/");
    let current = Arc::new(AtomicU64::new(0));
    let _last = Last(Arc::clone(&current));

    // Steady load: 4 keep-alive clients, each sending one request after another.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let started = Instant::now();
            for _ in 0..200_000 {
                if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(120) {
                    break;
                }
                let req = http::Request::get(&url).body(empty()).expect("request");
                let answer = tokio::time::timeout(Duration::from_secs(10), async {
                    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
                    let status = resp.status();
                    let body = http_body_util::BodyExt::collect(resp.into_body())
                        .await
                        .map_err(|e| format!("{e:?}"))?
                        .to_bytes();
                    Ok::<_, String>((status, body))
                })
                .await;
                match answer {
                    Ok(Ok((s, b))) if s == 200 && b == "ok" => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("request lost: {other:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }

    let mut pid = u64::from(proxy.pid());
    let mut olds = Vec::new();
    for round in 0..10 {
        let before = ok.load(Ordering::SeqCst);
        assert!(kill("USR2", pid), "kill -USR2 {pid}");
        let logs = Arc::clone(&proxy.logs);
        let old = pid;
        let line = tokio::task::spawn_blocking(move || {
            logs.wait_for(Duration::from_secs(30), |v| upgraded(v, old).is_some())
        })
        .await
        .expect("join");
        let line = line
            .unwrap_or_else(|| panic!("upgrade {round} did not happen: {:#?}", proxy.logs.all()));
        pid = upgraded(&line, old).expect("pid");
        current.store(pid, Ordering::SeqCst);
        olds.push(old);
        // Some requests are served across each upgrade.
        wait_until(|| ok.load(Ordering::SeqCst) > before + 50).await;
    }
    wait_until(|| olds[1..].iter().all(|p| exited(*p))).await;
    assert!(
        proxy.wait_exit(Duration::from_secs(10)).is_some(),
        "the first process exits"
    );
    assert!(!exited(pid), "the last process serves");

    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(failed, 0, "{failed} of {} requests lost", ok + failed);
    assert!(ok > 500, "{ok} requests served");
    // The last process is the one serving now.
    assert_eq!(get(&url).await.text(), "ok");
    assert!(kill("TERM", pid));
    wait_until(|| exited(pid)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_fails_leaves_the_old_one_serving() {
    let backend = named_backend("ok").await;
    let yaml = basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        backend.addr
    ));
    let proxy = spawn_proxy(&yaml);
    // The file is now broken: the new process cannot load it and exits.
    std::fs::write(&proxy.config_path, "listeners: [").expect("write");
    let pid = u64::from(proxy.pid());
    assert!(kill("USR2", pid));
    let logs = Arc::clone(&proxy.logs);
    let failed = tokio::task::spawn_blocking(move || {
        logs.wait_for(Duration::from_secs(30), |v| {
            msg(v) == "upgrade failed; this process keeps serving"
        })
    })
    .await
    .expect("join")
    .unwrap_or_else(|| panic!("no failure logged: {:#?}", proxy.logs.all()));
    assert!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains("exited before it was ready")),
        "{failed}"
    );
    assert!(!exited(pid));
    assert_eq!(get(&proxy.url("public", "/")).await.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_passed_by_systemd_is_served() {
    let backend = named_backend("ok").await;
    let socket = StdListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sandgate.yaml");
    // The configured address is not where the passed socket listens: the socket wins.
    std::fs::write(
        &config,
        format!(
            "listeners:\n  - name: public\n    address: 127.0.0.1:1\n\
             routes:\n  - name: all\n    pool: p\n\
             pools:\n  p:\n    backends: [{{ address: {} }}]\n",
            backend.addr
        ),
    )
    .expect("write");
    let mut cmd = Command::new(sandgate_bin());
    cmd.args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "public")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .fd_mappings(vec![FdMapping {
            parent_fd: OwnedFd::from(socket),
            child_fd: 3,
        }])
        .expect("fd mapping");
    let mut child = cmd.spawn().expect("spawn");
    let url = format!("http://{addr}/");
    let mut answer = None;
    for _ in 0..200 {
        let req = http::Request::get(&url).body(empty()).expect("request");
        if let Ok(Ok(resp)) =
            tokio::time::timeout(Duration::from_secs(2), client().request(req)).await
        {
            answer = Some(resp.status());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer, Some(http::StatusCode::OK));
}
