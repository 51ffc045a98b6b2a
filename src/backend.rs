//! A backend as the balancer sees it ([`Backend`]: address, weight, region from this config
//! generation) and the state that outlives reloads ([`BackendState`]: in-flight count and
//! metric handles, shared by address between snapshots).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::uri::Authority;
use metrics::{Gauge, Histogram, Label};

use crate::metrics::{CodeCounters, BACKEND_INFLIGHT, UPSTREAM_DURATION, UPSTREAM_REQUESTS_TOTAL};

/// State of one backend of one pool that survives reloads.
pub struct BackendState {
    /// Backend address.
    pub addr: SocketAddr,
    inflight: AtomicU64,
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
            inflight_gauge: metrics::gauge!(BACKEND_INFLIGHT, labels.clone()),
            upstream_requests: CodeCounters::new(UPSTREAM_REQUESTS_TOTAL, labels.clone()),
            upstream_duration: metrics::histogram!(UPSTREAM_DURATION, labels),
        }
    }

    /// Requests in flight now (until their response bodies end).
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts one request in flight until the guard drops.
    pub fn acquire(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.inflight_gauge.increment(1.0);
        InflightGuard(Arc::clone(self))
    }
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
    /// Address of the backend.
    pub fn addr(&self) -> SocketAddr {
        self.state.addr
    }

    /// Whether selection may pick this backend now. Health checks and breakers plug in here.
    pub fn is_usable(&self) -> bool {
        true
    }
}
