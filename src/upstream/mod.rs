//! Upstream connections: one pool per backend ([`BackendConns`], in `pool`), built on hyper's
//! plain `client::conn::http1` and `http2` over TCP or TLS (`connect`), kept outside the config snapshot so that warm
//! connections survive reloads. A request picks its backend's pool by index: no pool key is
//! hashed and no lock is taken on the request path (idle connections sit in a lock-free
//! queue). The registry ([`Upstreams`]) is consulted only when a snapshot is built.

pub mod connect;
mod park;
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

/// How a failed exchange with a backend is answered.
pub fn classify(e: &hyper::Error, backend: &str) -> ProxyError {
    // The client's body went over the limit, stalled or broke while streaming: the request,
    // not the backend, is at fault (the pipeline fills in the limit).
    let chain = std::iter::successors(e.source(), |s: &&(dyn StdError + 'static)| (*s).source());
    for s in chain {
        if s.is::<LengthLimitError>() {
            return ProxyError::BodyTooLarge(0);
        }
        if let Some(c) = s.downcast_ref::<ClientBodyError>() {
            return client_body_error(c);
        }
    }
    let mut msg = e.to_string();
    if let Some(s) = e.source() {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
    }
    ProxyError::Upstream(backend.to_owned(), msg)
}

/// How a failed client body is answered: the client was too slow, or went away.
pub fn client_body_error(e: &ClientBodyError) -> ProxyError {
    match e {
        ClientBodyError::Stalled => ProxyError::ClientTimeout("the request body stalled"),
        ClientBodyError::Aborted(_) => ProxyError::ClientAbort,
    }
}
