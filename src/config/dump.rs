//! `sandgate check --dump`: the validated config as YAML, every default filled in, in the
//! file's own keys (so that the output loads again). Secrets, and the files that hold them,
//! are shown as `<redacted>`.

use std::time::Duration;

use serde_yaml::{Mapping, Value};

use super::{
    AffinityKey, BreakerConfig, Config, HealthConfig, HealthProbe, HostMatch, OutcomeSet,
    PoolConfig, RateKey, RegionSource, RetryConfig,
};

/// What secrets are shown as.
pub const REDACTED: &str = "<redacted>";

/// A mapping built key by key, in order.
#[derive(Default)]
struct Map(Mapping);

impl Map {
    fn set(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.0.insert(Value::from(key), v.into());
        self
    }

    fn opt(self, key: &str, v: Option<impl Into<Value>>) -> Self {
        match v {
            Some(v) => self.set(key, v),
            None => self,
        }
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Value {
        Value::Mapping(m.0)
    }
}

fn list<T>(items: impl IntoIterator<Item = T>, f: impl Fn(T) -> Value) -> Value {
    Value::Sequence(items.into_iter().map(f).collect())
}

fn dur(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_owned();
    }
    humantime::format_duration(d).to_string()
}

fn size(n: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n != 0 && n % (1 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

fn percent(share: f64) -> String {
    format!("{}%", (share * 1e6).round() / 1e4)
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn strings<'a>(items: impl IntoIterator<Item = &'a ipnet::IpNet>) -> Value {
    list(items, |n| Value::from(n.to_string()))
}

fn outcomes(set: &OutcomeSet) -> Value {
    let mut v: Vec<Value> = Vec::new();
    for (on, name) in [
        (set.connect_error, "connect_error"),
        (set.timeout, "timeout"),
        (set.error, "error"),
    ] {
        if on {
            v.push(name.into());
        }
    }
    v.extend(set.statuses.iter().map(|s| Value::from(u64::from(*s))));
    Value::Sequence(v)
}

fn enum_name<T: serde::Serialize>(v: &T) -> Value {
    Value::from(super::raw::config_name(v))
}

/// Redis URLs may hold a password: it is redacted.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s + 3 => format!("{}{REDACTED}{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// The resolved config as YAML text.
pub fn dump(cfg: &Config) -> String {
    let listeners = list(&cfg.listeners, |l| {
        Map::default()
            .set("name", l.name.as_str())
            .set("address", l.address.to_string())
            .opt(
                "tls",
                l.tls.as_ref().map(|pairs| {
                    Map::default().set(
                        "certificates",
                        list(pairs, |p| {
                            Map::default()
                                .set("cert", path(&p.cert_path))
                                .set("key", REDACTED)
                                .into()
                        }),
                    )
                }),
            )
            .opt(
                "proxy_protocol",
                l.proxy_protocol
                    .as_ref()
                    .map(|t| Map::default().set("trusted", strings(t))),
            )
            .into()
    });
    let admin = cfg.admin.map(|a| {
        Map::default()
            .set("address", a.to_string())
            .opt("token_file", cfg.admin_token.as_ref().map(|_| REDACTED))
            .set("explain_from", strings(&cfg.explain_from))
    });
    let cache = Map::default()
        .set("max_size", size(cfg.cache.max_size))
        .set("max_object_size", size(cfg.cache.max_object_size))
        .opt(
            "redis",
            cfg.cache.redis.as_ref().map(|r| {
                Map::default()
                    .set("url", redact_url(&r.url))
                    .set("key_prefix", r.key_prefix.as_str())
                    .set("timeout", dur(r.timeout))
                    .set("max_object_size", size(r.max_object_size))
            }),
        );
    let runtime = Map::default()
        .opt(
            "worker_threads",
            cfg.runtime.worker_threads.map(|n| n as u64),
        )
        .set("shutdown_grace", dur(cfg.runtime.shutdown_grace))
        .set(
            "metrics_idle_timeout",
            dur(cfg.runtime.metrics_idle_timeout),
        );
    let l = &cfg.limits;
    let limits = Map::default()
        .set("header_read_timeout", dur(l.header_read_timeout))
        .set("keepalive_timeout", dur(l.keepalive_timeout))
        .set("body_read_timeout", dur(l.body_read_timeout))
        .set("send_timeout", dur(l.send_timeout))
        .set("max_request_body", size(l.max_request_body))
        .set("max_header_bytes", size(l.max_header_bytes as u64))
        .opt("max_connections", l.max_connections.map(|n| n as u64))
        .opt("max_inflight", l.max_inflight.map(|n| n as u64));
    let routes = list(&cfg.routes, |r| {
        let headers: Mapping = r
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    Value::from(n.as_str()),
                    Value::from(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                )
            })
            .collect();
        let matching = Map::default()
            .opt(
                "host",
                r.host.as_ref().map(|h| match h {
                    HostMatch::Exact(h) => h.clone(),
                    HostMatch::Wildcard(d) => format!("*{d}"),
                }),
            )
            .set("path_prefix", r.path_prefix.as_str())
            .set("path_prefix_segments", r.path_prefix_segments)
            .opt(
                "headers",
                (!headers.is_empty()).then_some(Value::Mapping(headers)),
            );
        Map::default()
            .set("name", r.name.as_str())
            .set("match", matching)
            .set("priority", r.priority.as_str())
            .set(
                "pool",
                cfg.pools.get(r.pool).map_or("", |p| p.name.as_str()),
            )
            .opt(
                "rate_limit",
                r.rate_limit.as_ref().map(|rl| {
                    Map::default()
                        .set("key", rate_key(&rl.key))
                        .set(
                            "rate",
                            format!(
                                "{}/{}",
                                rl.per_window(),
                                match rl.window as u64 {
                                    3600 => "h",
                                    60 => "m",
                                    _ => "s",
                                }
                            ),
                        )
                        .set("burst", u64::from(rl.burst))
                        .set("max_keys", rl.max_keys)
                        .set("algorithm", rl.algorithm.as_str())
                        .set("scope", rl.scope.as_str())
                }),
            )
            .opt(
                "cache",
                r.cache.map(|c| {
                    Map::default()
                        .set("enabled", true)
                        .set("stale_if_error", dur(c.stale_if_error))
                        .set("stale_while_revalidate", dur(c.stale_while_revalidate))
                        .set("lock_timeout", dur(c.lock_timeout))
                        .set("max_ttl", dur(c.max_ttl))
                }),
            )
            .into()
    });
    let pools: Mapping = cfg
        .pools
        .iter()
        .map(|p| (Value::from(p.name.as_str()), pool(p)))
        .collect();
    let root = Map::default()
        .set("listeners", listeners)
        .opt("admin", admin)
        .set("runtime", runtime)
        .set("limits", limits)
        .set("cache", cache)
        .opt("trusted_proxies", cfg.trusted_proxies.as_ref().map(strings))
        .set(
            "tracing",
            Map::default().set("generate", cfg.trace_generate),
        )
        .set("routes", routes)
        .set("pools", Value::Mapping(pools));
    serde_yaml::to_string(&Value::from(root)).unwrap_or_default()
}

fn pool(p: &PoolConfig) -> Value {
    let t = &p.timeouts;
    let mut backends: Vec<Value> = p
        .backends
        .iter()
        .map(|b| {
            Map::default()
                .set("address", b.address.to_string())
                .set("weight", u64::from(b.weight))
                .opt("region", b.region.as_deref())
                .opt("max_connections", b.max_connections.map(u64::from))
                .into()
        })
        .collect();
    let discovery = p.discovery.as_ref().map(|d| {
        for n in &d.names {
            backends.push(
                Map::default()
                    .set("address", format!("{}:{}", n.host, n.port))
                    .set("weight", u64::from(n.weight))
                    .opt("region", n.region.as_deref())
                    .opt("max_connections", n.max_connections.map(u64::from))
                    .into(),
            );
        }
        Map::default()
            .set("dns_refresh", dur(d.dns_refresh))
            .opt("file", d.file.as_deref().map(path))
    });
    let tls = p.transport.tls.as_ref().map(|t| {
        Map::default()
            .opt("ca_file", t.ca_file.as_deref().map(path))
            .opt(
                "server_name",
                t.server_name.as_ref().map(|n| n.to_str().into_owned()),
            )
            .set("verify", t.verify)
            .opt(
                "client_cert",
                t.client_cert
                    .as_deref()
                    .map(|c| Map::default().set("cert", path(c)).set("key", REDACTED)),
            )
    });
    Map::default()
        .set("strategy", enum_name(&p.strategy))
        .opt("slow_start", p.slow_start.map(dur))
        .set(
            "timeouts",
            Map::default()
                .set("connect", dur(t.connect))
                .set("response_header", dur(t.response_header))
                .set("idle", dur(t.idle))
                .set("tunnel_idle", dur(t.tunnel_idle)),
        )
        .set("max_idle_per_backend", p.max_idle_per_backend as u64)
        .opt("max_connections", p.pool_max_connections.map(u64::from))
        .set(
            "queue",
            Map::default()
                .set("max", p.queue.max as u64)
                .set("timeout", dur(p.queue.timeout))
                .set("max_wait_low", dur(p.queue.max_wait_low)),
        )
        .opt(
            "tenant",
            p.tenant.as_ref().map(|t| {
                Map::default()
                    .set("key", rate_key(&t.key))
                    .set("max_share", format!("{}%", t.max_share * 100.0))
            }),
        )
        .opt("tls", tls)
        .set("protocol", enum_name(&p.transport.protocol))
        .opt(
            "affinity",
            p.affinity.as_ref().map(|a| {
                Map::default()
                    .opt(
                        "key",
                        a.key.as_ref().map(|k| match k {
                            AffinityKey::Header(h) => format!("header:{h}"),
                            AffinityKey::Cookie(c) => format!("cookie:{c}"),
                            AffinityKey::Query(q) => format!("query:{q}"),
                            AffinityKey::ClientIp => "client_ip".to_owned(),
                        }),
                    )
                    .set("fallback", enum_name(&a.fallback))
                    .opt(
                        "cookie",
                        a.cookie.as_ref().map(|c| {
                            Map::default()
                                .set("name", c.name.as_str())
                                .set("max_age", dur(c.max_age))
                                .set("secret_file", REDACTED)
                        }),
                    )
                    .set("on_unusable", enum_name(&a.on_unusable))
                    .opt("bounded_load", a.bounded_load)
            }),
        )
        .opt(
            "geo",
            p.geo.as_ref().map(|g| {
                let sources = list(&g.sources, |s| match s {
                    RegionSource::Header(h) => Map::default().set("header", h.as_str()).into(),
                    RegionSource::Cidr(v) => {
                        let m: Mapping = v
                            .iter()
                            .map(|(n, r)| (Value::from(n.to_string()), Value::from(r.as_str())))
                            .collect();
                        Map::default().set("cidr", Value::Mapping(m)).into()
                    }
                    RegionSource::Mmdb(db) => Map::default().set("mmdb", path(&db.1)).into(),
                });
                let sorted = |m: &std::collections::HashMap<String, String>| -> Mapping {
                    let mut v: Vec<_> = m.iter().collect();
                    v.sort();
                    v.into_iter()
                        .map(|(k, r)| (Value::from(k.as_str()), Value::from(r.as_str())))
                        .collect()
                };
                let mut failover: Vec<_> = g.failover.iter().collect();
                failover.sort();
                let failover: Mapping = failover
                    .into_iter()
                    .map(|(k, v)| {
                        (
                            Value::from(k.as_str()),
                            list(v, |r| Value::from(r.as_str())),
                        )
                    })
                    .collect();
                Map::default()
                    .set("client_region", sources)
                    .set("countries", Value::Mapping(sorted(&g.countries)))
                    .set("trusted_proxies", strings(&g.trusted_proxies))
                    .set("failover", Value::Mapping(failover))
                    .set("within_region", enum_name(&g.within_region))
                    .opt("default_region", g.default_region.as_deref())
            }),
        )
        .opt("health_check", p.health.as_ref().map(health))
        .opt("circuit_breaker", p.breaker.as_ref().map(breaker))
        .opt("retry", p.retry.as_ref().map(retry))
        .opt("discovery", discovery)
        .set("backends", Value::Sequence(backends))
        .into()
}

fn health(h: &HealthConfig) -> Map {
    let m = match &h.probe {
        HealthProbe::Http { path } => Map::default().set("path", path.as_str()),
        HealthProbe::Tcp => Map::default().set("tcp", true),
    };
    let ranges: Vec<String> = h
        .expect_status
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    m.set("interval", dur(h.interval))
        .set("jitter", percent(h.jitter))
        .set("timeout", dur(h.timeout))
        .set("healthy_threshold", u64::from(h.healthy_threshold))
        .set("unhealthy_threshold", u64::from(h.unhealthy_threshold))
        .set("expect_status", ranges.join(","))
        .opt("expect_body", h.expect_body.as_deref())
        .opt("host", h.host.as_deref())
        .set(
            "initial_state",
            if h.initial_healthy {
                "healthy"
            } else {
                "unhealthy"
            },
        )
        .set("panic_threshold", percent(h.panic_threshold))
}

fn breaker(b: &BreakerConfig) -> Map {
    Map::default()
        .set("consecutive_failures", u64::from(b.consecutive_failures))
        .set("failure_rate", percent(b.failure_rate))
        .set("window", dur(b.window))
        .set("min_requests", u64::from(b.min_requests))
        .set("open_for", dur(b.open_for))
        .set("max_open_for", dur(b.max_open_for))
        .set("half_open_requests", u64::from(b.half_open_requests))
        .set("failure_on", outcomes(&b.failure_on))
}

fn retry(r: &RetryConfig) -> Map {
    Map::default()
        .set("attempts", u64::from(r.attempts))
        .set("on", outcomes(&r.on))
        .set(
            "backoff",
            Map::default()
                .set("base", dur(r.backoff_base))
                .set("max", dur(r.backoff_max)),
        )
        .opt("per_try_timeout", r.per_try_timeout.map(dur))
        .set("budget", percent(r.budget))
        .set("max_replay_body", size(r.max_replay_body))
}

/// A rate-limit or tenant key as the file writes it.
fn rate_key(k: &RateKey) -> String {
    match k {
        RateKey::ClientIp => "client_ip".to_owned(),
        RateKey::Header(h) => format!("header:{h}"),
    }
}
