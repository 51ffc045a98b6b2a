//! `cargo bench --bench failover`: the figure for killing a backend under load.
//!
//! Three backend processes behind sandgate (round-robin, health checks every 1 s with a
//! 500 ms timeout, a circuit breaker). Keep-alive GET load for 30 s from 16 connections; at
//! 10 s one backend process is killed (SIGKILL). Run three times: retries on with the default
//! 20% budget, retries on with a 100% budget, and retries off. Reports
//! the failed requests and the time from the kill until no request reached the dead backend
//! (the last change of its `sandgate_upstream_requests_total`, polled every 20 ms).
//!
//! Knobs: SANDGATE_FAILOVER_SECS (default 30; the kill comes at one third).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use support::{current_thread, free_port, spawn_backend, spawn_sandgate};

/// Sum of all `sandgate_upstream_requests_total` series for `backend`.
fn upstream_count(admin: u16, backend: u16) -> Option<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let needle = format!("backend=\"127.0.0.1:{backend}\"");
    Some(
        text.lines()
            .filter(|l| l.starts_with("sandgate_upstream_requests_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

struct Figure {
    total: u64,
    failed: u64,
    failed_after_detection: u64,
    stop_after_kill: Option<Duration>,
}

fn scenario(retry: &str, secs: u64) -> Figure {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut backends = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..3 {
        let (p, port) = spawn_backend();
        ports.push(port);
        backends.push(Some(p));
    }
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "listeners: [{{ name: bench, address: 127.0.0.1:{port} }}]\nadmin: {{ address: 127.0.0.1:{admin} }}\n\
         routes: [{{ name: bench, pool: p }}]\npools:\n  p:\n\
         \x20   health_check: {{ path: /, interval: 1s, timeout: 500ms, healthy_threshold: 2, unhealthy_threshold: 1 }}\n\
         \x20   circuit_breaker: {{ consecutive_failures: 5, open_for: 5s }}\n{retry}\
         \x20   backends:\n      - {{ address: 127.0.0.1:{} }}\n      - {{ address: 127.0.0.1:{} }}\n      - {{ address: 127.0.0.1:{} }}\n",
        ports[0], ports[1], ports[2]
    );
    let _sg = spawn_sandgate(dir.path(), &yaml, port);

    let total = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let failed_late = Arc::new(AtomicU64::new(0));
    let detected = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let load = {
        let (total, failed, failed_late, detected) = (
            Arc::clone(&total),
            Arc::clone(&failed),
            Arc::clone(&failed_late),
            Arc::clone(&detected),
        );
        std::thread::spawn(move || {
            current_thread().block_on(async move {
                let mut tasks = Vec::new();
                for _ in 0..16 {
                    let (total, failed, failed_late, detected) = (
                        Arc::clone(&total),
                        Arc::clone(&failed),
                        Arc::clone(&failed_late),
                        Arc::clone(&detected),
                    );
                    tasks.push(tokio::spawn(async move {
                        // Bounded by time; a broken connection is replaced.
                        while Instant::now() < deadline {
                            let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                            else {
                                failed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            let Ok((mut send, conn)) =
                                hyper::client::conn::http1::handshake(TokioIo::new(s)).await
                            else {
                                continue;
                            };
                            tokio::spawn(conn);
                            while Instant::now() < deadline {
                                let req = hyper::Request::get("/work")
                                    .header("host", "bench")
                                    .body(Empty::<Bytes>::new())
                                    .expect("req");
                                total.fetch_add(1, Ordering::Relaxed);
                                let ok = match send.send_request(req).await {
                                    Ok(r) => {
                                        r.status() == 200 && r.into_body().collect().await.is_ok()
                                    }
                                    Err(_) => false,
                                };
                                if !ok {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    if detected.load(Ordering::Relaxed) {
                                        failed_late.fetch_add(1, Ordering::Relaxed);
                                    }
                                    break;
                                }
                            }
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };

    std::thread::sleep(Duration::from_secs(secs / 3));
    let dead = ports[1];
    let killed = Instant::now();
    backends[1] = None; // SIGKILL
    let mut last = upstream_count(admin, dead).unwrap_or(0.0);
    let mut last_change = killed;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(n) = upstream_count(admin, dead) {
            if n != last {
                last = n;
                last_change = Instant::now();
            } else if last_change.elapsed() > Duration::from_secs(2) {
                detected.store(true, Ordering::Relaxed);
            }
        }
    }
    let _ = load.join();
    Figure {
        total: total.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        failed_after_detection: failed_late.load(Ordering::Relaxed),
        stop_after_kill: Some(last_change.saturating_duration_since(killed)),
    }
}

fn main() {
    if support::run_role(&|_| false) {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs = std::env::var("SANDGATE_FAILOVER_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30u64);
    println!(
        "failover: 3 backends, 16 connections, {secs}s of load, one backend killed at {}s",
        secs / 3
    );
    println!("\n| retries | requests | failed | failed after the dead backend stopped getting traffic | last request to the dead backend after the kill |");
    println!("|---|---:|---:|---:|---:|");
    let runs = [
        (
            "on (budget 20%)",
            "    retry: { attempts: 3, backoff: { base: 10ms, max: 100ms } }\n",
        ),
        (
            "on (budget 100%)",
            "    retry: { attempts: 3, budget: 100%, backoff: { base: 10ms, max: 100ms } }\n",
        ),
        ("off", ""),
    ];
    for (name, retry) in runs {
        let f = scenario(retry, secs);
        println!(
            "| {} | {} | {} | {} | {} |",
            name,
            f.total,
            f.failed,
            f.failed_after_detection,
            f.stop_after_kill.map_or("-".into(), |d| format!(
                "{} ms (polled every 20 ms)",
                d.as_millis()
            ))
        );
    }
}
