//! The serde mirror of the YAML file. Every struct denies unknown fields, and every value that
//! needs parsing (addresses, durations, sizes) stays a string here so that `validate` can report
//! all bad values at once, each with its YAML path and line.

use std::collections::BTreeMap;

use serde::Deserialize;

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
}

/// `limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Time a client has to send its whole request head.
    #[serde(default)]
    pub header_read_timeout: Option<String>,
    /// Largest request body accepted (413 beyond).
    #[serde(default)]
    pub max_request_body: Option<String>,
    /// Largest request head accepted (431 beyond).
    #[serde(default)]
    pub max_header_bytes: Option<String>,
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
    /// Headers that must be present with exactly these values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// Load-balancing strategy of a pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Exact rotation.
    #[default]
    RoundRobin,
    /// Smooth weighted round-robin (nginx's algorithm).
    Weighted,
}

impl StrategyKind {
    /// The name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round_robin",
            StrategyKind::Weighted => "weighted",
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
}

/// `pools.NAME.backends[i]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    /// `ip:port` of the sandbox worker.
    pub address: String,
    /// Relative weight, default 1.
    #[serde(default)]
    pub weight: Option<i64>,
    /// Region label (used by geographic routing).
    #[serde(default)]
    pub region: Option<String>,
}
