//! Session affinity for stateful sandbox sessions.
//!
//! - **Key hashing**: a key (header, application cookie, query parameter or client IP) is
//!   mapped by rendezvous (highest random weight) hashing over the backends' addresses with a
//!   fixed seed: the same key reaches the same backend across reloads, restarts and separate
//!   sandgate instances, with no shared state. Removing a backend moves only its keys; adding
//!   one moves about 1/n. Weights, when they differ, scale scores as in weighted rendezvous.
//!   Keys are first reduced to one of 65536 fixed slots (the slot is what is hashed), so
//!   mid-sized pools can cache each slot's first choice.
//! - **Fallback order**: when the key's backend is unusable, the next backend in the key's
//!   own hash order takes it (stable, so a session lands in the same place every time), or
//!   with `on_unusable: strict` the request gets 503.
//! - **Bounded load**: with `bounded_load: c`, a backend takes at most
//!   ceil(c × (pool in-flight + 1) / n) requests; keys whose backend is full spill along
//!   their hash order.
//! - **Sticky cookie**: sandgate's own cookie holds a sealed token (an opaque backend id,
//!   an expiry, and an HMAC-SHA256 tag under the configured secret). It never shows the
//!   address and cannot be forged; instances sharing the secret accept each other's cookies.
//!   A forged, expired or malformed cookie counts as absent.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderValue, COOKIE};
use metrics::Counter;
use ring::hmac;

use super::{Basic, Env, PickCtx};
use crate::backend::Backend;
use crate::config::{AffinityConfig, AffinityKey, OnUnusable};
use crate::metrics::AFFINITY_TOTAL;

/// Fixed seed of the key and address hashes: changing it would move every session.
const SEED: u64 = 0x7361_6e64_6761_7465; // "sandgate"
/// Token layout: backend id (8) + expiry in Unix seconds (8) + HMAC-SHA256 tag (32).
const PAYLOAD: usize = 16;
const TOKEN: usize = PAYLOAD + 32;

/// murmur3's 64-bit finalizer: a cheap bijective mix with full avalanche.
#[inline]
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// Hash of a key with the fixed seed.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, SEED)
}

/// Hash of a backend address with the fixed seed.
pub fn addr_hash(addr: &std::net::SocketAddr) -> u64 {
    key_hash(addr.to_string().as_bytes())
}

/// Rendezvous ranking of `addr_hashes` for a key hash: indices, best first.
pub fn rendezvous_order(key: u64, addr_hashes: &[u64], weights: Option<&[f64]>) -> Vec<usize> {
    let mut v: Vec<(f64, u64, usize)> = addr_hashes
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let x = fmix64(key ^ a);
            (weights.map_or(0.0, |w| weighted_score(x, w[i])), x, i)
        })
        .collect();
    v.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
    v.into_iter().map(|(_, _, i)| i).collect()
}

/// The best-ranked index for `key` (the first of [`rendezvous_order`]), without sorting.
fn top_of(key: u64, addr_hashes: &[u64], weights: Option<&[f64]>) -> usize {
    let score = |i: usize| {
        let x = fmix64(key ^ addr_hashes[i]);
        (weights.map_or(0.0, |w| weighted_score(x, w[i])), x)
    };
    let mut top = 0;
    let mut best = score(0);
    for i in 1..addr_hashes.len() {
        let s = score(i);
        if s.0 > best.0 || (s.0 == best.0 && s.1 > best.1) {
            best = s;
            top = i;
        }
    }
    top
}

/// Weighted rendezvous score: w / -ln(u), u uniform in (0,1) from the hash.
#[inline]
fn weighted_score(x: u64, w: f64) -> f64 {
    let u = ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    w / -u.ln()
}

/// Keys are reduced to one of this many slots, and the slot number is the rendezvous key.
/// The count never depends on the pool, so adding or removing backends moves only the slots
/// whose winner changes (and 65536 slots keep shares within a few percent at 1000 backends).
const SLOTS: u64 = 1 << 16;
/// Pools from this size up to [`TABLE_MAX`] cache each slot's first choice, so the common
/// case is one table read instead of n scores.
const TABLE_MIN: usize = 9;
/// Largest pool that gets a slot table (its build costs SLOTS × backends scores).
const TABLE_MAX: usize = 128;

/// Affinity state of one pool.
pub struct Affinity {
    /// Cached first choice per slot, for mid-sized pools.
    table: Option<Box<[u32]>>,
    cfg: AffinityConfig,
    fallback: Basic,
    addr_hashes: Box<[u64]>,
    /// Weights when they differ; None means all equal (plain hash comparison).
    weights: Option<Box<[f64]>>,
    /// Opaque cookie ids per backend (HMAC of the address), with the sealing key.
    sealing: Option<(hmac::Key, Box<[u64]>)>,
    counters: [Counter; 4],
}

/// What the sticky cookie says.
enum Sticky {
    /// No valid cookie (none, forged, expired or malformed).
    Absent,
    /// Pinned to this backend.
    Pinned(usize),
    /// Valid, but its backend is no longer in the pool.
    Gone,
}

#[derive(Clone, Copy)]
enum Outcome {
    Hit = 0,
    New = 1,
    Repinned = 2,
    Spilled = 3,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "affinity:hit",
            Outcome::New => "affinity:new",
            Outcome::Repinned => "affinity:repinned",
            Outcome::Spilled => "affinity:spilled",
        }
    }
}

impl Affinity {
    /// Affinity over `backends`.
    pub fn new(pool: &str, cfg: &AffinityConfig, backends: &[Backend]) -> Self {
        let members: Vec<u32> = (0..backends.len() as u32).collect();
        let addr_hashes = backends.iter().map(|b| addr_hash(&b.addr())).collect();
        let w0 = backends.first().map_or(1, |b| b.weight);
        let weights = backends
            .iter()
            .any(|b| b.weight != w0)
            .then(|| backends.iter().map(|b| f64::from(b.weight)).collect());
        let sealing = cfg.cookie.as_ref().map(|c| {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &c.secret);
            let ids = backends
                .iter()
                .map(|b| {
                    let tag = hmac::sign(
                        &key,
                        format!("sandgate-backend-id\0{}", b.addr()).as_bytes(),
                    );
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&tag.as_ref()[..8]);
                    u64::from_be_bytes(id)
                })
                .collect();
            (key, ids)
        });
        let counter = |r: &'static str| metrics::counter!(AFFINITY_TOTAL, "pool" => pool.to_owned(), "result" => r);
        let addr_hashes: Box<[u64]> = addr_hashes;
        let table = (TABLE_MIN..=TABLE_MAX).contains(&backends.len()).then(|| {
            (0..SLOTS)
                .map(|slot| top_of(slot, &addr_hashes, weights.as_deref()) as u32)
                .collect()
        });
        Self {
            table,
            cfg: cfg.clone(),
            fallback: Basic::new(cfg.fallback, &members, backends),
            addr_hashes,
            weights,
            sealing,
            counters: [
                counter("hit"),
                counter("new"),
                counter("repinned"),
                counter("spilled"),
            ],
        }
    }

    /// The decision counters, to keep their series alive.
    pub fn counters(&self) -> &[Counter] {
        &self.counters
    }

    /// Picks a backend: `(index, cookie to set, decision)`, or None for 503.
    pub fn select(
        &self,
        members: &[u32],
        env: &Env<'_>,
        ctx: &PickCtx<'_>,
    ) -> Option<(usize, Option<HeaderValue>, &'static str)> {
        let (i, outcome, set) = self.decide(members, env, ctx)?;
        self.counters[outcome as usize].increment(1);
        let cookie = if set { self.seal(i, ctx.tls) } else { None };
        Some((i, cookie, outcome.as_str()))
    }

    fn decide(
        &self,
        members: &[u32],
        env: &Env<'_>,
        ctx: &PickCtx<'_>,
    ) -> Option<(usize, Outcome, bool)> {
        let key = self.key_hash(ctx);
        if self.sealing.is_some() {
            return match self.read_cookie(ctx) {
                Sticky::Pinned(i) if env.usable(i) => Some((i, Outcome::Hit, false)),
                // A retry away from a backend that can still serve: this try goes elsewhere,
                // the session stays pinned (no new cookie).
                Sticky::Pinned(i) if env.exclude.contains(&i) && env.serves(i) => {
                    let i = match key {
                        Some(h) => self.by_hash(h, env, false)?.0,
                        None => self.fallback.select(members, env)?,
                    };
                    Some((i, Outcome::Spilled, false))
                }
                Sticky::Pinned(_) | Sticky::Gone if self.cfg.on_unusable == OnUnusable::Strict => {
                    None
                }
                Sticky::Pinned(_) | Sticky::Gone => {
                    let i = match key {
                        Some(h) => self.by_hash(h, env, false)?.0,
                        None => self.fallback.select(members, env)?,
                    };
                    Some((i, Outcome::Repinned, true))
                }
                Sticky::Absent => {
                    let (i, outcome) = match key {
                        Some(h) => self.by_hash(h, env, true)?,
                        None => (self.fallback.select(members, env)?, Outcome::New),
                    };
                    Some((i, outcome, true))
                }
            };
        }
        match key {
            Some(h) => self.by_hash(h, env, true).map(|(i, o)| (i, o, false)),
            None => Some((self.fallback.select(members, env)?, Outcome::New, false)),
        }
    }

    /// The backend a `strict` request must have (its pinned cookie's, else its key's first),
    /// for waiting in the queue; None when any backend will do.
    pub fn strict_backend(&self, ctx: &PickCtx<'_>) -> Option<usize> {
        if self.cfg.on_unusable != OnUnusable::Strict {
            return None;
        }
        if self.sealing.is_some() {
            if let Sticky::Pinned(i) = self.read_cookie(ctx) {
                return Some(i);
            }
        }
        let key = self.key_hash(ctx)? % SLOTS;
        Some(match &self.table {
            Some(t) => t[key as usize] as usize,
            None => top_of(key, &self.addr_hashes, self.weights.as_deref()),
        })
    }

    /// The request's affinity key, hashed.
    fn key_hash(&self, ctx: &PickCtx<'_>) -> Option<u64> {
        match self.cfg.key.as_ref()? {
            AffinityKey::Header(h) => ctx
                .headers
                .get(h)
                .filter(|v| !v.is_empty())
                .map(|v| key_hash(v.as_bytes())),
            AffinityKey::Cookie(name) => cookie_value(ctx, name).map(|v| key_hash(v.as_bytes())),
            AffinityKey::Query(name) => ctx.query.and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, v)| *k == name && !v.is_empty())
                    .map(|(_, v)| key_hash(v.as_bytes()))
            }),
            AffinityKey::ClientIp => Some(match ctx.client_ip {
                std::net::IpAddr::V4(a) => key_hash(&a.octets()),
                std::net::IpAddr::V6(a) => key_hash(&a.octets()),
            }),
        }
    }

    /// The key's backend along its hash order. `honor_strict`: whether `strict` applies
    /// (not when re-pinning a stale cookie, which is already a move).
    fn by_hash(&self, key: u64, env: &Env<'_>, honor_strict: bool) -> Option<(usize, Outcome)> {
        let n = self.addr_hashes.len();
        if n == 0 {
            return None;
        }
        let bound = self.cfg.bounded_load.map(|c| {
            let total: u64 = env.backends.iter().map(|b| b.state.inflight()).sum();
            ((c * (total + 1) as f64) / n as f64).ceil() as u64
        });
        let fits = |i: usize| bound.is_none_or(|b| env.backends[i].state.inflight() < b);
        // Fast path: the top-scoring backend, from the table or one pass without allocating.
        let key = key % SLOTS;
        let top = match &self.table {
            Some(t) => t[key as usize] as usize,
            None => top_of(key, &self.addr_hashes, self.weights.as_deref()),
        };
        if env.usable(top) && fits(top) {
            return Some((top, Outcome::Hit));
        }
        if !env.usable(top)
            && honor_strict
            && self.cfg.on_unusable == OnUnusable::Strict
            && !env.exclude.contains(&top)
        {
            return None;
        }
        let order = rendezvous_order(key, &self.addr_hashes, self.weights.as_deref());
        let mut spilled = false;
        for &i in &order {
            if !env.usable(i) {
                continue;
            }
            if !fits(i) {
                spilled = true;
                continue;
            }
            return Some((
                i,
                if spilled {
                    Outcome::Spilled
                } else {
                    Outcome::Repinned
                },
            ));
        }
        // Everything usable is at the bound: keep the key's order anyway.
        order
            .into_iter()
            .find(|&i| env.usable(i))
            .map(|i| (i, Outcome::Spilled))
    }

    fn read_cookie(&self, ctx: &PickCtx<'_>) -> Sticky {
        self.open_token(ctx).map_or(Sticky::Absent, |id| {
            self.sealing
                .as_ref()
                .and_then(|(_, ids)| ids.iter().position(|x| *x == id))
                .map_or(Sticky::Gone, Sticky::Pinned)
        })
    }

    /// The backend id in a valid, unexpired sticky cookie.
    fn open_token(&self, ctx: &PickCtx<'_>) -> Option<u64> {
        let (key, _) = self.sealing.as_ref()?;
        let name = &self.cfg.cookie.as_ref()?.name;
        let raw = cookie_value(ctx, name)?;
        // Decoded on the stack: a pinned request allocates nothing here. Anything that does
        // not decode to exactly one token is not one.
        let mut buf = [0u8; TOKEN + 3];
        let n = URL_SAFE_NO_PAD
            .decode_slice(raw.as_bytes(), &mut buf)
            .ok()?;
        if n != TOKEN {
            return None;
        }
        let (payload, tag) = buf[..TOKEN].split_at(PAYLOAD);
        hmac::verify(key, payload, tag).ok()?;
        let id = u64::from_be_bytes(payload[..8].try_into().ok()?);
        let expiry = u64::from_be_bytes(payload[8..16].try_into().ok()?);
        (expiry > unix_now()).then_some(id)
    }

    /// `Set-Cookie` pinning the client to backend `i`.
    fn seal(&self, i: usize, tls: bool) -> Option<HeaderValue> {
        let (key, ids) = self.sealing.as_ref()?;
        let c = self.cfg.cookie.as_ref()?;
        let mut token = [0u8; TOKEN];
        token[..8].copy_from_slice(&ids.get(i)?.to_be_bytes());
        token[8..16].copy_from_slice(&(unix_now() + c.max_age.as_secs()).to_be_bytes());
        let tag = hmac::sign(key, &token[..PAYLOAD]);
        token[PAYLOAD..].copy_from_slice(tag.as_ref());
        let v = format!(
            "{}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
            c.name,
            URL_SAFE_NO_PAD.encode(token),
            c.max_age.as_secs(),
            if tls { "; Secure" } else { "" }
        );
        HeaderValue::from_str(&v).ok()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Value of the request cookie `name`, if any.
fn cookie_value<'a>(ctx: &PickCtx<'a>, name: &str) -> Option<&'a str> {
    ctx.headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| cookie::Cookie::split_parse(s).flatten())
        .find(|c| c.name() == name)
        .and_then(|c| c.value_raw())
}

impl Affinity {
    /// For `Sandgate-Explain`: what the sticky cookie said, and the key and its hash.
    pub(super) fn explain(&self, ctx: &PickCtx<'_>, chosen: usize) -> (&'static str, String) {
        let fallback = crate::config::raw::config_name(&self.cfg.fallback);
        let mut parts = Vec::new();
        if let Some(c) = &self.cfg.cookie {
            parts.push(match self.read_cookie(ctx) {
                Sticky::Pinned(i) if i == chosen => format!("cookie {} pins it", c.name),
                Sticky::Pinned(i) => {
                    format!("cookie {} pins backend #{i}, which cannot take it", c.name)
                }
                Sticky::Gone => format!("cookie {} names a backend no longer in the pool", c.name),
                Sticky::Absent => format!("no valid {} cookie", c.name),
            });
        }
        let key = self.cfg.key.as_ref().map(|k| match k {
            AffinityKey::Header(h) => format!("header:{h}"),
            AffinityKey::Cookie(n) => format!("cookie:{n}"),
            AffinityKey::Query(n) => format!("query:{n}"),
            AffinityKey::ClientIp => "client_ip".to_owned(),
        });
        match (key, self.key_hash(ctx)) {
            (Some(k), Some(h)) => parts.push(format!("key {k} hashes to {h:016x}")),
            (Some(k), None) => parts.push(format!("no {k} in the request: fallback {fallback}")),
            (None, _) => parts.push(format!("no key: fallback {fallback}")),
        }
        if let Some(c) = self.cfg.bounded_load {
            parts.push(format!("bounded load {c}"));
        }
        parts.push(format!(
            "on_unusable {}",
            crate::config::raw::config_name(&self.cfg.on_unusable)
        ));
        ("affinity", parts.join("; "))
    }
}
