//! Stages: load shedding (before anything else) and the route's rate limit (after routing).

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;

use crate::error::ProxyError;
use crate::limit::{InflightSlot, Shedder};
use crate::proxy::exchange::Exchange;
use crate::proxy::route::Routed;
use crate::state::Snapshot;

/// Past `limits.max_inflight`, 503 at once; else the request's in-flight slot.
pub fn shed(shed: &Arc<Shedder>, snap: &Snapshot) -> Result<InflightSlot, ProxyError> {
    shed.request(snap.limits.max_inflight)
        .ok_or(ProxyError::Overloaded("too many requests in flight"))
}

/// Takes a token from the route's bucket, if it has a rate limit; 429 when there is none left.
/// The verdict is kept for the `RateLimit-*` headers either way.
pub fn rate(
    snap: &Snapshot,
    routed: &Routed,
    client: IpAddr,
    headers: &HeaderMap,
    x: &mut Exchange,
) -> Result<(), ProxyError> {
    let Some(rl) = snap.rate_limits.get(routed.index).and_then(Option::as_ref) else {
        return Ok(());
    };
    let d = rl.check(client, headers, x.start);
    x.rate = Some(d);
    if d.allowed {
        Ok(())
    } else {
        Err(ProxyError::RateLimited)
    }
}
