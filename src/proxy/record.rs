//! Stage: record. The outcome of one try goes to the backend's metrics and its breaker. A
//! client at fault (a body over the limit or stalled, a client gone) blames nobody.

use std::time::Instant;

use http::Response;

use crate::backend::{BackendState, BreakerPermit};
use crate::config::Outcome;
use crate::error::ProxyError;

/// What a try came to, for the retry decision.
pub enum Recorded {
    /// The backend answered or failed; this is how it counts.
    Outcome(Outcome),
    /// The client is at fault: no backend is blamed, and the try's error is the answer.
    ClientFault,
}

/// Whether a failed try was the client's doing.
fn client_fault(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::BodyTooLarge(_) | ProxyError::ClientTimeout(_) | ProxyError::ClientAbort
    )
}

/// Records one try sent at `sent`, and says how it counts.
pub fn outcome(
    state: &BackendState,
    permit: Option<BreakerPermit>,
    result: &Result<Response<crate::upstream::Pooled>, ProxyError>,
    sent: Instant,
) -> Recorded {
    let took = sent.elapsed();
    state.upstream_duration.record(took.as_secs_f64());
    state.latency.record(took);
    let outcome = match result {
        Ok(r) => Outcome::Status(r.status().as_u16()),
        // Dropping the permit unrecorded gives a half-open probe slot back.
        Err(e) if client_fault(e) => return Recorded::ClientFault,
        Err(e) => e.outcome(),
    };
    state.upstream_requests.outcome_of(outcome);
    if let Some(p) = permit {
        p.record(outcome, Instant::now());
    }
    Recorded::Outcome(outcome)
}
