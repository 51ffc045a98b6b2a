//! Geographic routing: the client's region first, then its failover regions in order, then
//! any usable backend. Within a region a basic strategy picks. The client's region comes from
//! the first `client_region` source that yields one: a header (trusted only from
//! `trusted_proxies`), a CIDR table, or a MaxMind country database mapped through
//! `countries`. Clients with no known region use `default_region`, else every backend.

use std::borrow::Cow;
use std::collections::HashMap;

use metrics::Counter;

use super::{Basic, Env, PickCtx};
use crate::backend::Backend;
use crate::config::{GeoConfig, RegionSource};
use crate::headers::{client_ip, trusted_peer};
use crate::metrics::GEO_DECISIONS_TOTAL;

struct Group {
    members: Box<[u32]>,
    basic: Basic,
}

/// How a geo decision was made (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeoResult {
    /// In the client's region.
    Local,
    /// In one of its failover regions.
    Failover,
    /// Anywhere, after the region and its failovers had nothing usable.
    Any,
    /// The client's region is unknown.
    Unknown,
}

/// Geo strategy state for one pool.
pub struct Geo {
    cfg: GeoConfig,
    /// One group per region that has backends.
    groups: Vec<Group>,
    /// Region name -> group indices to try, in order (own region first, then failovers).
    order: HashMap<String, Vec<usize>>,
    /// Region name -> its own group.
    own: HashMap<String, usize>,
    /// Every backend.
    all: Group,
    counters: [Counter; 4],
}

impl Geo {
    /// Builds the region groups for `backends`.
    pub fn new(pool: &str, cfg: &GeoConfig, backends: &[Backend]) -> Self {
        let within = cfg.within_region;
        let mut by_region: Vec<(String, Vec<u32>)> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            if let Some(r) = b.region.as_deref() {
                match by_region.iter_mut().find(|(n, _)| n == r) {
                    Some((_, v)) => v.push(i as u32),
                    None => by_region.push((r.to_owned(), vec![i as u32])),
                }
            }
        }
        let index: HashMap<&str, usize> = by_region
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (n.as_str(), i))
            .collect();
        let mut order = HashMap::new();
        let mut names: Vec<&str> = index.keys().copied().collect();
        names.extend(cfg.failover.keys().map(String::as_str));
        for name in names {
            let mut v = Vec::new();
            for r in std::iter::once(name).chain(
                cfg.failover
                    .get(name)
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            ) {
                if let Some(&g) = index.get(r) {
                    if !v.contains(&g) {
                        v.push(g);
                    }
                }
            }
            order.insert(name.to_owned(), v);
        }
        let own = index.iter().map(|(n, g)| ((*n).to_owned(), *g)).collect();
        let groups = by_region
            .iter()
            .map(|(_, m)| Group {
                basic: Basic::new(within, m, backends),
                members: m.clone().into_boxed_slice(),
            })
            .collect();
        let all: Box<[u32]> = (0..backends.len() as u32).collect();
        let counter = |r: &'static str| metrics::counter!(GEO_DECISIONS_TOTAL, "pool" => pool.to_owned(), "result" => r);
        Self {
            cfg: cfg.clone(),
            groups,
            order,
            own,
            all: Group {
                basic: Basic::new(within, &all, backends),
                members: all,
            },
            counters: [
                counter("local"),
                counter("failover"),
                counter("any"),
                counter("unknown"),
            ],
        }
    }

    /// The client's region, from the first source that yields one.
    pub fn client_region<'c>(&'c self, ctx: &'c PickCtx<'c>) -> Option<Cow<'c, str>> {
        let peer_trusted = trusted_peer(&ctx.peer, &self.cfg.trusted_proxies);
        for src in &self.cfg.sources {
            match src {
                RegionSource::Header(h) => {
                    if peer_trusted {
                        if let Some(v) = ctx.headers.get(h).and_then(|v| v.to_str().ok()) {
                            let v = v.trim();
                            if !v.is_empty() {
                                return Some(Cow::Borrowed(v));
                            }
                        }
                    }
                }
                RegionSource::Cidr(table) => {
                    let ip = client_ip(ctx.peer, ctx.headers, Some(&self.cfg.trusted_proxies));
                    if let Some((_, r)) = table.iter().find(|(n, _)| n.contains(&ip)) {
                        return Some(Cow::Borrowed(r));
                    }
                }
                RegionSource::Mmdb(db) => {
                    let ip = client_ip(ctx.peer, ctx.headers, Some(&self.cfg.trusted_proxies));
                    let country =
                        db.0.lookup::<maxminddb::geoip2::Country>(ip)
                            .ok()
                            .and_then(|c| {
                                c.country
                                    .and_then(|c| c.iso_code.map(str::to_ascii_uppercase))
                            });
                    if let Some(r) = country.and_then(|c| self.cfg.countries.get(&c)) {
                        return Some(Cow::Borrowed(r));
                    }
                }
            }
        }
        None
    }

    /// The backends a waiting request takes, in its region and then its failover regions;
    /// None when its region is unknown (any backend will do).
    pub fn queue_members(&self, ctx: &PickCtx<'_>) -> Option<Vec<usize>> {
        let region = self
            .client_region(ctx)
            .or_else(|| self.cfg.default_region.as_deref().map(Cow::Borrowed))?;
        let order = self.order.get(region.as_ref())?;
        Some(
            order
                .iter()
                .flat_map(|&g| self.groups[g].members.iter().map(|&i| i as usize))
                .collect(),
        )
    }

    /// The decision counters, to keep their series alive.
    pub fn counters(&self) -> &[Counter] {
        &self.counters
    }

    /// Picks a backend and says how.
    pub fn decide(&self, env: &Env<'_>, ctx: &PickCtx<'_>) -> Option<(usize, GeoResult)> {
        let region = self.client_region(ctx);
        let known = region.is_some();
        let region = region.or_else(|| self.cfg.default_region.as_deref().map(Cow::Borrowed));
        if let Some(order) = region.as_deref().and_then(|r| self.order.get(r)) {
            for (k, &g) in order.iter().enumerate() {
                let group = &self.groups[g];
                if let Some(i) = group.basic.select(&group.members, env) {
                    let result = match (known, k) {
                        (false, _) => GeoResult::Unknown,
                        (true, 0)
                            if region.as_deref().and_then(|r| self.own.get(r)) == Some(&g) =>
                        {
                            GeoResult::Local
                        }
                        _ => GeoResult::Failover,
                    };
                    return Some((i, result));
                }
            }
            // The region and its failovers are only full, not down: wait for them in the
            // queue rather than leave them.
            let busy = order.iter().any(|&g| {
                self.groups[g].members.iter().any(|&i| {
                    let i = i as usize;
                    !env.exclude.contains(&i)
                        && !env.backends[i].has_slot()
                        && env.serves_but_for_cap(i)
                })
            });
            if busy {
                return None;
            }
        }
        let i = self.all.basic.select(&self.all.members, env)?;
        Some((
            i,
            if known {
                GeoResult::Any
            } else {
                GeoResult::Unknown
            },
        ))
    }

    /// Picks a backend, counting the decision.
    pub fn select(&self, env: &Env<'_>, ctx: &PickCtx<'_>) -> Option<(usize, &'static str)> {
        let (i, result) = self.decide(env, ctx)?;
        self.counters[result as usize].increment(1);
        Some((i, result.as_str()))
    }
}

impl GeoResult {
    /// The `result` label and access-log value.
    pub fn as_str(self) -> &'static str {
        match self {
            GeoResult::Local => "geo:local",
            GeoResult::Failover => "geo:failover",
            GeoResult::Any => "geo:any",
            GeoResult::Unknown => "geo:unknown",
        }
    }
}

impl Geo {
    /// For `Sandgate-Explain`: the client's region, the regions in the order they are tried,
    /// where `chosen` is, and the strategy within its region.
    pub(super) fn explain(
        &self,
        ctx: &PickCtx<'_>,
        env: &Env<'_>,
        chosen: usize,
    ) -> (&'static str, String) {
        let found = self.client_region(ctx);
        let (region, from) = match (&found, &self.cfg.default_region) {
            (Some(r), _) => (Some(r.as_ref()), "client region"),
            (None, Some(d)) => (Some(d.as_str()), "unknown client region, default"),
            (None, None) => (None, "unknown client region"),
        };
        let name_of = |g: usize| {
            self.own
                .iter()
                .find(|(_, &i)| i == g)
                .map_or("?", |(n, _)| n.as_str())
        };
        let order: Vec<&str> = region
            .and_then(|r| self.order.get(r))
            .map(|o| o.iter().map(|&g| name_of(g)).collect())
            .unwrap_or_default();
        let at = env.backends.get(chosen).and_then(|b| b.region.as_deref());
        let step = at.and_then(|r| order.iter().position(|o| *o == r));
        let mut text = format!("{from} {}", region.unwrap_or("-"));
        if !order.is_empty() {
            text.push_str(&format!("; order {}", order.join(" > ")));
        }
        text.push_str(&match (at, step) {
            (Some(r), Some(k)) => format!("; chose region {r} (step {} of {})", k + 1, order.len()),
            (r, _) => format!("; chose from every backend (region {})", r.unwrap_or("-")),
        });
        let group = at
            .and_then(|r| self.own.get(r))
            .map_or(&self.all, |&g| &self.groups[g]);
        let (name, why) = super::explain::basic(&group.basic, &group.members, env, chosen);
        text.push_str(&format!("; within: {name}, {why}"));
        ("geo", text)
    }
}
