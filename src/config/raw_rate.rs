//! The serde mirror of `routes[i].rate_limit` and `pools.NAME.tenant` (re-exported from
//! [`super::raw`]).

use serde::{Deserialize, Serialize};

/// `routes[i].rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// `client_ip` or `header:NAME`.
    #[serde(default)]
    pub key: Option<String>,
    /// `100/s`, `600/m` or `3600/h`.
    pub rate: String,
    /// Bucket size (default: one second of `rate`).
    #[serde(default)]
    pub burst: Option<i64>,
    /// Most keys tracked at once (least recently used ones are dropped).
    #[serde(default)]
    pub max_keys: Option<i64>,
    /// How requests are counted.
    #[serde(default)]
    pub algorithm: RateAlgorithm,
    /// Whether the count is this instance's or the fleet's.
    #[serde(default)]
    pub scope: RateScope,
}

/// `routes[i].rate_limit.algorithm`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateAlgorithm {
    /// Tokens refill at the rate, up to `burst`.
    #[default]
    TokenBucket,
    /// At most the rate's count in any window of the rate's unit, estimated from two fixed
    /// windows (the previous one weighted by how much of it the sliding window still covers).
    SlidingWindow,
}

/// `routes[i].rate_limit.scope`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// Each instance counts on its own.
    #[default]
    Local,
    /// The instances sharing `cache.redis` count together.
    Global,
}

impl RateAlgorithm {
    /// The name the config file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RateAlgorithm::TokenBucket => "token_bucket",
            RateAlgorithm::SlidingWindow => "sliding_window",
        }
    }
}

impl RateScope {
    /// The name the config file uses (and the `scope` metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            RateScope::Local => "local",
            RateScope::Global => "global",
        }
    }
}

/// `pools.NAME.tenant`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// `client_ip` or `header:NAME`.
    pub key: String,
    /// Largest share of the pool's slots one tenant holds while others wait, e.g. `50%`.
    pub max_share: String,
}
