//! Raw YAML structs -> typed [`Config`]. Pure apart from reading the TLS files the config names.
//! Every problem is collected (not just the first), each with its YAML path and line.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::lines::LineIndex;
use std::net::IpAddr;

use ipnet::IpNet;

use super::raw::{
    InitialState, RawAffinity, RawBreaker, RawConfig, RawGeo, RawHealthCheck, RawPool,
    RawRateLimit, RawRetry, StrategyKind,
};
use super::{
    AffinityConfig, AffinityKey, BackendConfig, BreakerConfig, CertificatePair, Config,
    ConfigError, ConfigErrors, CookieConfig, GeoConfig, HealthConfig, HealthProbe, HostMatch,
    LimitsConfig, ListenerConfig, Loaded, Mmdb, OutcomeSet, PoolConfig, QueueConfig, RateKey,
    RateLimitConfig, RegionSource, RetryConfig, RouteConfig, RuntimeConfig, Timeouts,
};

/// Largest accepted backend weight; keeps the precomputed weighted schedule small.
pub const MAX_WEIGHT: i64 = 10_000;
/// hyper cannot read HTTP/1 heads into a buffer smaller than this.
const MIN_HEADER_BYTES: u64 = 8 * 1024;

struct Errors<'a> {
    index: &'a LineIndex,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let path = path.into();
        self.list.push(ConfigError {
            line: self.index.line_of(&path),
            path,
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, v: Option<&String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) => d,
                Err(e) => {
                    self.push(
                        path,
                        format!("invalid duration {s:?} ({e}); write e.g. 250ms, 10s, 5m"),
                    );
                    default
                }
            },
        }
    }

    /// A duration that must not be zero.
    fn positive(&mut self, path: &str, v: Option<&String>, default: Duration) -> Duration {
        let d = self.duration(path, v, default);
        if d.is_zero() {
            self.push(path, "must be greater than 0");
        }
        d
    }

    fn size(&mut self, path: &str, v: Option<&String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => match s.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64(),
                Err(e) => {
                    self.push(
                        path,
                        format!("invalid size {s:?} ({e}); write e.g. 64KiB, 8MiB"),
                    );
                    default
                }
            },
        }
    }

    /// An integer in `min..` (and `..=max`), or None (with an error) when out of range.
    fn count(&mut self, path: &str, v: Option<i64>, min: i64, max: Option<i64>) -> Option<u64> {
        let v = v?;
        if v < min {
            self.push(path, format!("must be at least {min}"));
            return None;
        }
        if let Some(m) = max.filter(|m| v > *m) {
            self.push(path, format!("must be at most {m}"));
            return None;
        }
        Some(v as u64)
    }

    /// A share written `50%`, between 0% and 100%.
    fn percent(&mut self, path: &str, v: Option<&String>, default: f64) -> f64 {
        let Some(s) = v else { return default };
        match s
            .trim()
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<f64>().ok())
        {
            Some(p) if (0.0..=100.0).contains(&p) => p / 100.0,
            _ => {
                self.push(path, format!("invalid percentage {s:?}; write e.g. 50%"));
                default
            }
        }
    }

    fn outcomes(&mut self, path: &str, v: Option<&Vec<String>>) -> OutcomeSet {
        let Some(list) = v else {
            return OutcomeSet::default_failures();
        };
        let mut set = OutcomeSet::default();
        for (i, item) in list.iter().enumerate() {
            match item.trim() {
                "connect_error" => set.connect_error = true,
                "timeout" => set.timeout = true,
                "error" => set.error = true,
                "5xx" => set.statuses.extend(500..=599),
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => set.statuses.push(c),
                    _ => self.push(
                        format!("{path}[{i}]"),
                        format!("unknown outcome {item:?}; use connect_error, timeout, error, 5xx or a status code"),
                    ),
                },
            }
        }
        set
    }

    fn addr(&mut self, path: &str, s: &str) -> Option<SocketAddr> {
        match s.trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.push(
                    path,
                    format!("invalid address {s:?}; write ip:port, e.g. 127.0.0.1:9001"),
                );
                None
            }
        }
    }
}

/// Validates `raw` into a [`Config`]; `base` resolves relative TLS file paths.
pub fn validate(raw: &RawConfig, index: &LineIndex, base: &Path) -> Result<Loaded, ConfigErrors> {
    let mut e = Errors {
        index,
        list: Vec::new(),
    };
    let mut warnings = Vec::new();

    // listeners
    if raw.listeners.is_empty() {
        e.push("listeners", "at least one listener is required");
    }
    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, l) in raw.listeners.iter().enumerate() {
        let p = format!("listeners[{i}]");
        if l.name.trim().is_empty() {
            e.push(format!("{p}.name"), "must not be empty");
        } else if !names.insert(l.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        let address = e.addr(&format!("{p}.address"), &l.address);
        if let Some(a) = address {
            if a.port() != 0 && !addrs.insert(a) {
                e.push(
                    format!("{p}.address"),
                    format!("address {a} is used by another listener"),
                );
            }
        }
        let tls = l.tls.as_ref().map(|t| {
            if t.certificates.is_empty() {
                e.push(
                    format!("{p}.tls.certificates"),
                    "at least one certificate is required",
                );
            }
            let mut pairs = Vec::new();
            for (j, c) in t.certificates.iter().enumerate() {
                let cp = format!("{p}.tls.certificates[{j}]");
                let chain = read_certs(&mut e, &format!("{cp}.cert"), base, &c.cert);
                let key = read_key(&mut e, &format!("{cp}.key"), base, &c.key);
                if let (Some(chain), Some(key)) = (chain, key) {
                    pairs.push(CertificatePair {
                        cert_path: base.join(&c.cert),
                        chain,
                        key,
                    });
                }
            }
            pairs
        });
        if let Some(address) = address {
            listeners.push(ListenerConfig {
                name: l.name.clone(),
                address,
                tls,
            });
        }
    }

    // admin
    let admin = raw
        .admin
        .as_ref()
        .and_then(|a| e.addr("admin.address", &a.address));

    // runtime
    let worker_threads = match raw.runtime.worker_threads {
        None => None,
        Some(n) if (1..=1024).contains(&n) => Some(n as usize),
        Some(_) => {
            e.push("runtime.worker_threads", "must be between 1 and 1024");
            None
        }
    };
    let runtime = RuntimeConfig {
        worker_threads,
        shutdown_grace: e.duration(
            "runtime.shutdown_grace",
            raw.runtime.shutdown_grace.as_ref(),
            Duration::from_secs(30),
        ),
    };

    // limits
    let header_read_timeout = e.positive(
        "limits.header_read_timeout",
        raw.limits.header_read_timeout.as_ref(),
        Duration::from_secs(10),
    );
    let max_request_body = e.size(
        "limits.max_request_body",
        raw.limits.max_request_body.as_ref(),
        10 * 1024 * 1024,
    );
    let mut max_header_bytes = e.size(
        "limits.max_header_bytes",
        raw.limits.max_header_bytes.as_ref(),
        64 * 1024,
    );
    if max_header_bytes < MIN_HEADER_BYTES {
        e.push("limits.max_header_bytes", "must be at least 8KiB");
        max_header_bytes = MIN_HEADER_BYTES;
    }
    let limits = LimitsConfig {
        header_read_timeout,
        max_request_body,
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        max_connections: e
            .count(
                "limits.max_connections",
                raw.limits.max_connections,
                1,
                None,
            )
            .map(|n| n as usize),
        max_inflight: e
            .count("limits.max_inflight", raw.limits.max_inflight, 1, None)
            .map(|n| n as usize),
    };

    // pools (BTreeMap: name order)
    let pool_names: Vec<&String> = raw.pools.keys().collect();
    let mut pools = Vec::new();
    for (name, p) in &raw.pools {
        pools.push(validate_pool(&mut e, name, p, base, &mut warnings));
    }

    // routes
    let mut routes = Vec::new();
    let mut route_names = HashSet::new();
    let mut used_pools = BTreeSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        if r.name.trim().is_empty() {
            e.push(format!("{p}.name"), "must not be empty");
        } else if !route_names.insert(r.name.as_str()) {
            e.push(
                format!("{p}.name"),
                format!("duplicate route name {:?}", r.name),
            );
        }
        let pool = pool_names.iter().position(|n| **n == r.pool);
        if pool.is_none() {
            e.push(format!("{p}.pool"), format!("no pool named {:?}", r.pool));
        }
        used_pools.insert(r.pool.as_str());
        let host = r
            .matcher
            .host
            .as_ref()
            .and_then(|h| host_match(&mut e, &format!("{p}.match.host"), h));
        let path_prefix = r
            .matcher
            .path_prefix
            .clone()
            .unwrap_or_else(|| "/".to_owned());
        if !path_prefix.starts_with('/') {
            e.push(format!("{p}.match.path_prefix"), "must start with /");
        }
        let mut headers = Vec::new();
        for (k, v) in &r.matcher.headers {
            let hp = format!("{p}.match.headers.{k}");
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => e.push(hp, format!("invalid header name {k:?}")),
                (_, Err(_)) => e.push(hp, format!("invalid header value {v:?}")),
            }
        }
        let rate_limit = r
            .rate_limit
            .as_ref()
            .and_then(|rl| rate_limit(&mut e, &format!("{p}.rate_limit"), rl));
        if let Some(pool) = pool {
            routes.push(RouteConfig {
                name: r.name.clone(),
                host,
                path_prefix,
                headers,
                pool,
                rate_limit,
            });
        }
    }
    if raw.routes.is_empty() {
        warnings.push("no routes: every request will get 404".to_owned());
    }
    for name in &pool_names {
        if !used_pools.contains(name.as_str()) {
            warnings.push(format!("pools.{name}: no route uses this pool"));
        }
    }

    if !e.list.is_empty() {
        // Report in file order.
        e.list.sort_by_key(|x| x.line.unwrap_or(0));
        return Err(ConfigErrors(e.list));
    }
    Ok(Loaded {
        config: Config {
            listeners,
            admin,
            runtime,
            limits,
            routes,
            pools,
        },
        warnings,
    })
}

fn validate_pool(
    e: &mut Errors<'_>,
    name: &str,
    p: &RawPool,
    base: &Path,
    warnings: &mut Vec<String>,
) -> PoolConfig {
    let pp = format!("pools.{name}");
    let timeouts = Timeouts {
        connect: e.positive(
            &format!("{pp}.timeouts.connect"),
            p.timeouts.connect.as_ref(),
            Duration::from_secs(5),
        ),
        response_header: e.positive(
            &format!("{pp}.timeouts.response_header"),
            p.timeouts.response_header.as_ref(),
            Duration::from_secs(60),
        ),
        idle: e.duration(
            &format!("{pp}.timeouts.idle"),
            p.timeouts.idle.as_ref(),
            Duration::from_secs(90),
        ),
    };
    if p.backends.is_empty() {
        e.push(
            format!("{pp}.backends"),
            "a pool needs at least one backend",
        );
    }
    let pool_cap = e.count(
        &format!("{pp}.max_connections"),
        p.max_connections,
        1,
        Some(u32::MAX.into()),
    );
    let mut seen = HashSet::new();
    let mut backends = Vec::new();
    for (i, b) in p.backends.iter().enumerate() {
        let bp = format!("{pp}.backends[{i}]");
        let address = e.addr(&format!("{bp}.address"), &b.address);
        if let Some(a) = address {
            if !seen.insert(a) {
                e.push(
                    format!("{bp}.address"),
                    format!("duplicate backend address {a} in this pool"),
                );
            }
        }
        let weight = match b.weight {
            None => 1,
            Some(w) if w < 1 => {
                e.push(format!("{bp}.weight"), "must be at least 1");
                1
            }
            Some(w) if w > MAX_WEIGHT => {
                e.push(
                    format!("{bp}.weight"),
                    format!("must be at most {MAX_WEIGHT}"),
                );
                1
            }
            Some(w) => w as u32,
        };
        if let Some(r) = &b.region {
            if r.trim().is_empty() {
                e.push(format!("{bp}.region"), "must not be empty");
            }
        }
        let cap = e.count(
            &format!("{bp}.max_connections"),
            b.max_connections,
            1,
            Some(u32::MAX.into()),
        );
        if let Some(address) = address {
            backends.push(BackendConfig {
                address,
                weight,
                region: b.region.clone(),
                max_connections: cap.or(pool_cap).map(|c| c as u32),
            });
        }
    }
    let slow_start = p
        .slow_start
        .as_ref()
        .map(|v| e.duration(&format!("{pp}.slow_start"), Some(v), Duration::ZERO))
        .filter(|d| !d.is_zero());
    let affinity = match (&p.affinity, p.strategy) {
        (Some(a), StrategyKind::Affinity) => {
            Some(validate_affinity(e, &format!("{pp}.affinity"), a, base))
        }
        (None, StrategyKind::Affinity) => {
            e.push(
                format!("{pp}.strategy"),
                "strategy affinity needs an `affinity` block",
            );
            None
        }
        (Some(_), _) => {
            e.push(
                format!("{pp}.affinity"),
                "only used with strategy: affinity",
            );
            None
        }
        (None, _) => None,
    };
    let geo = match (&p.geo, p.strategy) {
        (Some(g), StrategyKind::Geo) => Some(validate_geo(
            e,
            &format!("{pp}.geo"),
            g,
            base,
            &backends,
            warnings,
        )),
        (None, StrategyKind::Geo) => {
            e.push(format!("{pp}.strategy"), "strategy geo needs a `geo` block");
            None
        }
        (Some(_), _) => {
            e.push(format!("{pp}.geo"), "only used with strategy: geo");
            None
        }
        (None, _) => None,
    };
    let health = p
        .health_check
        .as_ref()
        .map(|h| health(e, &format!("{pp}.health_check"), h));
    let breaker = p
        .circuit_breaker
        .as_ref()
        .map(|b| breaker(e, &format!("{pp}.circuit_breaker"), b));
    let retry = p
        .retry
        .as_ref()
        .map(|r| retry(e, &format!("{pp}.retry"), r));
    let queue = {
        let qp = format!("{pp}.queue");
        let q = p.queue.as_ref();
        QueueConfig {
            max: e
                .count(&format!("{qp}.max"), q.and_then(|q| q.max), 0, None)
                .unwrap_or(1000) as usize,
            timeout: e.duration(
                &format!("{qp}.timeout"),
                q.and_then(|q| q.timeout.as_ref()),
                Duration::from_secs(5),
            ),
        }
    };
    PoolConfig {
        name: name.to_owned(),
        strategy: p.strategy,
        timeouts,
        backends,
        slow_start,
        affinity,
        geo,
        health,
        breaker,
        retry,
        queue,
    }
}

fn health(e: &mut Errors<'_>, hp: &str, h: &RawHealthCheck) -> HealthConfig {
    let probe = match (h.tcp, &h.path) {
        (Some(true), Some(_)) => {
            e.push(
                format!("{hp}.tcp"),
                "set either `path` or `tcp: true`, not both",
            );
            HealthProbe::Tcp
        }
        (Some(true), None) => HealthProbe::Tcp,
        (_, Some(p)) if !p.starts_with('/') => {
            e.push(format!("{hp}.path"), "must start with /");
            HealthProbe::Http { path: "/".into() }
        }
        (_, p) => HealthProbe::Http {
            path: p.clone().unwrap_or_else(|| "/".into()),
        },
    };
    let mut expect_status = Vec::new();
    let es = h.expect_status.clone().unwrap_or_else(|| "200-399".into());
    for part in es.split(',') {
        let part = part.trim();
        let range = match part.split_once('-') {
            Some((a, b)) => a
                .trim()
                .parse::<u16>()
                .ok()
                .zip(b.trim().parse::<u16>().ok()),
            None => part.parse::<u16>().ok().map(|c| (c, c)),
        };
        match range {
            Some((a, b)) if (100..=599).contains(&a) && a <= b && b <= 599 => {
                expect_status.push((a, b))
            }
            _ => e.push(
                format!("{hp}.expect_status"),
                format!("invalid status range {part:?}; write e.g. 200-399 or 200,204"),
            ),
        }
    }
    let interval = e.positive(
        &format!("{hp}.interval"),
        h.interval.as_ref(),
        Duration::from_secs(5),
    );
    let timeout = e.positive(
        &format!("{hp}.timeout"),
        h.timeout.as_ref(),
        Duration::from_secs(2),
    );
    if !timeout.is_zero() && timeout > interval {
        e.push(format!("{hp}.timeout"), "must not exceed interval");
    }
    HealthConfig {
        probe,
        interval,
        jitter: e.percent(&format!("{hp}.jitter"), h.jitter.as_ref(), 0.1),
        timeout,
        healthy_threshold: e
            .count(
                &format!("{hp}.healthy_threshold"),
                h.healthy_threshold,
                1,
                Some(1000),
            )
            .unwrap_or(2) as u32,
        unhealthy_threshold: e
            .count(
                &format!("{hp}.unhealthy_threshold"),
                h.unhealthy_threshold,
                1,
                Some(1000),
            )
            .unwrap_or(3) as u32,
        expect_status,
        expect_body: h.expect_body.clone(),
        host: h.host.clone(),
        initial_healthy: h.initial_state != Some(InitialState::Unhealthy),
        panic_threshold: e.percent(
            &format!("{hp}.panic_threshold"),
            h.panic_threshold.as_ref(),
            0.0,
        ),
    }
}

fn breaker(e: &mut Errors<'_>, bp: &str, b: &RawBreaker) -> BreakerConfig {
    let open_for = e.positive(
        &format!("{bp}.open_for"),
        b.open_for.as_ref(),
        Duration::from_secs(5),
    );
    let max_open_for = e.duration(
        &format!("{bp}.max_open_for"),
        b.max_open_for.as_ref(),
        Duration::from_secs(120),
    );
    if max_open_for < open_for {
        e.push(format!("{bp}.max_open_for"), "must be at least open_for");
    }
    let window = e.positive(
        &format!("{bp}.window"),
        b.window.as_ref(),
        Duration::from_secs(10),
    );
    BreakerConfig {
        consecutive_failures: e
            .count(
                &format!("{bp}.consecutive_failures"),
                b.consecutive_failures,
                1,
                Some(1_000_000),
            )
            .unwrap_or(5) as u32,
        failure_rate: e.percent(&format!("{bp}.failure_rate"), b.failure_rate.as_ref(), 0.5),
        window,
        min_requests: e
            .count(
                &format!("{bp}.min_requests"),
                b.min_requests,
                1,
                Some(1_000_000),
            )
            .unwrap_or(20) as u32,
        open_for,
        max_open_for,
        half_open_requests: e
            .count(
                &format!("{bp}.half_open_requests"),
                b.half_open_requests,
                1,
                Some(10_000),
            )
            .unwrap_or(3) as u32,
        failure_on: e.outcomes(&format!("{bp}.failure_on"), b.failure_on.as_ref()),
    }
}

fn retry(e: &mut Errors<'_>, rp: &str, r: &RawRetry) -> RetryConfig {
    let bo = r.backoff.as_ref();
    let backoff_base = e.duration(
        &format!("{rp}.backoff.base"),
        bo.and_then(|b| b.base.as_ref()),
        Duration::from_millis(25),
    );
    let backoff_max = e.duration(
        &format!("{rp}.backoff.max"),
        bo.and_then(|b| b.max.as_ref()),
        Duration::from_secs(1),
    );
    if backoff_max < backoff_base {
        e.push(format!("{rp}.backoff.max"), "must be at least backoff.base");
    }
    let per_try_timeout = r.per_try_timeout.as_ref().map(|v| {
        e.positive(
            &format!("{rp}.per_try_timeout"),
            Some(v),
            Duration::from_secs(5),
        )
    });
    RetryConfig {
        attempts: e
            .count(&format!("{rp}.attempts"), r.attempts, 1, Some(10))
            .unwrap_or(3) as u32,
        on: e.outcomes(&format!("{rp}.on"), r.on.as_ref()),
        backoff_base,
        backoff_max,
        per_try_timeout,
        budget: e.percent(&format!("{rp}.budget"), r.budget.as_ref(), 0.2),
        max_replay_body: e.size(
            &format!("{rp}.max_replay_body"),
            r.max_replay_body.as_ref(),
            64 * 1024,
        ),
    }
}

fn rate_limit(e: &mut Errors<'_>, lp: &str, r: &RawRateLimit) -> Option<RateLimitConfig> {
    let key = match r.key.as_deref().map(str::trim) {
        None | Some("client_ip") => Some(RateKey::ClientIp),
        Some(k) => match k
            .strip_prefix("header:")
            .map(|n| HeaderName::from_bytes(n.trim().as_bytes()))
        {
            Some(Ok(n)) => Some(RateKey::Header(n)),
            _ => {
                e.push(
                    format!("{lp}.key"),
                    format!("invalid key {k:?}; write client_ip or header:NAME"),
                );
                None
            }
        },
    };
    let per_second = r.rate.trim().split_once('/').and_then(|(n, unit)| {
        let n = n
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| *n > 0.0 && n.is_finite())?;
        let secs = match unit.trim() {
            "s" | "1s" | "sec" | "second" => 1.0,
            "m" | "1m" | "min" | "minute" => 60.0,
            "h" | "1h" | "hour" => 3600.0,
            _ => return None,
        };
        Some(n / secs)
    });
    if per_second.is_none() {
        e.push(
            format!("{lp}.rate"),
            format!(
                "invalid rate {:?}; write e.g. 100/s, 600/m or 3600/h",
                r.rate
            ),
        );
    }
    let burst = e.count(&format!("{lp}.burst"), r.burst, 1, Some(u32::MAX.into()));
    let max_keys = e
        .count(&format!("{lp}.max_keys"), r.max_keys, 1, None)
        .unwrap_or(100_000);
    let per_second = per_second?;
    Some(RateLimitConfig {
        key: key?,
        per_second,
        burst: burst.map_or_else(|| per_second.ceil().max(1.0) as u32, |b| b as u32),
        max_keys,
    })
}

fn validate_affinity(e: &mut Errors<'_>, ap: &str, a: &RawAffinity, base: &Path) -> AffinityConfig {
    let key = a.key.as_ref().and_then(|k| {
        let k = k.trim();
        let parsed = match k.split_once(':') {
            _ if k == "client_ip" => Some(AffinityKey::ClientIp),
            Some(("header", n)) => HeaderName::from_bytes(n.trim().as_bytes())
                .ok()
                .map(AffinityKey::Header),
            Some(("cookie", n)) if !n.trim().is_empty() => {
                Some(AffinityKey::Cookie(n.trim().to_owned()))
            }
            Some(("query", n)) if !n.trim().is_empty() => {
                Some(AffinityKey::Query(n.trim().to_owned()))
            }
            _ => None,
        };
        if parsed.is_none() {
            e.push(
                format!("{ap}.key"),
                format!(
                    "invalid key {k:?}; write header:NAME, cookie:NAME, query:NAME or client_ip"
                ),
            );
        }
        parsed
    });
    let cookie = a.cookie.as_ref().and_then(|c| {
        let cp = format!("{ap}.cookie");
        let valid_name = !c.name.is_empty()
            && c.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_name {
            e.push(
                format!("{cp}.name"),
                format!("invalid cookie name {:?}", c.name),
            );
        }
        let max_age = e.positive(
            &format!("{cp}.max_age"),
            c.max_age.as_ref(),
            Duration::from_secs(3600),
        );
        let path = base.join(&c.secret_file);
        let secret = match std::fs::read(&path) {
            Ok(mut b) => {
                while b.last().is_some_and(|x| *x == b'\n' || *x == b'\r') {
                    b.pop();
                }
                if b.len() < 32 {
                    e.push(
                        format!("{cp}.secret_file"),
                        format!(
                            "{} holds {} bytes; at least 32 are needed",
                            path.display(),
                            b.len()
                        ),
                    );
                    None
                } else {
                    Some(b)
                }
            }
            Err(err) => {
                e.push(
                    format!("{cp}.secret_file"),
                    format!("cannot read {}: {err}", path.display()),
                );
                None
            }
        }?;
        Some(CookieConfig {
            name: c.name.clone(),
            max_age,
            secret,
        })
    });
    if a.key.is_none() && a.cookie.is_none() {
        e.push(ap.to_owned(), "set `key`, `cookie`, or both");
    }
    if let Some(c) = a.bounded_load {
        if !(c >= 1.0 && c.is_finite()) {
            e.push(format!("{ap}.bounded_load"), "must be at least 1.0");
        }
    }
    AffinityConfig {
        key,
        fallback: a.fallback,
        cookie,
        on_unusable: a.on_unusable,
        bounded_load: a.bounded_load.filter(|c| *c >= 1.0 && c.is_finite()),
    }
}

fn validate_geo(
    e: &mut Errors<'_>,
    gp: &str,
    g: &RawGeo,
    base: &Path,
    backends: &[BackendConfig],
    warnings: &mut Vec<String>,
) -> GeoConfig {
    let regions: HashSet<&str> = backends
        .iter()
        .filter_map(|b| b.region.as_deref())
        .collect();
    let net = |e: &mut Errors<'_>, path: String, s: &str| -> Option<IpNet> {
        let s = s.trim();
        match s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        {
            Ok(n) => Some(n),
            Err(_) => {
                e.push(path, format!("invalid CIDR {s:?}; write e.g. 10.1.0.0/16"));
                None
            }
        }
    };
    let mut sources = Vec::new();
    for (i, src) in g.client_region.iter().enumerate() {
        let sp = format!("{gp}.client_region[{i}]");
        let set = [src.header.is_some(), src.cidr.is_some(), src.mmdb.is_some()];
        if set.iter().filter(|x| **x).count() != 1 {
            e.push(sp, "each entry sets exactly one of header, cidr, mmdb");
            continue;
        }
        if let Some(h) = &src.header {
            match HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(n) => sources.push(RegionSource::Header(n)),
                Err(_) => e.push(format!("{sp}.header"), format!("invalid header name {h:?}")),
            }
        }
        if let Some(map) = &src.cidr {
            let mut v: Vec<(IpNet, String)> = map
                .iter()
                .filter_map(|(k, r)| net(e, format!("{sp}.cidr.{k}"), k).map(|n| (n, r.clone())))
                .collect();
            // Longest prefix first, so the first containing network is the most specific.
            v.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
            sources.push(RegionSource::Cidr(v));
        }
        if let Some(file) = &src.mmdb {
            let path = base.join(file);
            match maxminddb::Reader::open_readfile(&path) {
                Ok(r) => sources.push(RegionSource::Mmdb(Mmdb(std::sync::Arc::new(r)))),
                Err(err) => e.push(
                    format!("{sp}.mmdb"),
                    format!("cannot open {}: {err}", path.display()),
                ),
            }
        }
    }
    let trusted_proxies = g
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, s)| net(e, format!("{gp}.trusted_proxies[{i}]"), s))
        .collect();
    for (from, to) in &g.failover {
        for r in std::iter::once(from).chain(to) {
            if !regions.contains(r.as_str()) {
                warnings.push(format!(
                    "{gp}.failover.{from}: region {r:?} has no backends today"
                ));
            }
        }
    }
    if let Some(d) = &g.default_region {
        if !regions.contains(d.as_str()) {
            warnings.push(format!(
                "{gp}.default_region: region {d:?} has no backends today"
            ));
        }
    }
    GeoConfig {
        sources,
        countries: g
            .countries
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
            .collect(),
        trusted_proxies,
        failover: g
            .failover
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        within_region: g.within_region,
        default_region: g.default_region.clone(),
    }
}

fn host_match(e: &mut Errors<'_>, path: &str, h: &str) -> Option<HostMatch> {
    let h = h.trim().to_ascii_lowercase();
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    };
    if let Some(rest) = h.strip_prefix("*.") {
        if valid(rest) {
            return Some(HostMatch::Wildcard(format!(".{rest}")));
        }
    } else if valid(&h) {
        return Some(HostMatch::Exact(h));
    }
    e.push(
        path,
        format!("invalid host {h:?}; write an exact host or *.example.com"),
    );
    None
}

fn read_certs(
    e: &mut Errors<'_>,
    path: &str,
    base: &Path,
    file: &str,
) -> Option<Vec<CertificateDer<'static>>> {
    let full = base.join(file);
    if let Err(err) = std::fs::metadata(&full) {
        e.push(path, format!("cannot read {}: {err}", full.display()));
        return None;
    }
    match CertificateDer::pem_file_iter(&full).and_then(|it| it.collect::<Result<Vec<_>, _>>()) {
        Ok(v) if v.is_empty() => {
            e.push(
                path,
                format!("{}: no PEM certificate found", full.display()),
            );
            None
        }
        Ok(v) => Some(v),
        Err(err) => {
            e.push(path, format!("cannot read {}: {err}", full.display()));
            None
        }
    }
}

fn read_key(
    e: &mut Errors<'_>,
    path: &str,
    base: &Path,
    file: &str,
) -> Option<PrivateKeyDer<'static>> {
    let full = base.join(file);
    if let Err(err) = std::fs::metadata(&full) {
        e.push(path, format!("cannot read {}: {err}", full.display()));
        return None;
    }
    match PrivateKeyDer::from_pem_file(&full) {
        Ok(k) => Some(k),
        Err(err) => {
            e.push(
                path,
                format!(
                    "cannot read a PEM private key from {}: {err}",
                    full.display()
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse_str;
    use std::path::Path;

    fn errs(src: &str) -> Vec<String> {
        match parse_str(src, Path::new(".")) {
            Ok(_) => vec![],
            Err(e) => e.0.iter().map(|x| x.to_string()).collect(),
        }
    }

    #[test]
    fn collects_all_errors_with_lines() {
        let src = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: api
    pool: missing
pools:
  empty:
    backends: []
  sandboxes:
    timeouts: { connect: 5 parsecs }
    backends:
      - { address: 127.0.0.1:9001 }
      - { address: 127.0.0.1:9001, weight: 0 }
      - { address: not-an-address }
";
        let mut e = errs(src);
        assert_eq!(e.len(), 6, "{e:?}");
        let duration = e.remove(2);
        assert!(
            duration.starts_with(
                "line 11: pools.sandboxes.timeouts.connect: invalid duration \"5 parsecs\""
            ),
            "{duration}"
        );
        assert_eq!(
            e,
            vec![
                "line 6: routes[0].pool: no pool named \"missing\"",
                "line 9: pools.empty.backends: a pool needs at least one backend",
                "line 14: pools.sandboxes.backends[1].address: duplicate backend address 127.0.0.1:9001 in this pool",
                "line 14: pools.sandboxes.backends[1].weight: must be at least 1",
                "line 15: pools.sandboxes.backends[2].address: invalid address \"not-an-address\"; write ip:port, e.g. 127.0.0.1:9001",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_line() {
        let src = "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    colour: blue\n";
        let e = errs(src);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("line 4: listeners[0]: unknown field `colour`"),
            "{e:?}"
        );
    }

    #[test]
    fn sizes_and_hosts() {
        let src = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
limits: { max_request_body: 1MiB, max_header_bytes: 1KiB }
routes:
  - { name: r, match: { host: '*.example.com' }, pool: p }
  - { name: s, match: { host: 'a*b' }, pool: p }
pools:
  p: { backends: [{ address: 127.0.0.1:2 }] }
";
        let e = errs(src);
        assert_eq!(
            e,
            vec![
                "line 2: limits.max_header_bytes: must be at least 8KiB",
                "line 5: routes[1].match.host: invalid host \"a*b\"; write an exact host or *.example.com",
            ]
        );
    }

    #[test]
    fn protection_keys_are_validated() {
        let src = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
limits: { max_inflight: 0 }
routes:
  - { name: r, pool: p, rate_limit: { rate: 10/fortnight, key: 'cookie:x' } }
pools:
  p:
    health_check: { path: healthz, interval: 1s, timeout: 2s, jitter: lots, expect_status: 600-700 }
    circuit_breaker: { failure_on: [connect_error, teapot], open_for: 10s, max_open_for: 1s }
    retry: { attempts: 0, budget: 150% }
    max_connections: 0
    backends: [{ address: 127.0.0.1:2 }]
";
        let e = errs(src);
        let want = [
            "line 2: limits.max_inflight: must be at least 1",
            "line 4: routes[0].rate_limit.key: invalid key \"cookie:x\"; write client_ip or header:NAME",
            "line 4: routes[0].rate_limit.rate: invalid rate \"10/fortnight\"; write e.g. 100/s, 600/m or 3600/h",
            "line 7: pools.p.health_check.path: must start with /",
            "line 7: pools.p.health_check.expect_status: invalid status range \"600-700\"; write e.g. 200-399 or 200,204",
            "line 7: pools.p.health_check.timeout: must not exceed interval",
            "line 7: pools.p.health_check.jitter: invalid percentage \"lots\"; write e.g. 50%",
            "line 8: pools.p.circuit_breaker.max_open_for: must be at least open_for",
            "line 8: pools.p.circuit_breaker.failure_on[1]: unknown outcome \"teapot\"; use connect_error, timeout, error, 5xx or a status code",
            "line 9: pools.p.retry.attempts: must be at least 1",
            "line 9: pools.p.retry.budget: invalid percentage \"150%\"; write e.g. 50%",
            "line 10: pools.p.max_connections: must be at least 1",
        ];
        for w in want {
            assert!(e.iter().any(|x| x == w), "missing {w:?} in {e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }
}
