//! Binary upgrades under load: `cargo bench --bench upgrade`.
//!
//! sandgate (`worker_threads: 1`) serves keep-alive GETs from SANDGATE_BENCH_CONNS (default
//! 32) connections to one backend. After a quiet second, it gets SIGUSR2 every 500 ms, each
//! sent once the previous upgrade has finished (the new process reported ready), 10 in all.
//! A connection the server closes after a response (`Connection: close` while draining) is
//! opened again; a request that was written and got no response counts as lost. Prints
//! requests, lost requests, p50/p99 before and during the upgrades, and the time from
//! SIGUSR2 to the new process being ready.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

mod support;

use support::load::{env_u64, percentile};
use support::{free_port, spawn_backend, wait_port, Proc};

fn main() {
    support::main_with_load(orchestrate);
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    lost: AtomicU64,
    reconnects: AtomicU64,
    quiet: Mutex<Vec<u32>>,
    busy: Mutex<Vec<u32>>,
}

fn orchestrate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_backend, port) = spawn_backend();
    let sg_port = free_port();
    let cfg = dir.path().join("sandgate.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listeners: [{{ name: bench, address: 127.0.0.1:{sg_port} }}]\n\
             runtime: {{ worker_threads: 1, shutdown_grace: 5s }}\n\
             routes: [{{ name: bench, pool: b }}]\n\
             pools:\n  b:\n    backends: [{{ address: 127.0.0.1:{port} }}]\n"
        ),
    )
    .expect("write config");
    let mut child = Command::new(support::sandgate_bin())
        .args(["--log-format", "json", "run", "-c"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sandgate");
    let stderr = child.stderr.take().expect("stderr");
    let first = child.id();
    let _first = Proc(child);
    assert!(wait_port(sg_port), "sandgate did not start");
    // New PIDs, from every process's log lines (they share the pipe).
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["message"] == "upgrade: new process ready; this one stops accepting and drains"
                {
                    if let Some(pid) = v["pid"].as_u64() {
                        let _ = tx.send(pid);
                    }
                }
            }
        }
    });

    let conns = env_u64("SANDGATE_BENCH_CONNS", 32);
    let tally = Arc::new(Tally::default());
    let upgrading = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (t, u, s) = (
            Arc::clone(&tally),
            Arc::clone(&upgrading),
            Arc::clone(&stop),
        );
        tasks.push(rt.spawn(client(sg_port, t, u, s)));
    }
    std::thread::sleep(Duration::from_secs(1));
    upgrading.store(true, Ordering::SeqCst);
    let mut pid = u64::from(first);
    let mut ready_ms = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let _ = Command::new("kill")
            .args(["-USR2", &pid.to_string()])
            .status();
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(p) => pid = p,
            Err(_) => {
                eprintln!("an upgrade did not finish within 30 s");
                break;
            }
        }
        ready_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();

    let stats = |v: &Mutex<Vec<u32>>| {
        let mut v = v.lock().map(|v| v.clone()).unwrap_or_default();
        v.sort_unstable();
        (v.len(), percentile(&v, 0.5), percentile(&v, 0.99))
    };
    let (qn, q50, q99) = stats(&tally.quiet);
    let (bn, b50, b99) = stats(&tally.busy);
    ready_ms.sort_by(f64::total_cmp);
    println!(
        "upgrade: keep-alive GETs, {conns} connections, 1 worker, {} upgrades",
        ready_ms.len()
    );
    println!("\n| phase            | requests | p50 µs | p99 µs |");
    println!("|------------------|---------:|-------:|-------:|");
    println!("| before upgrades  | {qn:>8} | {q50:>6} | {q99:>6} |");
    println!("| during upgrades  | {bn:>8} | {b50:>6} | {b99:>6} |");
    println!(
        "\nlost requests: {} of {}; reconnects after Connection: close: {}",
        tally.lost.load(Ordering::SeqCst),
        tally.ok.load(Ordering::SeqCst) + tally.lost.load(Ordering::SeqCst),
        tally.reconnects.load(Ordering::SeqCst)
    );
    if let (Some(lo), Some(hi)) = (ready_ms.first(), ready_ms.last()) {
        println!(
            "SIGUSR2 -> new process ready: median {:.0} ms (min {lo:.0}, max {hi:.0})",
            ready_ms[ready_ms.len() / 2]
        );
    }
}

/// One keep-alive client: requests back to back, a new connection whenever the server
/// closed the old one after a response. Bounded by `stop`, 60 s and 10 million requests.
async fn client(port: u16, t: Arc<Tally>, upgrading: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut sent = 0u64;
    'connect: while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
        let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        s.set_nodelay(true).ok();
        let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await
        else {
            continue;
        };
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) && sent < 10_000_000 {
            if send.ready().await.is_err() {
                // Closed while idle, before a request was written: not a lost request.
                t.reconnects.fetch_add(1, Ordering::Relaxed);
                continue 'connect;
            }
            let req = hyper::Request::get("/bench")
                .header("host", "bench.local")
                .body(Empty::<Bytes>::new())
                .expect("request");
            let at = Instant::now();
            sent += 1;
            match send.send_request(req).await {
                Ok(r) if r.status() == 200 => {
                    let close = r
                        .headers()
                        .get("connection")
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    if r.into_body().collect().await.is_err() {
                        t.lost.fetch_add(1, Ordering::Relaxed);
                        continue 'connect;
                    }
                    let us = at.elapsed().as_micros() as u32;
                    let phase = if upgrading.load(Ordering::Relaxed) {
                        &t.busy
                    } else {
                        &t.quiet
                    };
                    if let Ok(mut v) = phase.lock() {
                        v.push(us);
                    }
                    t.ok.fetch_add(1, Ordering::Relaxed);
                    if close {
                        t.reconnects.fetch_add(1, Ordering::Relaxed);
                        continue 'connect;
                    }
                }
                Ok(_) | Err(_) => {
                    t.lost.fetch_add(1, Ordering::Relaxed);
                    continue 'connect;
                }
            }
        }
        return;
    }
}
