//! The upstream HTTP client: pooled keep-alive connections to backends, kept outside the config
//! snapshot so that pools survive reloads. Everything the pipeline needs goes through
//! [`UpstreamClient::send`], so a leaner per-backend pool can replace hyper-util's legacy
//! client here without touching the pipeline.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::Timeouts;
use crate::error::ProxyError;

/// Request body sent upstream: the client's body streamed with the size limit enforced, or a
/// buffered copy that can be replayed on retry.
pub type UpstreamBody = Either<Limited<Incoming>, Full<Bytes>>;

/// A pooled client for one combination of connect and idle timeouts.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<HttpConnector, UpstreamBody>,
}

/// Connect timeout and idle timeout: what a connection pool is keyed by.
type PoolKey = (Duration, Duration);

/// Registry of upstream clients; consulted only when a snapshot is built (cold path), never
/// per request.
#[derive(Default)]
pub struct Upstreams {
    // std Mutex: held for a map lookup during snapshot builds only, never across an await.
    clients: Mutex<HashMap<PoolKey, UpstreamClient>>,
}

impl Upstreams {
    /// The client for these timeouts, created on first use and shared afterwards, so that a
    /// reload keeps its warm connections.
    pub fn client_for(&self, t: &Timeouts) -> UpstreamClient {
        let key = (t.connect, t.idle);
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| UpstreamClient::new(t.connect, t.idle))
            .clone()
    }

    /// Drops clients no pool uses any more (their idle connections close with them).
    pub fn retain(&self, in_use: &[Timeouts]) {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| in_use.iter().any(|t| (t.connect, t.idle) == *k));
    }
}

impl UpstreamClient {
    fn new(connect: Duration, idle: Duration) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(connect));
        conn.set_nodelay(true);
        conn.enforce_http(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_timer(TokioTimer::new())
            .build(conn);
        Self { inner }
    }

    /// Sends `req` (its URI already points at the backend) and waits up to `header_timeout`
    /// for the response head. The body streams afterwards.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        header_timeout: Duration,
        backend: &str,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(header_timeout, self.inner.request(req)).await {
            Err(_) => Err(ProxyError::Timeout(backend.to_owned())),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e, backend)),
        }
    }
}

fn classify(e: &hyper_util::client::legacy::Error, backend: &str) -> ProxyError {
    // The client's body went over the limit while streaming: the request, not the backend,
    // is at fault (the pipeline fills in the limit).
    let mut chain =
        std::iter::successors(e.source(), |s: &&(dyn StdError + 'static)| (*s).source());
    if chain.any(|s| s.is::<LengthLimitError>()) {
        return ProxyError::BodyTooLarge(0);
    }
    if e.is_connect() {
        return ProxyError::Connect(backend.to_owned());
    }
    let mut msg = e.to_string();
    if let Some(s) = e.source() {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
    }
    ProxyError::Upstream(backend.to_owned(), msg)
}
