//! Pools and selection. A [`Pool`] holds one generation's backends and a [`Strategy`]. A
//! strategy yields backends in its preference order; the pool's eligibility filter (usable,
//! not excluded) skips those that cannot take the request. One file per strategy:
//! `round_robin`, `weighted`, `least_conn` (the basic ones, which also run inside `geo`
//! regions and as the `affinity` fallback), `geo` and `affinity`.
//!
//! Slow start: a backend added by a reload (or, with health checks, one that just became
//! usable again) has its weight scaled by [`ramp`] for `slow_start`. Rotation strategies apply
//! it by admitting such a backend with probability equal to its share; least-connections
//! divides by the ramped weight.

pub mod affinity;
pub mod explain;
pub mod geo;
pub mod least_conn;
pub mod round_robin;
pub mod weighted;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use crate::backend::Backend;
pub use crate::backend::{ramp, SLOW_START_MIN_SHARE};
use crate::config::{BasicStrategy, PoolConfig, StrategyKind};

/// What a strategy may look at to choose.
pub struct PickCtx<'a> {
    /// The client's address (the peer, or whom a trusted proxy forwarded for).
    pub client_ip: IpAddr,
    /// Address of the peer that connected.
    pub peer: IpAddr,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// Whether the client connection is TLS (for cookie `Secure`).
    pub tls: bool,
    /// Time of the request (slow start).
    pub now: Instant,
}

/// The eligibility filter and slow-start view a strategy selects through.
pub struct Env<'a> {
    /// The pool's backends.
    pub backends: &'a [Backend],
    /// Indices not to pick (already tried).
    pub exclude: &'a [usize],
    /// Slow-start window of the pool.
    pub slow_start: Option<Duration>,
    /// Request time.
    pub now: Instant,
    /// Panic mode: health is ignored (breakers and caps still apply).
    pub panic: bool,
}

impl Env<'_> {
    /// Whether backend `i` may take the request: healthy (or the pool is in panic mode), its
    /// breaker admits traffic, it has a free slot, and it was not tried already.
    #[inline]
    pub fn usable(&self, i: usize) -> bool {
        let b = &self.backends[i];
        !self.exclude.contains(&i) && b.has_slot() && b.can_serve(self.now, self.panic)
    }

    /// Whether backend `i` could take the request but for having been tried already.
    #[inline]
    pub fn serves(&self, i: usize) -> bool {
        let b = &self.backends[i];
        b.has_slot() && b.can_serve(self.now, self.panic)
    }

    /// Whether backend `i` is healthy (or the pool in panic mode) and its breaker admits
    /// traffic, whatever its cap.
    #[inline]
    pub fn serves_but_for_cap(&self, i: usize) -> bool {
        self.backends[i].can_serve(self.now, self.panic)
    }

    /// Slow-start share of backend `i` (1.0 when not ramping).
    #[inline]
    pub fn share(&self, i: usize) -> f64 {
        match self.slow_start {
            None => 1.0,
            Some(w) => self.backends[i].state.ramp_share(self.now, w),
        }
    }

    /// Weight of `i` after slow start.
    #[inline]
    pub fn effective_weight(&self, i: usize) -> f64 {
        f64::from(self.backends[i].weight) * self.share(i)
    }

    /// Admission for rotation strategies: always for fully ramped backends, else with
    /// probability equal to the share.
    #[inline]
    pub fn admit(&self, i: usize) -> bool {
        let s = self.share(i);
        s >= 1.0 || fastrand::f64() < s
    }

    /// First member, scanning from `start`, that is usable and admitted; if slow start
    /// rejected every usable one, the first usable one.
    pub fn scan(&self, members: &[u32], start: usize) -> Option<usize> {
        let n = members.len();
        let mut fallback = None;
        for k in 0..n {
            let i = members[(start + k) % n] as usize;
            if self.usable(i) {
                if self.admit(i) {
                    return Some(i);
                }
                fallback.get_or_insert(i);
            }
        }
        fallback
    }
}

/// A strategy that needs no request context: used directly, inside geo regions, and as the
/// affinity fallback.
pub enum Basic {
    /// Exact rotation.
    RoundRobin(round_robin::RoundRobin),
    /// Smooth weighted round-robin.
    Weighted(weighted::Weighted),
    /// Fewest in-flight relative to weight.
    LeastConn(least_conn::LeastConn),
}

impl Basic {
    /// The strategy `kind` over `members` (indices into `backends`).
    pub fn new(kind: BasicStrategy, members: &[u32], backends: &[Backend]) -> Self {
        match kind {
            BasicStrategy::RoundRobin => Basic::RoundRobin(round_robin::RoundRobin::default()),
            BasicStrategy::Weighted => {
                let w: Vec<u32> = members
                    .iter()
                    .map(|&i| backends[i as usize].weight)
                    .collect();
                Basic::Weighted(weighted::Weighted::new(&w))
            }
            BasicStrategy::LeastConnections => Basic::LeastConn(least_conn::LeastConn::default()),
        }
    }

    /// Picks one of `members`.
    pub fn select(&self, members: &[u32], env: &Env<'_>) -> Option<usize> {
        match self {
            Basic::RoundRobin(s) => s.select(members, env),
            Basic::Weighted(s) => s.select(members, env),
            Basic::LeastConn(s) => s.select(members, env),
        }
    }
}

/// A pool's strategy.
pub enum Strategy {
    /// round_robin, weighted or least_connections over the whole pool.
    Basic(Basic),
    /// Geographic routing with failover.
    Geo(Box<geo::Geo>),
    /// Session affinity.
    Affinity(Box<affinity::Affinity>),
}

/// The outcome of a selection.
pub struct Pick<'a> {
    /// Index of the backend in the pool.
    pub index: usize,
    /// The backend.
    pub backend: &'a Backend,
    /// A sticky cookie to set on the response.
    pub set_cookie: Option<HeaderValue>,
    /// How a geo or affinity strategy decided, for the access log (e.g. `geo:failover`).
    pub decision: Option<&'static str>,
}

/// A pool of backends in one config generation.
pub struct Pool {
    /// Pool name.
    pub name: Arc<str>,
    /// Backends in config order.
    pub backends: Vec<Backend>,
    /// All backend indices, in order.
    members: Box<[u32]>,
    strategy: Strategy,
    /// Configured strategy.
    pub kind: StrategyKind,
    /// Slow-start window.
    pub slow_start: Option<Duration>,
    /// Share of healthy backends below which health is ignored (0: never).
    panic_threshold: f64,
    panic: AtomicBool,
    panic_gauge: metrics::Gauge,
}

impl Pool {
    /// The pool's slots: the sum of its backends' caps, or None when one has no cap.
    pub fn slots(&self) -> Option<u64> {
        self.backends
            .iter()
            .map(|b| (b.max_connections > 0).then_some(u64::from(b.max_connections)))
            .sum()
    }

    /// A pool over `backends` configured by `cfg`.
    pub fn new(cfg: &PoolConfig, backends: Vec<Backend>) -> Self {
        let members: Box<[u32]> = (0..backends.len() as u32).collect();
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let basic = |k| Strategy::Basic(Basic::new(k, &members, &backends));
        let strategy = match (cfg.strategy, &cfg.geo, &cfg.affinity) {
            (StrategyKind::RoundRobin, ..) => basic(BasicStrategy::RoundRobin),
            (StrategyKind::Weighted, ..) => basic(BasicStrategy::Weighted),
            (StrategyKind::LeastConnections, ..) => basic(BasicStrategy::LeastConnections),
            (StrategyKind::Geo, Some(g), _) => {
                Strategy::Geo(Box::new(geo::Geo::new(&name, g, &backends)))
            }
            (StrategyKind::Affinity, _, Some(a)) => {
                Strategy::Affinity(Box::new(affinity::Affinity::new(&name, a, &backends)))
            }
            // Validation guarantees the blocks; fall back to rotation rather than panic.
            _ => basic(BasicStrategy::RoundRobin),
        };
        let pool = Self {
            panic_gauge: metrics::gauge!(crate::metrics::PANIC_MODE, "pool" => cfg.name.clone()),
            name,
            backends,
            members,
            strategy,
            kind: cfg.strategy,
            slow_start: cfg.slow_start,
            panic_threshold: cfg.health.as_ref().map_or(0.0, |h| h.panic_threshold),
            panic: AtomicBool::new(false),
        };
        pool.update_panic();
        pool
    }

    /// A pool over fresh, healthy backend state with no caps, outside any snapshot (for
    /// benchmarks and tests of selection alone). Snapshots build theirs from carried state.
    pub fn from_config(cfg: &PoolConfig) -> Self {
        let backends = cfg
            .backends
            .iter()
            .map(|b| Backend::new(&cfg.name, b.address, b.weight, b.region.as_deref()))
            .collect();
        Self::new(cfg, backends)
    }

    /// Marks the pool's metric series (and its backends') as alive.
    pub fn touch_metrics(&self) {
        crate::metrics::touch_gauges(&[&self.panic_gauge]);
        let counters: &[metrics::Counter] = match &self.strategy {
            Strategy::Basic(_) => &[],
            Strategy::Affinity(a) => a.counters(),
            Strategy::Geo(g) => g.counters(),
        };
        crate::metrics::touch(&counters.iter().collect::<Vec<_>>());
        for b in &self.backends {
            b.state.touch_metrics();
        }
    }

    /// Re-evaluates panic mode after health changed; logs and exports a change.
    pub fn update_panic(&self) {
        let healthy = self
            .backends
            .iter()
            .filter(|b| b.state.is_healthy())
            .count();
        let share = healthy as f64 / self.backends.len().max(1) as f64;
        let panic = self.panic_threshold > 0.0 && share < self.panic_threshold;
        if self.panic.swap(panic, Ordering::Relaxed) != panic {
            if panic {
                tracing::warn!(
                    pool = &*self.name,
                    healthy,
                    total = self.backends.len(),
                    threshold = self.panic_threshold,
                    "panic mode: too few healthy backends, routing to all of them"
                );
            } else {
                tracing::info!(pool = &*self.name, healthy, "panic mode over");
            }
        }
        self.panic_gauge.set(if panic { 1.0 } else { 0.0 });
    }

    /// Whether the pool is in panic mode.
    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    /// Whether some backend could take the request but for its concurrency cap: then
    /// waiting in the queue makes sense.
    pub fn all_busy(&self, now: Instant, exclude: &[usize]) -> bool {
        let panic = self.in_panic();
        self.backends
            .iter()
            .enumerate()
            .any(|(i, b)| !b.has_slot() && !exclude.contains(&i) && b.can_serve(now, panic))
    }

    /// Index of the backend whose state is `state`.
    pub fn index_of(&self, state: &Arc<crate::backend::BackendState>) -> Option<usize> {
        self.backends
            .iter()
            .position(|b| Arc::ptr_eq(&b.state, state))
    }

    /// The view selection looks through at `now`, with `exclude` not to be picked.
    pub(crate) fn env<'a>(&'a self, exclude: &'a [usize], now: Instant) -> Env<'a> {
        Env {
            backends: &self.backends,
            exclude,
            slow_start: self.slow_start,
            now,
            panic: self.in_panic(),
        }
    }

    /// Picks a backend for the request, skipping unusable ones and those in `exclude`;
    /// None when the pool has no backend for it.
    pub fn select(&self, ctx: &PickCtx<'_>, exclude: &[usize]) -> Option<Pick<'_>> {
        let env = self.env(exclude, ctx.now);
        let (index, set_cookie, decision) = match &self.strategy {
            Strategy::Basic(b) => (b.select(&self.members, &env)?, None, None),
            Strategy::Geo(g) => {
                let (i, d) = g.select(&env, ctx)?;
                (i, None, Some(d))
            }
            Strategy::Affinity(a) => {
                let (i, cookie, d) = a.select(&self.members, &env, ctx)?;
                (i, cookie, Some(d))
            }
        };
        Some(Pick {
            index,
            backend: self.backends.get(index)?,
            set_cookie,
            decision,
        })
    }

    /// The backends the strategy would accept for a request that waits in the queue (a
    /// strict affinity request its own; a geo request its region and failover regions), or
    /// None when any backend will do.
    pub fn queue_filter(&self, ctx: &PickCtx<'_>) -> Option<Arc<[std::net::SocketAddr]>> {
        let members = match &self.strategy {
            Strategy::Basic(_) => return None,
            Strategy::Affinity(a) => vec![a.strict_backend(ctx)?],
            Strategy::Geo(g) => g.queue_members(ctx)?,
        };
        Some(
            members
                .into_iter()
                .filter_map(|i| self.backends.get(i).map(Backend::addr))
                .collect(),
        )
    }

    /// How many backends could take traffic now (busy ones count: they free up).
    pub fn usable_count(&self) -> usize {
        let now = Instant::now();
        let panic = self.in_panic();
        self.backends
            .iter()
            .filter(|b| b.can_serve(now, panic))
            .count()
    }

    /// Whether any backend could take traffic now (busy ones count: they free up).
    pub fn has_usable(&self) -> bool {
        let now = Instant::now();
        let panic = self.in_panic();
        self.backends.iter().any(|b| b.can_serve(now, panic))
    }

    /// Weight of backend `i` after slow start, at `now`.
    pub fn effective_weight(&self, i: usize, now: Instant) -> f64 {
        let env = Env {
            backends: &self.backends,
            exclude: &[],
            slow_start: self.slow_start,
            now,
            panic: false,
        };
        env.effective_weight(i)
    }
}
