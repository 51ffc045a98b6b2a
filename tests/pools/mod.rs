//! Real `Pool`s built from YAML through the library API, for the strategy tests (no network).
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use http::HeaderMap;
use sandgate::balance::{PickCtx, Pool};
use sandgate::config;

pub fn addr(i: usize) -> SocketAddr {
    format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
        .parse()
        .unwrap()
}

/// A pool from a YAML pool body (`backends` may be omitted: they come from `addrs`).
pub fn pool_yaml(
    body: &str,
    backends: &[(SocketAddr, u32, Option<&str>)],
    dir: &std::path::Path,
) -> Pool {
    let mut y = format!("listeners: [{{ name: l, address: 127.0.0.1:0 }}]\nroutes: [{{ name: r, pool: p }}]\npools:\n  p:\n{body}    backends:\n");
    for (a, w, r) in backends {
        y.push_str(&format!(
            "      - {{ address: {a}, weight: {w}{} }}\n",
            r.map(|r| format!(", region: {r}")).unwrap_or_default()
        ));
    }
    let loaded = config::parse_str(&y, dir).unwrap_or_else(|e| panic!("{e}\n{y}"));
    Pool::from_config(&loaded.config.pools[0])
}

pub fn ctx<'a>(headers: &'a HeaderMap, ip: &str, query: Option<&'a str>) -> PickCtx<'a> {
    PickCtx {
        client_ip: ip.parse::<IpAddr>().unwrap(),
        peer: ip.parse::<IpAddr>().unwrap(),
        headers,
        query,
        tls: false,
        now: Instant::now(),
    }
}

pub fn pick_addr(p: &Pool, c: &PickCtx<'_>) -> SocketAddr {
    p.select(c, &[]).expect("a backend").backend.addr()
}
