//! Pools and selection. A [`Pool`] holds one generation's backends and a [`Strategy`]; the
//! strategy yields backends in its preference order and the pool's eligibility filter skips
//! those that cannot take traffic. One file per strategy.

pub mod round_robin;
pub mod weighted;

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::backend::Backend;
use crate::config::StrategyKind;

/// What a strategy may look at to choose.
pub struct PickCtx<'a> {
    /// Client address (after the listener; no proxy protocol).
    pub client_ip: IpAddr,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

/// The strategies; each variant lives in its own module.
pub enum Strategy {
    /// Exact rotation.
    RoundRobin(round_robin::RoundRobin),
    /// Smooth weighted round-robin.
    Weighted(weighted::Weighted),
}

impl Strategy {
    /// Builds the strategy for these backends.
    pub fn build(kind: StrategyKind, backends: &[Backend]) -> Self {
        match kind {
            StrategyKind::RoundRobin => Strategy::RoundRobin(round_robin::RoundRobin::default()),
            StrategyKind::Weighted => {
                let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
                Strategy::Weighted(weighted::Weighted::new(&weights))
            }
        }
    }

    /// The index of the first backend in this strategy's preference order for which `usable`
    /// holds.
    pub fn select(
        &self,
        backends: &[Backend],
        _ctx: &PickCtx<'_>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self {
            Strategy::RoundRobin(s) => s.select(backends.len(), usable),
            Strategy::Weighted(s) => s.select(backends.len(), usable),
        }
    }
}

/// A pool of backends in one config generation.
pub struct Pool {
    /// Pool name.
    pub name: Arc<str>,
    /// Backends in config order.
    pub backends: Vec<Backend>,
    strategy: Strategy,
}

impl Pool {
    /// A pool over `backends` using `kind`.
    pub fn new(name: Arc<str>, kind: StrategyKind, backends: Vec<Backend>) -> Self {
        let strategy = Strategy::build(kind, &backends);
        Self {
            name,
            backends,
            strategy,
        }
    }

    /// Picks a usable backend, or None when the pool has none.
    pub fn select(&self, ctx: &PickCtx<'_>) -> Option<&Backend> {
        let b = &self.backends;
        let i = self.strategy.select(b, ctx, |i| b[i].is_usable())?;
        b.get(i)
    }

    /// Whether any backend could take traffic now.
    pub fn has_usable(&self) -> bool {
        self.backends.iter().any(Backend::is_usable)
    }
}
