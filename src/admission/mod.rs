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
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::oneshot;

use crate::backend::BackendState;
use crate::config::Priority;
use crate::metrics::{QUEUE_DEPTH, QUEUE_REJECTED_TOTAL, QUEUE_WAIT};

mod tenant;
pub use tenant::{Seat, Tenants};

/// One in-flight slot of a backend; released on drop, or handed to the oldest waiter of the
/// pool's queue when someone waits.
pub struct Slot {
    state: Arc<BackendState>,
    /// The pool's queue; None for slots outside any snapshot (benchmarks, tests of selection).
    queue: Option<Arc<WaitQueue>>,
    /// False once the slot has been handed on or given back by other means.
    armed: bool,
    /// The count of the tenant holding the slot (pools with `tenant`).
    tenant: Option<Arc<AtomicU32>>,
}

impl Slot {
    /// Takes one of the backend's `cap` slots (0: unlimited), or None when all are taken.
    pub fn try_take(state: &Arc<BackendState>, cap: u32, queue: &Arc<WaitQueue>) -> Option<Slot> {
        state.try_take(cap).then(|| Slot {
            state: Arc::clone(state),
            queue: Some(Arc::clone(queue)),
            armed: true,
            tenant: None,
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
            tenant: None,
        }
    }

    /// Counts the slot in its request's tenant.
    pub fn charge(&mut self, seat: Option<&Seat>) {
        if let Some(old) = self.tenant.take() {
            tenant::uncharge(&old);
        }
        self.tenant = seat.map(Seat::charge);
    }

    /// The backend this slot belongs to.
    pub fn backend(&self) -> &Arc<BackendState> {
        &self.state
    }

    /// The same slot, to hand on (its tenant count goes with it).
    fn rearmed(&mut self, queue: &Arc<WaitQueue>) -> Slot {
        Slot {
            state: Arc::clone(&self.state),
            queue: Some(Arc::clone(queue)),
            armed: true,
            tenant: self.tenant.take(),
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
        if let Some(q) = self.queue.take() {
            // A slot of a backend that cannot serve (unhealthy, breaker open) is not handed to
            // a waiter, who would only fail: it is released, and waiters wait on.
            // Waiters first: with none (the usual case) the clock is not read.
            if q.has_waiters()
                && self.state.is_healthy()
                && self.state.breaker_available(Instant::now())
            {
                // Hand the slot over: the count stays as it is. `hand_off` tries waiters in
                // order and gives the slot back only when none is left to take it.
                match q.hand_off(self.rearmed(&q)) {
                    Ok(()) => {
                        self.armed = false;
                        return;
                    }
                    Err(unused) => unused.disarm(),
                }
            }
        }
        if let Some(t) = self.tenant.take() {
            tenant::uncharge(&t);
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
    /// Its tenant, in pools with `tenant`.
    seat: Option<Seat>,
    /// Whether its tenant's share has held it back (counted once).
    held: bool,
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
    /// Slots in flight per tenant (pools with `tenant`).
    pub tenants: Tenants,
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
            tenants: Tenants::new(pool),
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
        self.tenants.touch_metrics();
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
    /// when nobody is left to take it. Waiters of tenants holding their share come after all
    /// others, whatever their class.
    fn hand_off(&self, mut slot: Slot) -> Result<(), Slot> {
        let addr = slot.state.addr;
        if let Some(t) = slot.tenant.take() {
            tenant::uncharge(&t);
        }
        loop {
            let next = {
                let now = tokio::time::Instant::now();
                let mut q = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
                q.retain(|w| !w.tx.is_closed());
                // The queue is in arrival order: the first of the best rank wins.
                let mut best: Option<(usize, (bool, Priority))> = None;
                // Whether a waiter at its tenant's share was passed over.
                let mut passed_full = false;
                for (i, w) in q.iter().enumerate() {
                    if !w.takes(&addr) {
                        continue;
                    }
                    let rank = (w.seat.as_ref().is_some_and(Seat::full), w.class_at(now));
                    passed_full |= rank.0;
                    if best.is_none_or(|(_, b)| rank < b) {
                        best = Some((i, rank));
                        if rank == (false, Priority::High) {
                            break;
                        }
                    }
                }
                if let (true, Some((chosen, (false, class)))) = (passed_full, best) {
                    // Waiters this slot would have gone to but for their tenant's share.
                    for w in q.iter_mut().take(chosen) {
                        let full = w.seat.as_ref().is_some_and(Seat::full);
                        if full && !w.held && w.takes(&addr) && w.class_at(now) <= class {
                            w.held = true;
                            self.tenants.limited();
                        }
                    }
                }
                best.and_then(|(i, _)| q.remove(i))
            };
            let Some(w) = next else { return Err(slot) };
            slot.tenant = w.seat.as_ref().map(Seat::charge);
            match w.tx.send(slot) {
                Ok(()) => return Ok(()),
                Err(mut back) => {
                    if let Some(t) = back.tenant.take() {
                        tenant::uncharge(&t);
                    }
                    slot = back;
                }
            }
        }
    }

    /// Waits in class `class` for a slot of a backend in `accepts` (None: any), up to
    /// `timeout`, if fewer than `max` wait already; a `low` waiter counts as `normal` after
    /// `max_wait_low`. `seat` is its tenant, and `held` whether that tenant's share already
    /// kept it from a free slot. Once queued it calls `retry` once: a slot freed between the
    /// caller's last look and its joining the queue is found at once, not lost.
    pub async fn wait<T>(
        &self,
        max: usize,
        timeout: Duration,
        accepts: Option<Arc<[SocketAddr]>>,
        (class, max_wait_low): (Priority, Duration),
        (seat, held): (Option<Seat>, bool),
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
                seat,
                held,
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
mod tests;
