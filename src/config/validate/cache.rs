//! `cache` (the stores) and `routes[i].cache` (how a route uses them).

use std::time::Duration;

use redis::IntoConnectionInfo;

use super::Errors;
use crate::config::raw::{RawCache, RawRouteCache};
use crate::config::{CacheConfig, RedisConfig, RouteCacheConfig};

/// The moka weigher counts an entry in u32 units, so no object may be larger.
const MAX_OBJECT: u64 = u32::MAX as u64;

/// Validates the top-level `cache` block (defaults when absent).
pub(super) fn stores(e: &mut Errors<'_>, raw: Option<&RawCache>) -> CacheConfig {
    let max_size = e.size(
        "cache.max_size",
        raw.and_then(|c| c.max_size.as_ref()),
        256 * 1024 * 1024,
    );
    let mut max_object_size = e.size(
        "cache.max_object_size",
        raw.and_then(|c| c.max_object_size.as_ref()),
        8 * 1024 * 1024,
    );
    if max_object_size > max_size.min(MAX_OBJECT) {
        e.push(
            "cache.max_object_size",
            "must be at most cache.max_size (and 4GiB)",
        );
        max_object_size = max_size.min(MAX_OBJECT);
    }
    let redis = raw.and_then(|c| c.redis.as_ref()).map(|r| {
        if let Err(err) = r.url.as_str().into_connection_info() {
            e.push("cache.redis.url", format!("invalid Redis URL: {err}"));
        } else if !(r.url.starts_with("redis://") || r.url.starts_with("redis+unix://")) {
            e.push(
                "cache.redis.url",
                "use redis://host:port/db (or redis+unix://); TLS to Redis is not supported",
            );
        }
        let key_prefix = r.key_prefix.clone().unwrap_or_else(|| "sandgate".into());
        if key_prefix.is_empty() || key_prefix.contains(['*', '?', '[', ']', '\\']) {
            e.push(
                "cache.redis.key_prefix",
                "must not be empty nor hold * ? [ ] \\",
            );
        }
        RedisConfig {
            url: r.url.clone(),
            key_prefix,
            timeout: e.positive(
                "cache.redis.timeout",
                r.timeout.as_ref(),
                Duration::from_millis(100),
            ),
            max_object_size: e
                .size(
                    "cache.redis.max_object_size",
                    r.max_object_size.as_ref(),
                    1024 * 1024,
                )
                .min(max_object_size),
        }
    });
    CacheConfig {
        max_size,
        max_object_size,
        redis,
    }
}

/// Validates a route's `cache` block; None unless `enabled: true`.
pub(super) fn route(e: &mut Errors<'_>, p: &str, c: &RawRouteCache) -> Option<RouteCacheConfig> {
    let cfg = RouteCacheConfig {
        stale_if_error: e.duration(
            &format!("{p}.stale_if_error"),
            c.stale_if_error.as_ref(),
            Duration::ZERO,
        ),
        stale_while_revalidate: e.duration(
            &format!("{p}.stale_while_revalidate"),
            c.stale_while_revalidate.as_ref(),
            Duration::ZERO,
        ),
        lock_timeout: e.positive(
            &format!("{p}.lock_timeout"),
            c.lock_timeout.as_ref(),
            Duration::from_secs(5),
        ),
        max_ttl: e.positive(
            &format!("{p}.max_ttl"),
            c.max_ttl.as_ref(),
            Duration::from_secs(86_400),
        ),
    };
    c.enabled.unwrap_or(false).then_some(cfg)
}
