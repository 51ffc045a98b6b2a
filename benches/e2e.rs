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

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

mod support;

use support::{
    current_thread, free_port, read_line, spawn_backend, spawn_role, spawn_sandgate, wait_port,
    Proc, BODY,
};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let load_role = |role: &str| {
        role == "load" && {
            load();
            true
        }
    };
    if support::run_role(&load_role) {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / test harness probing
    }
    orchestrate();
}

// ---------- roles ----------

/// Runs keep-alive GET load against SANDGATE_BENCH_TARGET and prints
/// `requests errors p50_us p99_us elapsed_s`.
fn load() {
    let target: SocketAddr = std::env::var("SANDGATE_BENCH_TARGET")
        .expect("target")
        .parse()
        .expect("target addr");
    let secs = env_u64("SANDGATE_BENCH_SECS", 5);
    let conns = env_u64("SANDGATE_BENCH_CONNS", 32);
    current_thread().block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(1 << 16);
                let mut errors = 0u64;
                let Ok(s) = tokio::net::TcpStream::connect(target).await else {
                    return (lat, 1);
                };
                s.set_nodelay(true).ok();
                let Ok((mut send, conn)) =
                    hyper::client::conn::http1::handshake(TokioIo::new(s)).await
                else {
                    return (lat, 1);
                };
                tokio::spawn(conn);
                // Bounded by time and by count.
                while Instant::now() < deadline && lat.len() < 5_000_000 {
                    let req = hyper::Request::get("/bench")
                        .header("host", "bench.local")
                        .body(Empty::<Bytes>::new())
                        .expect("request");
                    let t = Instant::now();
                    match send.send_request(req).await {
                        Ok(r) if r.status() == 200 => {
                            if r.into_body().collect().await.is_err() {
                                errors += 1;
                                break;
                            }
                            lat.push(t.elapsed().as_micros() as u32);
                        }
                        _ => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (lat, errors)
            }));
        }
        let start = Instant::now();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            if let Ok((l, e)) = t.await {
                all.extend(l);
                errors += e;
            }
        }
        let elapsed = start.elapsed().as_secs_f64().max(secs as f64);
        all.sort_unstable();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        println!(
            "{} {} {} {} {}",
            all.len(),
            errors,
            pct(0.50),
            pct(0.99),
            elapsed
        );
    });
}

// ---------- orchestration ----------

/// utime + stime of a process (and its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state is field 0; utime is 11, stime 12 (stat fields 14, 15).
    (ticks(11) + ticks(12)) / 100.0
}

struct Result {
    name: &'static str,
    rps: f64,
    p50: u64,
    p99: u64,
    cpu_us: Option<f64>,
    errors: u64,
}

fn run_load(name: &'static str, port: u16, proxy_pids: &[u32]) -> Result {
    let target = format!("127.0.0.1:{port}");
    // Warm-up: one second.
    let mut w = spawn_role(
        "load",
        &[
            ("SANDGATE_BENCH_TARGET", target.clone()),
            ("SANDGATE_BENCH_SECS", "1".into()),
        ],
    );
    let _ = read_line(&mut w);
    let _ = w.wait();
    let cpu0: f64 = proxy_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let mut l = spawn_role("load", &[("SANDGATE_BENCH_TARGET", target)]);
    let line = read_line(&mut l);
    let _ = l.wait();
    let cpu1: f64 = proxy_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let (n, errors, p50, p99, secs) = match v[..] {
        [a, b, c, d, e] => (a, b as u64, c as u64, d as u64, e),
        _ => (0.0, 1, 0, 0, 1.0),
    };
    Result {
        name,
        rps: n / secs,
        p50,
        p99,
        cpu_us: (!proxy_pids.is_empty() && n > 0.0).then(|| (cpu1 - cpu0) * 1e6 / n),
        errors,
    }
}

fn which(cmd: &str) -> Option<String> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = format!("{dir}/{cmd}");
        if Path::new(&p).exists() {
            return Some(p);
        }
    }
    None
}

/// Runs the load through an installed proxy `name` (skipped with a message when it is not
/// installed or does not start): writes its config for a free port, starts it, measures.
fn bench_external(
    name: &'static str,
    conf_name: &str,
    conf: &dyn Fn(u16) -> String,
    args: &dyn Fn(&Path) -> Vec<String>,
    dir: &Path,
) -> Option<Result> {
    let Some(bin) = which(name) else {
        println!("{name}: not installed, skipped (apt-get install {name})");
        return None;
    };
    let port = free_port();
    let path = dir.join(conf_name);
    std::fs::write(&path, conf(port)).expect("write config");
    let proc = Proc(
        Command::new(bin)
            .args(args(&path))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn proxy"),
    );
    if !wait_port(port) {
        println!("{name}: did not start, skipped");
        return None;
    }
    Some(run_load(name, port, &[proc.0.id()]))
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
    let mut results = vec![run_load("direct", ports[0], &[])];

    // sandgate
    let sg_port = free_port();
    let sg_yaml = format!(
            "listeners: [{{ name: bench, address: 127.0.0.1:{sg_port} }}]\nruntime: {{ worker_threads: 1 }}\n\
             routes: [{{ name: bench, pool: b }}]\npools:\n  b:\n    backends:\n      - {{ address: 127.0.0.1:{} }}\n      - {{ address: 127.0.0.1:{} }}\n",
            ports[0], ports[1]
    );
    let sg = spawn_sandgate(dir.path(), &sg_yaml, sg_port);
    results.push(run_load("sandgate", sg_port, &[sg.0.id()]));
    drop(sg);

    // nginx (its prefix directory needs logs/)
    std::fs::create_dir_all(dir.path().join("logs")).ok();
    let d = dir.path().display();
    let nginx_conf = |port: u16| {
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log stderr error;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  \
             client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
             upstream b {{ server 127.0.0.1:{}; server 127.0.0.1:{}; keepalive 64; keepalive_requests 100000000; }}\n  \
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
            ports[0], ports[1]
        )
    };
    let nginx_args = |conf: &Path| {
        vec![
            "-p".into(),
            dir.path().display().to_string(),
            "-c".into(),
            conf.display().to_string(),
        ]
    };
    results.extend(bench_external(
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
    results.extend(bench_external(
        "haproxy",
        "haproxy.cfg",
        &haproxy_conf,
        &haproxy_args,
        dir.path(),
    ));

    println!("\n| target   |   req/s |  p50 µs |  p99 µs | proxy CPU µs/req | errors |");
    println!("|----------|--------:|--------:|--------:|-----------------:|-------:|");
    for r in &results {
        println!(
            "| {:<8} | {:>7.0} | {:>7} | {:>7} | {:>16} | {:>6} |",
            r.name,
            r.rps,
            r.p50,
            r.p99,
            r.cpu_us.map_or("-".to_owned(), |c| format!("{c:.1}")),
            r.errors
        );
    }
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
