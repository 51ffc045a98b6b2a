//! Bounded keep-alive load for tests that change things under traffic (reloads, upgrades).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;

use super::{client, empty};

/// Keep-alive GET load from `workers` clients until `stop` is set (bounded: at most 20 000
/// requests each). Returns (ok, failed) once stopped.
pub fn load_workers(
    url: &str,
    workers: usize,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<(u32, u32)>> {
    (0..workers)
        .map(|_| {
            let (url, stop) = (url.to_owned(), Arc::clone(stop));
            tokio::spawn(async move {
                let c = client();
                let (mut ok, mut failed) = (0u32, 0u32);
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match c
                        .request(Request::get(&url).body(empty()).expect("request"))
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.into_body().collect().await;
                            ok += 1;
                        }
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect()
}

/// Sums the (ok, failed) counts of [`load_workers`].
pub async fn load_totals(workers: Vec<tokio::task::JoinHandle<(u32, u32)>>) -> (u32, u32) {
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await.expect("load worker");
        ok += o;
        failed += f;
    }
    (ok, failed)
}
