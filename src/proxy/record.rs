//! Stage: record. The outcome of one try goes to the backend's metrics and its breaker. A
//! request whose body broke the size limit is the client's fault and blames nobody.

use std::time::Instant;

use http::Response;
use hyper::body::Incoming;

use crate::backend::{BackendState, BreakerPermit};
use crate::config::Outcome;
use crate::error::ProxyError;

/// What a try came to, for the retry decision.
pub enum Recorded {
    /// The backend answered or failed; this is how it counts.
    Outcome(Outcome),
    /// The client's body went over the limit: not the backend's fault.
    ClientFault,
}

/// Records one try that took `elapsed`, and says how it counts.
pub fn outcome(
    state: &BackendState,
    permit: Option<BreakerPermit>,
    result: &Result<Response<Incoming>, ProxyError>,
    sent: Instant,
) -> Recorded {
    state.upstream_duration.record(sent.elapsed().as_secs_f64());
    let outcome = match result {
        Ok(r) => Outcome::Status(r.status().as_u16()),
        // Dropping the permit unrecorded gives a half-open probe slot back.
        Err(ProxyError::BodyTooLarge(_)) => return Recorded::ClientFault,
        Err(e) => e.outcome(),
    };
    state.upstream_requests.outcome_of(outcome);
    if let Some(p) = permit {
        p.record(outcome, Instant::now());
    }
    Recorded::Outcome(outcome)
}
