//! Raw YAML structs -> typed [`Config`]. Pure apart from reading the TLS files the config names.
//! Every problem is collected (not just the first), each with its YAML path and line.

mod cache;
mod listeners;
mod pools;
mod protection;
mod routes;
mod strategies;
mod transport;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::lines::LineIndex;
use super::raw::RawConfig;
use super::{
    Config, ConfigError, ConfigErrors, LimitsConfig, Loaded, OtlpConfig, OutcomeSet, RuntimeConfig,
    Secret,
};

/// Largest accepted backend weight; keeps the precomputed weighted schedule small.
pub const MAX_WEIGHT: i64 = 10_000;
/// The longest duration any key accepts (a year).
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);
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
                // Nothing sane waits longer, and deadlines computed from it must not overflow.
                Ok(d) if d > MAX_DURATION => {
                    self.push(path, format!("{s:?} is longer than a year"));
                    default
                }
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

    /// A CIDR (or a single address).
    fn net(&mut self, path: String, s: &str) -> Option<ipnet::IpNet> {
        let s = s.trim();
        match s
            .parse::<ipnet::IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(n) => Some(n),
            Err(_) => {
                self.push(path, format!("invalid CIDR {s:?}; write e.g. 10.1.0.0/16"));
                None
            }
        }
    }

    /// A secret of at least 32 bytes read from `file` (relative to `base`); a trailing
    /// newline is not part of it.
    fn secret(&mut self, path: &str, base: &Path, file: &str) -> Option<Vec<u8>> {
        let full = base.join(file);
        match std::fs::read(&full) {
            Ok(mut b) => {
                while b.last().is_some_and(|x| *x == b'\n' || *x == b'\r') {
                    b.pop();
                }
                if b.len() < 32 {
                    self.push(
                        path,
                        format!(
                            "{} holds {} bytes; at least 32 are needed",
                            full.display(),
                            b.len()
                        ),
                    );
                    return None;
                }
                Some(b)
            }
            Err(err) => {
                self.push(path, format!("cannot read {}: {err}", full.display()));
                None
            }
        }
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

/// Validates `raw` into a [`Config`]; `base` resolves relative file paths (TLS, secrets).
pub fn validate(raw: &RawConfig, index: &LineIndex, base: &Path) -> Result<Loaded, ConfigErrors> {
    let mut e = Errors {
        index,
        list: Vec::new(),
    };
    let mut warnings = Vec::new();

    let listeners = listeners::validate(&mut e, raw, base);

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
        metrics_idle_timeout: e.positive(
            "runtime.metrics_idle_timeout",
            raw.runtime.metrics_idle_timeout.as_ref(),
            Duration::from_secs(600),
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
    let keepalive_timeout = e.positive(
        "limits.keepalive_timeout",
        raw.limits.keepalive_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let body_read_timeout = e.positive(
        "limits.body_read_timeout",
        raw.limits.body_read_timeout.as_ref(),
        Duration::from_secs(30),
    );
    let send_timeout = e.positive(
        "limits.send_timeout",
        raw.limits.send_timeout.as_ref(),
        Duration::from_secs(60),
    );
    let limits = LimitsConfig {
        header_read_timeout,
        keepalive_timeout,
        body_read_timeout,
        send_timeout,
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
        pools.push(pools::validate(&mut e, name, p, base, &mut warnings));
    }
    let routes = routes::validate(&mut e, raw, &pool_names, &mut warnings);
    let trusted_proxies = raw.trusted_proxies.as_ref().map(|list| {
        list.iter()
            .enumerate()
            .filter_map(|(i, s)| e.net(format!("trusted_proxies[{i}]"), s))
            .collect::<Vec<_>>()
    });
    // geo's own list defaults to the top-level one.
    if let Some(top) = &trusted_proxies {
        for g in pools.iter_mut().filter_map(|p| p.geo.as_mut()) {
            if g.trusted_proxies.is_empty() {
                g.trusted_proxies.clone_from(top);
            }
        }
    }
    let explain_from = match raw.admin.as_ref().and_then(|a| a.explain_from.as_ref()) {
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, s)| e.net(format!("admin.explain_from[{i}]"), s))
            .collect(),
        None => ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect(),
    };
    let otlp = raw
        .tracing
        .as_ref()
        .and_then(|t| t.otlp.as_ref())
        .and_then(|o| {
            let timeout = e.positive(
                "tracing.otlp.timeout",
                o.timeout.as_ref(),
                Duration::from_secs(5),
            );
            match o.endpoint.trim().parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.authority().is_some() => {
                    Some(OtlpConfig {
                        endpoint: o.endpoint.trim().to_owned(),
                        timeout,
                    })
                }
                _ => {
                    e.push(
                        "tracing.otlp.endpoint",
                        format!(
                        "{:?} is not an http:// URL; write e.g. http://127.0.0.1:4318/v1/traces",
                        o.endpoint
                    ),
                    );
                    None
                }
            }
        });
    let cache = cache::stores(&mut e, raw.cache.as_ref());
    let admin_token = raw.admin.as_ref().and_then(|a| {
        let file = a.token_file.as_ref()?;
        e.secret("admin.token_file", base, file)
            .map(|t| Secret(t.into()))
    });

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
            cache,
            admin_token,
            trusted_proxies,
            explain_from,
            otlp,
            trace_generate: raw
                .tracing
                .as_ref()
                .and_then(|t| t.generate)
                .unwrap_or(true),
        },
        warnings,
    })
}

#[cfg(test)]
mod tests;
