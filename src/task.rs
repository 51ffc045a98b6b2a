//! Supervised background tasks: a task that panics is logged, counted in
//! `sandgate_task_restarts_total{task}`, and started again after a pause, so one bug in the
//! health checker, the reloader or the metrics upkeep does not silently switch it off.

use std::future::Future;
use std::time::Duration;

use crate::metrics::TASK_RESTARTS_TOTAL;

/// Pause before a panicked task starts again.
const RESTART_AFTER: Duration = Duration::from_secs(1);

/// Runs the task `make` builds, and builds and runs it again each time it panics. Ends when
/// the task ends normally (or is cancelled).
pub fn supervise<F, Fut>(name: &'static str, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let restarts = metrics::counter!(TASK_RESTARTS_TOTAL, "task" => name);
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let why = e.into_panic();
                    let text = why
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| why.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    tracing::error!(task = name, panic = %text, "background task panicked; restarting it");
                    restarts.increment(1);
                    tokio::time::sleep(RESTART_AFTER).await;
                }
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_until_it_ends() {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        let h = supervise("test", move || {
            let r = Arc::clone(&r);
            async move {
                if r.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("boom");
                }
            }
        });
        h.await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "ran again after each of two panics"
        );
    }
}
