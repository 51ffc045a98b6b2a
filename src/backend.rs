//! A backend as the balancer sees it ([`Backend`]: address, weight, region from this config
//! generation) and the state that outlives reloads ([`BackendState`]: in-flight count and
//! metric handles, shared by address between snapshots).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use http::uri::Authority;
use metrics::{Gauge, Histogram, Label};

use crate::metrics::{CodeCounters, BACKEND_INFLIGHT, UPSTREAM_DURATION, UPSTREAM_REQUESTS_TOTAL};

/// State of one backend of one pool that survives reloads.
pub struct BackendState {
    /// Backend address.
    pub addr: SocketAddr,
    inflight: AtomicU64,
    /// Health as last decided by the health checker (true without checks).
    healthy: AtomicBool,
    /// When the backend last became usable, as nanoseconds after [`epoch`] plus one; 0 means
    /// "since before anything was measured" (not ramping).
    usable_since: AtomicU64,
    inflight_gauge: Gauge,
    /// `sandgate_upstream_requests_total{pool,backend,code}`.
    pub upstream_requests: CodeCounters,
    /// `sandgate_upstream_duration_seconds{pool,backend}`.
    pub upstream_duration: Histogram,
}

impl BackendState {
    /// Fresh state for `addr` in `pool`.
    pub fn new(pool: &str, addr: SocketAddr) -> Self {
        let labels = vec![
            Label::new("pool", pool.to_owned()),
            Label::new("backend", addr.to_string()),
        ];
        Self {
            addr,
            inflight: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            usable_since: AtomicU64::new(0),
            inflight_gauge: metrics::gauge!(BACKEND_INFLIGHT, labels.clone()),
            upstream_requests: CodeCounters::new(UPSTREAM_REQUESTS_TOTAL, labels.clone()),
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION, labels),
        }
    }

    /// Requests in flight now (until their response bodies end).
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether the backend is healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets health; returns the previous value. Becoming healthy starts slow start.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if healthy && !was {
            self.mark_usable_now();
        }
        was
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
                crate::balance::ramp(elapsed, window)
            }
        }
    }

    /// Counts one request in flight until the guard drops.
    pub fn acquire(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.inflight_gauge.increment(1.0);
        InflightGuard(Arc::clone(self))
    }
}

/// Reference point for `usable_since` timestamps.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Holds one in-flight slot of a backend; released on drop (when the response body ends or the
/// client goes away).
pub struct InflightGuard(Arc<BackendState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
        self.0.inflight_gauge.decrement(1.0);
    }
}

/// One backend of a pool in one config generation.
pub struct Backend {
    /// `ip:port`, pre-rendered as a URI authority for building upstream requests.
    pub authority: Authority,
    /// Configured weight (>= 1).
    pub weight: u32,
    /// Region label.
    pub region: Option<Arc<str>>,
    /// State shared across generations.
    pub state: Arc<BackendState>,
}

impl Backend {
    /// A backend of `pool` at `addr` with fresh state.
    pub fn new(pool: &str, addr: SocketAddr, weight: u32, region: Option<&str>) -> Self {
        Self::with_state(Arc::new(BackendState::new(pool, addr)), weight, region)
    }

    /// A backend around existing (carried-over) state.
    pub fn with_state(state: Arc<BackendState>, weight: u32, region: Option<&str>) -> Self {
        // A SocketAddr always renders as a valid authority.
        let authority = Authority::try_from(state.addr.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("0.0.0.0:0"));
        Self {
            authority,
            weight,
            region: region.map(Arc::from),
            state,
        }
    }

    /// Address of the backend.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Whether selection may pick this backend now. Health checks and breakers plug in here.
    #[inline]
    pub fn is_usable(&self) -> bool {
        self.state.is_healthy()
    }
}
