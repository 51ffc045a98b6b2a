//! Configuration: `raw` mirrors the YAML, `validate` turns it into the typed [`Config`] below,
//! collecting every error with its YAML path and line, and [`load`] ties them to a file.

pub mod discovery;
pub mod dump;
mod fairness;
pub mod lines;
pub mod raw;
mod raw_protection;
mod raw_rate;
mod transport;
pub mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use fairness::{RateKey, RateLimitConfig, TenantConfig};
pub use raw::{
    BasicStrategy, OnUnusable, Priority, RateAlgorithm, RateScope, StrategyKind, UpstreamProtocol,
};
pub use transport::{Transport, UpstreamTls};

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// Client-facing listeners.
    pub listeners: Vec<ListenerConfig>,
    /// Admin listener address, if any.
    pub admin: Option<SocketAddr>,
    /// Process settings.
    pub runtime: RuntimeConfig,
    /// Client-side limits.
    pub limits: LimitsConfig,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// Pools in name order.
    pub pools: Vec<PoolConfig>,
    /// The cache's stores.
    pub cache: CacheConfig,
    /// The bearer token of admin POSTs (`admin.token_file`), if any.
    pub admin_token: Option<Secret>,
    /// Peers whose `X-Forwarded-For` and `Forwarded` are believed (None: not set).
    pub trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// `admin.explain_from`: clients whose `Sandgate-Explain: 1` is answered.
    pub explain_from: Vec<ipnet::IpNet>,
    /// `tracing.generate`: start a trace for requests without a `traceparent`.
    pub trace_generate: bool,
    /// `tracing.otlp`, when spans are exported.
    pub otlp: Option<OtlpConfig>,
}

/// `tracing.otlp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP traces URL.
    pub endpoint: String,
    /// Longest wait for one export.
    pub timeout: Duration,
}

/// A secret read from a file (never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub std::sync::Arc<[u8]>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `cache` (top level): the stores shared by every caching route.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Memory tier capacity in bytes (heads + bodies).
    pub max_size: u64,
    /// Largest response stored, in bytes.
    pub max_object_size: u64,
    /// The shared second tier.
    pub redis: Option<RedisConfig>,
}

/// `cache.redis`.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// Connection URL.
    pub url: String,
    /// Prefix of keys and of the invalidation channel.
    pub key_prefix: String,
    /// Longest wait for one call.
    pub timeout: Duration,
    /// Largest response written to Redis, in bytes.
    pub max_object_size: u64,
}

/// `routes[i].cache` of a route that caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteCacheConfig {
    /// Stale entries may stand in for a failed backend this long past their freshness.
    pub stale_if_error: Duration,
    /// Stale entries are served while revalidating in the background this long.
    pub stale_while_revalidate: Duration,
    /// Concurrent misses wait this long for the first one's fill.
    pub lock_timeout: Duration,
    /// Cap on any freshness lifetime.
    pub max_ttl: Duration,
}

/// One listener.
#[derive(Debug)]
pub struct ListenerConfig {
    /// Name (metric label).
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// TLS certificates, if TLS is terminated here.
    pub tls: Option<Vec<CertificatePair>>,
    /// Sources allowed to send a PROXY protocol header, when the listener takes one.
    pub proxy_protocol: Option<Vec<ipnet::IpNet>>,
}

/// A loaded certificate chain and key, read from PEM files.
#[derive(Debug)]
pub struct CertificatePair {
    /// Path of the certificate, for messages.
    pub cert_path: PathBuf,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key.
    pub key: PrivateKeyDer<'static>,
}

/// `runtime`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Worker threads; None means one per core.
    pub worker_threads: Option<usize>,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// Metric series nobody updated for this long are dropped (restart to change).
    pub metrics_idle_timeout: Duration,
}

/// `limits`.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Time allowed for a client's request head.
    pub header_read_timeout: Duration,
    /// Longest idle time of a client connection between requests.
    pub keepalive_timeout: Duration,
    /// Longest gap between two pieces of a request body.
    pub body_read_timeout: Duration,
    /// Longest time a client may take nothing of its response.
    pub send_timeout: Duration,
    /// Largest request body in bytes.
    pub max_request_body: u64,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Open client connections beyond which new ones are shed.
    pub max_connections: Option<usize>,
    /// Requests in flight beyond which new ones are shed.
    pub max_inflight: Option<usize>,
}

/// How a route matches the Host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Exact host name, lower-case.
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches any sub-domain, not the bare domain.
    Wildcard(String),
}

/// One route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name (metric label).
    pub name: String,
    /// Host condition.
    pub host: Option<HostMatch>,
    /// Path prefix.
    pub path_prefix: String,
    /// The prefix matches whole path segments only.
    pub path_prefix_segments: bool,
    /// Header conditions (exact value).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Index into [`Config::pools`].
    pub pool: usize,
    /// Token-bucket rate limit.
    pub rate_limit: Option<RateLimitConfig>,
    /// Response caching, when enabled.
    pub cache: Option<RouteCacheConfig>,
    /// Class of the route's requests in the wait queue.
    pub priority: Priority,
}

/// What one upstream attempt came to, as breakers and retries classify it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered with this status.
    Status(u16),
    /// The TCP connect failed or timed out.
    ConnectError,
    /// No response head in time.
    Timeout,
    /// The exchange broke after connecting.
    Error,
}

impl Outcome {
    /// Label value: the status code, or `connect_error`, `timeout`, `error`.
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        match self {
            Outcome::Status(s) => s.to_string().into(),
            Outcome::ConnectError => "connect_error".into(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Error => "error".into(),
        }
    }
}

/// A set of outcomes, written `[connect_error, timeout, 502, 503, 504]` (also `error`, `5xx`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutcomeSet {
    /// Connect failures.
    pub connect_error: bool,
    /// Response-head timeouts.
    pub timeout: bool,
    /// Broken exchanges.
    pub error: bool,
    /// Statuses.
    pub statuses: Vec<u16>,
}

impl OutcomeSet {
    /// Whether `o` is in the set. A broken exchange is answered with 502, so `502` covers it
    /// too (as does `error`).
    pub fn contains(&self, o: Outcome) -> bool {
        match o {
            Outcome::ConnectError => self.connect_error,
            Outcome::Timeout => self.timeout,
            Outcome::Error => self.error || self.statuses.contains(&502),
            Outcome::Status(s) => self.statuses.contains(&s),
        }
    }

    /// The default: `[connect_error, timeout, 502, 503, 504]`.
    pub fn default_failures() -> Self {
        Self {
            connect_error: true,
            timeout: true,
            error: false,
            statuses: vec![502, 503, 504],
        }
    }
}

/// How a health check probes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// HTTP/1.1 GET of this path.
    Http {
        /// Path and query.
        path: String,
    },
    /// A TCP connect.
    Tcp,
}

/// `pools.NAME.health_check`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Probe kind.
    pub probe: HealthProbe,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Spread of the interval, 0..1.
    pub jitter: f64,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive passes to become healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
    /// Accepted status ranges (inclusive).
    pub expect_status: Vec<(u16, u16)>,
    /// Substring the body must contain.
    pub expect_body: Option<String>,
    /// Host header.
    pub host: Option<String>,
    /// Health of a backend before its first checks.
    pub initial_healthy: bool,
    /// Below this share of healthy backends, route to all (0 = off).
    pub panic_threshold: f64,
}

/// `pools.NAME.circuit_breaker`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it.
    pub consecutive_failures: u32,
    /// Failure share in the window that opens it.
    pub failure_rate: f64,
    /// Failure-rate window.
    pub window: Duration,
    /// Requests in the window before the rate counts.
    pub min_requests: u32,
    /// First open period.
    pub open_for: Duration,
    /// Longest open period.
    pub max_open_for: Duration,
    /// Probes when half-open.
    pub half_open_requests: u32,
    /// What counts as a failure.
    pub failure_on: OutcomeSet,
}

/// `pools.NAME.retry`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total tries.
    pub attempts: u32,
    /// Outcomes retried.
    pub on: OutcomeSet,
    /// First backoff ceiling.
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_max: Duration,
    /// Response-head timeout of each try (None: the pool's `response_header`).
    pub per_try_timeout: Option<Duration>,
    /// Retry budget as a share of requests in flight.
    pub budget: f64,
    /// Largest request body kept for replay.
    pub max_replay_body: u64,
}

/// `pools.NAME.queue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConfig {
    /// Most waiting requests.
    pub max: usize,
    /// Longest wait.
    pub timeout: Duration,
    /// A `low` waiter older than this is served as `normal` (at most `timeout`).
    pub max_wait_low: Duration,
}

/// Upstream timeouts of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Request sent -> response head received.
    pub response_header: Duration,
    /// Idle keep-alive connection lifetime.
    pub idle: Duration,
    /// A tunnel with no byte either way for this long is closed.
    pub tunnel_idle: Duration,
}

/// One pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Pool name.
    pub name: String,
    /// Strategy.
    pub strategy: StrategyKind,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Backends in file order.
    pub backends: Vec<BackendConfig>,
    /// Slow-start window, if any.
    pub slow_start: Option<Duration>,
    /// Affinity settings (strategy `affinity`).
    pub affinity: Option<AffinityConfig>,
    /// Geo settings (strategy `geo`).
    pub geo: Option<GeoConfig>,
    /// Active health checks.
    pub health: Option<HealthConfig>,
    /// Circuit breaker settings.
    pub breaker: Option<BreakerConfig>,
    /// Retry settings.
    pub retry: Option<RetryConfig>,
    /// Wait queue (used when backends have concurrency caps).
    pub queue: QueueConfig,
    /// Per-tenant share of the pool's slots.
    pub tenant: Option<TenantConfig>,
    /// Idle upstream connections kept per backend.
    pub max_idle_per_backend: usize,
    /// How the pool's backends are reached: TLS and protocol.
    pub transport: Arc<Transport>,
    /// Backends found by name or in a file, if any.
    pub discovery: Option<Arc<discovery::DiscoveryConfig>>,
    /// `pools.NAME.max_connections`: the cap of backends that set none (discovered ones too).
    pub pool_max_connections: Option<u32>,
}

/// Where an affinity key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityKey {
    /// A request header.
    Header(HeaderName),
    /// An application cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
    /// The client's IP address.
    ClientIp,
}

/// `affinity`.
#[derive(Debug, Clone)]
pub struct AffinityConfig {
    /// Key to hash, if any.
    pub key: Option<AffinityKey>,
    /// Strategy for requests without a key or cookie.
    pub fallback: BasicStrategy,
    /// sandgate's sticky cookie.
    pub cookie: Option<CookieConfig>,
    /// Repin or strict.
    pub on_unusable: OnUnusable,
    /// Bounded-load factor c.
    pub bounded_load: Option<f64>,
}

/// `affinity.cookie`.
#[derive(Clone)]
pub struct CookieConfig {
    /// Cookie name.
    pub name: String,
    /// Lifetime.
    pub max_age: Duration,
    /// Sealing key (never logged).
    pub secret: Vec<u8>,
}

impl fmt::Debug for CookieConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieConfig")
            .field("name", &self.name)
            .field("max_age", &self.max_age)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An opened MaxMind database, and its path.
#[derive(Clone)]
pub struct Mmdb(pub std::sync::Arc<maxminddb::Reader<Vec<u8>>>, pub PathBuf);

impl fmt::Debug for Mmdb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Mmdb")
    }
}

/// One source of the client's region.
#[derive(Debug, Clone)]
pub enum RegionSource {
    /// A header, trusted from trusted proxies only.
    Header(HeaderName),
    /// CIDR -> region, longest prefix first.
    Cidr(Vec<(ipnet::IpNet, String)>),
    /// Country database.
    Mmdb(Mmdb),
}

/// `geo`.
#[derive(Debug, Clone)]
pub struct GeoConfig {
    /// Region sources in order.
    pub sources: Vec<RegionSource>,
    /// Country code -> region.
    pub countries: std::collections::HashMap<String, String>,
    /// Trusted peers.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Region -> failover regions in order.
    pub failover: std::collections::HashMap<String, Vec<String>>,
    /// Strategy within a region.
    pub within_region: BasicStrategy,
    /// Region for clients whose region is unknown.
    pub default_region: Option<String>,
}

/// One backend of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendConfig {
    /// Address of the sandbox worker.
    pub address: SocketAddr,
    /// Weight, at least 1.
    pub weight: u32,
    /// Region label.
    pub region: Option<String>,
    /// Concurrency cap (the backend's, else the pool's).
    pub max_connections: Option<u32>,
}

/// One configuration error: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    /// YAML path, e.g. `pools.sandboxes.backends[1].weight`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every error found in one file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// A validated config plus non-fatal warnings.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Things worth telling the operator that do not stop the load.
    pub warnings: Vec<String>,
}

/// Reads and validates the file at `path`. Relative TLS paths resolve against its directory.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            line: None,
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    parse_str(&src, base)
}

/// Parses and validates YAML text; `base` is the directory relative paths resolve against.
pub fn parse_str(src: &str, base: &Path) -> Result<Loaded, ConfigErrors> {
    let raw: raw::RawConfig = match serde_yaml::from_str(src) {
        Ok(r) => r,
        // An empty file deserializes as unit, not as a mapping: treat it as an empty config so
        // validation can say what is missing.
        Err(_) if src.trim().is_empty() => raw::RawConfig::default(),
        Err(e) => return Err(ConfigErrors(vec![serde_error(&e)])),
    };
    let index = lines::LineIndex::build(src);
    validate::validate(&raw, &index, base)
}

/// serde_yaml formats its errors as `path: message at line L column C`; split that into our
/// `line L: path: message` form.
fn serde_error(e: &serde_yaml::Error) -> ConfigError {
    let text = e.to_string();
    let line = e.location().map(|l| l.line());
    let message = match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    ConfigError {
        line,
        path: String::new(),
        message,
    }
}
