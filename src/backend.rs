//! A backend as the balancer sees it ([`Backend`]: address, weight, region, cap from this
//! config generation) and the state that outlives reloads ([`BackendState`]: in-flight count,
//! health, circuit breaker, slow-start clock and metric handles, shared by pool and address
//! between snapshots). A backend knows neither the balancer nor the wait queue: slots are
//! taken and handed on by `admission`, which both the balancer's caller and the queue use.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;
use metrics::{Counter, Gauge, Histogram, Label};

use crate::breaker::{Breaker, Permit, State};
use crate::config::{BreakerConfig, Outcome};
use crate::metrics::{
    CodeCounters, BACKEND_HEALTHY, BACKEND_INFLIGHT, BACKEND_TRANSITIONS_TOTAL, BREAKER_STATE,
    BREAKER_TRANSITIONS_TOTAL, HEALTH_CHECKS_TOTAL, UPSTREAM_DURATION, UPSTREAM_REQUESTS_TOTAL,
};
use crate::overrides::{ForcedBreaker, Overrides};

/// Metric handles of one backend.
struct BackendMetrics {
    inflight: Gauge,
    healthy: Gauge,
    checks_pass: Counter,
    checks_fail: Counter,
    to_healthy: Counter,
    to_unhealthy: Counter,
    breaker_state: Gauge,
    breaker_to: [Counter; 3],
}

/// State of one backend of one pool that survives reloads.
pub struct BackendState {
    /// Backend address.
    pub addr: SocketAddr,
    /// Pool name (for logs).
    pub pool: Arc<str>,
    inflight: AtomicU64,
    /// Health as last decided by the health checker (true without checks).
    healthy: AtomicBool,
    /// Consecutive check results in the current direction (for rise/fall thresholds).
    check_streak: AtomicU32,
    /// When the backend last became usable, as nanoseconds after [`epoch`] plus one; 0 means
    /// "since before anything was measured" (not ramping).
    usable_since: AtomicU64,
    /// Mirror of the breaker's state (0 closed, 1 open, 2 half-open, 3 none), so that the
    /// common case (closed or no breaker) needs no lock.
    breaker_fast: AtomicU8,
    // std Mutex: taken only when a breaker is configured, for a few field updates per
    // response (and by selection only while the breaker is not closed); never across an await.
    breaker: Mutex<Option<Breaker>>,
    // std Mutex: written by the health checker on failed checks, read by the admin API.
    last_check_error: Mutex<Option<String>>,
    metrics: BackendMetrics,
    /// `sandgate_upstream_requests_total{pool,backend,code}`.
    pub upstream_requests: CodeCounters,
    /// `sandgate_upstream_duration_seconds{pool,backend}`.
    pub upstream_duration: Histogram,
    /// What an operator set at runtime (admin API).
    pub overrides: Overrides,
    /// Latencies of the tries, for `/admin/capacity`.
    pub latency: crate::capacity::LatencyHist,
}

const NO_BREAKER: u8 = 3;

/// A request admitted by the breaker. Record its outcome with [`BreakerPermit::record`]; if it
/// is dropped unrecorded (the client went away), its probe slot is given back.
pub struct BreakerPermit {
    state: Arc<BackendState>,
    permit: Option<Permit>,
}

impl BreakerPermit {
    /// Records the request's outcome against the breaker.
    pub fn record(mut self, outcome: Outcome, now: Instant) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let s = &self.state;
        let mut g = s.breaker.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = g.as_mut() {
            if let Some(to) = b.record(permit, outcome, now) {
                s.breaker_moved(to, b.describe(now));
            }
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let mut g = self.state.breaker.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = g.as_mut() {
                b.cancel(permit);
            }
        }
    }
}

/// The breaker turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOpen;

impl BackendState {
    /// Fresh state for `addr` in `pool`, healthy or not as `healthy` says.
    pub fn new(pool: &str, addr: SocketAddr, healthy: bool) -> Self {
        let labels = vec![
            Label::new("pool", pool.to_owned()),
            Label::new("backend", addr.to_string()),
        ];
        let with = |k: &'static str, v: &'static str| {
            let mut l = labels.clone();
            l.push(Label::new(k, v));
            l
        };
        let metrics = BackendMetrics {
            inflight: metrics::gauge!(BACKEND_INFLIGHT, labels.clone()),
            healthy: metrics::gauge!(BACKEND_HEALTHY, labels.clone()),
            checks_pass: metrics::counter!(HEALTH_CHECKS_TOTAL, with("result", "pass")),
            checks_fail: metrics::counter!(HEALTH_CHECKS_TOTAL, with("result", "fail")),
            to_healthy: metrics::counter!(BACKEND_TRANSITIONS_TOTAL, with("to", "healthy")),
            to_unhealthy: metrics::counter!(BACKEND_TRANSITIONS_TOTAL, with("to", "unhealthy")),
            breaker_state: metrics::gauge!(BREAKER_STATE, labels.clone()),
            breaker_to: [
                metrics::counter!(BREAKER_TRANSITIONS_TOTAL, with("to", "closed")),
                metrics::counter!(BREAKER_TRANSITIONS_TOTAL, with("to", "open")),
                metrics::counter!(BREAKER_TRANSITIONS_TOTAL, with("to", "half_open")),
            ],
        };
        metrics.healthy.set(if healthy { 1.0 } else { 0.0 });
        Self {
            addr,
            pool: Arc::from(pool),
            inflight: AtomicU64::new(0),
            healthy: AtomicBool::new(healthy),
            check_streak: AtomicU32::new(0),
            usable_since: AtomicU64::new(0),
            breaker_fast: AtomicU8::new(NO_BREAKER),
            breaker: Mutex::new(None),
            last_check_error: Mutex::new(None),
            metrics,
            upstream_requests: CodeCounters::new(UPSTREAM_REQUESTS_TOTAL, labels.clone()),
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION, labels),
            overrides: Overrides::default(),
            latency: crate::capacity::LatencyHist::default(),
        }
    }

    /// Marks the backend's metric series as alive.
    pub fn touch_metrics(&self) {
        let m = &self.metrics;
        crate::metrics::touch_gauges(&[&m.inflight, &m.healthy, &m.breaker_state]);
        crate::metrics::touch(&[
            &m.checks_pass,
            &m.checks_fail,
            &m.to_healthy,
            &m.to_unhealthy,
        ]);
        crate::metrics::touch(&m.breaker_to.iter().collect::<Vec<_>>());
        self.upstream_requests.touch();
    }

    /// Requests in flight now (until their response bodies end).
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether the backend is healthy.
    #[inline]
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets health; returns the previous value. Becoming healthy starts slow start. Counts and
    /// logs flips.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was != healthy {
            self.metrics.healthy.set(if healthy { 1.0 } else { 0.0 });
            if healthy {
                self.metrics.to_healthy.increment(1);
                self.mark_usable_now();
            } else {
                self.metrics.to_unhealthy.increment(1);
            }
        }
        was
    }

    /// Records one health check result; returns `Some(new health)` when it flipped.
    pub fn record_check(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        if passed {
            self.metrics.checks_pass.increment(1);
        } else {
            self.metrics.checks_fail.increment(1);
        }
        let healthy = self.is_healthy();
        if passed == healthy {
            // Result agrees with the state: no streak towards a flip.
            self.check_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.check_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if streak >= if passed { rise } else { fall } {
            self.check_streak.store(0, Ordering::Relaxed);
            self.set_healthy(passed);
            return Some(passed);
        }
        None
    }

    /// Remembers why the last health check failed (for the admin API).
    pub fn set_last_check_error(&self, why: String) {
        *self
            .last_check_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// Why the last health check failed, if one did.
    pub fn last_check_error(&self) -> Option<String> {
        self.last_check_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Installs, updates or removes the breaker (on snapshot build).
    pub fn configure_breaker(&self, cfg: Option<&BreakerConfig>) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match (cfg, b.as_mut()) {
            (None, _) => {
                *b = None;
                self.breaker_fast.store(NO_BREAKER, Ordering::Relaxed);
            }
            (Some(c), Some(existing)) => existing.reconfigure(c.clone()),
            (Some(c), None) => {
                *b = Some(Breaker::new(c.clone(), Instant::now()));
                self.breaker_fast
                    .store(State::Closed as u8, Ordering::Relaxed);
                self.metrics.breaker_state.set(0.0);
            }
        }
    }

    /// Whether the breaker lets selection pick this backend at `now`.
    #[inline]
    pub fn breaker_available(&self, now: Instant) -> bool {
        match self.overrides.breaker() {
            Some(ForcedBreaker::Open) => return false,
            Some(ForcedBreaker::Closed) => return true,
            None => {}
        }
        match self.breaker_fast.load(Ordering::Relaxed) {
            NO_BREAKER | 0 => true,
            _ => self
                .breaker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(|b| b.available(now)),
        }
    }

    /// Takes a breaker permit: `Ok(None)` without a breaker, `Err` when it rejects.
    pub fn breaker_permit(self: &Arc<Self>) -> Result<Option<BreakerPermit>, BreakerOpen> {
        // A forced breaker neither admits by the state machine nor learns from outcomes.
        match self.overrides.breaker() {
            Some(ForcedBreaker::Open) => return Err(BreakerOpen),
            Some(ForcedBreaker::Closed) => return Ok(None),
            None => {}
        }
        if self.breaker_fast.load(Ordering::Relaxed) == NO_BREAKER {
            return Ok(None);
        }
        let mut g = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let Some(b) = g.as_mut() else { return Ok(None) };
        // The clock is read only here: a pool without a breaker never needs it.
        let now = Instant::now();
        let (permit, moved) = b.acquire(now);
        if let Some(s) = moved {
            self.breaker_moved(s, b.describe(now));
        }
        let permit = permit.ok_or(BreakerOpen)?;
        Ok(Some(BreakerPermit {
            state: Arc::clone(self),
            permit: Some(permit),
        }))
    }

    fn breaker_moved(&self, s: State, why: Option<String>) {
        self.breaker_fast.store(s as u8, Ordering::Relaxed);
        self.metrics.breaker_state.set(f64::from(s as u8));
        self.metrics.breaker_to[s as usize].increment(1);
        tracing::warn!(
            pool = &*self.pool,
            backend = %self.addr,
            to = s.as_str(),
            reason = why.as_deref().unwrap_or("recovered"),
            "circuit breaker changed state"
        );
    }

    /// Breaker state and why the backend is out, for the admin API.
    pub fn breaker_view(&self, now: Instant) -> (Option<&'static str>, Option<String>) {
        let g = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match g.as_ref() {
            None => (None, None),
            Some(b) => (Some(b.state(now).as_str()), b.describe(now)),
        }
    }

    /// Starts slow start now: the backend was just added or just became usable again.
    pub fn mark_usable_now(&self) {
        self.mark_usable_at(Instant::now());
    }

    /// Starts slow start at `at`.
    pub fn mark_usable_at(&self, at: Instant) {
        let nanos = at.saturating_duration_since(epoch()).as_nanos();
        self.usable_since.store(
            u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1,
            Ordering::Relaxed,
        );
    }

    /// Share of its weight the backend gets at `now` under a `window`-long slow start.
    #[inline]
    pub fn ramp_share(&self, now: Instant, window: Duration) -> f64 {
        match self.usable_since.load(Ordering::Relaxed) {
            0 => 1.0,
            since => {
                let elapsed = now
                    .saturating_duration_since(epoch())
                    .saturating_sub(Duration::from_nanos(since - 1));
                ramp(elapsed, window)
            }
        }
    }

    /// Counts one more request in flight, whatever the cap. Only `admission` calls this: it
    /// pairs every take with exactly one [`BackendState::release`].
    pub fn take(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.metrics.inflight.increment(1.0);
    }

    /// Takes one of `cap` slots (0: unlimited); false when all are taken. Only `admission`
    /// calls this.
    pub fn try_take(&self, cap: u32) -> bool {
        if cap == 0 {
            self.take();
            return true;
        }
        let mut cur = self.inflight.load(Ordering::Relaxed);
        loop {
            if cur >= u64::from(cap) {
                return false;
            }
            match self.inflight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.metrics.inflight.increment(1.0);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Gives back one slot taken by [`BackendState::take`] or [`BackendState::try_take`].
    pub fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.inflight.decrement(1.0);
    }
}

/// Reference point for `usable_since` timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Share of its weight a backend starts slow start with.
pub const SLOW_START_MIN_SHARE: f64 = 0.1;

/// Share of full weight after `elapsed` of a `window`-long slow start.
pub fn ramp(elapsed: Duration, window: Duration) -> f64 {
    if window.is_zero() {
        return 1.0;
    }
    (elapsed.as_secs_f64() / window.as_secs_f64()).clamp(SLOW_START_MIN_SHARE, 1.0)
}

/// One backend of a pool in one config generation.
pub struct Backend {
    /// `ip:port`, pre-rendered as a URI authority for building upstream requests.
    pub authority: Authority,
    /// Configured weight (>= 1).
    pub weight: u32,
    /// Region label.
    pub region: Option<Arc<str>>,
    /// Concurrency cap (0: none).
    pub max_connections: u32,
    /// State shared across generations.
    pub state: Arc<BackendState>,
}

impl Backend {
    /// A backend of `pool` at `addr` with fresh, healthy state and no cap.
    pub fn new(pool: &str, addr: SocketAddr, weight: u32, region: Option<&str>) -> Self {
        let state = Arc::new(BackendState::new(pool, addr, true));
        Self::with_state(state, weight, region, 0)
    }

    /// A backend around existing (carried-over) state.
    pub fn with_state(
        state: Arc<BackendState>,
        weight: u32,
        region: Option<&str>,
        cap: u32,
    ) -> Self {
        // A SocketAddr always renders as a valid authority.
        let authority = Authority::try_from(state.addr.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("0.0.0.0:0"));
        Self {
            authority,
            weight,
            region: region.map(Arc::from),
            max_connections: cap,
            state,
        }
    }

    /// Address of the backend.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Whether the backend has a free slot under its cap.
    #[inline]
    pub fn has_slot(&self) -> bool {
        self.max_connections == 0 || self.state.inflight() < u64::from(self.max_connections)
    }

    /// Whether the backend may take traffic at `now`, its cap aside: healthy (or its pool is
    /// in panic mode) and its breaker admits requests. The one rule selection, admission,
    /// readiness and the admin API share.
    #[inline]
    pub fn can_serve(&self, now: Instant, panic: bool) -> bool {
        self.state.overrides.out().is_none()
            && (panic || self.state.is_healthy())
            && self.state.breaker_available(now)
    }
}
