//! The response cache (RFC 9111, shared): a process-wide service that outlives snapshots.
//!
//! - `policy` (pure: storable? fresh? may it serve stale?), `directives` (Cache-Control,
//!   Surrogate-Control and CDN-Cache-Control parsing), `conditional` (304s, ranges,
//!   revalidation requests), `key` (URL and Vary), `status` (Cache-Status): decisions with
//!   time passed in.
//! - `entry` (stored responses and their Redis form), `memory` (moka, byte-weighed), `redis`
//!   (the fleet-wide tier and its invalidation channel), `fill` (coalescing and the streaming
//!   tee): storage.
//!
//! The pipeline's cache stage (`proxy::cache`) uses these through [`Cache`].

pub mod conditional;
pub mod directives;
pub mod entry;
pub mod fill;
pub mod key;
pub mod memory;
pub mod policy;
pub mod redis;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use metrics::Counter;
use serde::{Deserialize, Serialize};

use crate::config::CacheConfig;
use crate::metrics::{CACHE_PURGES_TOTAL, CACHE_STORE_TOTAL};
use entry::Entry;
use fill::{Fills, Join, Leader};
use memory::{Lookup, MemoryStore};
use redis::RedisTier;

/// How long a URL whose response could not be stored skips coalescing.
const UNCACHEABLE_FOR: Duration = Duration::from_secs(10);

/// What became of a response the cache tried to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreResult {
    /// Stored.
    Stored,
    /// Over `max_object_size`.
    TooLarge,
    /// Its headers forbid storing it.
    Uncacheable,
    /// Its body broke, or nobody was left to read one that outgrew the limit.
    Aborted,
}

/// What to purge: the body of `POST /admin/cache/purge`, and of invalidation messages.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Purge {
    /// Absolute URLs: every variant of each.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Absolute URL prefixes.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Tags from `Surrogate-Key` and `Cache-Tag`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Everything.
    #[serde(default)]
    pub all: bool,
}

/// The cache: memory tier, optional Redis tier, fills in progress.
pub struct Cache {
    /// The memory tier.
    pub memory: MemoryStore,
    /// The Redis tier, when configured.
    pub redis: Option<Arc<RedisTier>>,
    /// Fills in progress.
    pub fills: Arc<Fills>,
    /// URLs whose last response could not be stored: no coalescing for a while.
    uncacheable: moka::sync::Cache<Arc<str>, ()>,
    stores: [Counter; 4],
    purges: [Counter; 5],
}

impl Cache {
    /// Builds the stores of `cfg` and, with Redis, starts its writer and subscriber (so it
    /// must run inside the runtime).
    pub fn new(cfg: &CacheConfig) -> Result<Arc<Self>, String> {
        let store = |r: &'static str| metrics::counter!(CACHE_STORE_TOTAL, "result" => r);
        let purge = |k: &'static str| metrics::counter!(CACHE_PURGES_TOTAL, "kind" => k);
        let mut failed = None;
        let cache = Arc::new_cyclic(|weak: &std::sync::Weak<Cache>| {
            let redis = cfg.redis.as_ref().and_then(|r| {
                let weak = weak.clone();
                let started = RedisTier::start(r, move |inv| {
                    if let Some(c) = weak.upgrade() {
                        c.purges[4].increment(1);
                        c.apply(&inv.what);
                    }
                });
                started.map_err(|e| failed = Some(e)).ok()
            });
            Cache {
                memory: MemoryStore::new(cfg.max_size),
                redis,
                fills: Arc::new(Fills::default()),
                uncacheable: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_live(UNCACHEABLE_FOR)
                    .build(),
                stores: [
                    store("stored"),
                    store("too_large"),
                    store("uncacheable"),
                    store("aborted"),
                ],
                purges: [
                    purge("url"),
                    purge("prefix"),
                    purge("tag"),
                    purge("all"),
                    purge("invalidation"),
                ],
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(cache),
        }
    }

    /// Looks `url` up for a request with these headers: memory, then Redis (a Redis hit is
    /// promoted to memory).
    pub async fn lookup(&self, url: &str, req: &HeaderMap) -> Lookup {
        let found = self.memory.get(url, req);
        if matches!(found, Lookup::Found(_)) {
            return found;
        }
        let Some(redis) = &self.redis else {
            return found;
        };
        match redis.get(url, req).await {
            Some(e) => {
                let e = Arc::new(e);
                self.memory.insert(Arc::clone(&e));
                Lookup::Found(e)
            }
            None => found,
        }
    }

    /// Stores a complete response in memory and queues it for Redis, where it is kept for
    /// its freshness plus `stale_window` seconds.
    pub fn store(&self, entry: Arc<Entry>, stale_window: u64, now: u64) {
        if let Some(r) = &self.redis {
            r.put(
                Arc::clone(&entry),
                RedisTier::keep_for(&entry, stale_window, now),
            );
        }
        self.memory.insert(entry);
        self.count(StoreResult::Stored);
    }

    /// Marks the cache's metric series as alive and refreshes its size gauges.
    pub fn touch_metrics(&self) {
        self.memory.refresh_gauges();
        crate::metrics::touch(&self.stores.iter().chain(&self.purges).collect::<Vec<_>>());
        if let Some(r) = &self.redis {
            r.touch_metrics();
        }
    }

    /// Counts what became of a response.
    pub fn count(&self, r: StoreResult) {
        self.stores[r as usize].increment(1);
    }

    /// Joins the fill of `url`, or leads a new one; a URL found uncacheable recently gets a
    /// fill nobody joins.
    pub fn join(&self, url: &str) -> Join {
        if self.uncacheable.contains_key(url) {
            return Join::Lead(Leader::unregistered());
        }
        self.fills.join(url)
    }

    /// Remembers for a short while that `url` gave a response that could not be stored.
    pub fn mark_uncacheable(&self, url: &str) {
        self.uncacheable.insert(url.into(), ());
    }

    /// Forgets that `url` was uncacheable (it just gave a storable response).
    pub fn mark_cacheable(&self, url: &str) {
        self.uncacheable.invalidate(url);
    }

    /// Drops from memory what `inv` names; returns the responses removed.
    fn apply(&self, inv: &Purge) -> usize {
        if inv.all {
            return self.memory.clear();
        }
        let mut n: usize = inv.urls.iter().map(|u| self.memory.remove_url(u)).sum();
        n += inv
            .prefixes
            .iter()
            .map(|p| self.memory.remove_prefix(p))
            .sum::<usize>();
        if !inv.tags.is_empty() {
            n += self.memory.remove_tags(&inv.tags);
        }
        n
    }

    /// Purges from every tier and every instance sharing Redis; returns the responses removed
    /// from memory here.
    pub async fn purge(&self, p: &Purge) -> usize {
        for (i, n) in [
            p.urls.len(),
            p.prefixes.len(),
            p.tags.len(),
            usize::from(p.all),
        ]
        .into_iter()
        .enumerate()
        {
            self.purges[i].increment(n as u64);
        }
        let n = self.apply(p);
        if let Some(r) = &self.redis {
            r.purge(p).await;
        }
        n
    }

    /// Invalidates `urls` after an unsafe request succeeded: memory at once, Redis and the
    /// other instances in the background.
    pub fn invalidate(&self, urls: Vec<String>, tasks: &tokio_util::task::TaskTracker) {
        let inv = Purge {
            urls,
            ..Purge::default()
        };
        self.purges[4].increment(inv.urls.len() as u64);
        self.apply(&inv);
        if let Some(r) = &self.redis {
            let r = Arc::clone(r);
            tasks.spawn(async move {
                r.purge(&inv).await;
            });
        }
    }
}
