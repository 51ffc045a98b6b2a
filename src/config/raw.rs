//! The serde mirror of the YAML file. Every struct denies unknown fields, and every value that
//! needs parsing (addresses, durations, sizes) stays a string here so that `validate` can report
//! all bad values at once, each with its YAML path and line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::raw_protection::{
    InitialState, RawBackoff, RawBreaker, RawHealthCheck, RawQueue, RawRetry,
};
pub use super::raw_rate::{RateAlgorithm, RateScope, RawRateLimit, RawTenant};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Client-facing listeners.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// The admin listener (metrics, health, backends); absent means no admin listener.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// Process-level settings.
    #[serde(default)]
    pub runtime: RawRuntime,
    /// Client-side limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Routes, matched by host, path prefix and headers.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Backend pools by name.
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
    /// The response cache's stores, shared by every route that caches.
    #[serde(default)]
    pub cache: Option<RawCache>,
    /// Peers (CIDRs) whose X-Forwarded-For and Forwarded headers are believed.
    #[serde(default)]
    pub trusted_proxies: Option<Vec<String>>,
    /// W3C Trace Context.
    #[serde(default)]
    pub tracing: Option<RawTracing>,
}

/// `tracing`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// Start a trace for requests that come without a `traceparent` (default true).
    #[serde(default)]
    pub generate: Option<bool>,
    /// Export one span per request over OTLP/HTTP.
    #[serde(default)]
    pub otlp: Option<RawOtlp>,
}

/// `tracing.otlp`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// Longest wait for one export (default 5s).
    #[serde(default)]
    pub timeout: Option<String>,
}

/// `cache` (top level).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Memory tier: total bytes of stored heads and bodies.
    #[serde(default)]
    pub max_size: Option<String>,
    /// Bigger responses stream through and are not stored.
    #[serde(default)]
    pub max_object_size: Option<String>,
    /// Optional second tier shared by every instance that names it.
    #[serde(default)]
    pub redis: Option<RawRedis>,
}

/// `cache.redis`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key and of the invalidation channel.
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// A slower or failed call counts as a miss.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Bigger responses stay in memory only.
    #[serde(default)]
    pub max_object_size: Option<String>,
}

/// `routes[i].cache`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteCache {
    /// Whether the route caches (default false).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// How long a stale entry may stand in for a failed backend.
    #[serde(default)]
    pub stale_if_error: Option<String>,
    /// How long a stale entry is served while it revalidates in the background.
    #[serde(default)]
    pub stale_while_revalidate: Option<String>,
    /// How long concurrent misses wait for the first one's fill.
    #[serde(default)]
    pub lock_timeout: Option<String>,
    /// Cap on any freshness lifetime.
    #[serde(default)]
    pub max_ttl: Option<String>,
}

/// `listeners[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Name used in logs and the `listener` metric label.
    pub name: String,
    /// `ip:port` to bind.
    pub address: String,
    /// Optional TLS termination.
    #[serde(default)]
    pub tls: Option<RawTls>,
    /// Accept the PROXY protocol (v1 or v2) from these sources.
    #[serde(default)]
    pub proxy_protocol: Option<RawProxyProtocol>,
}

/// `listeners[i].proxy_protocol`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocol {
    /// CIDRs (or addresses) allowed to send a PROXY header; every connection from them must
    /// start with one, and connections from elsewhere are closed.
    pub trusted: Vec<String>,
}

/// `listeners[i].tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificate/key pairs; SNI picks among them, the first is the default.
    pub certificates: Vec<RawCertificate>,
}

/// One PEM certificate chain and its private key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// Path of the PEM certificate chain.
    pub cert: String,
    /// Path of the PEM private key.
    pub key: String,
}

/// `admin`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ip:port` of the admin listener.
    pub address: String,
    /// File holding the bearer token every admin POST needs.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Clients (CIDRs) whose `Sandgate-Explain: 1` is answered (default: loopback).
    #[serde(default)]
    pub explain_from: Option<Vec<String>>,
}

/// `runtime`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Tokio worker threads; default: number of cores.
    #[serde(default)]
    pub worker_threads: Option<i64>,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default)]
    pub shutdown_grace: Option<String>,
    /// Metric series of removed backends and routes are dropped after this long.
    #[serde(default)]
    pub metrics_idle_timeout: Option<String>,
}

/// `limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time a client has to send its whole request head.
    #[serde(default)]
    pub header_read_timeout: Option<String>,
    /// How long an idle keep-alive connection waits for its next request.
    #[serde(default)]
    pub keepalive_timeout: Option<String>,
    /// The longest gap between two pieces of a request body.
    #[serde(default)]
    pub body_read_timeout: Option<String>,
    /// How long a client may take nothing of its response before it is cut.
    #[serde(default)]
    pub send_timeout: Option<String>,
    /// Largest request body accepted (413 beyond).
    #[serde(default)]
    pub max_request_body: Option<String>,
    /// Largest request head accepted (431 beyond).
    #[serde(default)]
    pub max_header_bytes: Option<String>,
    /// Open client connections beyond which new ones get 503 and are closed.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Requests in flight beyond which new ones get 503.
    #[serde(default)]
    pub max_inflight: Option<i64>,
}

/// `routes[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Route name, the `route` metric label.
    pub name: String,
    /// Match conditions; all must hold.
    #[serde(default, rename = "match")]
    pub matcher: RawMatch,
    /// Name of the pool this route sends to.
    pub pool: String,
    /// Optional token-bucket rate limit.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
    /// Response caching for this route.
    #[serde(default)]
    pub cache: Option<RawRouteCache>,
    /// The class of the route's requests in a pool's wait queue.
    #[serde(default)]
    pub priority: Priority,
}

/// How the config file writes a unit enum of this module (`least_connections`, `repin`).
pub fn config_name<T: Serialize>(v: &T) -> String {
    serde_yaml::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A request's class in the wait queue: a freed slot goes to the oldest waiter of the highest
/// class that has one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Served first.
    High = 0,
    /// The default.
    #[default]
    Normal = 1,
    /// Served last (as `normal` once it has waited `queue.max_wait_low`).
    Low = 2,
}

impl Priority {
    /// Every class, highest first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The config's word for it (also the `priority` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// `high`, `normal` or `low` (any case).
    pub fn parse(s: &[u8]) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .find(|p| s.eq_ignore_ascii_case(p.as_str().as_bytes()))
    }
}

/// `routes[i].match`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exact host or `*.example.com`.
    #[serde(default)]
    pub host: Option<String>,
    /// Path prefix, default `/`.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// Match the prefix as whole path segments only (`/v1` matches `/v1/x`, not `/v10`).
    #[serde(default)]
    pub path_prefix_segments: Option<bool>,
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Load-balancing strategy of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Exact rotation.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin (nginx's algorithm).
    Weighted,
    /// Fewest in-flight requests relative to weight.
    LeastConnections,
    /// Client's region first, then failover regions, then anywhere.
    Geo,
    /// Session affinity: sticky cookie and/or rendezvous hash of a request key.
    Affinity,
}

/// A strategy that needs no extra configuration; used for `affinity.fallback` and
/// `geo.within_region`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BasicStrategy {
    /// Exact rotation.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin.
    Weighted,
    /// Fewest in-flight requests relative to weight.
    LeastConnections,
}

/// What affinity does when the pinned backend cannot take the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnUnusable {
    /// Move the session to the next backend (and re-issue the cookie).
    #[default]
    Repin,
    /// Answer 503 rather than move the session.
    Strict,
}

impl StrategyKind {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::Weighted => "weighted",
            StrategyKind::LeastConnections => "least_connections",
            StrategyKind::Geo => "geo",
            StrategyKind::Affinity => "affinity",
        }
    }
}

/// `pools.NAME`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Strategy, default `round_robin`.
    #[serde(default)]
    pub strategy: StrategyKind,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// The pool's backends.
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    /// How backends named by `host:port` are refreshed, and a file of backends.
    #[serde(default)]
    pub discovery: Option<RawDiscovery>,
    /// Ramp a new or recovered backend from a small share to its full weight over this time.
    #[serde(default)]
    pub slow_start: Option<String>,
    /// Settings of the `affinity` strategy.
    #[serde(default)]
    pub affinity: Option<RawAffinity>,
    /// Settings of the `geo` strategy.
    #[serde(default)]
    pub geo: Option<RawGeo>,
    /// Active health checks.
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// Per-backend circuit breakers.
    #[serde(default)]
    pub circuit_breaker: Option<RawBreaker>,
    /// Retries with backoff.
    #[serde(default)]
    pub retry: Option<RawRetry>,
    /// Default concurrency cap of the pool's backends.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// Wait queue for when every eligible backend is at its cap.
    #[serde(default)]
    pub queue: Option<RawQueue>,
    /// Per-tenant share of the pool's slots.
    #[serde(default)]
    pub tenant: Option<RawTenant>,
    /// Idle keep-alive connections kept per backend.
    #[serde(default)]
    pub max_idle_per_backend: Option<i64>,
    /// Connect to the backends over TLS.
    #[serde(default)]
    pub tls: Option<RawUpstreamTls>,
    /// The protocol spoken to the backends: `http1` (default), `http2`, or `auto` (ALPN).
    #[serde(default)]
    pub protocol: Option<UpstreamProtocol>,
}

/// `pools.NAME.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM file of the CAs that sign the backends' certificates (default: the system roots).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The name the certificates must carry (default: the backend's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Verify the backends' certificates (default true).
    #[serde(default)]
    pub verify: Option<bool>,
    /// A client certificate for mutual TLS.
    #[serde(default)]
    pub client_cert: Option<RawCertificate>,
}

/// `pools.NAME.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 (with TLS through ALPN; without, prior knowledge: h2c).
    Http2,
    /// Whatever ALPN settles on (TLS only).
    Auto,
}

/// `pools.NAME.affinity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinity {
    /// `header:NAME`, `cookie:NAME`, `query:NAME` or `client_ip`.
    #[serde(default)]
    pub key: Option<String>,
    /// Strategy for requests without a key (and without a valid sticky cookie).
    #[serde(default)]
    pub fallback: BasicStrategy,
    /// sandgate's own sticky cookie.
    #[serde(default)]
    pub cookie: Option<RawAffinityCookie>,
    /// `repin` (default) or `strict`.
    #[serde(default)]
    pub on_unusable: OnUnusable,
    /// Consistent hashing with bounded loads: the factor c (>= 1).
    #[serde(default)]
    pub bounded_load: Option<f64>,
}

/// `pools.NAME.affinity.cookie`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAffinityCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie lifetime (Max-Age and the sealed expiry), default 1h.
    #[serde(default)]
    pub max_age: Option<String>,
    /// File holding the sealing key (at least 32 bytes).
    pub secret_file: String,
}

/// `pools.NAME.geo`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeo {
    /// Sources of the client's region, tried in order.
    #[serde(default)]
    pub client_region: Vec<RawRegionSource>,
    /// ISO country code -> region, for the mmdb source.
    #[serde(default)]
    pub countries: BTreeMap<String, String>,
    /// Peers whose region header (and X-Forwarded-For) are trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Region -> regions to try next, in order.
    #[serde(default)]
    pub failover: BTreeMap<String, Vec<String>>,
    /// Strategy among the backends of one region.
    #[serde(default)]
    pub within_region: BasicStrategy,
    /// Region assumed for clients whose region is unknown.
    #[serde(default)]
    pub default_region: Option<String>,
}

/// One entry of `geo.client_region`: exactly one of the fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegionSource {
    /// A request header naming the region (trusted from `trusted_proxies` only).
    #[serde(default)]
    pub header: Option<String>,
    /// CIDR -> region.
    #[serde(default)]
    pub cidr: Option<BTreeMap<String, String>>,
    /// A MaxMind country database; its country code maps to a region through `countries`.
    #[serde(default)]
    pub mmdb: Option<String>,
}

/// `pools.NAME.timeouts`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect timeout.
    #[serde(default)]
    pub connect: Option<String>,
    /// Time from sending the request to receiving the response head.
    #[serde(default)]
    pub response_header: Option<String>,
    /// How long an idle upstream keep-alive connection is kept.
    #[serde(default)]
    pub idle: Option<String>,
    /// How long a tunnel (WebSocket) may pass no byte either way before it is closed.
    #[serde(default)]
    pub tunnel_idle: Option<String>,
}

/// `pools.NAME.backends[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `ip:port` of the sandbox worker, or `host:port`: every A/AAAA record of the name
    /// becomes a backend (see `discovery`).
    pub address: String,
    /// Relative weight, default 1.
    #[serde(default)]
    pub weight: Option<i64>,
    /// Region label (used by geographic routing).
    #[serde(default)]
    pub region: Option<String>,
    /// Concurrency cap of this backend (overrides the pool's).
    #[serde(default)]
    pub max_connections: Option<i64>,
}

/// `pools.NAME.discovery`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscovery {
    /// How often `host:port` backends are resolved again (default 30s).
    #[serde(default)]
    pub dns_refresh: Option<String>,
    /// A JSON list of `{address, weight, region}`, watched and applied without a reload.
    #[serde(default)]
    pub file: Option<String>,
}
