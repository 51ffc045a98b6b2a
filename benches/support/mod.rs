//! Shared by the load benchmarks: this binary re-executed as a backend process, process
//! handles that clean up, and port helpers. Only loopback addresses are used.
#![allow(dead_code)]

pub mod load;
pub mod probe;
pub mod tools;
pub mod ws;

use std::convert::Infallible;
use std::io::{BufRead, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The small response body every bench backend sends.
pub const BODY: &[u8] = b"{\"sandbox\":\"ok\",\"result\":\"hello from the sandbox\"}\n";

/// A child process that is killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The sandgate binary the benchmarks measure: a plain `cargo build --release`, in
/// `target/bench-bin` (built on first use), or `SANDGATE_BENCH_BIN` when set. Not the copy
/// `cargo bench` builds beside the benchmarks: that one has the dev-dependencies' features on,
/// and tokio's `test-util` puts a mutex in every clock read and timer, which no deployed
/// sandgate has.
pub fn sandgate_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("SANDGATE_BENCH_BIN") {
            return p;
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target").join("bench-bin");
        println!(
            "building the release binary to measure in {}",
            dir.display()
        );
        let built = std::process::Command::new(option_env!("CARGO").unwrap_or("cargo"))
            .args(["build", "--release", "--bin", "sandgate", "--target-dir"])
            .arg(&dir)
            .current_dir(root)
            .stdout(Stdio::null())
            .status();
        match built {
            Ok(s) if s.success() => dir.join("release").join("sandgate").display().to_string(),
            other => panic!("cannot build the release binary to measure: {other:?}"),
        }
    })
}

/// A single-threaded runtime.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `main` of a load benchmark: runs the role this process was started as (a backend or
/// the load generator), or else `orchestrate`.
pub fn main_with_load(orchestrate: impl FnOnce()) {
    let load_role = |role: &str| {
        match role {
            "load" => load::load(),
            "rate" => probe::rate(),
            "idle" => probe::idle(),
            "spike" => probe::spike(),
            _ => return false,
        }
        true
    };
    if run_role(&load_role) {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` / test harness probing
    }
    orchestrate();
}

/// If this process was started as a role, runs it and returns true.
pub fn run_role(extra: &dyn Fn(&str) -> bool) -> bool {
    match std::env::var("SANDGATE_BENCH_ROLE").as_deref() {
        Ok("backend") => {
            backend();
            true
        }
        Ok(role) => extra(role),
        Err(_) => false,
    }
}

/// Serves BODY on 127.0.0.1:0 and prints the port on stdout.
fn backend() {
    current_thread().block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", l.local_addr().expect("addr").port());
        std::io::stdout().flush().ok();
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            s.set_nodelay(true).ok();
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = if req.uri().path() == "/64k" {
                        Bytes::from(vec![b'x'; 64 * 1024])
                    } else {
                        Bytes::from_static(BODY)
                    };
                    let mut r = hyper::Response::new(Full::new(body));
                    if let Ok(cc) = std::env::var("SANDGATE_BENCH_CACHE_CONTROL") {
                        if let Ok(v) = http::HeaderValue::from_str(&cc) {
                            r.headers_mut().insert(http::header::CACHE_CONTROL, v);
                        }
                    }
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// Starts this binary as `role` with extra environment, pinned to `cpu` if given, with its
/// open-file limit raised (thousands of connections) and its stdin a pipe (the `idle` role
/// waits on it).
pub fn spawn_role(role: &str, envs: &[(&str, String)], cpu: Option<usize>) -> Child {
    let exe = std::env::current_exe().expect("exe");
    let mut c = tools::limited(&exe.display().to_string(), cpu);
    c.env("SANDGATE_BENCH_ROLE", role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.spawn().expect("spawn role")
}

/// Starts a backend process; returns it and its port.
pub fn spawn_backend() -> (Proc, u16) {
    spawn_backend_with(&[], None)
}

/// Starts a backend process with extra environment (e.g. SANDGATE_BENCH_CACHE_CONTROL),
/// pinned to `cpu` if given.
pub fn spawn_backend_with(envs: &[(&str, String)], cpu: Option<usize>) -> (Proc, u16) {
    let mut c = spawn_role("backend", envs, cpu);
    let port = read_line(&mut c).parse::<u16>().expect("backend port");
    (Proc(c), port)
}

/// One line of a child's stdout.
pub fn read_line(child: &mut Child) -> String {
    let out = child.stdout.as_mut().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("read");
    line.trim().to_owned()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// Waits (up to 10 s) until something listens on `port`.
pub fn wait_port(port: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Starts sandgate with `yaml`; returns it once its first listener port accepts.
pub fn spawn_sandgate(dir: &std::path::Path, yaml: &str, port: u16) -> Proc {
    spawn_sandgate_on(dir, yaml, port, None)
}

/// Like [`spawn_sandgate`], pinned to `cpu` if given.
pub fn spawn_sandgate_on(dir: &std::path::Path, yaml: &str, port: u16, cpu: Option<usize>) -> Proc {
    let cfg = dir.join("sandgate.yaml");
    std::fs::write(&cfg, yaml).expect("write config");
    let p = Proc(
        load::pinned(sandgate_bin(), cpu)
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sandgate"),
    );
    assert!(wait_port(port), "sandgate did not start");
    p
}

/// Sends `pid` a SIGHUP every `every`, the first after `after`, until `stop` is set or `max`
/// have been sent (or one cannot be); the thread returns how many were sent.
pub fn sighups(
    pid: u32,
    after: Duration,
    every: Duration,
    max: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let mut sent = 0;
        while sent < max && !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let ok = std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                break;
            }
            sent += 1;
            std::thread::sleep(every);
        }
        sent
    })
}
