//! The one mapping from a failure to what the client sees: [`ProxyError::status`] and a small
//! JSON body carrying the request id.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::config::Outcome;

/// Why sandgate answered instead of a backend.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matched the request.
    #[error("no route matches this request")]
    NoRoute,
    /// The pool has no backend that can take the request.
    #[error("no usable backend in pool {0}")]
    NoBackend(String),
    /// The request body is over `limits.max_request_body`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The request head is over `limits.max_header_bytes`.
    #[error("request headers larger than {0} bytes")]
    HeadersTooLarge(usize),
    /// The request could not be forwarded (bad target, unsupported form).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// TCP connect to the backend failed or timed out.
    #[error("cannot connect to backend {0}")]
    Connect(String),
    /// The backend did not send a response head within `timeouts.response_header`.
    #[error("backend {0} did not answer in time")]
    Timeout(String),
    /// The backend broke the exchange (reset, malformed response).
    #[error("backend {0} failed: {1}")]
    Upstream(String, String),
    /// The route's rate limit refused the request.
    #[error("rate limit exceeded")]
    RateLimited,
    /// Every backend was busy and the pool's queue was full.
    #[error("every backend in pool {0} is busy and its queue is full")]
    QueueFull(String),
    /// The request's tenant held its share of the pool's slots and the queue was full.
    #[error("the tenant holds its share of pool {0} and the queue is full")]
    TenantLimit(String),
    /// Every backend was busy and no slot came within the queue timeout.
    #[error("no backend in pool {0} became free in time")]
    QueueTimeout(String),
    /// A global limit shed the request.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// `Cache-Control: only-if-cached` and nothing usable is stored.
    #[error("nothing usable is stored for this request (only-if-cached)")]
    NotCached,
    /// The client was too slow: its request head or body stalled past the limit.
    #[error("request timeout: {0}")]
    ClientTimeout(&'static str),
    /// The client went away before its request was done.
    #[error("the client closed the connection")]
    ClientAbort,
}

impl ProxyError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend(_)
            | ProxyError::QueueFull(_)
            | ProxyError::TenantLimit(_)
            | ProxyError::QueueTimeout(_)
            | ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Connect(_) | ProxyError::Upstream(..) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout(_) | ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            // nginx's convention for a request its client abandoned; only the log sees it.
            ProxyError::ClientAbort => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        }
    }

    /// A stable machine-readable code for the JSON body and logs.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoBackend(_) => "no_backend",
            ProxyError::BodyTooLarge(_) => "body_too_large",
            ProxyError::HeadersTooLarge(_) => "headers_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::Connect(_) => "connect_error",
            ProxyError::Timeout(_) => "timeout",
            ProxyError::Upstream(..) => "upstream_error",
            ProxyError::RateLimited => "rate_limited",
            ProxyError::QueueFull(_) => "queue_full",
            ProxyError::TenantLimit(_) => "tenant_limit",
            ProxyError::QueueTimeout(_) => "queue_timeout",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::NotCached => "not_cached",
            ProxyError::ClientTimeout(_) => "request_timeout",
            ProxyError::ClientAbort => "client_abort",
        }
    }

    /// Whether a stale cached response may stand in for this failure (RFC 5861: the backend
    /// could not be reached, broke, timed out, or no backend could take the request).
    pub fn allows_stale(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect(_)
                | ProxyError::Timeout(_)
                | ProxyError::Upstream(..)
                | ProxyError::NoBackend(_)
                | ProxyError::QueueFull(_)
                | ProxyError::TenantLimit(_)
                | ProxyError::QueueTimeout(_)
        )
    }

    /// How an upstream attempt that failed with this error counts for breakers, retries and
    /// metrics.
    pub fn outcome(&self) -> Outcome {
        match self {
            ProxyError::Connect(_) => Outcome::ConnectError,
            ProxyError::Timeout(_) => Outcome::Timeout,
            _ => Outcome::Error,
        }
    }

    /// What the client is told: the stable meaning of the error, without backend addresses,
    /// pool names or library errors (those go to the log, from `Display`).
    pub fn public_message(&self) -> std::borrow::Cow<'static, str> {
        match self {
            ProxyError::NoRoute => "no route matches this request".into(),
            ProxyError::NoBackend(_) => "no backend can take this request now".into(),
            ProxyError::BodyTooLarge(n) => format!("request body larger than {n} bytes").into(),
            ProxyError::HeadersTooLarge(n) => {
                format!("request headers larger than {n} bytes").into()
            }
            ProxyError::BadRequest(why) => format!("bad request: {why}").into(),
            ProxyError::Connect(_) => "the backend could not be reached".into(),
            ProxyError::Timeout(_) => "the backend did not answer in time".into(),
            ProxyError::Upstream(..) => "the backend failed to answer".into(),
            ProxyError::RateLimited => "rate limit exceeded".into(),
            ProxyError::QueueFull(_) => "every backend is busy and the wait queue is full".into(),
            ProxyError::TenantLimit(_) => {
                "your tenant holds its share of the backends and the wait queue is full".into()
            }
            ProxyError::QueueTimeout(_) => "no backend became free in time".into(),
            ProxyError::Overloaded(why) => format!("overloaded: {why}").into(),
            ProxyError::NotCached | ProxyError::ClientTimeout(_) | ProxyError::ClientAbort => {
                self.to_string().into()
            }
        }
    }

    /// Status, headers and JSON body for the client.
    pub fn response(&self, request_id: &HeaderValue) -> Response<Bytes> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.public_message(),
            "status": self.status().as_u16(),
            "request_id": request_id.to_str().unwrap_or(""),
        });
        let mut resp = Response::new(Bytes::from(body.to_string()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.closes() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The gRPC status code for this failure: 14 UNAVAILABLE when no backend could take or
    /// answer the call, 4 DEADLINE_EXCEEDED for a timeout, 8 RESOURCE_EXHAUSTED for a rate
    /// limit, a full or slow queue, or a message too large.
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::NoBackend(_)
            | ProxyError::Connect(_)
            | ProxyError::Upstream(..)
            | ProxyError::Overloaded(_)
            | ProxyError::NotCached => 14,
            ProxyError::Timeout(_) | ProxyError::ClientTimeout(_) => 4,
            ProxyError::RateLimited
            | ProxyError::QueueFull(_)
            | ProxyError::TenantLimit(_)
            | ProxyError::QueueTimeout(_)
            | ProxyError::BodyTooLarge(_)
            | ProxyError::HeadersTooLarge(_) => 8,
            ProxyError::NoRoute => 12,
            ProxyError::ClientAbort => 1,
            ProxyError::BadRequest(_) => 13,
        }
    }

    /// The answer to a gRPC call (`content-type: application/grpc*`): HTTP 200 with no body
    /// and the status in `grpc-status` and `grpc-message` (a "Trailers-Only" response).
    pub fn grpc_response(&self, request_id: &HeaderValue) -> Response<Bytes> {
        let mut resp = Response::new(Bytes::new());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_status())),
        );
        // The message is percent-encoded (gRPC over HTTP/2); ours are plain ASCII, so only
        // `%` and controls need it.
        let mut msg = String::new();
        for b in self.public_message().bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                msg.push(char::from(b));
            } else {
                let _ = write!(msg, "%{b:02X}");
            }
        }
        if let Ok(v) = HeaderValue::try_from(msg) {
            h.insert("grpc-message", v);
        }
        h.insert("x-request-id", request_id.clone());
        resp
    }

    /// Whether the client connection is closed after this answer (the client is too slow to
    /// keep, or its request cannot be framed any more).
    pub fn closes(&self) -> bool {
        matches!(self, ProxyError::ClientTimeout(_) | ProxyError::ClientAbort)
    }

    /// The whole answer as HTTP/1.1 bytes with `Connection: close`, for a connection that
    /// sandgate answers itself outside of hyper (shed connections, stalled request heads).
    pub fn raw_http1(&self, request_id: &HeaderValue) -> Vec<u8> {
        let resp = self.response(request_id);
        let mut out = format!("HTTP/1.1 {}\r\n", resp.status()).into_bytes();
        for (name, value) in resp.headers() {
            if name == header::CONNECTION {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            format!(
                "Content-Length: {}\r\nConnection: close\r\n\r\n",
                resp.body().len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(resp.body());
        out
    }
}
