//! `routes`: names, match conditions, pools and rate limits.

use std::collections::{BTreeSet, HashSet};

use http::{HeaderName, HeaderValue};

use super::Errors;
use crate::config::raw::{RawConfig, RawRateLimit};
use crate::config::{HostMatch, RateKey, RateLimitConfig, RateScope, RouteConfig};

/// Validates `routes` against the pool names (in snapshot order); warns about unused pools.
pub(super) fn validate(
    e: &mut Errors<'_>,
    raw: &RawConfig,
    pool_names: &[&String],
    warnings: &mut Vec<String>,
) -> Vec<RouteConfig> {
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    let mut used_pools = BTreeSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if r.name.trim().is_empty() {
            e.push(format!("{p}.name"), "must not be empty");
        } else if !route_names.insert(r.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        let pool = pool_names.iter().position(|n| **n == r.pool);
        if pool.is_none() {
            e.push(format!("{p}.pool"), format!("no pool named {:?}", r.pool));
        }
        used_pools.insert(r.pool.as_str());
        let host = r
            .matcher
            .host
            .as_ref()
            .and_then(|h| host_match(e, &format!("{p}.match.host"), h));
        let path_prefix = r
            .matcher
            .path_prefix
            .clone()
            .unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            e.push(format!("{p}.match.path_prefix"), "must start with /");
        }
        let mut headers = Vec::new();
        for (k, v) in &r.matcher.headers {
            let hp = format!("{p}.match.headers.{k}");
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => e.push(hp, format!("invalid header name {k:?}")),
                (_, Err(_)) => e.push(hp, format!("invalid header value {v:?}")),
            }
        }
        let rate_limit = r
            .rate_limit
            .as_ref()
            .and_then(|rl| rate_limit(e, &format!("{p}.rate_limit"), rl));
        if rate_limit
            .as_ref()
            .is_some_and(|rl| rl.scope == RateScope::Global)
            && raw.cache.as_ref().and_then(|c| c.redis.as_ref()).is_none()
        {
            e.push(
                format!("{p}.rate_limit.scope"),
                "global needs cache.redis: the fleet's counters are kept there",
            );
        }
        let cache = r
            .cache
            .as_ref()
            .and_then(|c| super::cache::route(e, &format!("{p}.cache"), c));
        if let Some(pool) = pool {
            routes.push(RouteConfig {
                name: r.name.clone(),
                host,
                path_prefix,
                path_prefix_segments: r.matcher.path_prefix_segments.unwrap_or(false),
                headers,
                pool,
                rate_limit,
                cache,
                priority: r.priority,
            });
        }
    }
    if raw.routes.is_empty() {
        warnings.push("no routes: every request will get 404".to_owned());
    }
    for name in pool_names {
        if !used_pools.contains(name.as_str()) {
            warnings.push(format!("pools.{name}: no route uses this pool"));
        }
    }
    routes
}

/// A rate-limit or tenant key: `client_ip` (the default) or `header:NAME`.
pub(super) fn key(e: &mut Errors<'_>, path: &str, k: Option<&str>) -> Option<RateKey> {
    match k.map(str::trim) {
        None | Some("client_ip") => Some(RateKey::ClientIp),
        Some(k) => match k
            .strip_prefix("header:")
            .map(|n| HeaderName::from_bytes(n.trim().as_bytes()))
        {
            Some(Ok(n)) => Some(RateKey::Header(n)),
            _ => {
                e.push(
                    path,
                    format!("invalid key {k:?}; write client_ip or header:NAME"),
                );
                None
            }
        },
    }
}

fn rate_limit(e: &mut Errors<'_>, lp: &str, r: &RawRateLimit) -> Option<RateLimitConfig> {
    let key = key(e, &format!("{lp}.key"), r.key.as_deref());
    let per_second = r.rate.trim().split_once('/').and_then(|(n, unit)| {
        let n = n
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| *n > 0.0 && n.is_finite())?;
        let secs = match unit.trim() {
            "s" | "1s" | "sec" | "second" => 1.0,
            "m" | "1m" | "min" | "minute" => 60.0,
            "h" | "1h" | "hour" => 3600.0,
            _ => return None,
        };
        Some((n / secs, secs))
    });
    if per_second.is_none() {
        e.push(
            format!("{lp}.rate"),
            format!(
                "invalid rate {:?}; write e.g. 100/s, 600/m or 3600/h",
                r.rate
            ),
        );
    }
    let burst = e.count(&format!("{lp}.burst"), r.burst, 1, Some(u32::MAX.into()));
    let max_keys = e
        .count(&format!("{lp}.max_keys"), r.max_keys, 1, None)
        .unwrap_or(100_000);
    let (per_second, window) = per_second?;
    Some(RateLimitConfig {
        key: key?,
        per_second,
        window,
        algorithm: r.algorithm,
        scope: r.scope,
        burst: burst.map_or_else(|| per_second.ceil().max(1.0) as u32, |b| b as u32),
        max_keys,
    })
}

fn host_match(e: &mut Errors<'_>, path: &str, h: &str) -> Option<HostMatch> {
    let h = h.trim().to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if let Some(rest) = h.strip_prefix("*.") {
        if valid(rest) {
            return Some(HostMatch::Wildcard(format!(".{rest}")));
        }
    } else if valid(&h) {
        return Some(HostMatch::Exact(h));
    }
    e.push(
        path,
        format!("invalid host {h:?}; write an exact host or *.example.com"),
    );
    None
}
