//! Load roles of the end-to-end benchmark that wrk and h2load do not cover (this binary
//! re-executed with SANDGATE_BENCH_ROLE): a fixed request rate with latency measured from
//! each request's scheduled time, thousands of idle keep-alive connections, and a spike of
//! connections. Every loop is bounded in count and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::current_thread;
use super::load::{env_u64, gather, percentile};

fn target() -> SocketAddr {
    std::env::var("SANDGATE_BENCH_TARGET")
        .expect("target")
        .parse()
        .expect("target addr")
}

fn path() -> String {
    std::env::var("SANDGATE_BENCH_PATH").unwrap_or_else(|_| "/small".into())
}

async fn connect(target: SocketAddr) -> Option<SendRequest<Empty<Bytes>>> {
    let s = tokio::net::TcpStream::connect(target).await.ok()?;
    s.set_nodelay(true).ok();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(send)
}

/// One GET; true on a 200 with its whole body.
async fn get(send: &mut SendRequest<Empty<Bytes>>, path: &str) -> bool {
    let Ok(req) = hyper::Request::get(path)
        .header("host", "bench.local")
        .body(Empty::new())
    else {
        return false;
    };
    match send.send_request(req).await {
        Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
        _ => false,
    }
}

/// The `rate` role: SANDGATE_BENCH_RATE requests per second in total over
/// SANDGATE_BENCH_CONNS connections for SANDGATE_BENCH_SECS. Latency counts from when a
/// request was due, so a stalled proxy cannot hide its queue (no coordinated omission).
/// Prints `requests errors p50_us p99_us elapsed_s`.
pub fn rate() {
    let (target, path) = (target(), path());
    let rate = env_u64("SANDGATE_BENCH_RATE", 5000).max(1) as f64;
    let conns = env_u64("SANDGATE_BENCH_CONNS", 50).max(1);
    let secs = env_u64("SANDGATE_BENCH_SECS", 5);
    current_thread().block_on(async move {
        let start = Instant::now() + Duration::from_millis(100);
        let deadline = start + Duration::from_secs(secs);
        let interval = Duration::from_secs_f64(conns as f64 / rate);
        let mut tasks = Vec::new();
        for i in 0..conns {
            let path = path.clone();
            let offset = interval.mul_f64(i as f64 / conns as f64);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let Some(mut send) = connect(target).await else {
                    return (lat, 1u64);
                };
                let mut due = start + offset;
                while due < deadline && lat.len() < 1_000_000 {
                    tokio::time::sleep_until(due).await;
                    if !get(&mut send, &path).await {
                        return (lat, 1);
                    }
                    lat.push(u32::try_from(due.elapsed().as_micros()).unwrap_or(u32::MAX));
                    due += interval;
                }
                (lat, 0)
            }));
        }
        let (mut all, errors) = gather(tasks).await;
        all.sort_unstable();
        let p50 = percentile(&all, 0.5);
        let p99 = percentile(&all, 0.99);
        println!("{} {errors} {p50} {p99} {secs}", all.len());
    });
}

/// The `idle` role: opens SANDGATE_BENCH_CONNS keep-alive connections, each answered once,
/// prints `open N errors`, keeps them idle until stdin closes, then closes them all and
/// prints `closed`.
pub fn idle() {
    let target = target();
    let conns = env_u64("SANDGATE_BENCH_CONNS", 5000);
    current_thread().block_on(async move {
        let gate = Arc::new(tokio::sync::Semaphore::new(200));
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let gate = Arc::clone(&gate);
            tasks.push(tokio::spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                let mut send = tokio::time::timeout(Duration::from_secs(10), connect(target))
                    .await
                    .ok()??;
                get(&mut send, "/small").await.then_some(send)
            }));
        }
        let mut open = Vec::new();
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                open.push(s);
            }
        }
        println!("open {} {}", open.len(), conns as usize - open.len());
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            let _ = std::io::stdin().read_line(&mut sink);
        })
        .await;
        drop(open);
        tokio::time::sleep(Duration::from_millis(200)).await;
        println!("closed");
    });
}

/// The `spike` role: SANDGATE_BENCH_CONNS connections opened evenly within one second, each
/// sending one request a second until SANDGATE_BENCH_SECS. Prints `errors p99_us
/// steady_p99_us recovered_ms`: the p99 of all requests, that of the last two seconds, and
/// when the p99 of 250 ms windows last exceeded twice the steady one.
pub fn spike() {
    let (target, path) = (target(), path());
    let conns = env_u64("SANDGATE_BENCH_CONNS", 5000).max(1);
    let secs = env_u64("SANDGATE_BENCH_SECS", 6).max(3);
    current_thread().block_on(async move {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(secs);
        let mut tasks = Vec::new();
        for i in 0..conns {
            let path = path.clone();
            let first = start + Duration::from_secs_f64(i as f64 / conns as f64);
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(first).await;
                let mut samples = Vec::new();
                let Ok(Some(mut send)) =
                    tokio::time::timeout(Duration::from_secs(5), connect(target)).await
                else {
                    return (samples, 1u64);
                };
                let mut due = first;
                while due < deadline {
                    tokio::time::sleep_until(due).await;
                    if !get(&mut send, &path).await {
                        return (samples, 1);
                    }
                    let at = (due - start).as_millis() as u32;
                    samples.push((at, due.elapsed().as_micros() as u32));
                    due += Duration::from_secs(1);
                }
                (samples, 0)
            }));
        }
        let (all, errors) = gather(tasks).await;
        let steady_from = (secs as u32 - 2) * 1000;
        let mut lat: Vec<u32> = all.iter().map(|s| s.1).collect();
        lat.sort_unstable();
        let mut steady: Vec<u32> = all
            .iter()
            .filter(|s| s.0 >= steady_from)
            .map(|s| s.1)
            .collect();
        steady.sort_unstable();
        let steady_p99 = percentile(&steady, 0.99).max(1);
        let mut recovered = 0;
        for w in 0..(secs as u32 * 4) {
            let (lo, hi) = (w * 250, w * 250 + 250);
            let mut win: Vec<u32> = all
                .iter()
                .filter(|s| s.0 >= lo && s.0 < hi)
                .map(|s| s.1)
                .collect();
            win.sort_unstable();
            if percentile(&win, 0.99) > 2 * steady_p99 {
                recovered = hi;
            }
        }
        println!(
            "{errors} {} {steady_p99} {recovered}",
            percentile(&lat, 0.99)
        );
    });
}
