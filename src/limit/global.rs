//! A rate limit counted by the whole fleet: every instance that shares `cache.redis` adds its
//! requests to one sliding-window counter per key in Redis.
//!
//! A request never waits on Redis. Each instance spends a local allowance, its share of what
//! the fleet has left, and every [`RECONCILE`] sends what it spent (one pipelined `INCRBY`
//! per active key), reads the fleet's count back, and takes its next share:
//! `(limit - fleet count) / instances seen`. Instances announce themselves in a sorted set,
//! so each knows how many share the limit. While Redis cannot be reached, the limiter falls
//! back to a local limit at `rate / instances seen` (the caller does that, on [`Global::up`]).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;

use super::local::{window_decision, window_estimate};
use super::{Decision, Key};
use crate::config::{RateLimitConfig, RedisConfig};

/// How often each instance reports what it spent and takes a new share.
pub const RECONCILE: Duration = Duration::from_millis(100);

/// An instance that has not announced itself for this long no longer counts.
const MEMBER_TTL_MS: u64 = 2_000;

/// This instance's part of one key's fleet-wide count.
pub(super) struct Share {
    /// The key's name in Redis (without the window index).
    name: Box<str>,
    /// Requests this instance may still pass before the next reconcile.
    allowance: f64,
    /// Requests passed since the last reconcile, not yet sent.
    pending: u64,
    /// The fleet's previous and current window counts at the last reconcile, and how far into
    /// the current window that was.
    previous: f64,
    current: f64,
    fraction: f64,
    used: Instant,
}

/// The fleet-wide counters of one route's limit.
pub struct Global {
    cfg: RateLimitConfig,
    prefix: String,
    instance: String,
    conn: ConnectionManager,
    timeout: Duration,
    shares: moka::sync::Cache<Key, Arc<Mutex<Share>>>,
    up: AtomicBool,
    instances: AtomicU32,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Global {
    /// Counters for `route`, kept in the Redis at `redis`. The reconcile task runs while the
    /// limiter lives (none outside a runtime, as under `sandgate check`).
    pub fn start(
        route: &str,
        cfg: &RateLimitConfig,
        redis: &RedisConfig,
    ) -> Result<Arc<Self>, String> {
        let (_, conn) = crate::cache::redis::connect_lazily(redis)?;
        let g = Arc::new(Global {
            cfg: cfg.clone(),
            prefix: format!("{}:rl:{route}:", redis.key_prefix),
            instance: format!("{:016x}", fastrand::u64(..)),
            conn,
            timeout: redis.timeout.max(Duration::from_millis(50)),
            shares: moka::sync::Cache::builder()
                .max_capacity(cfg.max_keys)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            up: AtomicBool::new(true),
            instances: AtomicU32::new(1),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reconcile_loop(Arc::downgrade(&g)));
        }
        Ok(g)
    }

    /// Whether the last reconcile reached Redis.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The instances that announced themselves at the last reconcile (at least this one).
    pub fn instances(&self) -> u32 {
        self.instances.load(Ordering::Relaxed).max(1)
    }

    /// Passes the request if this instance's share allows it.
    pub(super) fn take(&self, key: Key, now: Instant) -> Decision {
        let limit = self.cfg.per_window().max(1.0);
        let share = self.shares.get_with_by_ref(&key, || {
            Arc::new(Mutex::new(Share {
                name: key.redis_name().into(),
                allowance: limit / f64::from(self.instances()),
                pending: 0,
                previous: 0.0,
                current: 0.0,
                fraction: 0.0,
                used: now,
            }))
        });
        // std Mutex per key: a few float operations, never across an await.
        let mut s = share.lock().unwrap_or_else(|p| p.into_inner());
        s.used = now;
        let allowed = s.allowance >= 1.0;
        if allowed {
            s.allowance -= 1.0;
            s.pending += 1;
        }
        let current = s.current + s.pending as f64;
        window_decision(
            allowed,
            limit,
            s.previous,
            current,
            s.fraction,
            self.cfg.window,
        )
    }

    /// One reconcile: send what was spent, read the fleet's counts, take new shares.
    async fn reconcile(&self) -> Result<(), redis::RedisError> {
        let window_ms = (self.cfg.window * 1000.0) as u64;
        let now_ms = unix_ms();
        let index = now_ms / window_ms.max(1);
        let fraction = (now_ms % window_ms.max(1)) as f64 / window_ms.max(1) as f64;
        let idle = Duration::from_secs_f64(self.cfg.window * 2.0);
        let now = Instant::now();
        let mut active = Vec::new();
        for (_, share) in self.shares.iter() {
            let mut s = share.lock().unwrap_or_else(|p| p.into_inner());
            if s.pending > 0 || now.saturating_duration_since(s.used) < idle {
                active.push((Arc::clone(&share), s.name.clone(), s.pending));
                s.pending = 0;
            }
        }
        let members = format!("{}instances", self.prefix);
        let mut p = redis::pipe();
        p.zadd(&members, &self.instance, now_ms)
            .ignore()
            .zrembyscore(&members, 0, now_ms.saturating_sub(MEMBER_TTL_MS))
            .ignore()
            .pexpire(&members, (MEMBER_TTL_MS * 2) as i64)
            .ignore()
            .zcard(&members);
        for (_, name, spent) in &active {
            let cur = format!("{}{name}:{index}", self.prefix);
            p.incr(&cur, *spent)
                .pexpire(&cur, (window_ms * 2 + 1000) as i64)
                .ignore()
                .get(format!("{}{name}:{}", self.prefix, index.wrapping_sub(1)));
        }
        let mut conn = self.conn.clone();
        let reply: Vec<redis::Value> =
            match tokio::time::timeout(self.timeout, p.query_async(&mut conn)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )))
                }
            };
        let mut values = reply.into_iter();
        let instances: u32 = values
            .next()
            .and_then(|v| redis::from_redis_value(v).ok())
            .unwrap_or(1);
        let n = instances.max(1);
        self.instances.store(n, Ordering::Relaxed);
        let limit = self.cfg.per_window().max(1.0);
        let ahead = RECONCILE.as_secs_f64() / self.cfg.window;
        for (share, _, _) in active {
            let current: f64 = values
                .next()
                .and_then(|v| redis::from_redis_value::<Option<u64>>(v).ok().flatten())
                .unwrap_or(0) as f64;
            let previous: f64 = values
                .next()
                .and_then(|v| redis::from_redis_value::<Option<u64>>(v).ok().flatten())
                .unwrap_or(0) as f64;
            let mut s = share.lock().unwrap_or_else(|p| p.into_inner());
            s.previous = previous;
            s.current = current;
            s.fraction = fraction;
            let left = limit - estimate_at_next(previous, current, fraction, ahead);
            s.allowance = (left / f64::from(n)).max(0.0);
        }
        Ok(())
    }
}

/// The fleet's sliding-window count `ahead` (a fraction of the window) from now, with nothing
/// more counted: the room a share is cut from is the room there will be by the next
/// reconcile, so that a saturated fleet runs at the limit rather than a tick's worth under it.
fn estimate_at_next(previous: f64, current: f64, fraction: f64, ahead: f64) -> f64 {
    let later = fraction + ahead;
    if later < 1.0 {
        window_estimate(previous, current, later)
    } else {
        // The current window will be the previous one by then.
        window_estimate(current, 0.0, (later - 1.0).min(1.0))
    }
}

async fn reconcile_loop(g: Weak<Global>) {
    let mut tick = tokio::time::interval(RECONCILE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(g) = g.upgrade() else { return };
        match g.reconcile().await {
            Ok(()) => {
                if !g.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        prefix = %g.prefix,
                        "rate limit: Redis reachable again, counting fleet-wide"
                    );
                }
            }
            Err(e) => {
                if g.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        prefix = %g.prefix,
                        error = %e,
                        instances = g.instances(),
                        "rate limit: Redis unreachable, limiting locally at rate / instances seen"
                    );
                }
            }
        }
    }
}
