//! Backends found at run time, beyond the file's `ip:port` ones: every A/AAAA record of a
//! `host:port` backend (resolved at load and every `discovery.dns_refresh`), and the entries
//! of a pool's `discovery.file` (watched like the config). A change rebuilds the snapshot
//! without a reload: backends that appear get slow start, backends that go away leave the
//! snapshot while what they have in flight finishes on the old one (drained, not cut).
//! A failed lookup or a bad file keeps the last good set, and is logged and counted in
//! `sandgate_discovery_errors_total{pool}`.
//!
//! `SANDGATE_HOSTS_FILE` names a hosts-format file consulted before the system resolver
//! (re-read at each lookup), for containers and tests that must not touch the network.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::discovery::DiscoveryConfig;
use crate::config::validate::MAX_WEIGHT;
use crate::config::{BackendConfig, Config, PoolConfig};
use crate::metrics::DISCOVERY_ERRORS_TOTAL;
use crate::services::Services;
use crate::state::SharedState;

/// The last good answers of every pool's discovery, kept with the applied config.
#[derive(Debug, Default, Clone)]
pub struct Found {
    pools: HashMap<String, PoolFound>,
}

#[derive(Debug, Default, Clone)]
struct PoolFound {
    /// `host:port` -> its addresses at the last good lookup.
    names: HashMap<(String, u16), Vec<IpAddr>>,
    /// The file's entries at its last good read.
    file: Vec<BackendConfig>,
    /// When the names were last resolved.
    resolved_at: Option<Instant>,
}

impl Found {
    /// The pool's backends: the file's `ip:port` ones, then the resolved names, then the
    /// discovery file's, each address once (the first entry naming it wins).
    pub fn backends_of(&self, pc: &PoolConfig) -> Vec<BackendConfig> {
        let mut out = pc.backends.clone();
        let (Some(d), Some(f)) = (&pc.discovery, self.pools.get(&pc.name)) else {
            return out;
        };
        let mut seen: HashSet<SocketAddr> = out.iter().map(|b| b.address).collect();
        for n in &d.names {
            for ip in f.names.get(&(n.host.clone(), n.port)).into_iter().flatten() {
                let address = SocketAddr::new(*ip, n.port);
                if seen.insert(address) {
                    out.push(BackendConfig {
                        address,
                        weight: n.weight,
                        region: n.region.clone(),
                        max_connections: n.max_connections,
                    });
                }
            }
        }
        for b in &f.file {
            if seen.insert(b.address) {
                let mut b = b.clone();
                b.max_connections = b.max_connections.or(pc.pool_max_connections);
                out.push(b);
            }
        }
        out
    }

    /// Resolves every name and reads every file of `cfg` now (at load), keeping the last good
    /// answer of whatever fails; drops pools no longer in `cfg`. Blocking.
    pub fn refresh_all(&mut self, cfg: &Config) {
        self.pools.retain(|name, _| {
            cfg.pools
                .iter()
                .any(|p| p.name == *name && p.discovery.is_some())
        });
        for pc in &cfg.pools {
            if let Some(d) = &pc.discovery {
                let names = lookup_all(&pc.name, d);
                let file = d.file.as_deref().map(|f| (f, read_file(&pc.name, f)));
                let entry = self.pools.entry(pc.name.clone()).or_default();
                entry.apply_names(d, names);
                if let Some((_, Some(list))) = file {
                    entry.file = list;
                }
            }
        }
    }
}

impl PoolFound {
    fn apply_names(&mut self, d: &DiscoveryConfig, answers: Vec<Answer>) {
        self.resolved_at = Some(Instant::now());
        let wanted: HashSet<(String, u16)> =
            d.names.iter().map(|n| (n.host.clone(), n.port)).collect();
        self.names.retain(|k, _| wanted.contains(k));
        for (key, ips) in answers {
            if let Some(ips) = ips {
                self.names.insert(key, ips);
            }
        }
    }
}

/// One name's lookup: its addresses, or `None` when it failed.
type Answer = ((String, u16), Option<Vec<IpAddr>>);

/// Resolves each of `d`'s names; a failure is logged, counted and answered `None`.
fn lookup_all(pool: &str, d: &DiscoveryConfig) -> Vec<Answer> {
    d.names
        .iter()
        .map(|n| {
            let answer = match resolve(&n.host, n.port) {
                Ok(ips) => Some(ips),
                Err(e) => {
                    tracing::warn!(pool, name = %n.host, error = %e, "discovery: lookup failed; keeping the last good addresses");
                    metrics::counter!(DISCOVERY_ERRORS_TOTAL, "pool" => pool.to_owned()).increment(1);
                    None
                }
            };
            ((n.host.clone(), n.port), answer)
        })
        .collect()
}

/// The addresses of `host`, sorted and each once: from `SANDGATE_HOSTS_FILE` when it names
/// the host, else from the system resolver. No address is an error.
pub fn resolve(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let mut ips = match std::env::var_os("SANDGATE_HOSTS_FILE") {
        Some(f) => hosts_lookup(Path::new(&f), host)?,
        None => Vec::new(),
    };
    if ips.is_empty() {
        ips = (host, port)
            .to_socket_addrs()
            .map_err(|e| e.to_string())?
            .map(|a| a.ip())
            .collect();
    }
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        return Err("no A or AAAA record".to_owned());
    }
    Ok(ips)
}

/// Every address a hosts-format file gives `host` (`ip name [alias...]`, `#` comments).
fn hosts_lookup(file: &Path, host: &str) -> Result<Vec<IpAddr>, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut words = line.split('#').next()?.split_whitespace();
            let ip: IpAddr = words.next()?.parse().ok()?;
            words.any(|w| w.eq_ignore_ascii_case(host)).then_some(ip)
        })
        .collect())
}

/// One entry of a discovery file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    address: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    max_connections: Option<u32>,
}

/// Reads a discovery file; a failure is logged, counted and answered `None`.
fn read_file(pool: &str, path: &Path) -> Option<Vec<BackendConfig>> {
    match parse_file(path) {
        Ok(list) => Some(list),
        Err(e) => {
            tracing::warn!(pool, file = %path.display(), error = %e, "discovery: bad backends file; keeping the last good set");
            metrics::counter!(DISCOVERY_ERRORS_TOTAL, "pool" => pool.to_owned()).increment(1);
            None
        }
    }
}

/// Parses a discovery file: a JSON list of `{address, weight, region, max_connections}`.
pub fn parse_file(path: &Path) -> Result<Vec<BackendConfig>, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let entries: Vec<FileEntry> = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let mut seen = HashSet::new();
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let address: SocketAddr = e
                .address
                .trim()
                .parse()
                .map_err(|_| format!("[{i}].address: {:?} is not ip:port", e.address))?;
            if !seen.insert(address) {
                return Err(format!("[{i}].address: {address} is listed twice"));
            }
            let weight = e.weight.unwrap_or(1);
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return Err(format!("[{i}].weight: must be between 1 and {MAX_WEIGHT}"));
            }
            if e.max_connections == Some(0) {
                return Err(format!("[{i}].max_connections: must be at least 1"));
            }
            Ok(BackendConfig {
                address,
                weight: weight as u32,
                region: e.region.filter(|r| !r.trim().is_empty()),
                max_connections: e.max_connections,
            })
        })
        .collect()
}

/// Runs discovery until `shutdown`: resolves each pool's names when they are due, and
/// applies a discovery file when it changes. Each change rebuilds the snapshot.
pub async fn run(state: SharedState, services: Arc<Services>, shutdown: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watches = HashMap::new();
    loop {
        let Some(cfg) = services.applied_config() else {
            return;
        };
        // Follow the files the config names now.
        let files: HashSet<PathBuf> = cfg
            .pools
            .iter()
            .filter_map(|p| p.discovery.as_ref()?.file.clone())
            .collect();
        watches.retain(|f: &PathBuf, _| files.contains(f));
        for f in files {
            if let std::collections::hash_map::Entry::Vacant(v) = watches.entry(f) {
                let f = v.key().clone();
                v.insert(crate::reload::watch(&f, tx.clone(), f.clone()));
            }
        }
        let due = next_due(&cfg, &services);
        // Wake at least every second, to follow a reload's new names and files.
        let wake = due.min(Instant::now() + Duration::from_secs(1));
        let changed_file = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => None,
            Some(f) = rx.recv() => Some(f),
        };
        let (state, services) = (Arc::clone(&state), Arc::clone(&services));
        let work =
            tokio::task::spawn_blocking(move || refresh_due(&state, &services, changed_file));
        if let Err(e) = work.await {
            tracing::error!(error = %e, "discovery refresh panicked");
        }
    }
}

/// When the next pool's names are due for a lookup.
fn next_due(cfg: &Config, services: &Services) -> Instant {
    let far = Instant::now() + Duration::from_secs(3600);
    let applied = services.lock_applied();
    cfg.pools
        .iter()
        .filter_map(|p| {
            let d = p.discovery.as_ref().filter(|d| !d.names.is_empty())?;
            let at = applied.found.pools.get(&p.name)?.resolved_at?;
            Some(at + d.dns_refresh)
        })
        .min()
        .unwrap_or(far)
}

/// Looks up the names that are due and reads `changed_file`'s pools, outside the lock; then
/// applies the answers and rebuilds the snapshot if a pool's set changed. Blocking.
fn refresh_due(state: &SharedState, services: &Services, changed_file: Option<PathBuf>) {
    let Some(cfg) = services.applied_config() else {
        return;
    };
    let now = Instant::now();
    let mut work = Vec::new();
    {
        let applied = services.lock_applied();
        for pc in &cfg.pools {
            let Some(d) = &pc.discovery else { continue };
            let at = applied
                .found
                .pools
                .get(&pc.name)
                .and_then(|f| f.resolved_at);
            let names_due = !d.names.is_empty() && at.is_none_or(|t| now >= t + d.dns_refresh);
            let file_due = changed_file.is_some() && d.file == changed_file;
            if names_due || file_due {
                work.push((pc, Arc::clone(d), names_due, file_due));
            }
        }
    }
    if work.is_empty() {
        return;
    }
    let answers: Vec<_> = work
        .iter()
        .map(|(pc, d, names_due, file_due)| {
            let names = names_due.then(|| lookup_all(&pc.name, d));
            let file = if *file_due {
                d.file.as_deref().and_then(|f| read_file(&pc.name, f))
            } else {
                None
            };
            (*pc, d, names, file)
        })
        .collect();
    let result = crate::reload::rebuild_with(state, services, "discovery", |applied| {
        // A reload may have replaced the config meanwhile (and looked everything up again).
        if !applied
            .config
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &cfg))
        {
            return false;
        }
        let mut changed = false;
        for (pc, d, names, file) in answers {
            let before = applied.found.backends_of(pc);
            let entry = applied.found.pools.entry(pc.name.clone()).or_default();
            if let Some(names) = names {
                entry.apply_names(d, names);
            }
            if let Some(file) = file {
                entry.file = file;
            }
            let after = applied.found.backends_of(pc);
            if before != after {
                log_change(&pc.name, &before, &after);
                changed = true;
            }
        }
        changed
    });
    if let Err(e) = result {
        tracing::error!(error = %e, "discovery: cannot rebuild the snapshot");
    }
}

fn log_change(pool: &str, before: &[BackendConfig], after: &[BackendConfig]) {
    let old: HashSet<SocketAddr> = before.iter().map(|b| b.address).collect();
    let new: HashSet<SocketAddr> = after.iter().map(|b| b.address).collect();
    let added: Vec<String> = new.difference(&old).map(|a| a.to_string()).collect();
    let removed: Vec<String> = old.difference(&new).map(|a| a.to_string()).collect();
    tracing::info!(
        pool,
        added = %added.join(","),
        removed = %removed.join(","),
        backends = after.len(),
        "discovery: backends changed"
    );
}
