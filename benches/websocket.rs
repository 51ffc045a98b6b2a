//! WebSocket echo benchmark: `cargo bench --bench websocket`.
//!
//! The same echo backend and the same client (both this binary, pinned to CPU 1) go direct,
//! through sandgate (one worker pinned to CPU 0) and through nginx as a WebSocket proxy (one
//! worker pinned to CPU 0) when it is installed, in one run with rounds interleaved. The
//! client opens SANDGATE_BENCH_WS_CONNS connections (default 5000); the proxy's RSS is read
//! before and while they are open and idle (RSS per open tunnel); then every connection
//! echoes 32-byte messages at its share of SANDGATE_BENCH_WS_RATE (default 50,000 messages/s
//! in all), for SANDGATE_BENCH_SECS (default 5). Reported: connections established, messages
//! per second achieved, p50/p99 echo latency (send to echo), KiB per idle tunnel, and the
//! proxy's CPU µs per message (the median round of SANDGATE_BENCH_ROUNDS, default 3; RSS
//! from the first round, as nginx keeps freed memory for reuse and later rounds show none).

mod support;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use support::load::{cpu_seconds, env_u64, which};
use support::tools::rss_kib;
use support::{free_port, read_line, spawn_role, Proc};

fn main() {
    let ws_role = |role: &str| {
        match role {
            "ws-echo" => support::ws::echo(),
            "ws-client" => support::ws::client(),
            _ => return false,
        }
        true
    };
    if support::run_role(&ws_role) || std::env::args().any(|a| a == "--list") {
        return;
    }
    orchestrate();
}

/// One measured round of one target.
#[derive(Clone, Copy, Default)]
struct Round {
    established: u64,
    failed: u64,
    msgs_per_s: f64,
    p50: u64,
    p99: u64,
    kib_per_tunnel: Option<f64>,
    cpu_us: Option<f64>,
}

struct Target {
    name: &'static str,
    port: u16,
    pid: Option<u32>,
    _proc: Option<Proc>,
}

fn nginx_ws_conf(dir: &Path, port: u16, origin: u16) -> String {
    std::fs::create_dir_all(dir.join("logs")).ok();
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\nerror_log stderr error;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n  \
         client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
         map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n  \
         upstream o {{ server 127.0.0.1:{origin}; }}\n  \
         server {{ listen 127.0.0.1:{port} backlog=16384;\n    \
         location / {{ proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; \
         proxy_set_header Connection $connection_upgrade; proxy_read_timeout 1h; proxy_send_timeout 1h; }}\n  }}\n}}\n"
    )
}

fn sandgate_ws_conf(port: u16, origin: u16) -> String {
    format!(
        "listeners: [{{ name: bench, address: 127.0.0.1:{port} }}]\nruntime: {{ worker_threads: 1 }}\n\
         limits: {{ max_connections: 20000 }}\n\
         routes: [{{ name: ws, pool: o }}]\npools:\n  o:\n    backends: [{{ address: 127.0.0.1:{origin} }}]\n"
    )
}

fn start(name: &'static str, bin: &str, args: &[String], port: u16) -> Option<Target> {
    let proc = support::tools::start_proxy(name, bin, args, port)?;
    let pid = Some(proc.0.id());
    Some(Target {
        name,
        port,
        pid,
        _proc: Some(proc),
    })
}

fn measure(t: &Target, conns: u64, secs: u64, rate: u64) -> Round {
    let before = t.pid.map(rss_kib);
    let mut client = spawn_role(
        "ws-client",
        &[
            ("SANDGATE_WS_TARGET", format!("127.0.0.1:{}", t.port)),
            ("SANDGATE_WS_CONNS", conns.to_string()),
            ("SANDGATE_WS_SECS", secs.to_string()),
            ("SANDGATE_WS_RATE", rate.to_string()),
        ],
        Some(1),
    );
    let line = read_line(&mut client);
    let mut f = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>().unwrap_or(0));
    let (established, failed) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
    // Let the handshakes' memory settle before reading what the idle tunnels hold.
    std::thread::sleep(Duration::from_secs(2));
    let during = t.pid.map(rss_kib);
    let kib_per_tunnel = before
        .zip(during)
        .filter(|_| established > 0)
        .map(|(b, d)| d.saturating_sub(b) as f64 / established as f64);
    let cpu_before = t.pid.map(cpu_seconds);
    if let Some(stdin) = client.stdin.as_mut() {
        let _ = writeln!(stdin, "go");
    }
    let out = read_line(&mut client);
    let cpu = t.pid.map(cpu_seconds).zip(cpu_before).map(|(a, b)| a - b);
    let _ = client.wait();
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // Sockets closed by the client linger in the proxy a moment; let them go.
    std::thread::sleep(Duration::from_secs(1));
    Round {
        established,
        failed: failed + get(3),
        msgs_per_s: get(0) as f64 / secs as f64,
        p50: get(1),
        p99: get(2),
        kib_per_tunnel,
        cpu_us: cpu.filter(|_| get(0) > 0).map(|c| c * 1e6 / get(0) as f64),
    }
}

fn orchestrate() {
    let conns = env_u64("SANDGATE_BENCH_WS_CONNS", 5000);
    let secs = env_u64("SANDGATE_BENCH_SECS", 5);
    let rounds = env_u64("SANDGATE_BENCH_ROUNDS", 3).max(1);
    let rate = env_u64("SANDGATE_BENCH_WS_RATE", 50_000).max(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut echo = spawn_role("ws-echo", &[], Some(1));
    let origin: u16 = read_line(&mut echo).parse().expect("echo port");
    let _echo = Proc(echo);

    let mut targets = vec![Target {
        name: "direct",
        port: origin,
        pid: None,
        _proc: None,
    }];
    let port = free_port();
    let cfg = dir.path().join("sandgate.yaml");
    std::fs::write(&cfg, sandgate_ws_conf(port, origin)).expect("config");
    let args = ["run".to_owned(), "-c".to_owned(), cfg.display().to_string()];
    targets.extend(start("sandgate", support::sandgate_bin(), &args, port));
    match which("nginx") {
        Some(bin) => {
            let port = free_port();
            let conf = dir.path().join("nginx-ws.conf");
            std::fs::write(&conf, nginx_ws_conf(dir.path(), port, origin)).expect("config");
            let args = [
                "-p".to_owned(),
                dir.path().display().to_string(),
                "-c".to_owned(),
                conf.display().to_string(),
            ];
            targets.extend(start("nginx", &bin, &args, port));
        }
        None => println!("nginx: not installed, skipped (apt-get install nginx)"),
    }

    println!("WebSocket echo: {conns} connections, {rate} messages/s offered, {secs} s per round, {rounds} rounds, interleaved");
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); targets.len()];
    for r in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            let m = measure(t, conns, secs, rate);
            println!(
                "round {} {:9} established {:5} msgs/s {:8.0} p50 {:6} µs p99 {:6} µs KiB/tunnel {} CPU µs/msg {}",
                r + 1,
                t.name,
                m.established,
                m.msgs_per_s,
                m.p50,
                m.p99,
                m.kib_per_tunnel.map_or("-".to_owned(), |k| format!("{k:.2}")),
                m.cpu_us.map_or("-".to_owned(), |c| format!("{c:.2}"))
            );
            results[i].push(m);
        }
    }
    println!("\n| target | established | failed | messages/s | p50 µs | p99 µs | RSS KiB per idle tunnel | proxy CPU µs/message |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    for (t, rs) in targets.iter().zip(&mut results) {
        // RSS per tunnel from the first round: a proxy that keeps freed memory for reuse
        // (nginx's pools) shows no growth in later rounds.
        let first_rss = rs[0].kib_per_tunnel;
        rs.sort_by(|a, b| a.msgs_per_s.total_cmp(&b.msgs_per_s));
        let m = Round {
            kib_per_tunnel: first_rss,
            ..rs[rs.len() / 2]
        };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            t.name,
            m.established,
            m.failed,
            m.msgs_per_s,
            m.p50,
            m.p99,
            m.kib_per_tunnel
                .map_or("-".to_owned(), |k| format!("{k:.2}")),
            m.cpu_us.map_or("-".to_owned(), |c| format!("{c:.2}"))
        );
        rows.push((t.name, m));
    }
    let find = |n: &str| rows.iter().find(|(name, _)| *name == n).map(|(_, m)| *m);
    if let (Some(s), Some(d)) = (find("sandgate"), find("direct")) {
        println!(
            "\nsandgate ÷ direct: messages/s {:.2}",
            s.msgs_per_s / d.msgs_per_s
        );
    }
    if let (Some(s), Some(n)) = (find("sandgate"), find("nginx")) {
        println!(
            "sandgate ÷ nginx: messages/s {:.2}, p99 {:.2}, RSS per tunnel {}",
            s.msgs_per_s / n.msgs_per_s,
            s.p99 as f64 / n.p99.max(1) as f64,
            s.kib_per_tunnel
                .zip(n.kib_per_tunnel)
                .map_or("-".to_owned(), |(a, b)| format!("{:.2}", a / b.max(0.01)))
        );
    }
}
