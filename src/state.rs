//! The config snapshot: everything one request needs, built once per config generation and
//! swapped in atomically. Requests load it once and keep their Arc to the end, so a reload
//! never changes the rules under a request in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Histogram, Label};
use tokio_rustls::TlsAcceptor;

use crate::admission::{Seat, WaitQueue};
use crate::backend::{Backend, BackendState};
use crate::balance::Pool;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cache::status::CacheResult;
use crate::config::{
    CacheConfig, Config, HealthConfig, LimitsConfig, QueueConfig, RetryConfig, RouteCacheConfig,
    RuntimeConfig, Secret, TenantConfig, Timeouts,
};
use crate::discovery::Found;
use crate::limit::RateLimiter;
use crate::metrics::{
    CodeCounters, CACHE_REQUESTS_TOTAL, CLIENT_ABORTS_TOTAL, REQUESTS_TOTAL, REQUEST_DURATION,
    RETRIES_TOTAL, RETRY_BUDGET_EXHAUSTED_TOTAL,
};
use crate::router::Router;
use crate::tls;
use crate::tunnel::stats::RouteTunnels;
use crate::upstream::{BackendConns, PoolSettings, Upstreams};

/// The shared, atomically swapped snapshot.
pub type SharedState = Arc<ArcSwap<Snapshot>>;

/// Per-route metric handles.
pub struct RouteStats {
    /// Route name.
    pub name: Arc<str>,
    /// `sandgate_requests_total{route,code}`.
    pub requests: CodeCounters,
    /// `sandgate_request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `sandgate_client_aborts_total{route}`.
    pub client_aborts: metrics::Counter,
    /// `sandgate_tunnels_*{route}`.
    pub tunnels: Arc<RouteTunnels>,
}

/// A caching route's settings and its `sandgate_cache_requests_total` handles.
pub struct RouteCache {
    /// `routes[i].cache`.
    pub cfg: RouteCacheConfig,
    results: [metrics::Counter; 6],
}

impl RouteCache {
    fn new(route: &str, cfg: RouteCacheConfig) -> Self {
        Self {
            cfg,
            results: CacheResult::ALL.map(|r| {
                metrics::counter!(CACHE_REQUESTS_TOTAL, "route" => route.to_owned(), "result" => r.label())
            }),
        }
    }

    /// Marks its counters as alive.
    fn touch_metrics(&self) {
        crate::metrics::touch(&self.results.iter().collect::<Vec<_>>());
    }

    /// Counts one request's cache result.
    pub fn count(&self, r: CacheResult) {
        self.results[r as usize].increment(1);
    }
}

/// A pool with what forwarding to it needs.
pub struct PoolEntry {
    /// Backends and strategy.
    pub pool: Pool,
    /// Active health checks (shared with the checker's tasks).
    pub health: Option<Arc<HealthConfig>>,
    /// Retry settings.
    pub retry: Option<RetryConfig>,
    /// Queue settings.
    pub queue_cfg: QueueConfig,
    /// The wait queue (kept across reloads).
    pub queue: Arc<WaitQueue>,
    /// `tenant`, and the slots that its share comes to.
    pub tenant: Option<(TenantConfig, u32)>,
    /// Requests in flight to this pool, and retries among them (the retry budget).
    pub budget: RetryBudget,
    /// `sandgate_retries_total{pool,reason}`.
    pub retries: CodeCounters,
    /// `sandgate_retry_budget_exhausted_total{pool}`.
    pub budget_exhausted: metrics::Counter,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Keep-alive connection pools, by backend index.
    pub conns: Vec<Arc<BackendConns>>,
}

impl PoolEntry {
    /// The request's tenant, in a pool with `tenant`.
    pub fn seat(&self, ctx: &crate::balance::PickCtx<'_>) -> Option<Seat> {
        let (cfg, limit) = self.tenant.as_ref()?;
        Some(
            self.queue
                .tenants
                .seat(cfg, *limit, ctx.client_ip, ctx.headers),
        )
    }
}

/// Requests and retries in flight in one pool.
#[derive(Default)]
pub struct RetryBudget {
    /// Requests in flight.
    pub active: AtomicU64,
    /// Retries in flight.
    pub retries: AtomicU64,
}

impl RetryBudget {
    /// Takes a retry if the budget allows: retries in flight stay within `share` of the
    /// requests in flight, and at least 3 are always allowed.
    pub fn try_retry(&self, share: f64) -> bool {
        let allowed = ((self.active.load(Ordering::Relaxed) as f64 * share) as u64).max(3);
        let n = self.retries.fetch_add(1, Ordering::Relaxed);
        if n >= allowed {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// A listener as bound at start-up. Addresses only change on restart; certificates reload.
pub struct ListenerEntry {
    /// Listener name.
    pub name: Arc<str>,
    /// Configured address.
    pub address: SocketAddr,
    /// TLS acceptor, for TLS listeners.
    pub tls: Option<TlsAcceptor>,
    /// Sources allowed to send a PROXY protocol header (None: the listener takes none).
    pub proxy_protocol: Option<Arc<[ipnet::IpNet]>>,
}

/// One config generation.
pub struct Snapshot {
    /// Starts at 1, +1 per successful reload.
    pub generation: u64,
    /// Route table.
    pub router: Router,
    /// Metric handles by route index.
    pub route_stats: Vec<RouteStats>,
    /// Rate limiters by route index (kept across reloads while the settings are unchanged).
    pub rate_limits: Vec<Option<Arc<RateLimiter>>>,
    /// Pools by index (routes refer to them by index).
    pub pools: Vec<PoolEntry>,
    /// Client-side limits.
    pub limits: LimitsConfig,
    /// HTTP/1 connection settings derived from `limits`.
    pub http1: Arc<hyper::server::conn::http1::Builder>,
    /// HTTP/2 connection settings (prior knowledge on plain listeners, ALPN `h2` on TLS).
    pub http2: Arc<auto::Builder<TokioExecutor>>,
    /// Listeners.
    pub listeners: Vec<ListenerEntry>,
    /// Runtime settings (read at start-up; changes need a restart).
    pub runtime: RuntimeConfig,
    /// Admin address (read at start-up).
    pub admin: Option<SocketAddr>,
    /// The bearer token admin POSTs need.
    pub admin_token: Option<Secret>,
    /// Cache settings by route index (None: the route does not cache).
    pub route_cache: Vec<Option<RouteCache>>,
    /// The cache's store settings; `max_object_size` applies live, the rest at start-up.
    pub cache: CacheConfig,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// `tracing.generate`.
    pub trace_generate: bool,
    /// `admin.explain_from`.
    pub explain_from: Vec<ipnet::IpNet>,
    /// Each route's queue class, by route index.
    pub route_priority: Vec<crate::config::Priority>,
}

fn http1_builder(limits: &LimitsConfig) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    // The head and idle timers are sandgate's own (`conn`): hyper's header timer would also
    // cut keep-alive connections waiting for their next request.
    b.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes);
    b
}

fn http2_builder(limits: &LimitsConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new()).http2_only();
    // WebSocket over HTTP/2 (RFC 8441) is bridged to backends (`proxy::upgrade`).
    b.http2()
        .enable_connect_protocol()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

impl Snapshot {
    /// Builds the snapshot for `cfg`. With `old`, backend state is carried over by pool and
    /// address, and listeners keep their bound identity (see [`Snapshot::restart_needed`]).
    /// `found` adds the backends discovery found to the file's.
    pub fn build(
        cfg: &Config,
        found: &Found,
        old: Option<&Snapshot>,
        upstreams: &Upstreams,
    ) -> Result<Snapshot, String> {
        // The only step that can fail comes first: a rejected config must not touch the
        // backend state the serving snapshot shares (health, breakers).
        let listeners = match old {
            None => cfg
                .listeners
                .iter()
                .map(|l| {
                    Ok(ListenerEntry {
                        name: Arc::from(l.name.as_str()),
                        address: l.address,
                        tls: l.tls.as_deref().map(tls::acceptor).transpose()?,
                        proxy_protocol: l.proxy_protocol.as_deref().map(Arc::from),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?,
            // Bound sockets stay; a listener that is still TLS gets the new certificates.
            Some(old) => old
                .listeners
                .iter()
                .map(|ol| {
                    let new = cfg.listeners.iter().find(|l| *l.name == *ol.name);
                    let tls = match (new.and_then(|l| l.tls.as_deref()), &ol.tls) {
                        (Some(pairs), Some(_)) => Some(tls::acceptor(pairs)?),
                        (_, old_tls) => old_tls.clone(),
                    };
                    // The PROXY protocol setting applies to new connections at once.
                    let proxy_protocol = match new {
                        Some(l) => l.proxy_protocol.as_deref().map(Arc::from),
                        None => ol.proxy_protocol.clone(),
                    };
                    Ok(ListenerEntry {
                        name: Arc::clone(&ol.name),
                        address: ol.address,
                        tls,
                        proxy_protocol,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?,
        };

        let mut prior: HashMap<(&str, SocketAddr), &Arc<BackendState>> = HashMap::new();
        let mut queues: HashMap<&str, &Arc<WaitQueue>> = HashMap::new();
        if let Some(old) = old {
            for p in &old.pools {
                queues.insert(&p.pool.name, &p.queue);
                for b in &p.pool.backends {
                    prior.insert((&p.pool.name, b.addr()), &b.state);
                }
            }
        }
        let mut pools = Vec::with_capacity(cfg.pools.len());
        let mut live = Vec::new();
        for pc in &cfg.pools {
            let members = found.backends_of(pc);
            live.extend(members.iter().map(|b| (pc.name.as_str(), b.address)));
            let queue = queues
                .get(pc.name.as_str())
                .map_or_else(|| Arc::new(WaitQueue::new(&pc.name)), |q| Arc::clone(q));
            let initial_healthy = pc.health.as_ref().is_none_or(|h| h.initial_healthy);
            let backends = members
                .iter()
                .map(|bc| {
                    let state = match prior.get(&(pc.name.as_str(), bc.address)) {
                        Some(s) => {
                            if pc.health.is_none() {
                                // Without health checks every backend counts as healthy.
                                s.set_healthy(true);
                            }
                            Arc::clone(s)
                        }
                        None => {
                            let s =
                                Arc::new(BackendState::new(&pc.name, bc.address, initial_healthy));
                            // Added by a reload: ramp up under slow start. Backends present
                            // at start-up begin at full weight.
                            if old.is_some() {
                                s.mark_usable_now();
                            }
                            s
                        }
                    };
                    state.configure_breaker(pc.breaker.as_ref());
                    // A weight set through the admin API wins over the file's.
                    let weight = state.overrides.weight().unwrap_or(bc.weight);
                    Backend::with_state(
                        state,
                        weight,
                        bc.region.as_deref(),
                        bc.max_connections.unwrap_or(0),
                    )
                })
                .collect::<Vec<_>>();
            let pool = Pool::new(pc, backends);
            // A tenant's share of the pool's slots, at least one.
            let tenant = pc.tenant.clone().map(|t| {
                let slots = pool.slots().unwrap_or(0) as f64;
                let share = (slots * t.max_share).floor().max(1.0);
                (t, share.min(f64::from(u32::MAX)) as u32)
            });
            pools.push(PoolEntry {
                pool,
                health: pc.health.clone().map(Arc::new),
                retry: pc.retry.clone(),
                queue_cfg: pc.queue,
                tenant,
                queue,
                budget: RetryBudget::default(),
                retries: CodeCounters::with_label(
                    RETRIES_TOTAL,
                    vec![Label::new("pool", pc.name.clone())],
                    "reason",
                ),
                budget_exhausted: metrics::counter!(RETRY_BUDGET_EXHAUSTED_TOTAL, "pool" => pc.name.clone()),
                timeouts: pc.timeouts,
                conns: members
                    .iter()
                    .map(|bc| {
                        let settings = PoolSettings {
                            connect: pc.timeouts.connect,
                            idle: pc.timeouts.idle,
                            max_idle: pc.max_idle_per_backend,
                            transport: Arc::clone(&pc.transport),
                        };
                        upstreams.conns_for(&pc.name, bc.address, settings)
                    })
                    .collect(),
            });
        }
        upstreams.retain(&live);

        let route_stats = cfg
            .routes
            .iter()
            .map(|r| {
                let labels = vec![Label::new("route", r.name.clone())];
                RouteStats {
                    name: Arc::from(r.name.as_str()),
                    requests: CodeCounters::new(REQUESTS_TOTAL, labels.clone()),
                    duration: metrics::histogram!(REQUEST_DURATION, labels.clone()),
                    client_aborts: metrics::counter!(CLIENT_ABORTS_TOTAL, labels),
                    // Carried over, so that the tunnels open keep counting on one gauge.
                    tunnels: old
                        .and_then(|o| o.route_stats.iter().find(|s| *s.name == *r.name))
                        .map_or_else(
                            || Arc::new(RouteTunnels::new(&r.name)),
                            |s| Arc::clone(&s.tunnels),
                        ),
                }
            })
            .collect();

        let redis = cfg.cache.redis.as_ref();
        let rate_limits = cfg
            .routes
            .iter()
            .map(|r| {
                let rl = r.rate_limit.as_ref()?;
                let kept = old.and_then(|o| {
                    let i = o.route_stats.iter().position(|s| *s.name == *r.name)?;
                    o.rate_limits
                        .get(i)?
                        .as_ref()
                        .filter(|l| l.config() == rl)
                        .cloned()
                });
                Some(kept.unwrap_or_else(|| Arc::new(RateLimiter::new(&r.name, rl.clone(), redis))))
            })
            .collect();

        Ok(Snapshot {
            generation: old.map_or(1, |o| o.generation + 1),
            router: Router::new(&cfg.routes),
            route_stats,
            rate_limits,
            pools,
            limits: cfg.limits.clone(),
            http1: Arc::new(http1_builder(&cfg.limits)),
            http2: Arc::new(http2_builder(&cfg.limits)),
            listeners,
            runtime: RuntimeConfig {
                // Threads are fixed when the runtime starts; the grace period applies live.
                worker_threads: old
                    .map_or(cfg.runtime.worker_threads, |o| o.runtime.worker_threads),
                shutdown_grace: cfg.runtime.shutdown_grace,
                metrics_idle_timeout: old.map_or(cfg.runtime.metrics_idle_timeout, |o| {
                    o.runtime.metrics_idle_timeout
                }),
            },
            admin: old.map_or(cfg.admin, |o| o.admin),
            admin_token: cfg.admin_token.clone(),
            trusted_proxies: cfg.trusted_proxies.clone(),
            trace_generate: cfg.trace_generate,
            explain_from: cfg.explain_from.clone(),
            route_priority: cfg.routes.iter().map(|r| r.priority).collect(),
            route_cache: cfg
                .routes
                .iter()
                .map(|r| r.cache.map(|c| RouteCache::new(&r.name, c)))
                .collect(),
            cache: match old {
                // The stores were built at start-up: only the object size limit changes.
                Some(o) => CacheConfig {
                    max_object_size: cfg.cache.max_object_size.min(o.cache.max_size),
                    ..o.cache.clone()
                },
                None => cfg.cache.clone(),
            },
        })
    }

    /// What in `cfg` differs from the running listeners, admin and runtime and so needs a
    /// restart to apply; one message per difference.
    pub fn restart_needed(&self, cfg: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for l in &self.listeners {
            match cfg.listeners.iter().find(|n| *n.name == *l.name) {
                None => out.push(format!("listener {} was removed", l.name)),
                Some(n) if n.address != l.address => out.push(format!(
                    "listener {} address changed from {} to {}",
                    l.name, l.address, n.address
                )),
                Some(n) if n.tls.is_some() != l.tls.is_some() => {
                    out.push(format!("listener {} switched TLS on or off", l.name))
                }
                Some(_) => {}
            }
        }
        for n in &cfg.listeners {
            if !self.listeners.iter().any(|l| *l.name == *n.name) {
                out.push(format!("listener {} was added", n.name));
            }
        }
        if cfg.admin != self.admin {
            out.push("admin.address changed".to_owned());
        }
        if cfg.runtime.worker_threads != self.runtime.worker_threads {
            out.push("runtime.worker_threads changed".to_owned());
        }
        if cfg.cache.max_size != self.cache.max_size {
            out.push("cache.max_size changed".to_owned());
        }
        if cfg.cache.redis != self.cache.redis {
            out.push("cache.redis changed".to_owned());
        }
        out
    }

    /// Marks every metric series this snapshot's routes, pools and backends own as alive,
    /// with the listener gauges and the config gauges.
    pub fn touch_metrics(&self) {
        for r in &self.route_stats {
            r.requests.touch();
            crate::metrics::touch(&[&r.client_aborts]);
            r.tunnels.touch();
        }
        for c in self.route_cache.iter().flatten() {
            c.touch_metrics();
        }
        for l in self.rate_limits.iter().flatten() {
            l.touch_metrics();
        }
        for p in &self.pools {
            let pool = p.pool.name.to_string();
            metrics::gauge!(crate::metrics::POOL_USABLE_BACKENDS, "pool" => pool.clone())
                .set(p.pool.usable_count() as f64);
            metrics::gauge!(crate::metrics::QUEUE_MAX, "pool" => pool).set(p.queue_cfg.max as f64);
            p.pool.touch_metrics();
            p.queue.touch_metrics();
            p.retries.touch();
            crate::metrics::touch(&[&p.budget_exhausted]);
        }
        for l in &self.listeners {
            metrics::gauge!(crate::metrics::CONNECTIONS_OPEN, "listener" => l.name.to_string())
                .increment(0.0);
            if l.proxy_protocol.is_some() {
                for reason in ["untrusted", "malformed", "timeout", "closed"] {
                    metrics::counter!(
                        crate::metrics::PROXY_PROTOCOL_REJECTED_TOTAL,
                        "listener" => l.name.to_string(),
                        "reason" => reason
                    )
                    .increment(0);
                }
            }
        }
        for action in [
            "drain", "undrain", "disable", "enable", "breaker", "weight", "clear",
        ] {
            metrics::counter!(crate::metrics::ADMIN_ACTIONS_TOTAL, "action" => action).increment(0);
        }
        metrics::gauge!(crate::metrics::CONFIG_GENERATION).set(self.generation as f64);
        for result in ["success", "error"] {
            metrics::counter!(crate::metrics::CONFIG_RELOADS_TOTAL, "result" => result)
                .increment(0);
        }
        for task in ["health", "metrics-upkeep", "reload"] {
            metrics::counter!(crate::metrics::TASK_RESTARTS_TOTAL, "task" => task).increment(0);
        }
    }

    /// The listener entry named `name`.
    pub fn listener(&self, name: &str) -> Option<&ListenerEntry> {
        self.listeners.iter().find(|l| *l.name == *name)
    }
}
