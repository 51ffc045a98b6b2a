//! Validated fairness settings: a route's rate limit and a pool's per-tenant share.

use http::HeaderName;

use super::{RateAlgorithm, RateScope};

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client's IP address.
    ClientIp,
    /// A request header's value (requests without it share one bucket).
    Header(HeaderName),
}

/// `routes[i].rate_limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// Bucket key.
    pub key: RateKey,
    /// Tokens added per second.
    pub per_second: f64,
    /// The rate's unit, in seconds: the sliding window's length.
    pub window: f64,
    /// Bucket size.
    pub burst: u32,
    /// Most keys tracked.
    pub max_keys: u64,
    /// Token bucket or sliding window.
    pub algorithm: RateAlgorithm,
    /// Local or fleet-wide (through `cache.redis`).
    pub scope: RateScope,
}

impl RateLimitConfig {
    /// Requests allowed per window (the rate's count).
    pub fn per_window(&self) -> f64 {
        self.per_second * self.window
    }
}

/// `pools.NAME.tenant`: while others wait, no tenant holds more than `max_share` of the
/// pool's slots.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// What names a request's tenant (requests without it form one tenant).
    pub key: RateKey,
    /// The largest share of the pool's slots one tenant may hold while others wait (0-1].
    pub max_share: f64,
}
