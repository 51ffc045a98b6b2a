//! Upstream connections: one pool per backend ([`BackendConns`], in `pool`) over TCP or TLS
//! (`connect`), speaking sandgate's own HTTP/1.1 client ([`h1`]) or hyper's HTTP/2 one, kept
//! outside the config snapshot so that warm connections survive reloads. A request picks its backend's pool by index: no pool key is
//! hashed and no lock is taken on the request path (idle connections sit in a lock-free
//! queue). The registry ([`Upstreams`]) is consulted only when a snapshot is built.

pub mod connect;
pub mod h1;
mod pool;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full, LengthLimitError, Limited};

use crate::config::Transport;
use crate::error::ProxyError;
use crate::reqbody::{ClientBody, ClientBodyError};

pub use pool::{BackendConns, Pooled};

/// Request body sent upstream: the client's body streamed with the size limit and the gap
/// timer enforced, or a buffered copy that can be replayed on retry.
pub type UpstreamBody = Either<Limited<ClientBody>, Full<Bytes>>;

/// How a backend's pool connects and keeps connections.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// TCP connect timeout (TLS handshake included).
    pub connect: Duration,
    /// How long an idle connection is kept.
    pub idle: Duration,
    /// Idle connections kept at most.
    pub max_idle: usize,
    /// TLS and protocol.
    pub transport: Arc<Transport>,
}

/// A backend's identity among the pools: pool name and address.
type BackendKey = (Arc<str>, SocketAddr);

/// The pools of every backend, by pool name and address; consulted when a snapshot is built.
#[derive(Default)]
pub struct Upstreams {
    // std Mutex: held for map operations during snapshot builds and upkeep only, never per
    // request and never across an await.
    pools: Mutex<HashMap<BackendKey, Arc<BackendConns>>>,
}

impl Upstreams {
    /// The pool of backend `addr` of pool `pool`: the same one as before a reload when its
    /// settings did not change (its warm connections carry over), else a fresh one.
    pub fn conns_for(&self, pool: &str, addr: SocketAddr, s: PoolSettings) -> Arc<BackendConns> {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let key = (Arc::<str>::from(pool), addr);
        match map.get(&key) {
            Some(c) if *c.settings() == s => Arc::clone(c),
            _ => {
                let c = Arc::new(BackendConns::new(addr, s));
                map.insert(key, Arc::clone(&c));
                c
            }
        }
    }

    /// Drops the pools of backends no longer configured (their idle connections close).
    pub fn retain(&self, live: &[(&str, SocketAddr)]) {
        let mut map = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(pool, addr), _| live.iter().any(|(p, a)| **p == **pool && a == addr));
    }

    /// Closes idle connections older than their pool's idle timeout (for the upkeep task).
    pub fn reap(&self) {
        let pools: Vec<Arc<BackendConns>> = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for p in pools {
            p.reap();
        }
    }
}

/// How a failed HTTP/2 exchange with a backend is answered.
pub fn classify(e: &hyper::Error, backend: &str) -> ProxyError {
    if let Some(c) = e.source().and_then(client_side) {
        return c;
    }
    let mut msg = e.to_string();
    if let Some(s) = e.source() {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
    }
    ProxyError::Upstream(backend.to_owned(), msg)
}

/// When `e` (or what caused it) is the client's body going over the limit, stalling or
/// breaking while it streamed: the request, not the backend, is at fault (the pipeline fills
/// in the limit).
pub fn client_side(e: &(dyn StdError + 'static)) -> Option<ProxyError> {
    std::iter::successors(Some(e), |s| (*s).source()).find_map(|s| {
        if s.is::<LengthLimitError>() {
            return Some(ProxyError::BodyTooLarge(0));
        }
        s.downcast_ref::<ClientBodyError>().map(client_body_error)
    })
}

/// How a failed client body is answered: the client was too slow, or went away.
pub fn client_body_error(e: &ClientBodyError) -> ProxyError {
    match e {
        ClientBodyError::Stalled => ProxyError::ClientTimeout("the request body stalled"),
        ClientBodyError::Aborted(_) => ProxyError::ClientAbort,
    }
}
