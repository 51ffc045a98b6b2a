//! Stages: prepare (the request body and the upstream head) and forward (send to the admitted
//! backend within the per-try timeout; retry a retryable outcome on another backend after a
//! jittered backoff, within the pool's retry budget).
//!
//! A fetch owns everything it sends ([`Outgoing`]) and returns everything the response needs
//! ([`Fetched`]), so that a fetch can run on its own task and outlive the client that started
//! it (a coalesced cache fill, a background revalidation).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

use crate::admission::Slot;
use crate::balance::PickCtx;
use crate::body::ProxyBody;
use crate::config::Priority;
use crate::config::{Outcome, RetryConfig};
use crate::error::ProxyError;
use crate::headers;
use crate::limit::InflightSlot;
use crate::proxy::admit::admit;
use crate::proxy::exchange::{Client, Exchange, Tried};
use crate::proxy::record::{self, Recorded};
use crate::proxy::route::Routed;
use crate::reqbody::{ClientBody, ClientBodyError, Sent};
use crate::state::{PoolEntry, Snapshot};
use crate::upstream::{client_body_error, Pooled, UpstreamBody};

/// GET, HEAD, OPTIONS, PUT, DELETE and TRACE may be sent twice.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The request body for the tries: replayable when small enough and the pool retries.
pub enum ReqBody {
    /// Streamed once, with the size limit and the gap timer enforced; the signal says when it
    /// has been sent whole.
    Stream(Option<Limited<ClientBody>>, Arc<Sent>),
    /// Buffered, sent again on each try.
    Replay(Bytes),
}

impl ReqBody {
    /// No body.
    pub fn empty() -> Self {
        ReqBody::Replay(Bytes::new())
    }

    /// Whether another try can still get a body.
    fn can_resend(&self) -> bool {
        matches!(self, ReqBody::Replay(_) | ReqBody::Stream(Some(_), _))
    }

    /// The body for one try, and the signal that it has been sent (None: it is whole
    /// already).
    fn take(&mut self) -> Option<(UpstreamBody, Option<Arc<Sent>>)> {
        match self {
            ReqBody::Stream(b, sent) => b.take().map(|b| (Either::Left(b), Some(Arc::clone(sent)))),
            ReqBody::Replay(b) => Some((Either::Right(Full::new(b.clone())), None)),
        }
    }
}

/// A request on its way to a pool, reused for every try.
pub struct Outgoing {
    /// The upstream head: HTTP/1.1, hop-by-hop headers removed, and the client's copies of
    /// the fields `hop` sets. Its URI is set per try.
    pub head: Parts,
    /// The fields this hop adds (`X-Forwarded-*`, `Via`, `X-Request-Id`, `traceparent`).
    pub hop: headers::Hop,
    /// Path and query of the request target.
    pub path: PathAndQuery,
    /// The body.
    pub body: ReqBody,
    /// Who sent it.
    pub client: Client,
    /// When it arrived (slow start, rate limits).
    pub start: Instant,
    /// A WebSocket upgrade: a `101` with `Upgrade: websocket` is an answer, not an error.
    pub upgrade: bool,
    /// Its class in the pool's wait queue.
    pub priority: Priority,
}

/// A response head from a backend, with what its body needs.
pub struct Fetched {
    /// The response, hop-by-hop headers removed; its body still streams.
    pub resp: Response<Pooled>,
    /// The backend's in-flight slot, held until the body ends.
    pub slot: Slot,
    /// A sticky cookie the strategy wants set.
    pub set_cookie: Option<HeaderValue>,
}

impl Fetched {
    /// The response to the client: the backend's body streams back holding the backend's
    /// slot and the global in-flight slot until its last byte.
    pub fn into_response(self, inflight: InflightSlot) -> Response<ProxyBody> {
        let (parts, body) = self.resp.into_parts();
        Response::from_parts(
            parts,
            ProxyBody::Upstream {
                body,
                slot: self.slot,
                inflight,
            },
        )
    }
}

/// Stage: checks the body's declared size (413), keeps small bodies for replay when the pool
/// retries, and builds the upstream head.
pub async fn prepare(
    snap: &Snapshot,
    routed: &Routed,
    mut parts: Parts,
    body: Option<Incoming>,
    client: Client,
    x: &Exchange,
) -> Result<Outgoing, ProxyError> {
    let max_body = snap.limits.max_request_body;
    let entry = snap.pools.get(routed.pool).ok_or(ProxyError::NoRoute)?;
    let body = match body {
        // No body (a GET, say): nothing to time or limit.
        None => ReqBody::empty(),
        Some(body) if body.is_end_stream() => ReqBody::empty(),
        Some(body) => {
            let declared = body.size_hint().exact();
            if body.size_hint().lower() > max_body {
                return Err(ProxyError::BodyTooLarge(max_body));
            }
            let sent = Arc::new(Sent::default());
            let body = ClientBody::new(body, snap.limits.body_read_timeout, Arc::clone(&sent));
            let limited = Limited::new(body, usize::try_from(max_body).unwrap_or(usize::MAX));
            let retry = entry.retry.as_ref().filter(|r| r.attempts > 1);
            match (retry, declared) {
                (Some(r), Some(n)) if n <= r.max_replay_body => match limited.collect().await {
                    Ok(b) => ReqBody::Replay(b.to_bytes()),
                    Err(e) => {
                        if e.is::<http_body_util::LengthLimitError>() {
                            return Err(ProxyError::BodyTooLarge(max_body));
                        }
                        return Err(match e.downcast_ref::<ClientBodyError>() {
                            Some(c) => client_body_error(c),
                            None => ProxyError::BadRequest("the request body could not be read"),
                        });
                    }
                },
                _ => ReqBody::Stream(Some(limited), sent),
            }
        }
    };

    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    // The host the request was routed by (on HTTP/2, `:authority`) is the one upstream sees.
    if let Some(h) = &routed.host {
        parts.headers.insert(header::HOST, h.clone());
    }
    let hop = headers::Hop::new(
        &mut parts.headers,
        client.peer,
        client.tls,
        routed.host.as_ref(),
        snap.trusted_proxies.as_deref(),
        &x.request_id,
        x.trace.as_ref(),
    );
    let route_class = snap
        .route_priority
        .get(routed.index)
        .copied()
        .unwrap_or_default();
    let priority = crate::proxy::admit::class(
        route_class,
        &mut parts.headers,
        client.peer,
        snap.trusted_proxies.as_deref(),
    );
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Ok(Outgoing {
        head: parts,
        hop,
        path,
        body,
        client,
        start: x.start,
        upgrade: false,
        priority,
    })
}

/// Stages select/admit -> forward -> record, with retries: sends `out` to the pool `pool` and
/// returns the first response that is not retried.
pub async fn fetch(
    snap: &Snapshot,
    pool: usize,
    mut out: Outgoing,
    tried: &mut Tried,
) -> Result<Fetched, ProxyError> {
    let max_body = snap.limits.max_request_body;
    let entry = snap.pools.get(pool).ok_or(ProxyError::NoRoute)?;
    let retry = entry.retry.as_ref().filter(|r| r.attempts > 1);
    let may_replay = idempotent(&out.head.method);
    // The retry budget's base: only pools that retry count their requests.
    let _active = retry.map(|_| Active::new(entry));
    // The retry in flight, if any: it counts against the budget until its try is over.
    let mut _retrying: Option<Retrying<'_>> = None;
    let mut excluded: Vec<usize> = Vec::new();
    let max_attempts = retry.map_or(1, |r| r.attempts);
    loop {
        tried.attempts += 1;
        let attempt = tried.attempts;

        let ctx = PickCtx {
            client_ip: out.client.ip,
            peer: out.client.peer,
            headers: &out.head.headers,
            query: out.path.query(),
            tls: out.client.tls,
            now: out.start,
        };
        let admitted = admit(entry, &ctx, &excluded, out.priority).await?;
        let backend = &entry.pool.backends[admitted.index];
        tried.backend = Some(admitted.index);
        tried.decision = admitted.decision;
        if let Some(notes) = tried.explain.as_mut() {
            let why = entry
                .pool
                .explain(&ctx, admitted.index, &excluded, admitted.decision);
            notes.push(format!("try {attempt}: {why}"));
        }

        let Some((body, sent)) = out.body.take() else {
            return Err(ProxyError::Upstream(
                backend.authority.to_string(),
                "request body already sent".into(),
            ));
        };
        // Only a try that may be followed by another needs a copy of the head; the last one
        // (usually the only one) takes it, and the loop ends with it.
        let mut head = if attempt < max_attempts {
            clone_head(&out.head)
        } else {
            std::mem::replace(&mut out.head, Request::new(()).into_parts().0)
        };
        // Origin-form on the wire; a request that came without Host gets the backend's.
        head.uri = Uri::from(out.path.clone());
        if !head.headers.contains_key(header::HOST) {
            if let Ok(h) = HeaderValue::from_str(backend.authority.as_str()) {
                head.headers.insert(header::HOST, h);
            }
        }
        let timeout = retry
            .and_then(|r| r.per_try_timeout)
            .unwrap_or(entry.timeouts.response_header);
        let sent_at = Instant::now();
        let result = entry.conns[admitted.index]
            .send(
                Request::from_parts(head, body),
                &out.hop,
                timeout,
                sent.as_deref(),
                backend.state.inflight(),
            )
            .await;

        let outcome = match record::outcome(&backend.state, admitted.permit, &result, sent_at) {
            Recorded::Outcome(o) => {
                if let Some(last) = tried.explain.as_mut().and_then(|n| n.last_mut()) {
                    last.push_str(&format!(" -> {}", o.label()));
                }
                o
            }
            Recorded::ClientFault => {
                return Err(match result {
                    Err(ProxyError::BodyTooLarge(_)) => ProxyError::BodyTooLarge(max_body),
                    Err(e) => e,
                    Ok(_) => ProxyError::ClientAbort,
                })
            }
        };

        if let Some(r) = retry {
            let again = attempt < max_attempts
                && r.on.contains(outcome)
                && out.body.can_resend()
                && (may_replay || outcome == Outcome::ConnectError);
            if again {
                // This request's previous retry (if any) is over: release it before asking.
                _retrying = None;
                if entry.budget.try_retry(r.budget) {
                    _retrying = Some(Retrying(entry));
                    entry.retries.outcome_of(outcome);
                    drop(result);
                    drop(admitted.slot);
                    excluded.push(admitted.index);
                    tokio::time::sleep(backoff(r, attempt)).await;
                    continue;
                }
                entry.budget_exhausted.increment(1);
            }
        }

        let mut resp = result?;
        // Only the upgrade that was asked for may be answered with a switch.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && !(out.upgrade && headers::has_token(resp.headers(), &header::UPGRADE, "websocket"))
        {
            return Err(ProxyError::Upstream(
                backend.authority.to_string(),
                "unexpected 101 Switching Protocols".to_owned(),
            ));
        }
        // The pool's responses come without hop-by-hop fields, but a 101's.
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            headers::strip_hop_by_hop(resp.headers_mut());
        }
        return Ok(Fetched {
            resp,
            slot: admitted.slot,
            set_cookie: admitted.set_cookie,
        });
    }
}

/// Counts a request as active in its pool (the retry budget's base).
struct Active<'a>(&'a PoolEntry);

impl<'a> Active<'a> {
    fn new(e: &'a PoolEntry) -> Self {
        e.budget.active.fetch_add(1, Ordering::Relaxed);
        Self(e)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.budget.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One retry in flight, counted against the pool's retry budget until dropped.
struct Retrying<'a>(&'a PoolEntry);

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.0.budget.retries.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Full jitter: uniformly random up to min(max, base × 2^(attempt-1)).
fn backoff(r: &RetryConfig, attempt: u32) -> Duration {
    let ceiling = r
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(r.backoff_max);
    ceiling.mul_f64(fastrand::f64())
}

/// A copy of a request head for one try (the URI is set per try).
pub fn clone_head(p: &Parts) -> Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = p.method.clone();
    head.version = p.version;
    head.headers = p.headers.clone();
    head
}
