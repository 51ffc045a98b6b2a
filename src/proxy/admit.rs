//! Stage: select + admit. The pool's strategy picks a usable backend (healthy, breaker closed,
//! below its cap); its slot and breaker permit are taken. When every eligible backend is full,
//! the request waits in the pool's FIFO queue. 503 + Retry-After when nothing can serve.

use std::time::Instant;

use http::{HeaderMap, HeaderValue};

use crate::admission::{Rejected, Slot};
use crate::backend::BreakerPermit;
use crate::balance::PickCtx;
use crate::error::ProxyError;
use crate::proxy::exchange::Client;
use crate::state::PoolEntry;

/// A backend slot taken for one try.
pub struct Admitted {
    /// Index of the backend in the pool.
    pub index: usize,
    /// Its in-flight slot, held until the response body ends.
    pub slot: Slot,
    /// Its breaker permit, recorded when the try ends.
    pub permit: Option<BreakerPermit>,
    /// A sticky cookie for the response.
    pub set_cookie: Option<HeaderValue>,
    /// How the strategy decided.
    pub decision: Option<&'static str>,
}

/// Picks a backend and takes its slot and breaker permit, waiting in the pool's queue when
/// every eligible backend is at its cap. `tried` are preferred against (retries).
pub async fn admit(
    entry: &PoolEntry,
    client: Client,
    headers: &HeaderMap,
    query: Option<&str>,
    tried: &[usize],
    start: Instant,
) -> Result<Admitted, ProxyError> {
    let pool = &entry.pool;
    let ctx = PickCtx {
        client_ip: client.ip,
        peer: client.peer,
        headers,
        query,
        tls: client.tls,
        now: start,
    };
    let mut skip: Vec<usize> = tried.to_vec();
    // Each pass either admits or skips one more backend, so this ends.
    for _ in 0..=pool.backends.len() {
        let pick = pool.select(&ctx, &skip).or_else(|| {
            // Every backend was tried: a retry may go back to one (it prefers untried ones).
            (!tried.is_empty() && skip.len() >= pool.backends.len())
                .then(|| pool.select(&ctx, &[]))
                .flatten()
        });
        let Some(pick) = pick else { break };
        let b = pick.backend;
        let Some(slot) = Slot::try_take(&b.state, b.max_connections, &entry.queue) else {
            // Filled up since selection looked.
            skip.push(pick.index);
            continue;
        };
        match b.state.breaker_permit(Instant::now()) {
            Ok(permit) => {
                return Ok(Admitted {
                    index: pick.index,
                    slot,
                    permit,
                    set_cookie: pick.set_cookie,
                    decision: pick.decision,
                })
            }
            Err(_open) => {
                drop(slot);
                skip.push(pick.index);
            }
        }
    }
    if pool.all_busy(Instant::now(), &[]) {
        let q = entry.queue_cfg;
        return match entry.queue.wait(q.max, q.timeout).await {
            Ok(slot) => {
                let Some(index) = pool.index_of(slot.backend()) else {
                    return Err(ProxyError::NoBackend(pool.name.to_string()));
                };
                let permit = slot
                    .backend()
                    .breaker_permit(Instant::now())
                    .map_err(|_open| ProxyError::NoBackend(pool.name.to_string()))?;
                Ok(Admitted {
                    index,
                    slot,
                    permit,
                    set_cookie: None,
                    decision: Some("queued"),
                })
            }
            Err(Rejected::Full) => Err(ProxyError::QueueFull(pool.name.to_string())),
            Err(Rejected::Timeout) => Err(ProxyError::QueueTimeout(pool.name.to_string())),
        };
    }
    Err(ProxyError::NoBackend(pool.name.to_string()))
}
