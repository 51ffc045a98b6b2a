//! `pools.NAME`: timeouts, backends, strategy blocks, protection and the wait queue.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{protection, strategies, transport, Errors, MAX_WEIGHT};
use crate::config::discovery::{parse_host_port, DiscoveryConfig, NamedBackend};
use crate::config::raw::{RawPool, StrategyKind};
use crate::config::{BackendConfig, PoolConfig, QueueConfig, TenantConfig, Timeouts};

pub(super) fn validate(
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
        tunnel_idle: e.positive(
            &format!("{pp}.timeouts.tunnel_idle"),
            p.timeouts.tunnel_idle.as_ref(),
            Duration::from_secs(3600),
        ),
    };
    let file = p.discovery.as_ref().and_then(|d| d.file.as_ref());
    if p.backends.is_empty() && file.is_none() {
        e.push(
            format!("{pp}.backends"),
            "a pool needs at least one backend (or a discovery.file)",
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
    let mut names = Vec::new();
    for (i, b) in p.backends.iter().enumerate() {
        let bp = format!("{pp}.backends[{i}]");
        let (address, name) = match b.address.trim().parse::<SocketAddr>() {
            Ok(a) => (Some(a), None),
            Err(_) => match parse_host_port(&b.address) {
                Some(n) => (None, Some(n)),
                None => {
                    e.push(
                        format!("{bp}.address"),
                        format!(
                            "invalid address {:?}; write ip:port or host:port, e.g. 127.0.0.1:9001",
                            b.address
                        ),
                    );
                    (None, None)
                }
            },
        };
        let key = address
            .map(|a| a.to_string())
            .or(name.as_ref().map(|(h, p)| format!("{h}:{p}")));
        if let Some(k) = key {
            if !seen.insert(k.clone()) {
                e.push(
                    format!("{bp}.address"),
                    format!("duplicate backend address {k} in this pool"),
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
        let max_connections = cap.or(pool_cap).map(|c| c as u32);
        if let Some(address) = address {
            backends.push(BackendConfig {
                address,
                weight,
                region: b.region.clone(),
                max_connections,
            });
        }
        if let Some((host, port)) = name {
            names.push(NamedBackend {
                host,
                port,
                weight,
                region: b.region.clone(),
                max_connections,
            });
        }
    }
    let discovery = (!names.is_empty() || file.is_some()).then(|| {
        let dp = format!("{pp}.discovery");
        Arc::new(DiscoveryConfig {
            names,
            dns_refresh: e.positive(
                &format!("{dp}.dns_refresh"),
                p.discovery.as_ref().and_then(|d| d.dns_refresh.as_ref()),
                Duration::from_secs(30),
            ),
            file: file.map(|f| base.join(f)),
        })
    });
    let slow_start = p
        .slow_start
        .as_ref()
        .map(|v| e.duration(&format!("{pp}.slow_start"), Some(v), Duration::ZERO))
        .filter(|d| !d.is_zero());
    let affinity = match (&p.affinity, p.strategy) {
        (Some(a), StrategyKind::Affinity) => {
            Some(strategies::affinity(e, &format!("{pp}.affinity"), a, base))
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
        (Some(g), StrategyKind::Geo) => Some(strategies::geo(
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
        .map(|h| protection::health(e, &format!("{pp}.health_check"), h));
    let breaker = p
        .circuit_breaker
        .as_ref()
        .map(|b| protection::breaker(e, &format!("{pp}.circuit_breaker"), b));
    let retry = p
        .retry
        .as_ref()
        .map(|r| protection::retry(e, &format!("{pp}.retry"), r));
    let queue = {
        let qp = format!("{pp}.queue");
        let q = p.queue.as_ref();
        let timeout = e.duration(
            &format!("{qp}.timeout"),
            q.and_then(|q| q.timeout.as_ref()),
            Duration::from_secs(5),
        );
        QueueConfig {
            max: e
                .count(&format!("{qp}.max"), q.and_then(|q| q.max), 0, None)
                .unwrap_or(1000) as usize,
            timeout,
            // Never more than the timeout: a low waiter is promoted before it would give up.
            max_wait_low: e
                .duration(
                    &format!("{qp}.max_wait_low"),
                    q.and_then(|q| q.max_wait_low.as_ref()),
                    Duration::from_secs(2),
                )
                .min(timeout),
        }
    };
    let tenant = p.tenant.as_ref().and_then(|t| {
        let tp = format!("{pp}.tenant");
        let key = super::routes::key(e, &format!("{tp}.key"), Some(&t.key));
        let max_share = e.percent(&format!("{tp}.max_share"), Some(&t.max_share), 1.0);
        if max_share <= 0.0 {
            e.push(format!("{tp}.max_share"), "must be more than 0%");
        }
        let uncapped = pool_cap.is_none() && p.backends.iter().any(|b| b.max_connections.is_none());
        if uncapped {
            e.push(
                tp.clone(),
                "needs max_connections (on the pool or every backend): a share is of the pool's slots",
            );
        }
        Some(TenantConfig {
            key: key?,
            max_share,
        })
    });
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
        tenant,
        max_idle_per_backend: e
            .count(
                &format!("{pp}.max_idle_per_backend"),
                p.max_idle_per_backend,
                0,
                Some(100_000),
            )
            .unwrap_or(32) as usize,
        transport: transport::validate(e, &pp, p, base, warnings),
        discovery,
        pool_max_connections: pool_cap.map(|c| c as u32),
    }
}
