//! Stage: select + admit. The pool's strategy picks a usable backend (healthy, breaker closed,
//! below its cap); its slot and breaker permit are taken. When every eligible backend is full,
//! the request waits in the pool's FIFO queue. 503 + Retry-After when nothing can serve.

use std::time::Instant;

use http::{HeaderMap, HeaderValue};

use crate::admission::{Rejected, Seat, Slot, Waited};
use crate::backend::BreakerPermit;
use crate::balance::PickCtx;
use crate::config::Priority;
use crate::error::ProxyError;
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
/// every eligible backend is at its cap. `tried` are preferred against (retries). A waiting
/// request takes only a backend its strategy accepts for it, and a slot whose breaker
/// turned it away sends it back to waiting, not to an error.
pub async fn admit(
    entry: &PoolEntry,
    ctx: &PickCtx<'_>,
    tried: &[usize],
    priority: Priority,
) -> Result<Admitted, ProxyError> {
    let pool = &entry.pool;
    let seat = entry.seat(ctx);
    // A tenant holding its share takes no free slot while others wait.
    let held = seat.as_ref().is_some_and(Seat::full) && entry.queue.has_waiters();
    if held {
        entry.queue.tenants.limited();
    } else {
        if let Some(mut a) = pick(entry, ctx, tried) {
            a.slot.charge(seat.as_ref());
            return Ok(a);
        }
        if !pool.all_busy(Instant::now(), &[]) {
            return Err(ProxyError::NoBackend(pool.name.to_string()));
        }
    }
    // Boxed: the wait's states would otherwise size every request's future.
    Box::pin(queued(entry, ctx, tried, priority, (seat, held))).await
}

/// The request header that asks for a queue class.
pub static SANDGATE_PRIORITY: http::HeaderName = http::HeaderName::from_static("sandgate-priority");

/// A request's queue class: its route's, or lower when it asks with `Sandgate-Priority`;
/// higher only when its peer is a trusted proxy. The header is taken off the request.
pub fn class(
    route: Priority,
    headers: &mut HeaderMap,
    peer: std::net::IpAddr,
    trusted: Option<&[ipnet::IpNet]>,
) -> Priority {
    if !crate::headers::holds(headers, &SANDGATE_PRIORITY) {
        return route;
    }
    let Some(asked) = headers
        .remove(&SANDGATE_PRIORITY)
        .and_then(|v| Priority::parse(v.as_bytes().trim_ascii()))
    else {
        return route;
    };
    let trusted = trusted.is_some_and(|t| t.iter().any(|n| n.contains(&peer)));
    if asked >= route || trusted {
        asked
    } else {
        route
    }
}

/// Waits in the pool's queue for a slot of a backend the strategy accepts.
async fn queued(
    entry: &PoolEntry,
    ctx: &PickCtx<'_>,
    tried: &[usize],
    priority: Priority,
    (seat, held): (Option<Seat>, bool),
) -> Result<Admitted, ProxyError> {
    let pool = &entry.pool;
    let q = entry.queue_cfg;
    let over = seat.as_ref().is_some_and(Seat::full);
    let accepts = pool.queue_filter(ctx);
    let deadline = Instant::now() + q.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let waited = entry
            .queue
            .wait(
                q.max,
                left,
                accepts.clone(),
                (priority, q.max_wait_low),
                (seat.clone(), held),
                // Held back by its share, it waits for a hand-off rather than a free slot.
                || (!held).then(|| pick(entry, ctx, tried)).flatten(),
            )
            .await;
        let slot = match waited {
            Ok(Waited::Found(mut a)) => {
                a.slot.charge(seat.as_ref());
                return Ok(a);
            }
            Ok(Waited::Handed(slot)) => slot,
            Err(Rejected::Full) if over => {
                if !held {
                    entry.queue.tenants.limited();
                }
                return Err(ProxyError::TenantLimit(pool.name.to_string()));
            }
            Err(Rejected::Full) => return Err(ProxyError::QueueFull(pool.name.to_string())),
            Err(Rejected::Timeout) => return Err(ProxyError::QueueTimeout(pool.name.to_string())),
        };
        let Some(index) = pool.index_of(slot.backend()) else {
            // A backend removed by a reload: its slot is released, and the wait goes on.
            continue;
        };
        match slot.backend().breaker_permit() {
            Ok(permit) => {
                return Ok(Admitted {
                    index,
                    slot,
                    permit,
                    set_cookie: None,
                    decision: Some("queued"),
                })
            }
            // The breaker opened since: the slot goes on to the next waiter, this one waits.
            Err(_open) => drop(slot),
        }
    }
}

/// One pass of the strategy: a backend with a free slot whose breaker admits the request.
fn pick(entry: &PoolEntry, ctx: &PickCtx<'_>, tried: &[usize]) -> Option<Admitted> {
    let pool = &entry.pool;
    let mut skip: Vec<usize> = tried.to_vec();
    // Each pass either admits or skips one more backend, so this ends.
    for _ in 0..=pool.backends.len() {
        let pick = pool.select(ctx, &skip).or_else(|| {
            // Every backend was tried: a retry may go back to one (it prefers untried ones).
            (!tried.is_empty() && skip.len() >= pool.backends.len())
                .then(|| pool.select(ctx, &[]))
                .flatten()
        })?;
        let b = pick.backend;
        let Some(slot) = Slot::try_take(&b.state, b.max_connections, &entry.queue) else {
            // Filled up since selection looked.
            skip.push(pick.index);
            continue;
        };
        match b.state.breaker_permit() {
            Ok(permit) => {
                return Some(Admitted {
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
    None
}
