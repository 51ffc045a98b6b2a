//! The external side of the end-to-end benchmark: wrk and h2load runs and their output,
//! process counters (CPU time, RSS), commands with a raised file limit, and the configs of
//! the nginx origin and of the nginx and HAProxy proxies.

use std::path::Path;
use std::process::{Command, Stdio};

use super::load::{cpu_seconds, which};

/// A command with its open-file limit raised (thousands of connections), pinned to `cpu`
/// through `taskset` when available.
pub fn limited(program: &str, cpu: Option<usize>) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$@\"")
        .arg("sh");
    if let (Some(cpu), Some(taskset)) = (cpu, which("taskset")) {
        c.arg(taskset).arg("-c").arg(cpu.to_string());
    }
    c.arg(program);
    c
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One measured load run.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Requests per second.
    pub rps: f64,
    /// Requests done.
    pub requests: f64,
    /// Median latency, µs (h2load: mean).
    pub p50_us: f64,
    /// 99th percentile latency, µs (h2load: none).
    pub p99_us: Option<f64>,
    /// CPU time of the measured process per request, µs.
    pub cpu_us: Option<f64>,
    /// Failed connections or requests, non-2xx answers.
    pub errors: u64,
}

/// A latency such as `812.00us`, `1.26ms` or `2.01s`, in µs.
fn micros(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return None,
    })
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Run {
    let mut r = Run::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => r.rps = v.parse().unwrap_or(0.0),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0.0),
            ["50%", v] => r.p50_us = micros(v).unwrap_or(0.0),
            ["99%", v] => r.p99_us = micros(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => r.errors += n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                r.errors += rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    r
}

/// Parses h2load output.
pub fn parse_h2load(out: &str) -> Run {
    let mut r = Run::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["finished", "in", _, rps, "req/s,", ..] => {
                r.rps = rps.trim_end_matches(',').parse().unwrap_or(0.0);
            }
            ["requests:", _total, "total,", _, "started,", _, "done,", ok, "succeeded,", failed, "failed,", errored, "errored,", ..] =>
            {
                let ok: f64 = ok.parse().unwrap_or(0.0);
                r.requests = ok;
                r.errors = failed.parse::<u64>().unwrap_or(0) + errored.parse::<u64>().unwrap_or(0);
            }
            ["status", "codes:", _, "2xx,", ..] => {
                let n: u64 = f
                    .iter()
                    .skip(4)
                    .step_by(2)
                    .filter_map(|x| x.parse::<u64>().ok())
                    .sum();
                r.errors += n;
            }
            ["time", "for", "request:", _min, _max, mean, ..] => {
                r.p50_us = micros(mean).unwrap_or(0.0);
            }
            _ => {}
        }
    }
    r
}

/// Runs `tool` (wrk or h2load, by `args`) pinned to `cpu`, charging the CPU time of `pid` to
/// it; None when the tool is not installed.
pub fn run_tool(tool: &str, args: &[String], cpu: usize, pid: Option<u32>) -> Option<Run> {
    let bin = which(tool)?;
    let cpu0 = pid.map(cpu_seconds);
    let out = limited(&bin, Some(cpu))
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let cpu1 = pid.map(cpu_seconds);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut r = if tool == "wrk" {
        parse_wrk(&text)
    } else {
        parse_h2load(&text)
    };
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        if r.requests > 0.0 {
            r.cpu_us = Some((b - a) * 1e6 / r.requests);
        }
    }
    Some(r)
}

/// The 64 KiB response body's path on every target.
pub const BIG_PATH: &str = "/64k";
/// The small response body's path.
pub const SMALL_PATH: &str = "/small";

/// An nginx origin on `port` under `dir`: `/small` is a 51-byte JSON body, `/64k` 64 KiB.
pub fn origin_conf(dir: &Path, port: u16) -> String {
    std::fs::create_dir_all(dir.join("logs")).ok();
    std::fs::write(dir.join("64k"), vec![b'x'; 64 * 1024]).ok();
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log stderr error;\npid {d}/origin.pid;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  \
         client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
         server {{ listen 127.0.0.1:{port} reuseport backlog=16384; root {d};\n    \
         location = /small {{ default_type application/json; return 200 '{{\"sandbox\":\"ok\",\"result\":\"hello from the sandbox\"}}\\n'; }}\n    \
         location = /64k {{ }}\n  }}\n}}\n"
    )
}

/// nginx as the proxy: HTTP/1.1 on `port`, h2c on `h2_port`, `keepalive 1024` upstream, and
/// 128 KiB of proxy buffers so that a 64 KiB response is not spilled to a temporary file.
pub fn nginx_proxy_conf(dir: &Path, port: u16, h2_port: u16, origin: u16) -> String {
    std::fs::create_dir_all(dir.join("logs")).ok();
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 65536;\nerror_log stderr error;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  keepalive_requests 100000000;\n  \
         client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
         upstream o {{ server 127.0.0.1:{origin}; keepalive 1024; keepalive_requests 100000000; }}\n  \
         server {{ listen 127.0.0.1:{port} backlog=16384; listen 127.0.0.1:{h2_port} http2 backlog=16384;\n    \
         location / {{ proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffers 32 4k; }}\n  }}\n}}\n"
    )
}

/// HAProxy as the proxy: HTTP/1.1 on `port`, h2c on `h2_port`, `http-reuse always`.
pub fn haproxy_conf(port: u16, h2_port: u16, origin: u16) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  \
         timeout server 30s\n  http-reuse always\n\
         frontend f\n  bind 127.0.0.1:{port}\n  bind 127.0.0.1:{h2_port} proto h2\n  default_backend o\n\
         backend o\n  server s1 127.0.0.1:{origin} maxconn 0\n"
    )
}

/// sandgate as the proxy: one plain listener (HTTP/1.1, and h2c with prior knowledge), one
/// worker. With `access_log`, its access log lines go to stderr (redirected to a file).
pub fn sandgate_conf(port: u16, origin: u16) -> String {
    format!(
        "listeners: [{{ name: bench, address: 127.0.0.1:{port} }}]\nruntime: {{ worker_threads: 1 }}\n\
         limits: {{ max_connections: 20000 }}\n\
         routes: [{{ name: bench, pool: o }}]\npools:\n  o:\n    max_idle_per_backend: 1024\n    \
         backends: [{{ address: 127.0.0.1:{origin} }}]\n"
    )
}

/// Starts `bin` with `args` as a proxy pinned to CPU 0, with its open-file limit raised and
/// its output discarded; None (with a message) when it does not listen on `port` within
/// 10 s. The shell execs the proxy, so the child's pid is the proxy's.
pub fn start_proxy(name: &str, bin: &str, args: &[String], port: u16) -> Option<super::Proc> {
    let proc = super::Proc(
        limited(bin, Some(0))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    if !super::wait_port(port) {
        println!("{name}: did not start, skipped");
        return None;
    }
    Some(proc)
}
