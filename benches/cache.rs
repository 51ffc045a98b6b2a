//! Cache hit path benchmark: `cargo bench --bench cache`.
//!
//! One origin that marks its small response `public, max-age=3600`. Measured in one run, with
//! rounds interleaved (direct, sandgate, nginx; three times): keep-alive GETs straight to the
//! origin, cache hits through sandgate (one worker), and cache hits through nginx's
//! `proxy_cache` (one worker; skipped when nginx is not installed). The proxy runs pinned to
//! CPU 0, the origin and the load generator to CPU 1 (`taskset`); CPU time per request is the
//! proxy process's own utime + stime. Prints each round, the medians and the ratios.
//!
//! Knobs: SANDGATE_BENCH_SECS (default 5), SANDGATE_BENCH_CONNS (default 32),
//! SANDGATE_BENCH_ROUNDS (default 3).

use std::path::Path;

mod support;

use support::load::{
    env_u64, nginx_args, nginx_conf, print_table, run_load, start_external, Measured,
};
use support::{free_port, spawn_backend_with, spawn_sandgate_on, BODY};

const PROXY_CPU: Option<usize> = Some(0);
const SIDE_CPU: Option<usize> = Some(1);

fn main() {
    support::main_with_load(orchestrate);
}

fn orchestrate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_origin, origin) = spawn_backend_with(
        &[(
            "SANDGATE_BENCH_CACHE_CONTROL",
            "public, max-age=3600".to_owned(),
        )],
        SIDE_CPU,
    );
    let rounds = env_u64("SANDGATE_BENCH_ROUNDS", 3);
    println!(
        "cache: keep-alive HTTP/1.1 GET of one cached {}-byte response, {} connections, {}s per run, {rounds} interleaved rounds; proxy on CPU 0, origin and load on CPU 1",
        BODY.len(),
        env_u64("SANDGATE_BENCH_CONNS", 32),
        env_u64("SANDGATE_BENCH_SECS", 5),
    );

    let sg_port = free_port();
    let sg_yaml = format!(
        "listeners: [{{ name: bench, address: 127.0.0.1:{sg_port} }}]\nruntime: {{ worker_threads: 1 }}\n\
         routes: [{{ name: bench, pool: b, cache: {{ enabled: true }} }}]\n\
         pools:\n  b:\n    backends: [{{ address: 127.0.0.1:{origin} }}]\n"
    );
    let sg = spawn_sandgate_on(dir.path(), &sg_yaml, sg_port, PROXY_CPU);

    std::fs::create_dir_all(dir.path().join("cache")).ok();
    let d = dir.path().display().to_string();
    let nginx_conf = |port: u16| {
        nginx_conf(
            dir.path(),
            port,
            &format!("proxy_cache_path {d}/cache levels=1:2 keys_zone=c:10m max_size=100m inactive=60m use_temp_path=off;"),
            &format!("server 127.0.0.1:{origin}; keepalive 64;"),
            "proxy_cache c;",
        )
    };
    let nginx_args = |conf: &Path| nginx_args(dir.path(), conf);
    let nginx = start_external(
        "nginx",
        "nginx.conf",
        &nginx_conf,
        &nginx_args,
        dir.path(),
        PROXY_CPU,
    );

    let mut all: Vec<Vec<Measured>> = Vec::new();
    for round in 1..=rounds {
        let mut r = vec![
            run_load("direct", origin, "/bench", &[], SIDE_CPU),
            run_load("sandgate", sg_port, "/bench", &[sg.0.id()], SIDE_CPU),
        ];
        if let Some((p, port)) = &nginx {
            r.push(run_load("nginx", *port, "/bench", &[p.0.id()], SIDE_CPU));
        }
        println!("\nround {round}");
        print_table(&r);
        all.push(r);
    }

    let median = |name: &str, f: &dyn Fn(&Measured) -> f64| -> Option<f64> {
        let mut v: Vec<f64> = all
            .iter()
            .flatten()
            .filter(|m| m.name == name)
            .map(f)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    println!("\nmedians over {rounds} rounds:");
    for name in ["direct", "sandgate", "nginx"] {
        if let Some(rps) = median(name, &|m| m.rps) {
            let cpu = median(name, &|m| m.cpu_us.unwrap_or(f64::NAN)).filter(|c| c.is_finite());
            let p99 = median(name, &|m| m.p99 as f64).unwrap_or(0.0);
            println!(
                "  {name:<8} {rps:>8.0} req/s  p99 {p99:>6.0} µs  CPU/req {}",
                cpu.map_or("-".into(), |c| format!("{c:.1} µs"))
            );
        }
    }
    let sg_rps = median("sandgate", &|m| m.rps).unwrap_or(0.0);
    for other in ["direct", "nginx"] {
        if let Some(o) = median(other, &|m| m.rps) {
            let cpu = match (
                median("sandgate", &|m| m.cpu_us.unwrap_or(f64::NAN)),
                median(other, &|m| m.cpu_us.unwrap_or(f64::NAN)),
            ) {
                (Some(a), Some(b)) if a.is_finite() && b.is_finite() && b > 0.0 => {
                    format!(", CPU/req x{:.2}", a / b)
                }
                _ => String::new(),
            };
            println!(
                "sandgate hits vs {other}: throughput x{:.2}{cpu}",
                sg_rps / o.max(1.0)
            );
        }
    }
}
