//! Admission: a backend's in-flight slot and its pool's FIFO wait queue, as one object that
//! both the pipeline and the queue use, so that neither the backend nor the balancer knows the
//! queue.
//!
//! A [`Slot`] counts one request in flight on a backend until it is dropped (when the response
//! body ends or the client goes away). When every eligible backend is at its cap, requests wait
//! in the pool's [`WaitQueue`]; a freed slot is handed straight to the oldest waiter of the
//! highest priority class that has one (the backend's in-flight count never drops, so a new
//! arrival cannot take it first). A `low` waiter that has waited `queue.max_wait_low` counts as
//! `normal`. A waiter that times out or whose client disconnects leaves at once: its entry is
//! skipped when reached.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::oneshot;

use crate::backend::BackendState;
use crate::config::Priority;
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
            // A slot of a backend that cannot serve (unhealthy, breaker open) is not handed to
            // a waiter, who would only fail: it is released, and waiters wait on.
            let serves = self.state.is_healthy() && self.state.breaker_available(Instant::now());
            if serves && q.has_waiters() {
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

/// One waiter: where its slot goes, which backends it takes (None: any), its class, and when
/// a `low` one counts as `normal`.
struct Waiter {
    tx: oneshot::Sender<Slot>,
    accepts: Option<Arc<[SocketAddr]>>,
    class: Priority,
    /// tokio's clock, so that tests can pause it.
    promote_at: tokio::time::Instant,
}

impl Waiter {
    fn takes(&self, addr: &SocketAddr) -> bool {
        self.accepts.as_ref().is_none_or(|a| a.contains(addr))
    }

    /// Its class now: a `low` waiter past its promotion time is `normal`.
    fn class_at(&self, now: tokio::time::Instant) -> Priority {
        match self.class {
            Priority::Low if now >= self.promote_at => Priority::Normal,
            c => c,
        }
    }
}

/// The queue's series of one priority class.
struct ClassStats {
    depth: AtomicUsize,
    depth_gauge: Gauge,
    wait: Histogram,
    rejected_full: Counter,
    rejected_timeout: Counter,
}

impl ClassStats {
    fn new(pool: &str, class: Priority) -> Self {
        let (p, c) = (pool.to_owned(), class.as_str());
        Self {
            depth: AtomicUsize::new(0),
            depth_gauge: metrics::gauge!(QUEUE_DEPTH, "pool" => p.clone(), "priority" => c),
            wait: metrics::histogram!(QUEUE_WAIT, "pool" => p.clone(), "priority" => c),
            rejected_full: metrics::counter!(QUEUE_REJECTED_TOTAL, "pool" => p.clone(), "reason" => "full", "priority" => c),
            rejected_timeout: metrics::counter!(QUEUE_REJECTED_TOTAL, "pool" => p, "reason" => "timeout", "priority" => c),
        }
    }
}

/// How a waiter got its slot.
pub enum Waited<T> {
    /// Handed over by a request that finished.
    Handed(Slot),
    /// Found free just after the waiter joined the queue (a slot freed in between).
    Found(T),
}

/// The wait queue of one pool; kept across reloads by pool name.
pub struct WaitQueue {
    // std Mutex: held to push, or to find and remove one waiter, never across an await.
    waiters: Mutex<VecDeque<Waiter>>,
    /// Waiters still waiting (entries of departed ones may linger in `waiters`).
    depth: AtomicUsize,
    /// By class, highest first.
    classes: [ClassStats; 3],
}

/// Decrements the depths when a waiter leaves, however it leaves.
struct Waiting<'a>(&'a WaitQueue, Priority);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.depth.fetch_sub(1, Ordering::AcqRel);
        let c = self.0.class(self.1);
        c.depth.fetch_sub(1, Ordering::AcqRel);
        c.depth_gauge.decrement(1.0);
    }
}

impl WaitQueue {
    /// An empty queue for `pool`.
    pub fn new(pool: &str) -> Self {
        Self {
            waiters: Mutex::new(VecDeque::new()),
            depth: AtomicUsize::new(0),
            classes: Priority::ALL.map(|c| ClassStats::new(pool, c)),
        }
    }

    fn class(&self, c: Priority) -> &ClassStats {
        &self.classes[c as usize]
    }

    /// Marks the queue's metric series as alive.
    pub fn touch_metrics(&self) {
        for c in &self.classes {
            crate::metrics::touch_gauges(&[&c.depth_gauge]);
            crate::metrics::touch(&[&c.rejected_full, &c.rejected_timeout]);
        }
    }

    /// Waiters of class `c` now (by the class they joined with).
    pub fn depth_of(&self, c: Priority) -> usize {
        self.class(c).depth.load(Ordering::Acquire)
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

    /// Gives `slot` to the oldest waiter of the highest class still waiting that takes its
    /// backend, trying the next one when a waiter leaves at the same moment; returns the slot
    /// when nobody is left to take it.
    fn hand_off(&self, mut slot: Slot) -> Result<(), Slot> {
        let addr = slot.state.addr;
        loop {
            let tx = {
                let now = tokio::time::Instant::now();
                let mut q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
                q.retain(|w| !w.tx.is_closed());
                // The queue is in arrival order: the first of the best class wins.
                let mut best: Option<(usize, Priority)> = None;
                for (i, w) in q.iter().enumerate() {
                    let c = w.class_at(now);
                    if w.takes(&addr) && best.is_none_or(|(_, b)| c < b) {
                        best = Some((i, c));
                        if c == Priority::High {
                            break;
                        }
                    }
                }
                best.and_then(|(i, _)| q.remove(i))
            };
            match tx {
                None => return Err(slot),
                Some(w) => match w.tx.send(slot) {
                    Ok(()) => return Ok(()),
                    Err(back) => slot = back,
                },
            }
        }
    }

    /// Waits in class `class` for a slot of a backend in `accepts` (None: any), up to
    /// `timeout`, if fewer than `max` wait already; a `low` waiter counts as `normal` after
    /// `max_wait_low`. Once queued it calls `retry` once: a slot freed between the caller's
    /// last look and its joining the queue is found at once, not lost.
    pub async fn wait<T>(
        &self,
        max: usize,
        timeout: Duration,
        accepts: Option<Arc<[SocketAddr]>>,
        (class, max_wait_low): (Priority, Duration),
        retry: impl FnOnce() -> Option<T>,
    ) -> Result<Waited<T>, Rejected> {
        let stats = self.class(class);
        if self.depth.load(Ordering::Acquire) >= max {
            stats.rejected_full.increment(1);
            return Err(Rejected::Full);
        }
        let (tx, rx) = oneshot::channel();
        let start = tokio::time::Instant::now();
        {
            let mut q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() > 2 * max + 16 {
                q.retain(|w| !w.tx.is_closed());
            }
            q.push_back(Waiter {
                tx,
                accepts,
                class,
                promote_at: start + max_wait_low,
            });
            self.depth.fetch_add(1, Ordering::AcqRel);
            stats.depth.fetch_add(1, Ordering::AcqRel);
        }
        stats.depth_gauge.increment(1.0);
        let _waiting = Waiting(self, class);
        if let Some(found) = retry() {
            // Leaving: the entry is closed with `rx`; a slot already sent to it is dropped
            // with `rx` and handed on from there.
            return Ok(Waited::Found(found));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(slot)) => {
                stats.wait.record(start.elapsed().as_secs_f64());
                Ok(Waited::Handed(slot))
            }
            _ => {
                stats.rejected_timeout.increment(1);
                Err(Rejected::Timeout)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Rejected, Slot, WaitQueue, Waited};
    use crate::backend::BackendState;
    use crate::config::Priority;

    fn backend() -> (Arc<BackendState>, Arc<WaitQueue>) {
        let b = Arc::new(BackendState::new("p", "127.0.0.1:1".parse().unwrap(), true));
        (b, Arc::new(WaitQueue::new("p")))
    }

    fn none() -> Option<()> {
        None
    }

    const NORMAL: (Priority, Duration) = (Priority::Normal, Duration::from_secs(2));

    fn handed(r: Result<Waited<()>, Rejected>) -> Result<Slot, Rejected> {
        match r? {
            Waited::Handed(s) => Ok(s),
            Waited::Found(()) => Err(Rejected::Timeout),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_freed_while_joining_the_queue_is_found_at_once() {
        let (b, queue) = backend();
        let start = tokio::time::Instant::now();
        // Freed just before the waiter joins (nobody to hand it to): its retry finds it.
        let held = Slot::try_take(&b, 1, &queue).expect("free slot");
        drop(held);
        let r = queue
            .wait(5, Duration::from_secs(60), None, NORMAL, || {
                Slot::try_take(&b, 1, &queue)
            })
            .await;
        assert!(matches!(r, Ok(Waited::Found(_))));
        drop(r);
        // Freed just after it joined: handed to it.
        let held = Slot::try_take(&b, 1, &queue).expect("free slot");
        let r = queue
            .wait(5, Duration::from_secs(60), None, NORMAL, || {
                drop(held);
                Slot::try_take(&b, 1, &queue)
            })
            .await;
        assert!(matches!(r, Ok(Waited::Handed(_))));
        drop(r);
        assert_eq!(start.elapsed(), Duration::ZERO, "no wait in either case");
        assert_eq!(b.inflight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_of_a_backend_whose_breaker_opened_is_not_handed_on() {
        let (b, queue) = backend();
        let cfg = crate::config::BreakerConfig {
            consecutive_failures: 1,
            failure_rate: 1.0,
            window: Duration::from_secs(10),
            min_requests: 100,
            open_for: Duration::from_secs(60),
            max_open_for: Duration::from_secs(60),
            half_open_requests: 1,
            failure_on: crate::config::OutcomeSet::default_failures(),
        };
        b.configure_breaker(Some(&cfg));
        let slot = Slot::try_take(&b, 1, &queue).expect("free slot");
        let permit = b
            .breaker_permit(std::time::Instant::now())
            .unwrap()
            .unwrap();
        permit.record(
            crate::config::Outcome::ConnectError,
            std::time::Instant::now(),
        );
        let q = Arc::clone(&queue);
        let waiter = tokio::spawn(async move {
            handed(q.wait(5, Duration::from_secs(5), None, NORMAL, none).await)
        });
        while !queue.has_waiters() {
            tokio::task::yield_now().await;
        }
        drop(slot);
        assert_eq!(
            b.inflight(),
            0,
            "released, not handed to a waiter that would fail"
        );
        assert!(
            waiter.await.unwrap().is_err(),
            "the waiter waited on (and timed out)"
        );
    }

    #[tokio::test]
    async fn a_waiter_gets_only_a_backend_it_accepts() {
        let q = Arc::new(WaitQueue::new("p"));
        let a = Arc::new(BackendState::new("p", "127.0.0.1:1".parse().unwrap(), true));
        let b = Arc::new(BackendState::new("p", "127.0.0.1:2".parse().unwrap(), true));
        let on_a = Slot::try_take(&a, 1, &q).unwrap();
        let on_b = Slot::try_take(&b, 1, &q).unwrap();
        // The oldest waiter wants b only; the next takes anything.
        let only_b: Arc<[std::net::SocketAddr]> = vec![b.addr].into();
        let q1 = Arc::clone(&q);
        let w1 = tokio::spawn(async move {
            handed(
                q1.wait(5, Duration::from_secs(5), Some(only_b), NORMAL, none)
                    .await,
            )
        });
        while q.depth() < 1 {
            tokio::task::yield_now().await;
        }
        let q2 = Arc::clone(&q);
        let w2 = tokio::spawn(async move {
            handed(q2.wait(5, Duration::from_secs(5), None, NORMAL, none).await)
        });
        while q.depth() < 2 {
            tokio::task::yield_now().await;
        }
        drop(on_a);
        let got2 = w2
            .await
            .unwrap()
            .expect("a's slot goes to the waiter that takes any");
        assert_eq!(got2.backend().addr, a.addr);
        drop(on_b);
        let got1 = w1
            .await
            .unwrap()
            .expect("b's slot goes to the waiter that waited for it");
        assert_eq!(got1.backend().addr, b.addr);
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiter_and_counts_stay_exact() {
        let (b, queue) = backend();
        let first = Slot::try_take(&b, 1, &queue).expect("free slot");
        assert!(Slot::try_take(&b, 1, &queue).is_none(), "cap 1");
        let q = Arc::clone(&queue);
        let waiter = tokio::spawn(async move {
            handed(q.wait(5, Duration::from_secs(5), None, NORMAL, none).await)
        });
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
        let r = queue
            .wait(5, Duration::from_millis(1), None, NORMAL, none)
            .await;
        assert!(r.is_err());
        // Another waiter that is still there.
        let q2 = Arc::clone(&queue);
        let waiter = tokio::spawn(async move {
            handed(q2.wait(5, Duration::from_secs(5), None, NORMAL, none).await)
        });
        while !queue.has_waiters() {
            tokio::task::yield_now().await;
        }
        drop(slot);
        let handed = waiter.await.unwrap().expect("the live waiter got the slot");
        assert_eq!(b.inflight(), 1);
        drop(handed);
        assert_eq!(b.inflight(), 0, "released exactly once");
    }

    #[tokio::test(start_paused = true)]
    async fn higher_classes_go_first_and_old_low_waiters_count_as_normal() {
        let (b, queue) = backend();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let join = |class: Priority| {
            let (q, order) = (Arc::clone(&queue), Arc::clone(&order));
            tokio::spawn(async move {
                let r = q
                    .wait(
                        9,
                        Duration::from_secs(60),
                        None,
                        (class, Duration::from_secs(2)),
                        none,
                    )
                    .await;
                let slot = handed(r).expect("a slot");
                // Recorded before the slot goes on to the next waiter.
                order.lock().unwrap().push(class);
                drop(slot);
            })
        };
        let mut waiters = Vec::new();
        let held = Slot::try_take(&b, 1, &queue).expect("free slot");
        for (n, class) in [Priority::Low, Priority::Normal, Priority::High]
            .into_iter()
            .enumerate()
        {
            waiters.push(join(class));
            while queue.depth() < n + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(queue.depth_of(Priority::Low), 1);
        drop(held);
        for w in waiters.drain(..) {
            w.await.unwrap();
        }
        assert_eq!(
            std::mem::take(&mut *order.lock().unwrap()),
            [Priority::High, Priority::Normal, Priority::Low]
        );

        // A low waiter that waited past max_wait_low counts as normal, and is the older.
        let held = Slot::try_take(&b, 1, &queue).expect("free slot");
        waiters.push(join(Priority::Low));
        while queue.depth() < 1 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        waiters.push(join(Priority::Normal));
        while queue.depth() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [Priority::Low, Priority::Normal]);
        assert_eq!(b.inflight(), 0);
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
