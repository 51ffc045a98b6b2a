//! Reload under load: `cargo bench --bench reload`.
//!
//! sandgate with one worker (`worker_threads: 1`) serves keep-alive GETs to one backend while
//! its config also holds an affinity pool of 1000 backends. The same load runs twice in one
//! run: without reloads, and with a SIGHUP every 250 ms (each reload re-reads the file and
//! rebuilds every pool, the 1000-backend affinity table among them). Prints p50/p99 of both
//! and the difference: a reload runs off the request runtime, so p99 should barely move.
//! (No MaxMind database is built here, so the mmdb part of a reload is not measured.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod support;

use support::load::{env_u64, print_table, run_load};
use support::{free_port, sighups, spawn_backend, spawn_sandgate};

fn main() {
    support::main_with_load(orchestrate);
}

fn orchestrate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_backend, port) = spawn_backend();
    let sg_port = free_port();
    let mut big = String::new();
    for i in 0..1000u32 {
        big.push_str(&format!(
            "      - {{ address: 127.0.0.{}:{} , weight: {} }}\n",
            2 + i / 60_000,
            10_000 + i % 50_000,
            1 + i % 5
        ));
    }
    let yaml = format!(
        "listeners: [{{ name: bench, address: 127.0.0.1:{sg_port} }}]\nruntime: {{ worker_threads: 1 }}\n\
         routes:\n  - {{ name: bench, pool: b }}\n  - {{ name: big, pool: big, match: {{ path_prefix: /big }} }}\n\
         pools:\n  b:\n    backends: [{{ address: 127.0.0.1:{port} }}]\n  big:\n    strategy: affinity\n    affinity: {{ key: header:x-session }}\n    backends:\n{big}"
    );
    let sg = spawn_sandgate(dir.path(), &yaml, sg_port);
    let pid = sg.0.id();
    println!(
        "reload: keep-alive GETs, {} connections, {}s per run, 1 worker; 1000-backend affinity pool in the config",
        env_u64("SANDGATE_BENCH_CONNS", 32),
        env_u64("SANDGATE_BENCH_SECS", 5)
    );
    let quiet = run_load("no reload", sg_port, "/bench", &[pid], None);
    let stop = Arc::new(AtomicBool::new(false));
    // Bounded: at most 400 reloads (100 s at 4 a second).
    let every = Duration::from_millis(250);
    let hup = sighups(pid, Duration::ZERO, every, 400, Arc::clone(&stop));
    let busy = run_load("reload/250ms", sg_port, "/bench", &[pid], None);
    stop.store(true, Ordering::Relaxed);
    let reloads = hup.join().unwrap_or(0);
    print_table(&[quiet, busy]);
    println!("\n{reloads} reloads during the second run");
}
