//! End-to-end benchmark against nginx and HAProxy: `cargo bench --bench e2e`.
//!
//! Every proxy runs one worker pinned to CPU 0 in front of the same origin (nginx when
//! installed, else a built-in backend), with the origin and the load generators (wrk,
//! h2load, and this binary's own roles) pinned to CPU 1. Each scenario measures every
//! proxy in the same run, rounds interleaved, and reports the median round. CPU µs per
//! request is the proxy process's own user+system time divided by the requests it served.
//!
//! Scenarios: small body at 50 and 1000 connections, 64 KiB body, h2c (10 connections × 10
//! streams), p99 at a fixed 5k req/s, a stress ramp, a spike of 5,000 connections, RSS per
//! idle keep-alive connection and after they close, sandgate's access log on and off, and
//! 100 reloads under load (every request must succeed).
//! Proxies or tools that are not installed are skipped with a message.
//!
//! Knobs: SANDGATE_BENCH_SECS (default 5), SANDGATE_BENCH_ROUNDS (default 3),
//! SANDGATE_BENCH_IDLE (idle and spike connections, default 5000), SANDGATE_BENCH_ONLY
//! (comma-separated scenarios: small-50, small-1000, 64k-50, h2c, rate-5k, log-on, stress,
//! spike, idle, reload; default all).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

mod support;

use support::load::{env_u64, which};
use support::tools::{self, limited, rss_kib, run_tool, Run, BIG_PATH, SMALL_PATH};
use support::{free_port, read_line, spawn_backend_with, spawn_role, wait_port, Proc};

fn main() {
    support::main_with_load(orchestrate);
}

/// A measured target: its HTTP/1.1 port, its h2c port, and its process.
struct Target {
    name: &'static str,
    port: u16,
    h2_port: Option<u16>,
    pid: Option<u32>,
    _proc: Option<Proc>,
}

fn start(
    name: &'static str,
    bin: &str,
    args: &[String],
    ports: (u16, Option<u16>),
) -> Option<Target> {
    let proc = tools::start_proxy(name, bin, args, ports.0)?;
    Some(Target {
        name,
        port: ports.0,
        h2_port: ports.1,
        pid: Some(proc.0.id()),
        _proc: Some(proc),
    })
}

/// sandgate pinned to CPU 0; with `log`, its log (that `RUST_LOG` filter) goes to
/// `<name>.log` in `dir`.
fn sandgate(dir: &Path, name: &'static str, origin: u16, log: Option<&str>) -> Option<Target> {
    let port = free_port();
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, tools::sandgate_conf(port, origin)).ok()?;
    let mut cmd = limited(support::sandgate_bin(), Some(0));
    cmd.arg("run").arg("-c").arg(&cfg).stdout(Stdio::null());
    if let Some(filter) = log {
        let file = std::fs::File::create(dir.join(format!("{name}.log"))).ok()?;
        cmd.env("RUST_LOG", filter).stderr(file);
    } else {
        cmd.env("RUST_LOG", "warn").stderr(Stdio::null());
    }
    let proc = Proc(cmd.spawn().ok()?);
    wait_port(port).then(|| Target {
        name,
        port,
        h2_port: Some(port),
        pid: Some(proc.0.id()),
        _proc: Some(proc),
    })
}

fn external(dir: &Path, name: &'static str, origin: u16) -> Option<Target> {
    let Some(bin) = which(name) else {
        println!("{name}: not installed, skipped (apt-get install {name})");
        return None;
    };
    let (port, h2) = (free_port(), free_port());
    let (file, conf, args) = if name == "nginx" {
        let conf = tools::nginx_proxy_conf(dir, port, h2, origin);
        let path = dir.join("nginx.conf");
        let args = vec![
            "-p".into(),
            dir.display().to_string(),
            "-c".into(),
            path.display().to_string(),
        ];
        (path, conf, args)
    } else {
        let path = dir.join("haproxy.cfg");
        (
            path.clone(),
            tools::haproxy_conf(port, h2, origin),
            vec!["-db".into(), "-f".into(), path.display().to_string()],
        )
    };
    std::fs::write(&file, conf).ok()?;
    start(name, &bin, &args, (port, Some(h2)))
}

/// The origin on CPU 1: nginx when installed, else the built-in backend.
fn origin(dir: &Path) -> (Proc, u16, &'static str) {
    if let Some(nginx) = which("nginx") {
        let port = free_port();
        let odir = dir.join("origin");
        std::fs::create_dir_all(&odir).expect("origin dir");
        let conf = odir.join("origin.conf");
        std::fs::write(&conf, tools::origin_conf(&odir, port)).expect("origin conf");
        let p = limited(&nginx, Some(1))
            .arg("-p")
            .arg(&odir)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .spawn()
            .map(Proc);
        if let Ok(p) = p {
            if wait_port(port) {
                return (p, port, "nginx");
            }
        }
    }
    let (p, port) = spawn_backend_with(&[], Some(1));
    (p, port, "built-in backend")
}

/// One load run of `scenario` against `t`; None when the tool is missing or `t` has no such
/// port.
fn measure(scenario: &str, t: &Target, secs: u64) -> Option<Run> {
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");
    let d = format!("{secs}s");
    let wrk = |conns: u32, path: &str| {
        let args = [
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{d}"),
            "--latency",
            &url(t.port, path),
        ];
        run_tool("wrk", &args.map(String::from), 1, t.pid)
    };
    match scenario {
        "small-50" | "log-on" => wrk(50, SMALL_PATH),
        "small-1000" => wrk(1000, SMALL_PATH),
        "64k-50" => wrk(50, BIG_PATH),
        "h2c" => {
            let args = [
                "-c10",
                "-m10",
                "-t1",
                "-D",
                &secs.to_string(),
                &url(t.h2_port?, SMALL_PATH),
            ];
            run_tool("h2load", &args.map(String::from), 1, t.pid)
        }
        "rate-5k" => rate(t, 5000, 50, secs),
        _ => None,
    }
}

/// The `rate` role against `t`: `rps` requests a second over `conns` connections.
fn rate(t: &Target, rps: u64, conns: u64, secs: u64) -> Option<Run> {
    let cpu0 = t.pid.map(support::load::cpu_seconds);
    let env = [
        ("SANDGATE_BENCH_TARGET", format!("127.0.0.1:{}", t.port)),
        ("SANDGATE_BENCH_RATE", rps.to_string()),
        ("SANDGATE_BENCH_CONNS", conns.to_string()),
        ("SANDGATE_BENCH_SECS", secs.to_string()),
    ];
    let mut c = spawn_role("rate", &env, Some(1));
    let line = read_line(&mut c);
    let _ = c.wait();
    let cpu1 = t.pid.map(support::load::cpu_seconds);
    let v: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let [n, errors, p50, p99, s] = v[..] else {
        return None;
    };
    Some(Run {
        rps: n / s.max(1.0),
        requests: n,
        p50_us: p50,
        p99_us: Some(p99),
        cpu_us: cpu0
            .zip(cpu1)
            .filter(|_| n > 0.0)
            .map(|(a, b)| (b - a) * 1e6 / n),
        errors: errors as u64,
    })
}

fn median(runs: &mut [Run]) -> Run {
    let mid = runs.len() / 2;
    let pick = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[mid]
    };
    Run {
        rps: pick(&|r| r.rps),
        requests: pick(&|r| r.requests),
        p50_us: pick(&|r| r.p50_us),
        p99_us: runs
            .iter()
            .all(|r| r.p99_us.is_some())
            .then(|| pick(&|r| r.p99_us.unwrap_or(0.0))),
        cpu_us: runs
            .iter()
            .all(|r| r.cpu_us.is_some())
            .then(|| pick(&|r| r.cpu_us.unwrap_or(0.0))),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

/// Runs `scenario` on `targets`, `rounds` times interleaved (after a short warm-up each),
/// and prints the medians and sandgate's ratios.
fn scenario(title: &str, scenario: &str, targets: &[&Target], rounds: u64, secs: u64) {
    for t in targets {
        let _ = measure(scenario, t, 1);
    }
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (t, r) in targets.iter().zip(&mut runs) {
            r.extend(measure(scenario, t, secs));
        }
    }
    println!("\n### {title}\n\n| target | req/s | p50 µs | p99 µs | CPU µs/req | errors |\n|---|---:|---:|---:|---:|---:|");
    let mut med = Vec::new();
    for (t, r) in targets.iter().zip(&mut runs) {
        if r.is_empty() {
            println!("| {} | skipped (tool missing) | | | | |", t.name);
            continue;
        }
        let m = median(r);
        let opt = |v: Option<f64>, p: usize| v.map_or("-".into(), |v| format!("{v:.p$}"));
        println!(
            "| {} | {:.0} | {:.0} | {} | {} | {} |",
            t.name,
            m.rps,
            m.p50_us,
            opt(m.p99_us, 0),
            opt(m.cpu_us, 1),
            m.errors
        );
        med.push((t.name, m));
    }
    let Some((_, sg)) = med.iter().find(|(n, _)| *n == "sandgate") else {
        return;
    };
    for (name, o) in med.iter().filter(|(n, _)| *n != "sandgate") {
        let cpu = sg
            .cpu_us
            .zip(o.cpu_us)
            .map_or(String::new(), |(a, b)| format!(", CPU/req ×{:.2}", a / b));
        let p99 = sg
            .p99_us
            .zip(o.p99_us)
            .map_or(String::new(), |(a, b)| format!(", p99 ×{:.2}", a / b));
        println!(
            "- sandgate vs {name}: req/s ×{:.2}{cpu}{p99}",
            sg.rps / o.rps.max(1.0)
        );
    }
}

/// Ramps the offered load up (wrk connections: 250, 500, 1000, 2000, 4000; 3 s each) until
/// p99 passes 50 ms or errors start; prints the highest rate served within that bound. (A
/// fixed-rate generator sharing CPU 1 with the origin tops out near 20k req/s by itself, so
/// the ramp is in connections.)
fn stress(targets: &[&Target]) {
    println!("\n### Stress ramp (wrk, 250 to 4000 connections, 3 s a step, until p99 > 50 ms or errors)\n");
    for t in targets {
        let mut held: Option<(u32, Run)> = None;
        for conns in [250u32, 500, 1000, 2000, 4000] {
            let args = [
                "-t1".into(),
                format!("-c{conns}"),
                "-d3s".into(),
                "--latency".into(),
                format!("http://127.0.0.1:{}{SMALL_PATH}", t.port),
            ];
            let Some(r) = run_tool("wrk", &args, 1, t.pid) else {
                return;
            };
            if r.errors > 0 || r.p99_us.unwrap_or(f64::MAX) > 50_000.0 {
                break;
            }
            if held.as_ref().is_none_or(|(_, h)| r.rps > h.rps) {
                held = Some((conns, r));
            }
        }
        match held {
            Some((c, r)) => println!(
                "- {}: {:.0} req/s at {c} connections, p99 {:.0} µs",
                t.name,
                r.rps,
                r.p99_us.unwrap_or(0.0)
            ),
            None => println!(
                "- {}: p99 over 50 ms or errors from 250 connections on",
                t.name
            ),
        }
    }
}

/// 0 to 5,000 connections within one second, each sending one request a second.
fn spike(targets: &[&Target], conns: u64) {
    println!("\n### Spike: 0 to {conns} connections within 1 s, one request a second each, 6 s\n");
    println!("| target | errors | p99 µs | p99 of the last 2 s µs | 250 ms windows over 2× that until |\n|---|---:|---:|---:|---:|");
    for t in targets {
        let env = [
            ("SANDGATE_BENCH_TARGET", format!("127.0.0.1:{}", t.port)),
            ("SANDGATE_BENCH_CONNS", conns.to_string()),
            ("SANDGATE_BENCH_SECS", "6".to_string()),
        ];
        let mut c = spawn_role("spike", &env, Some(1));
        let line = read_line(&mut c);
        let _ = c.wait();
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [errors, p99, steady, until] = f[..] {
            println!("| {} | {errors} | {p99} | {steady} | {until} ms |", t.name);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// RSS per idle keep-alive connection, and RSS after they close against before.
fn idle(targets: &[&Target], conns: u64) {
    println!("\n### Idle keep-alive connections ({conns}, each answered once, then idle 3 s)\n");
    println!("| target | RSS before KiB | RSS open KiB | per connection KiB | RSS 3 s after close KiB | after/before |\n|---|---:|---:|---:|---:|---:|");
    for t in targets {
        let Some(pid) = t.pid else { continue };
        let before = rss_kib(pid);
        let env = [
            ("SANDGATE_BENCH_TARGET", format!("127.0.0.1:{}", t.port)),
            ("SANDGATE_BENCH_CONNS", conns.to_string()),
        ];
        let mut c = spawn_role("idle", &env, Some(1));
        let opened = read_line(&mut c);
        std::thread::sleep(Duration::from_secs(3));
        let open = rss_kib(pid);
        if let Some(mut stdin) = c.stdin.take() {
            let _ = stdin.write_all(b"close\n");
        }
        let _ = read_line(&mut c);
        let _ = c.wait();
        std::thread::sleep(Duration::from_secs(3));
        let after = rss_kib(pid);
        let n: f64 = opened
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        println!(
            "| {} ({opened}) | {before} | {open} | {:.2} | {after} | {:.2} |",
            t.name,
            (open.saturating_sub(before)) as f64 / n.max(1.0),
            after as f64 / before.max(1) as f64
        );
    }
}

fn orchestrate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secs = env_u64("SANDGATE_BENCH_SECS", 5);
    let rounds = env_u64("SANDGATE_BENCH_ROUNDS", 3).max(1);
    let (_origin, origin_port, origin_kind) = origin(dir.path());
    println!(
        "e2e: origin {origin_kind} on CPU 1, proxies one worker on CPU 0, load on CPU 1; {rounds} rounds of {secs}s interleaved, medians"
    );
    let direct = Target {
        name: "direct",
        port: origin_port,
        h2_port: None,
        pid: None,
        _proc: None,
    };
    let sg = sandgate(dir.path(), "sandgate", origin_port, None).expect("sandgate starts");
    let access = Some("warn,sandgate::access=info");
    let sg_log =
        sandgate(dir.path(), "sandgate+log", origin_port, access).expect("sandgate starts");
    let nginx = external(dir.path(), "nginx", origin_port);
    let haproxy = external(dir.path(), "haproxy", origin_port);
    let proxies: Vec<&Target> = [Some(&sg), nginx.as_ref(), haproxy.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    let with_direct: Vec<&Target> = std::iter::once(&direct)
        .chain(proxies.iter().copied())
        .collect();
    if which("wrk").is_none() || which("h2load").is_none() {
        println!("wrk or h2load missing (apt-get install wrk nghttp2-client): their scenarios are skipped");
    }
    let only = std::env::var("SANDGATE_BENCH_ONLY").unwrap_or_default();
    let run = |id: &str| only.is_empty() || only.split(',').any(|o| o.trim() == id);
    let idle_conns = env_u64("SANDGATE_BENCH_IDLE", 5000);
    let table: [(&str, &str, &[&Target]); 6] = [
        ("small-50", "Small body, 50 connections", &with_direct),
        ("small-1000", "Small body, 1000 connections", &with_direct),
        ("64k-50", "64 KiB body, 50 connections", &with_direct),
        (
            "h2c",
            "h2c, 10 connections × 10 streams (p50 column: mean)",
            &proxies,
        ),
        ("rate-5k", "Fixed 5k req/s, 50 connections", &with_direct),
        (
            "log-on",
            "Access log off (sandgate) and on (sandgate+log), small body, 50 connections",
            &[&sg, &sg_log],
        ),
    ];
    for (id, title, targets) in table {
        if run(id) {
            scenario(title, id, targets, rounds, secs);
        }
    }
    if run("stress") {
        stress(&with_direct);
    }
    if run("spike") {
        spike(&proxies, idle_conns);
    }
    if run("idle") {
        idle(&proxies, idle_conns);
    }
    if run("reload") {
        reloads(dir.path(), origin_port);
    }
}

/// SIGHUPs sent in the reload scenario, 100 ms apart.
const RELOADS: u64 = 100;

/// Reloads under load: [`RELOADS`] SIGHUPs to a sandgate of its own (logging its reloads,
/// to count those applied) while wrk keeps 50 connections busy; every request must succeed.
fn reloads(dir: &Path, origin: u16) {
    if which("wrk").is_none() {
        return;
    }
    let name = "sandgate+reload";
    let Some(t) = sandgate(dir, name, origin, Some("warn,sandgate::reload=info")) else {
        println!("{name}: did not start, skipped");
        return;
    };
    let Some(pid) = t.pid else { return };
    // The first once wrk's connections are up.
    let (after, every) = (Duration::from_secs(1), Duration::from_millis(100));
    let hup = support::sighups(pid, after, every, RELOADS, Default::default());
    let secs = RELOADS / 10 + 3;
    let args = [
        "-t1".to_string(),
        "-c50".into(),
        format!("-d{secs}s"),
        "--latency".into(),
        format!("http://127.0.0.1:{}{SMALL_PATH}", t.port),
    ];
    let run = run_tool("wrk", &args, 1, t.pid);
    let sent = hup.join().unwrap_or(0);
    // Each applied reload logs one line.
    let applied = std::fs::read_to_string(dir.join(format!("{name}.log")))
        .map_or(0, |l| l.matches("config reloaded").count());
    println!("\n### Reloads under load (wrk, 50 connections, a SIGHUP every 100 ms)\n");
    match run {
        Some(r) => println!(
            "- {sent} SIGHUPs, {applied} reloads applied; {:.0} requests, {} failed; {:.0} req/s, p99 {} µs",
            r.requests,
            r.errors,
            r.rps,
            r.p99_us.map_or("-".into(), |p| format!("{p:.0}"))
        ),
        None => println!("- wrk did not run"),
    }
}
