//! Overload protection that answers before any backend is involved: per-route rate limits
//! (429; token bucket or sliding window, counted per instance or fleet-wide), and global caps
//! on open connections and requests in flight (503).

mod global;
mod local;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use metrics::Counter;
use moka::policy::EvictionPolicy;

use crate::config::{RateKey, RateLimitConfig, RateScope, RedisConfig};
use crate::metrics::{RATE_LIMITED_TOTAL, RATE_LIMIT_FALLBACK_TOTAL, SHED_TOTAL};
use global::Global;
use local::Count;

/// What a rate limit (or a tenant share) is counted by, for one request.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    V4([u8; 4]),
    V6([u8; 16]),
    Header(Box<[u8]>),
    /// A header value longer than [`MAX_KEY`], by its 128-bit hash, so that long keys cost
    /// what short ones cost.
    Hashed(u128),
    Missing,
}

/// Header values longer than this are keyed by their hash.
const MAX_KEY: usize = 256;

impl Key {
    /// The request's key under `by`: its client's address or a header's value.
    pub(crate) fn of(by: &RateKey, client: IpAddr, headers: &HeaderMap) -> Self {
        match by {
            RateKey::ClientIp => match client {
                IpAddr::V4(a) => Key::V4(a.octets()),
                IpAddr::V6(a) => Key::V6(a.octets()),
            },
            RateKey::Header(h) => headers
                .get(h)
                .map_or(Key::Missing, |v| Key::header(v.as_bytes())),
        }
    }

    fn header(v: &[u8]) -> Self {
        if v.len() > MAX_KEY {
            Key::Hashed(xxhash_rust::xxh3::xxh3_128(v))
        } else {
            Key::Header(v.into())
        }
    }

    /// The key's name in Redis: a hash, so that any header value makes a safe, short name.
    fn redis_name(&self) -> String {
        let h = match self {
            Key::V4(a) => xxhash_rust::xxh3::xxh3_128(a),
            Key::V6(a) => xxhash_rust::xxh3::xxh3_128(a),
            Key::Header(v) => xxhash_rust::xxh3::xxh3_128(v),
            Key::Hashed(h) => *h,
            Key::Missing => return "none".to_owned(),
        };
        format!("{h:032x}")
    }
}

/// The verdict for one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Bucket size (`RateLimit-Limit`).
    pub limit: u32,
    /// Whole tokens left (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Seconds until the bucket is full again (`RateLimit-Reset`).
    pub reset: u64,
    /// Seconds until one token is available (`Retry-After` on 429).
    pub retry_after: u64,
}

impl Decision {
    /// Adds the `RateLimit-*` headers (and `Retry-After` when refused).
    pub fn write_headers(&self, h: &mut HeaderMap) {
        h.insert("ratelimit-limit", HeaderValue::from(self.limit));
        h.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        h.insert("ratelimit-reset", HeaderValue::from(self.reset));
        if !self.allowed {
            h.insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(self.retry_after.max(1)),
            );
        }
    }
}

/// The rate limit of one route. Counts are kept per key in a cache bounded by `max_keys`
/// (least recently used keys go first), so spoofed keys cannot grow memory.
pub struct RateLimiter {
    cfg: RateLimitConfig,
    counts: moka::sync::Cache<Key, Arc<Mutex<Count>>>,
    /// Starts the sliding windows.
    epoch: Instant,
    /// The fleet's counters, for `scope: global`.
    global: Option<Arc<Global>>,
    limited: Counter,
    fallback: Counter,
}

impl RateLimiter {
    /// A limiter for `route`. A global one keeps its counters in `redis` (validation makes
    /// sure there is one).
    pub fn new(route: &str, cfg: RateLimitConfig, redis: Option<&RedisConfig>) -> Self {
        let global = match (cfg.scope, redis) {
            (RateScope::Global, Some(r)) => match Global::start(route, &cfg, r) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(route, error = %e, "rate limit: counting locally");
                    None
                }
            },
            _ => None,
        };
        Self {
            counts: moka::sync::Cache::builder()
                .max_capacity(cfg.max_keys)
                .eviction_policy(EvictionPolicy::lru())
                .build(),
            epoch: Instant::now(),
            global,
            limited: metrics::counter!(RATE_LIMITED_TOTAL, "route" => route.to_owned(),
                "scope" => cfg.scope.as_str()),
            fallback: metrics::counter!(RATE_LIMIT_FALLBACK_TOTAL, "route" => route.to_owned()),
            cfg,
        }
    }

    /// Marks the limiter's metric series as alive.
    pub fn touch_metrics(&self) {
        crate::metrics::touch(&[&self.limited]);
        if self.cfg.scope == RateScope::Global {
            crate::metrics::touch(&[&self.fallback]);
        }
    }

    /// The settings.
    pub fn config(&self) -> &RateLimitConfig {
        &self.cfg
    }

    /// Counts the request, if the limit allows it.
    pub fn check(&self, client: IpAddr, headers: &HeaderMap, now: Instant) -> Decision {
        let key = Key::of(&self.cfg.key, client, headers);
        let d = match &self.global {
            Some(g) if g.up() => g.take(key, now),
            Some(g) => {
                self.fallback.increment(1);
                self.local(key, 1.0 / f64::from(g.instances()), now)
            }
            None => self.local(key, 1.0, now),
        };
        if !d.allowed {
            self.limited.increment(1);
        }
        d
    }

    fn local(&self, key: Key, share: f64, now: Instant) -> Decision {
        let count = self
            .counts
            .get_with(key, || Arc::new(Mutex::new(Count::new(&self.cfg, now))));
        // std Mutex per key: a few float operations, never across an await.
        let mut c = count.lock().unwrap_or_else(|p| p.into_inner());
        c.take(&self.cfg, share, self.epoch, now)
    }
}

/// Global caps on connections and requests in flight, shared by every listener.
pub struct Shedder {
    connections: AtomicUsize,
    inflight: AtomicUsize,
    shed_connections: Counter,
    shed_inflight: Counter,
}

impl Default for Shedder {
    fn default() -> Self {
        Self {
            connections: AtomicUsize::new(0),
            inflight: AtomicUsize::new(0),
            shed_connections: metrics::counter!(SHED_TOTAL, "reason" => "connections"),
            shed_inflight: metrics::counter!(SHED_TOTAL, "reason" => "inflight"),
        }
    }
}

impl Shedder {
    /// Marks the shedding counters as alive.
    pub fn touch_metrics(&self) {
        crate::metrics::touch(&[&self.shed_connections, &self.shed_inflight]);
    }
}

/// One counted connection; released on drop.
pub struct ConnSlot(Arc<Shedder>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An owned in-flight request slot (lives in the response body); `None` when no cap is set,
/// so uncapped requests touch no shared counter.
pub struct InflightSlot(Option<Arc<Shedder>>);

impl Drop for InflightSlot {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            s.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

fn take(counter: &AtomicUsize, max: Option<usize>) -> bool {
    let n = counter.fetch_add(1, Ordering::Relaxed);
    if max.is_some_and(|m| n >= m) {
        counter.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

impl Shedder {
    /// Counts a new connection, or None when `max` are open.
    pub fn connection(self: &Arc<Self>, max: Option<usize>) -> Option<ConnSlot> {
        if take(&self.connections, max) {
            Some(ConnSlot(Arc::clone(self)))
        } else {
            self.shed_connections.increment(1);
            None
        }
    }

    /// Counts a request in flight until the response body ends, or None when `max` are.
    /// Without a cap nothing is counted (a cap set by a later reload counts the requests that
    /// start after it).
    pub fn request(self: &Arc<Self>, max: Option<usize>) -> Option<InflightSlot> {
        if max.is_none() {
            return Some(InflightSlot(None));
        }
        if take(&self.inflight, max) {
            Some(InflightSlot(Some(Arc::clone(self))))
        } else {
            self.shed_inflight.increment(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RateAlgorithm;
    use std::time::Duration;

    #[test]
    fn long_header_keys_are_kept_by_their_hash() {
        let long = vec![b'k'; 64 * 1024];
        assert!(matches!(Key::header(&long), Key::Hashed(_)));
        assert!(matches!(Key::header(b"short"), Key::Header(_)));
        let mut other = long.clone();
        other[0] = b'j';
        assert!(
            Key::header(&long) != Key::header(&other),
            "different keys stay apart"
        );
        assert!(Key::header(&long) == Key::header(&long.clone()));
    }

    /// A local limiter keyed by client address, over a 1 s window.
    fn local_limiter(per_second: f64, burst: u32, algorithm: RateAlgorithm) -> RateLimiter {
        let cfg = RateLimitConfig {
            key: RateKey::ClientIp,
            per_second,
            window: 1.0,
            burst,
            max_keys: 10,
            algorithm,
            scope: RateScope::Local,
        };
        RateLimiter::new("r", cfg, None)
    }

    #[test]
    fn token_bucket_refills_at_the_rate() {
        let rl = local_limiter(2.0, 3, RateAlgorithm::TokenBucket);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let h = HeaderMap::new();
        let t = Instant::now();
        let d: Vec<_> = (0..4).map(|_| rl.check(ip, &h, t)).collect();
        assert_eq!(
            d.iter().map(|x| x.allowed).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        assert_eq!((d[0].limit, d[0].remaining), (3, 2));
        assert_eq!((d[3].remaining, d[3].retry_after), (0, 1));
        assert_eq!(d[3].reset, 2, "3 tokens at 2/s");
        // Half a second later one token is back.
        assert!(rl.check(ip, &h, t + Duration::from_millis(500)).allowed);
        assert!(!rl.check(ip, &h, t + Duration::from_millis(500)).allowed);
        // Another client has its own bucket.
        assert!(rl.check("192.0.2.2".parse().unwrap(), &h, t).allowed);
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let rl = local_limiter(10.0, 10, RateAlgorithm::SlidingWindow);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let h = HeaderMap::new();
        let t0 = rl.epoch + Duration::from_millis(100);
        let first: Vec<_> = (0..11).map(|_| rl.check(ip, &h, t0)).collect();
        assert_eq!(first.iter().filter(|d| d.allowed).count(), 10);
        let refused = first[10];
        assert_eq!((refused.limit, refused.remaining), (10, 0));
        assert_eq!(refused.retry_after, 1, "the next window starts in 0.9 s");
        // Half-way through the next window the first one still weighs 5: 5 more pass.
        let t1 = rl.epoch + Duration::from_millis(1500);
        let second: Vec<_> = (0..6).map(|_| rl.check(ip, &h, t1)).collect();
        assert_eq!(second.iter().filter(|d| d.allowed).count(), 5);
        // A quarter into the third window the first is forgotten and the second (5) weighs 3.75.
        let t2 = rl.epoch + Duration::from_millis(2250);
        let third: Vec<_> = (0..10).map(|_| rl.check(ip, &h, t2)).collect();
        assert_eq!(third.iter().filter(|d| d.allowed).count(), 6);
        // Two idle windows reset the count.
        let t3 = rl.epoch + Duration::from_millis(5000);
        let d = rl.check(ip, &h, t3);
        assert!(d.allowed);
        assert_eq!(d.remaining, 9);
    }
}
