//! Polling helpers: metric values from the admin API, and bounded waits for a condition.

use std::time::Duration;

use super::{get, Proxy};

/// The value of the first metric line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The proxy's Prometheus text.
pub async fn metrics_text(proxy: &Proxy) -> String {
    get(&proxy.admin_url("/metrics")).await.text()
}

/// Polls `f` every 20 ms until it holds (at most 10 s).
pub async fn wait_until(f: impl Fn() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 10s");
}

/// Polls `f` every 20 ms until it holds (at most 10 s).
pub async fn wait_until_async<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not reached in 10s");
}
