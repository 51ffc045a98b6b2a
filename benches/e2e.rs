//! End-to-end load benchmark: `cargo bench --bench e2e`.
//!
//! Keep-alive HTTP/1.1 GETs with a small body over two backends, measured four ways with the
//! same load generator, the same backends and one worker each: direct to one backend, through
//! sandgate, through nginx and through HAProxy (the last two when installed; skipped with a
//! message otherwise). Prints req/s, p50, p99 and CPU time per request of the proxy process,
//! and the ratios. Backends and the load generator run as separate processes (this binary
//! re-executed with SANDGATE_BENCH_ROLE), so they do not share a runtime with anything.
//!
//! Knobs: SANDGATE_BENCH_SECS (default 5), SANDGATE_BENCH_CONNS (default 32).

use std::path::Path;

mod support;

use support::load::{
    env_u64, nginx_args, nginx_conf, print_table, run_load, start_external, Measured,
};
use support::{free_port, spawn_backend, spawn_sandgate, BODY};

fn main() {
    support::main_with_load(orchestrate);
}

/// Measures an installed proxy, if it starts.
fn external(
    name: &'static str,
    conf_name: &str,
    conf: &dyn Fn(u16) -> String,
    args: &dyn Fn(&Path) -> Vec<String>,
    dir: &Path,
) -> Option<Measured> {
    let (proc, port) = start_external(name, conf_name, conf, args, dir, None)?;
    Some(run_load(name, port, "/bench", &[proc.0.id()], None))
}

fn orchestrate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut backends = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let (p, port) = spawn_backend();
        ports.push(port);
        backends.push(p);
    }
    println!(
        "e2e: keep-alive HTTP/1.1 GET, {}-byte body, {} connections, {}s per run, 1 worker per proxy, backends {:?}",
        BODY.len(),
        env_u64("SANDGATE_BENCH_CONNS", 32),
        env_u64("SANDGATE_BENCH_SECS", 5),
        ports
    );
    let mut results = vec![run_load("direct", ports[0], "/bench", &[], None)];

    // sandgate
    let sg_port = free_port();
    let sg_yaml = format!(
            "listeners: [{{ name: bench, address: 127.0.0.1:{sg_port} }}]\nruntime: {{ worker_threads: 1 }}\n\
             routes: [{{ name: bench, pool: b }}]\npools:\n  b:\n    backends:\n      - {{ address: 127.0.0.1:{} }}\n      - {{ address: 127.0.0.1:{} }}\n",
            ports[0], ports[1]
    );
    let sg = spawn_sandgate(dir.path(), &sg_yaml, sg_port);
    results.push(run_load("sandgate", sg_port, "/bench", &[sg.0.id()], None));
    drop(sg);

    // nginx
    let nginx_conf = |port: u16| {
        nginx_conf(
            dir.path(),
            port,
            "",
            &format!(
                "server 127.0.0.1:{}; server 127.0.0.1:{}; keepalive 64; keepalive_requests 100000000;",
                ports[0], ports[1]
            ),
            "",
        )
    };
    let nginx_args = |conf: &Path| nginx_args(dir.path(), conf);
    results.extend(external(
        "nginx",
        "nginx.conf",
        &nginx_conf,
        &nginx_args,
        dir.path(),
    ));

    // HAProxy
    let haproxy_conf = |port: u16| {
        format!(
            "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\
             frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\nbackend b\n  balance roundrobin\n  server s1 127.0.0.1:{}\n  server s2 127.0.0.1:{}\n",
            ports[0], ports[1]
        )
    };
    let haproxy_args = |conf: &Path| vec!["-db".into(), "-f".into(), conf.display().to_string()];
    results.extend(external(
        "haproxy",
        "haproxy.cfg",
        &haproxy_conf,
        &haproxy_args,
        dir.path(),
    ));

    print_table(&results);
    let find = |n: &str| results.iter().find(|r| r.name == n);
    if let Some(sg) = find("sandgate") {
        println!();
        for other in ["direct", "nginx", "haproxy"] {
            if let Some(o) = find(other) {
                let cpu = match (sg.cpu_us, o.cpu_us) {
                    (Some(a), Some(b)) if b > 0.0 => format!(", CPU/req x{:.2}", a / b),
                    _ => String::new(),
                };
                println!(
                    "sandgate vs {other}: throughput x{:.2}, p99 x{:.2}{cpu}",
                    sg.rps / o.rps.max(1.0),
                    sg.p99 as f64 / (o.p99.max(1)) as f64
                );
            }
        }
    }
}
