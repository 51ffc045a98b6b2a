//! What the pipeline knows about a connection ([`ConnCtx`]) and what it records about one
//! request as it goes ([`Exchange`]): the decoration step and the access log read the record,
//! the stages write it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;

use crate::cache::status::CacheStatus;
use crate::limit::{Decision, Shedder};
use crate::services::Services;
use crate::state::SharedState;

/// What the pipeline knows about the client connection.
pub struct ConnInfo {
    /// Listener name.
    pub listener: Arc<str>,
    /// Client address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

impl ConnInfo {
    /// The client of a request with these headers, as a fetch needs it: behind a trusted
    /// proxy, the address it forwarded for.
    pub fn client(&self, h: &http::HeaderMap, trusted: Option<&[ipnet::IpNet]>) -> Client {
        let peer = self.peer.ip();
        Client {
            ip: crate::headers::client_ip(peer, h, trusted),
            peer,
            tls: self.tls,
        }
    }
}

/// Per-connection context handed to every request on it.
pub struct ConnCtx {
    /// The shared snapshot.
    pub state: SharedState,
    /// Global connection and in-flight caps.
    pub shed: Arc<Shedder>,
    /// Process-wide services (upstream pools, background tasks).
    pub services: Arc<Services>,
    /// The connection.
    pub conn: ConnInfo,
    /// The connection's activity (None outside a client connection, as for cache warming):
    /// a tunnel counts it busy.
    pub activity: Option<Arc<crate::conn::ConnState>>,
}

/// The client side of a request, owned, so that a fetch can outlive the request.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The client's address: the peer, or whom a trusted proxy forwarded for (rate limits,
    /// `client_ip` affinity and the access log use it).
    pub ip: IpAddr,
    /// The address that connected.
    pub peer: IpAddr,
    /// Whether the client connection is TLS (sticky cookie `Secure`, `X-Forwarded-Proto`).
    pub tls: bool,
}

/// Which backends a fetch went to, for the access log.
#[derive(Debug, Default)]
pub struct Tried {
    /// Index in the pool of the last backend tried.
    pub backend: Option<usize>,
    /// Tries made.
    pub attempts: u32,
    /// How a geo or affinity strategy decided, e.g. `geo:failover`.
    pub decision: Option<&'static str>,
    /// With `Sandgate-Explain`: what each try chose and why, and what it skipped.
    pub explain: Option<Box<Vec<String>>>,
}

/// The record of one request, written by the stages and read by decoration and the log.
pub struct Exchange {
    /// When the request arrived.
    pub start: Instant,
    /// The client's request id, or a fresh one.
    pub request_id: HeaderValue,
    /// The client's address, once known (see [`Client::ip`]).
    pub client: Option<IpAddr>,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// Index of the route's pool.
    pub pool: Option<usize>,
    /// Backends tried.
    pub tried: Tried,
    /// Error code when sandgate answered instead of a backend.
    pub error: Option<&'static str>,
    /// The error in full (backend, pool, cause), for the log only.
    pub error_detail: Option<String>,
    /// The route's rate-limit verdict (`RateLimit-*` headers).
    pub rate: Option<Decision>,
    /// A sticky cookie to set on the response.
    pub set_cookie: Option<HeaderValue>,
    /// Whether the response came from a backend (or the cache), so it carries `Via`.
    pub via: bool,
    /// How the cache handled it, on caching routes.
    pub cache: Option<CacheStatus>,
    /// The request became a tunnel, which writes the access log line when it closes.
    pub tunnel: bool,
    /// The W3C trace the request belongs to, if any.
    pub trace: Option<crate::trace::TraceId>,
    /// The `Sandgate-Explain` answer, when one was asked for.
    pub explain: Option<HeaderValue>,
}

impl Exchange {
    /// A fresh record for a request that arrived at `start`.
    pub fn new(start: Instant, request_id: HeaderValue) -> Self {
        Self {
            start,
            request_id,
            client: None,
            route: None,
            pool: None,
            tried: Tried::default(),
            error: None,
            error_detail: None,
            rate: None,
            set_cookie: None,
            via: false,
            cache: None,
            tunnel: false,
            trace: None,
            explain: None,
        }
    }
}
