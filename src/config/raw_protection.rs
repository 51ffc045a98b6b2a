//! The serde mirror of a pool's protection blocks: `health_check`, `circuit_breaker`, `retry`
//! and `queue` (re-exported from [`super::raw`]).

use serde::Deserialize;

/// `pools.NAME.health_check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// HTTP GET path.
    #[serde(default)]
    pub path: Option<String>,
    /// A plain TCP connect check instead of HTTP.
    #[serde(default)]
    pub tcp: Option<bool>,
    /// Time between checks of one backend.
    #[serde(default)]
    pub interval: Option<String>,
    /// Random spread of the interval, e.g. `10%`.
    #[serde(default)]
    pub jitter: Option<String>,
    /// Time one check may take.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Consecutive passes to become healthy.
    #[serde(default)]
    pub healthy_threshold: Option<i64>,
    /// Consecutive failures to become unhealthy.
    #[serde(default)]
    pub unhealthy_threshold: Option<i64>,
    /// Accepted statuses, e.g. `200-399` or `200,204`.
    #[serde(default)]
    pub expect_status: Option<String>,
    /// Substring the body must contain.
    #[serde(default)]
    pub expect_body: Option<String>,
    /// Host header of the check.
    #[serde(default)]
    pub host: Option<String>,
    /// State of a backend before its first checks.
    #[serde(default)]
    pub initial_state: Option<InitialState>,
    /// Below this share of healthy backends, route to all of them.
    #[serde(default)]
    pub panic_threshold: Option<String>,
}

/// Health before the first checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialState {
    /// Serve traffic until checks say otherwise.
    Healthy,
    /// Wait for `healthy_threshold` passes.
    Unhealthy,
}

/// `pools.NAME.circuit_breaker`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// Consecutive failures that open the breaker.
    #[serde(default)]
    pub consecutive_failures: Option<i64>,
    /// Failure share in the window that opens it, e.g. `50%`.
    #[serde(default)]
    pub failure_rate: Option<String>,
    /// Length of the failure-rate window.
    #[serde(default)]
    pub window: Option<String>,
    /// Requests in the window before the rate counts.
    #[serde(default)]
    pub min_requests: Option<i64>,
    /// First open period; doubles on each re-open.
    #[serde(default)]
    pub open_for: Option<String>,
    /// Cap of the open period.
    #[serde(default)]
    pub max_open_for: Option<String>,
    /// Probes let through when half-open; all must succeed to close.
    #[serde(default)]
    pub half_open_requests: Option<i64>,
    /// Outcomes that count as failures.
    #[serde(default)]
    pub failure_on: Option<Vec<String>>,
}

/// `pools.NAME.retry`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total tries, including the first.
    #[serde(default)]
    pub attempts: Option<i64>,
    /// Outcomes that are retried.
    #[serde(default)]
    pub on: Option<Vec<String>>,
    /// Exponential backoff with full jitter.
    #[serde(default)]
    pub backoff: Option<RawBackoff>,
    /// Response-head timeout of each try.
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    /// Retries may add at most this share to the request rate.
    #[serde(default)]
    pub budget: Option<String>,
    /// Request bodies up to this size are kept for replay.
    #[serde(default)]
    pub max_replay_body: Option<String>,
}

/// `pools.NAME.retry.backoff`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    /// First backoff ceiling.
    #[serde(default)]
    pub base: Option<String>,
    /// Largest backoff ceiling.
    #[serde(default)]
    pub max: Option<String>,
}

/// `pools.NAME.queue`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    /// Most waiting requests.
    #[serde(default)]
    pub max: Option<i64>,
    /// Longest wait.
    #[serde(default)]
    pub timeout: Option<String>,
    /// A `low` waiter older than this is served as `normal`.
    #[serde(default)]
    pub max_wait_low: Option<String>,
}
