//! One instance's count for one rate-limit key: a token bucket or a sliding-window counter.
//! Both take a `share`: the fraction of the configured limit this instance may use (1 for a
//! local limit; 1/N for a global limit decided locally while Redis is down).

use std::time::Instant;

use super::Decision;
use crate::config::{RateAlgorithm, RateLimitConfig};

/// The count for one key.
pub(super) enum Count {
    Bucket {
        tokens: f64,
        last: Instant,
    },
    Window {
        /// Index of the current fixed window, counted from the limiter's epoch.
        index: u64,
        current: f64,
        previous: f64,
    },
}

impl Count {
    /// A key's first count: a full bucket, or empty windows.
    pub(super) fn new(cfg: &RateLimitConfig, now: Instant) -> Self {
        match cfg.algorithm {
            RateAlgorithm::TokenBucket => Count::Bucket {
                tokens: f64::from(cfg.burst),
                last: now,
            },
            RateAlgorithm::SlidingWindow => Count::Window {
                index: 0,
                current: 0.0,
                previous: 0.0,
            },
        }
    }

    /// Counts one request, if the limit allows it. `epoch` starts the fixed windows.
    pub(super) fn take(
        &mut self,
        cfg: &RateLimitConfig,
        share: f64,
        epoch: Instant,
        now: Instant,
    ) -> Decision {
        match self {
            Count::Bucket { tokens, last } => {
                let burst = (f64::from(cfg.burst) * share).max(1.0);
                let rate = cfg.per_second * share;
                let elapsed = now.saturating_duration_since(*last).as_secs_f64();
                *tokens = (*tokens + elapsed * rate).min(burst);
                *last = now;
                let allowed = *tokens >= 1.0;
                if allowed {
                    *tokens -= 1.0;
                }
                Decision {
                    allowed,
                    limit: burst as u32,
                    remaining: tokens.floor() as u32,
                    reset: ((burst - *tokens) / rate).ceil() as u64,
                    retry_after: ((1.0 - *tokens).max(0.0) / rate).ceil() as u64,
                }
            }
            Count::Window {
                index,
                current,
                previous,
            } => {
                let w = cfg.window;
                let t = now.saturating_duration_since(epoch).as_secs_f64() / w;
                let now_index = t as u64;
                if now_index != *index {
                    *previous = if now_index == *index + 1 {
                        *current
                    } else {
                        0.0
                    };
                    *current = 0.0;
                    *index = now_index;
                }
                let limit = (cfg.per_window() * share).max(1.0);
                let allowed = window_estimate(*previous, *current, t.fract()) + 1.0 <= limit;
                if allowed {
                    *current += 1.0;
                }
                window_decision(allowed, limit, *previous, *current, t.fract(), w)
            }
        }
    }
}

/// The sliding window's count: the previous fixed window weighted by how much of it the
/// sliding window still covers, plus the current one.
pub(super) fn window_estimate(previous: f64, current: f64, fraction: f64) -> f64 {
    previous * (1.0 - fraction) + current
}

/// The verdict and headers of a sliding window `fraction` of the way into its current fixed
/// window of `w` seconds.
pub(super) fn window_decision(
    allowed: bool,
    limit: f64,
    previous: f64,
    current: f64,
    fraction: f64,
    w: f64,
) -> Decision {
    let used = window_estimate(previous, current, fraction);
    let left_in_window = (1.0 - fraction) * w;
    // The previous window's part is gone when the current window ends; the current one's part
    // when the next one ends.
    let reset = if current > 0.0 {
        left_in_window + w
    } else if previous > 0.0 {
        left_in_window
    } else {
        0.0
    };
    let room = limit - 1.0;
    let retry_after = if used <= room {
        0.0
    } else if current <= room && previous > 0.0 {
        // The previous window's weight falls until one more request fits.
        (used - room) / previous * w
    } else {
        // Only the next window helps: there, `current` becomes the previous window.
        let into_next = if current > 0.0 {
            (1.0 - room / current).max(0.0)
        } else {
            0.0
        };
        left_in_window + into_next * w
    };
    Decision {
        allowed,
        limit: limit as u32,
        remaining: (limit - used).max(0.0).floor() as u32,
        reset: reset.ceil() as u64,
        retry_after: retry_after.ceil() as u64,
    }
}
