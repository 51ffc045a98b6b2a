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
use crate::reqbody::{ClientBody, ClientBodyError, Sent};

/// Request body sent upstream: the client's body streamed with the size limit and the gap
/// timer enforced, or a buffered copy that can be replayed on retry.
pub type UpstreamBody = Either<Limited<ClientBody>, Full<Bytes>>;

/// A pooled client for one combination of connect and idle timeouts.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Client<HttpConnector, UpstreamBody>,
}

/// Connect timeout, idle timeout and idle connections kept per backend: what a connection
/// pool is keyed by.
type PoolKey = (Duration, Duration, usize);

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
    pub fn client_for(&self, t: &Timeouts, max_idle: usize) -> UpstreamClient {
        let key = (t.connect, t.idle, max_idle);
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert_with(|| UpstreamClient::new(t.connect, t.idle, max_idle))
            .clone()
    }

    /// Drops clients no pool uses any more (their idle connections close with them).
    pub fn retain(&self, in_use: &[(Timeouts, usize)]) {
        let mut map = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, _| in_use.iter().any(|(t, m)| (t.connect, t.idle, *m) == *k));
    }
}

impl UpstreamClient {
    fn new(connect: Duration, idle: Duration, max_idle: usize) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(connect));
        conn.set_nodelay(true);
        conn.enforce_http(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(TokioTimer::new())
            .build(conn);
        Self { inner }
    }

    /// Sends `req` (its URI already points at the backend) and waits for the response head
    /// up to `header_timeout` from the moment its body has been sent whole (`sent`). The
    /// response body streams afterwards.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        header_timeout: Duration,
        sent: &Sent,
        backend: &str,
    ) -> Result<Response<Incoming>, ProxyError> {
        let request = self.inner.request(req);
        let deadline = async {
            sent.wait().await;
            tokio::time::sleep(header_timeout).await;
        };
        tokio::select! {
            r = request => r.map_err(|e| classify(&e, backend)),
            () = deadline => Err(ProxyError::Timeout(backend.to_owned())),
        }
    }
}

/// How a failed client body is answered: the client was too slow, or went away.
pub fn client_body_error(e: &ClientBodyError) -> ProxyError {
    match e {
        ClientBodyError::Stalled => ProxyError::ClientTimeout("the request body stalled"),
        ClientBodyError::Aborted(_) => ProxyError::ClientAbort,
    }
}

fn classify(e: &hyper_util::client::legacy::Error, backend: &str) -> ProxyError {
    // The client's body went over the limit while streaming: the request, not the backend,
    // is at fault (the pipeline fills in the limit).
    let chain = std::iter::successors(e.source(), |s: &&(dyn StdError + 'static)| (*s).source());
    for s in chain {
        if s.is::<LengthLimitError>() {
            return ProxyError::BodyTooLarge(0);
        }
        if let Some(c) = s.downcast_ref::<ClientBodyError>() {
            return client_body_error(c);
        }
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
