//! Per-tenant shares of a pool's slots (`pools.NAME.tenant`). Each tenant's slots in flight are
//! counted; a tenant holding its share does not take a free slot while others wait, and a
//! freed slot passes over its waiters for those of tenants below their share.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use http::HeaderMap;
use metrics::Counter;

use crate::config::TenantConfig;
use crate::limit::Key;
use crate::metrics::TENANT_LIMITED_TOTAL;

/// Most tenants tracked at once per pool (the least recently seen are forgotten; one holding
/// slots keeps its count through the slots).
const MAX_TENANTS: u64 = 100_000;

/// The tenants of one pool; kept across reloads with the pool's queue.
pub struct Tenants {
    counts: moka::sync::Cache<Key, Arc<AtomicU32>>,
    limited: Counter,
}

/// A request's tenant: its count of slots in flight, and the most it may hold while others
/// wait.
#[derive(Clone)]
pub struct Seat {
    count: Arc<AtomicU32>,
    limit: u32,
}

impl Seat {
    /// Whether the tenant holds its whole share.
    pub fn full(&self) -> bool {
        self.count.load(Ordering::Acquire) >= self.limit
    }

    pub(super) fn charge(&self) -> Arc<AtomicU32> {
        self.count.fetch_add(1, Ordering::AcqRel);
        Arc::clone(&self.count)
    }
}

/// Gives back one slot of a tenant's count.
pub(super) fn uncharge(count: &AtomicU32) {
    // Never below zero, even for a count forgotten and found again.
    let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

impl Tenants {
    /// No tenants yet, for `pool`.
    pub fn new(pool: &str) -> Self {
        Self {
            counts: moka::sync::Cache::builder()
                .max_capacity(MAX_TENANTS)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
            limited: metrics::counter!(TENANT_LIMITED_TOTAL, "pool" => pool.to_owned()),
        }
    }

    /// Marks the metric series as alive.
    pub fn touch_metrics(&self) {
        crate::metrics::touch(&[&self.limited]);
    }

    /// Counts one request the tenant limit held back.
    pub fn limited(&self) {
        self.limited.increment(1);
    }

    /// The seat of a request's tenant, whose share is `limit` slots.
    pub fn seat(
        &self,
        cfg: &TenantConfig,
        limit: u32,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Seat {
        let key = Key::of(&cfg.key, client, headers);
        Seat {
            count: self.counts.get_with(key, || Arc::new(AtomicU32::new(0))),
            limit,
        }
    }
}
