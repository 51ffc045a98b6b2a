//! `pools.NAME.affinity` and `pools.NAME.geo`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;

use super::Errors;
use crate::config::raw::{RawAffinity, RawGeo};
use crate::config::{
    AffinityConfig, AffinityKey, BackendConfig, CookieConfig, GeoConfig, Mmdb, RegionSource,
};

pub(super) fn affinity(
    e: &mut Errors<'_>,
    ap: &str,
    a: &RawAffinity,
    base: &Path,
) -> AffinityConfig {
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
        let secret = e.secret(&format!("{cp}.secret_file"), base, &c.secret_file)?;
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

pub(super) fn geo(
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
    let net = |e: &mut Errors<'_>, path: String, s: &str| e.net(path, s);
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
            let mut v: Vec<(ipnet::IpNet, String)> = map
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
                Ok(r) => sources.push(RegionSource::Mmdb(Mmdb(std::sync::Arc::new(r), path))),
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
