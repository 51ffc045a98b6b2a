//! Admission: a backend's in-flight slot and its pool's FIFO wait queue, as one object that
//! both the pipeline and the queue use, so that neither the backend nor the balancer knows the
//! queue.
//!
//! A [`Slot`] counts one request in flight on a backend until it is dropped (when the response
//! body ends or the client goes away). When every eligible backend is at its cap, requests wait
//! in the pool's [`WaitQueue`]; a freed slot is handed straight to the oldest waiter (the
//! backend's in-flight count never drops, so a new arrival cannot take it first). A waiter that
//! times out or whose client disconnects leaves at once: its entry is skipped when reached.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::oneshot;

use crate::backend::BackendState;
use crate::metrics::{QUEUE_DEPTH, QUEUE_REJECTED_TOTAL, QUEUE_WAIT};

/// One in-flight slot of a backend; released on drop, or handed to the oldest waiter of the
/// pool's queue when someone waits.
pub struct Slot {
    state: Arc<BackendState>,
    /// The pool's queue; None for slots outside any snapshot (benchmarks, tests of selection).
    queue: Option<Arc<WaitQueue>>,
    /// False once the slot has been handed on or given back by other means.
    armed: bool,
}

impl Slot {
    /// Takes one of the backend's `cap` slots (0: unlimited), or None when all are taken.
    pub fn try_take(state: &Arc<BackendState>, cap: u32, queue: &Arc<WaitQueue>) -> Option<Slot> {
        state.try_take(cap).then(|| Slot {
            state: Arc::clone(state),
            queue: Some(Arc::clone(queue)),
            armed: true,
        })
    }

    /// Counts one request in flight on `state`, with no cap and no queue (for exercising
    /// selection outside a snapshot).
    pub fn hold(state: &Arc<BackendState>) -> Slot {
        state.take();
        Slot {
            state: Arc::clone(state),
            queue: None,
            armed: true,
        }
    }

    /// The backend this slot belongs to.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.state
    }

    fn rearmed(&self) -> Slot {
        Slot {
            state: Arc::clone(&self.state),
            queue: self.queue.clone(),
            armed: true,
        }
    }

    /// Forgets the slot without releasing it (its count is accounted for elsewhere).
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Some(q) = &self.queue {
            if self.state.is_healthy() && q.has_waiters() {
                // Hand the slot over: the count stays as it is. `hand_off` tries waiters in
                // order and gives the slot back only when none is left to take it.
                match q.hand_off(self.rearmed()) {
                    Ok(()) => {
                        self.armed = false;
                        return;
                    }
                    Err(unused) => unused.disarm(),
                }
            }
        }
        self.state.release();
    }
}

/// Why a request was not served from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The queue already holds `max` waiters.
    Full,
    /// No slot came within the queue timeout.
    Timeout,
}

/// The wait queue of one pool; kept across reloads by pool name.
pub struct WaitQueue {
    // std Mutex: held to push or pop one sender, never across an await.
    waiters: Mutex<VecDeque<oneshot::Sender<Slot>>>,
    /// Waiters still waiting (entries of departed ones may linger in `waiters`).
    depth: AtomicUsize,
    depth_gauge: Gauge,
    wait: Histogram,
    rejected_full: Counter,
    rejected_timeout: Counter,
}

/// Decrements the depth when a waiter leaves, however it leaves.
struct Waiting<'a>(&'a WaitQueue);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.depth.fetch_sub(1, Ordering::AcqRel);
        self.0.depth_gauge.decrement(1.0);
    }
}

impl WaitQueue {
    /// An empty queue for `pool`.
    pub fn new(pool: &str) -> Self {
        let p = pool.to_owned();
        Self {
            waiters: Mutex::new(VecDeque::new()),
            depth: AtomicUsize::new(0),
            depth_gauge: metrics::gauge!(QUEUE_DEPTH, "pool" => p.clone()),
            wait: metrics::histogram!(QUEUE_WAIT, "pool" => p.clone()),
            rejected_full: metrics::counter!(QUEUE_REJECTED_TOTAL, "pool" => p.clone(), "reason" => "full"),
            rejected_timeout: metrics::counter!(QUEUE_REJECTED_TOTAL, "pool" => p, "reason" => "timeout"),
        }
    }

    /// Whether anyone is waiting.
    #[inline]
    pub fn has_waiters(&self) -> bool {
        self.depth.load(Ordering::Acquire) > 0
    }

    /// Waiters now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Acquire)
    }

    /// Gives `slot` to the oldest waiter still waiting, trying the next one when a waiter
    /// leaves at the same moment; returns the slot when nobody is left to take it.
    fn hand_off(&self, mut slot: Slot) -> Result<(), Slot> {
        loop {
            let tx = {
                let mut q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
                loop {
                    match q.pop_front() {
                        Some(tx) if tx.is_closed() => continue,
                        other => break other,
                    }
                }
            };
            match tx {
                None => return Err(slot),
                Some(tx) => match tx.send(slot) {
                    Ok(()) => return Ok(()),
                    Err(back) => slot = back,
                },
            }
        }
    }

    /// Waits for a slot, up to `timeout`, if fewer than `max` wait already.
    pub async fn wait(&self, max: usize, timeout: Duration) -> Result<Slot, Rejected> {
        if self.depth.load(Ordering::Acquire) >= max {
            self.rejected_full.increment(1);
            return Err(Rejected::Full);
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() > 2 * max + 16 {
                q.retain(|t| !t.is_closed());
            }
            q.push_back(tx);
            self.depth.fetch_add(1, Ordering::AcqRel);
        }
        self.depth_gauge.increment(1.0);
        let _waiting = Waiting(self);
        let start = Instant::now();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(slot)) => {
                self.wait.record(start.elapsed().as_secs_f64());
                Ok(slot)
            }
            _ => {
                self.rejected_timeout.increment(1);
                Err(Rejected::Timeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Slot, WaitQueue};
    use crate::backend::BackendState;

    fn backend() -> (Arc<BackendState>, Arc<WaitQueue>) {
        let b = Arc::new(BackendState::new("p", "127.0.0.1:1".parse().unwrap(), true));
        (b, Arc::new(WaitQueue::new("p")))
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiter_and_counts_stay_exact() {
        let (b, queue) = backend();
        let first = Slot::try_take(&b, 1, &queue).expect("free slot");
        assert!(Slot::try_take(&b, 1, &queue).is_none(), "cap 1");
        let q = Arc::clone(&queue);
        let waiter = tokio::spawn(async move { q.wait(5, Duration::from_secs(5)).await });
        while !queue.has_waiters() {
            tokio::task::yield_now().await;
        }
        drop(first);
        let handed = waiter.await.unwrap().expect("the waiter got the slot");
        assert_eq!(b.inflight(), 1, "handed over, not released and retaken");
        drop(handed);
        assert_eq!(b.inflight(), 0);
    }

    #[tokio::test]
    async fn a_departed_waiter_never_double_releases() {
        let (b, queue) = backend();
        let slot = Slot::try_take(&b, 1, &queue).expect("free slot");
        // A waiter that gives up: its entry stays queued, closed.
        let r = queue.wait(5, Duration::from_millis(1)).await;
        assert!(r.is_err());
        // Another waiter that is still there.
        let q2 = Arc::clone(&queue);
        let waiter = tokio::spawn(async move { q2.wait(5, Duration::from_secs(5)).await });
        while !queue.has_waiters() {
            tokio::task::yield_now().await;
        }
        drop(slot);
        let handed = waiter.await.unwrap().expect("the live waiter got the slot");
        assert_eq!(b.inflight(), 1);
        drop(handed);
        assert_eq!(b.inflight(), 0, "released exactly once");
    }

    #[test]
    fn held_slots_count_without_a_queue() {
        let (b, _) = backend();
        let s = Slot::hold(&b);
        assert_eq!(s.backend().inflight(), 1);
        drop(s);
        assert_eq!(b.inflight(), 0);
    }
}
