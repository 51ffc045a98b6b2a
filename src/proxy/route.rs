//! Stage: routing. Host (the `Host` header, else the request target's authority) + path +
//! headers -> the route and its pool.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::Method;

use crate::error::ProxyError;
use crate::state::Snapshot;

/// A request matched to a route.
pub struct Routed {
    /// Index of the route in the config.
    pub index: usize,
    /// Index of its pool in the snapshot.
    pub pool: usize,
    /// The client-facing host (with its port, if any).
    pub host: Option<HeaderValue>,
}

/// Finds the route of a request: 404 when none matches.
pub fn find(snap: &Snapshot, parts: &Parts) -> Result<Routed, ProxyError> {
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let route = snap
        .router
        .find(
            host.as_ref().and_then(|h| h.to_str().ok()),
            parts.uri.path(),
            &parts.headers,
        )
        .ok_or(ProxyError::NoRoute)?;
    Ok(Routed {
        index: route.index,
        pool: route.pool,
        host,
    })
}

/// Refuses request forms sandgate does not forward (CONNECT).
pub fn supported(parts: &Parts) -> Result<(), ProxyError> {
    if parts.method == Method::CONNECT {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    Ok(())
}
