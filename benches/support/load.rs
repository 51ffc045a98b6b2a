//! The load side of the benchmarks: a keep-alive HTTP/1.1 load generator (this binary
//! re-executed in the `load` role), CPU time of a process from its own counters, CPU pinning
//! with `taskset`, and a runner for installed proxies (nginx, HAProxy).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::{current_thread, free_port, read_line, spawn_role, wait_port, Proc};

/// An integer from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `load` role: keep-alive GETs of SANDGATE_BENCH_PATH (default `/bench`) against
/// SANDGATE_BENCH_TARGET for SANDGATE_BENCH_SECS from SANDGATE_BENCH_CONNS connections;
/// prints `requests errors p50_us p99_us elapsed_s`.
pub fn load() {
    let target: SocketAddr = std::env::var("SANDGATE_BENCH_TARGET")
        .expect("target")
        .parse()
        .expect("target addr");
    let path = std::env::var("SANDGATE_BENCH_PATH").unwrap_or_else(|_| "/bench".into());
    let secs = env_u64("SANDGATE_BENCH_SECS", 5);
    let conns = env_u64("SANDGATE_BENCH_CONNS", 32);
    current_thread().block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let path = path.clone();
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
                    let req = hyper::Request::get(path.as_str())
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
        let (mut all, errors) = gather(tasks).await;
        let elapsed = start.elapsed().as_secs_f64().max(secs as f64);
        all.sort_unstable();
        println!(
            "{} {} {} {} {}",
            all.len(),
            errors,
            percentile(&all, 0.50),
            percentile(&all, 0.99),
            elapsed
        );
    });
}

/// The samples and error counts of load tasks, merged.
pub async fn gather<T>(tasks: Vec<tokio::task::JoinHandle<(Vec<T>, u64)>>) -> (Vec<T>, u64) {
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((samples, e)) = t.await {
            all.extend(samples);
            errors += e;
        }
    }
    (all, errors)
}

/// The `p` quantile of sorted latencies (0 when there are none).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

/// utime + stime of a process (and its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // After the command name: state is field 0; utime is 11, stime 12 (stat fields 14, 15).
    (ticks(11) + ticks(12)) / 100.0
}

/// One measured run.
pub struct Measured {
    /// Target name.
    pub name: &'static str,
    /// Requests per second.
    pub rps: f64,
    /// Median latency, µs.
    pub p50: u64,
    /// 99th percentile latency, µs.
    pub p99: u64,
    /// CPU time of the proxy process per request, µs.
    pub cpu_us: Option<f64>,
    /// Failed connections or requests.
    pub errors: u64,
}

/// Runs a one-second warm-up, then the load against `port` (on `path`) from `cpu`, and
/// charges the CPU time of `proxy_pids` to it.
pub fn run_load(
    name: &'static str,
    port: u16,
    path: &str,
    proxy_pids: &[u32],
    cpu: Option<usize>,
) -> Measured {
    let target = format!("127.0.0.1:{port}");
    let env = |secs: Option<&str>| {
        let mut e = vec![
            ("SANDGATE_BENCH_TARGET", target.clone()),
            ("SANDGATE_BENCH_PATH", path.to_owned()),
        ];
        if let Some(s) = secs {
            e.push(("SANDGATE_BENCH_SECS", s.to_owned()));
        }
        e
    };
    let mut w = spawn_role("load", &env(Some("1")), cpu);
    let _ = read_line(&mut w);
    let _ = w.wait();
    let cpu0: f64 = proxy_pids.iter().map(|p| cpu_seconds(*p)).sum();
    let mut l = spawn_role("load", &env(None), cpu);
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
    Measured {
        name,
        rps: n / secs,
        p50,
        p99,
        cpu_us: (!proxy_pids.is_empty() && n > 0.0).then(|| (cpu1 - cpu0) * 1e6 / n),
        errors,
    }
}

/// The path of an installed command, if any.
pub fn which(cmd: &str) -> Option<String> {
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

/// A command, run on `cpu` through `taskset` when pinning is asked for and available.
pub fn pinned(program: &str, cpu: Option<usize>) -> Command {
    match (cpu, which("taskset")) {
        (Some(c), Some(taskset)) => {
            let mut cmd = Command::new(taskset);
            cmd.arg("-c").arg(c.to_string()).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}

/// An installed proxy `name` (skipped with a message when it is not installed or does not
/// start), with its config written for a free port, pinned to `cpu`.
pub fn start_external(
    name: &str,
    conf_name: &str,
    conf: &dyn Fn(u16) -> String,
    args: &dyn Fn(&Path) -> Vec<String>,
    dir: &Path,
    cpu: Option<usize>,
) -> Option<(Proc, u16)> {
    let Some(bin) = which(name) else {
        println!("{name}: not installed, skipped (apt-get install {name})");
        return None;
    };
    let port = free_port();
    let path = dir.join(conf_name);
    std::fs::write(&path, conf(port)).expect("write config");
    let proc = Proc(
        pinned(&bin, cpu)
            .args(args(&path))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn proxy"),
    );
    if !wait_port(port) {
        println!("{name}: did not start, skipped");
        return None;
    }
    Some((proc, port))
}

/// Prints the results as a Markdown table.
pub fn print_table(results: &[Measured]) {
    println!("\n| target   |   req/s |  p50 µs |  p99 µs | proxy CPU µs/req | errors |");
    println!("|----------|--------:|--------:|--------:|-----------------:|-------:|");
    for r in results {
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
}

/// A config for one nginx worker in the foreground, writing under `dir` (which gets `logs/`):
/// `http` goes in the http block, `upstream` in `upstream b`, `location` in `location /`.
pub fn nginx_conf(dir: &Path, port: u16, http: &str, upstream: &str, location: &str) -> String {
    std::fs::create_dir_all(dir.join("logs")).ok();
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log stderr error;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  \
         client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
         {http}\n  upstream b {{ {upstream} }}\n  \
         server {{ listen 127.0.0.1:{port}; location / {{ {location} proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n"
    )
}

/// nginx's command line for a config written by [`nginx_conf`] under `dir`.
pub fn nginx_args(dir: &Path, conf: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        dir.display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ]
}
