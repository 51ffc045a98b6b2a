//! One backend's connections.
//!
//! - HTTP/1.1 (plain or TLS): idle keep-alive connections wait in a lock-free queue, each
//!   holding its socket alone; a request takes one (or opens one, see [`super::connect`]) and
//!   speaks sandgate's own HTTP/1.1 client on it ([`super::h1`]) from its own task; the
//!   response body gives the connection back once it has been read to its end. A `101` leaves
//!   the connection to its tunnel.
//! - HTTP/2 (`protocol: http2`, or `auto` when ALPN picks h2): one multiplexed hyper
//!   connection per worker, shared by every request; a closed one is replaced on the next
//!   request. Upgrades still open HTTP/1.1 connections.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::h1;
use super::{classify, client_side, connect, PoolSettings, UpstreamBody};
use crate::body::BodyError;
use crate::config::UpstreamProtocol;
use crate::error::ProxyError;
use crate::headers::Hop;
use crate::reqbody::Sent;
use crate::worker;

/// Sends tried on pooled connections that turn out closed before the request goes out.
const STALE_TRIES: usize = 3;

/// Below this many requests in flight to a backend, a request's write waits for the end of
/// the runtime's batch of ready tasks ([`h1::send`]). A lightly loaded backend sleeps between
/// requests, and each write that finds it asleep wakes it: on one host that wake-up is a
/// cross-CPU interrupt paid in sandgate's system time. Batched, the backend woke 0.06 times
/// a request instead of 0.27, and sandgate's CPU a request fell 6% at 50 connections and 8%
/// at 200. A busy backend never sleeps, and there the extra poll only cost (10% more CPU at
/// 1000 connections; even at 500).
const BATCH_BELOW: u64 = 256;

/// Marks a request whose map holds the hop's fields: it went to an HTTP/2 connection once.
#[derive(Clone, Copy)]
struct HopApplied;

struct Idle {
    conn: h1::Conn,
    since: Instant,
}

type H2Send = hyper::client::conn::http2::SendRequest<UpstreamBody>;

/// A connection ready for one request.
enum Sender {
    H1(h1::Conn),
    H2(H2Send),
}

/// The keep-alive connections of one backend.
pub struct BackendConns {
    addr: SocketAddr,
    authority: String,
    settings: PoolSettings,
    /// Idle HTTP/1.1 connections, per worker ([`crate::worker`]): a connection's socket is
    /// registered with the runtime of the thread that opened it.
    idle: Box<[ArrayQueue<Idle>]>,
    /// The HTTP/2 connection of each worker, once there is one.
    h2: Box<[ArcSwapOption<H2Send>]>,
    opened: AtomicU64,
    reused: AtomicU64,
}

impl BackendConns {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, settings: PoolSettings) -> Self {
        Self {
            addr,
            authority: addr.to_string(),
            idle: (0..worker::count())
                .map(|_| ArrayQueue::new(settings.max_idle.max(1)))
                .collect(),
            h2: (0..worker::count())
                .map(|_| ArcSwapOption::empty())
                .collect(),
            settings,
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// The pool's settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// Connections opened, and requests sent on a reused connection, so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.reused.load(Ordering::Relaxed),
        )
    }

    /// Idle HTTP/1.1 connections now, over every worker (each holds only its socket).
    pub fn idle(&self) -> usize {
        self.idle.iter().map(ArrayQueue::len).sum()
    }

    /// Sends `req` (origin-form target, `Host` set) and waits for the response head up to
    /// `header_timeout` from the moment its body has been sent whole (`sent`). The response
    /// carries no hop-by-hop fields, unless it is a `101`. `inflight`: the backend's
    /// requests in flight, this one included (see [`BATCH_BELOW`]).
    ///
    /// `sent` is None for a body that is already whole (none, or a buffered one). The timer
    /// is polled once, when it is set, and after that only its state is read: the task is
    /// woken when it fires. Polling it on each of the exchange's wake-ups cost about 300
    /// instructions a request.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        hop: &Hop,
        header_timeout: Duration,
        sent: Option<&Sent>,
        inflight: u64,
    ) -> Result<Response<Pooled>, ProxyError> {
        let exchange = self.exchange(req, hop, inflight < BATCH_BELOW);
        tokio::pin!(exchange);
        let body_sent = async {
            if let Some(s) = sent {
                s.wait().await;
            }
        };
        tokio::pin!(body_sent);
        let timer = None::<tokio::time::Sleep>;
        tokio::pin!(timer);
        let elapsed = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if let Some(t) = timer.as_mut().as_pin_mut() {
                return if t.is_elapsed() {
                    Poll::Ready(None)
                } else {
                    Poll::Pending
                };
            }
            if body_sent.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            timer.set(Some(tokio::time::sleep(header_timeout)));
            match timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(None),
                _ => Poll::Pending,
            }
        })
        .await;
        elapsed.unwrap_or_else(|| Err(ProxyError::Timeout(self.authority.clone())))
    }

    async fn exchange(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
        hop: &Hop,
        batch: bool,
    ) -> Result<Response<Pooled>, ProxyError> {
        // Only a pool that may speak HTTP/2 tells upgrades (which need HTTP/1.1) apart.
        let h2 = self.settings.transport.protocol != UpstreamProtocol::Http1;
        let upgrade = h2 && req.headers().contains_key(http::header::UPGRADE);
        // Pooled connections first; after STALE_TRIES of them turned out closed, a new one.
        let mut tries = 0;
        loop {
            tries += 1;
            let (sender, reused) = if tries <= STALE_TRIES {
                self.checkout(upgrade).await?
            } else {
                (Box::pin(self.connect(upgrade)).await?, false)
            };
            match self.try_send(sender, req, hop, reused, batch).await {
                Ok(r) => return Ok(r),
                // A pooled connection the backend closed as the request went out: it goes
                // on another connection.
                Err((e, Some(back))) if reused => {
                    tracing::debug!(backend = %self.addr, error = %e, "reused connection closed, sending again");
                    req = back;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Sends on one connection. A failure comes with the request when it can go on another
    /// connection as it is.
    async fn try_send(
        self: &Arc<Self>,
        sender: Sender,
        mut req: Request<UpstreamBody>,
        hop: &Hop,
        reused: bool,
        batch: bool,
    ) -> Result<Response<Pooled>, (ProxyError, Option<Request<UpstreamBody>>)> {
        match sender {
            Sender::H1(conn) => {
                // A request given back by an HTTP/2 connection (`protocol: auto`, where the
                // next connection may speak HTTP/1.1) is in HTTP/2 form, with the hop's
                // fields in its map already.
                if req.version() == http::Version::HTTP_2 {
                    h1::head::h1_form(&mut req);
                }
                let hop = req
                    .extensions()
                    .get::<HopApplied>()
                    .is_none()
                    .then_some(hop);
                match h1::send(conn, req, hop, reused, batch).await {
                    Ok(resp) => {
                        let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                            .then(|| Arc::clone(self));
                        Ok(resp.map(|body| Pooled {
                            body: Inner::H1(body),
                            back,
                        }))
                    }
                    Err(f) => Err((self.h1_error(f.error), f.unsent)),
                }
            }
            Sender::H2(mut send) => {
                if req.extensions().get::<HopApplied>().is_none() {
                    hop.apply(req.headers_mut());
                    req.extensions_mut().insert(HopApplied);
                }
                self.h2_form(&mut req);
                match send.try_send_request(req).await {
                    Ok(mut resp) => {
                        crate::headers::strip_hop_by_hop(resp.headers_mut());
                        Ok(resp.map(|body| Pooled {
                            body: Inner::H2(body),
                            back: None,
                        }))
                    }
                    Err(mut e) => {
                        let back = e.take_message();
                        Err((classify(&e.into_error(), &self.authority), back))
                    }
                }
            }
        }
    }

    /// How a failed HTTP/1.1 exchange is answered.
    fn h1_error(&self, e: h1::Error) -> ProxyError {
        if let h1::Error::ClientBody(b) = &e {
            if let Some(c) = client_side(b.as_ref()) {
                return c;
            }
        }
        ProxyError::Upstream(self.authority.clone(), e.to_string())
    }

    /// HTTP/2 carries the target as `:scheme` and `:authority`: the absolute form, with the
    /// authority the `Host` header names (they must agree).
    fn h2_form(&self, req: &mut Request<UpstreamBody>) {
        let scheme = if self.settings.transport.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        };
        let host = req.headers_mut().remove(http::header::HOST);
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        // A request given back by a connection that closed is in this form already.
        if parts.authority.is_none() {
            parts.authority = host
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                .or_else(|| http::uri::Authority::try_from(self.authority.as_str()).ok());
        }
        parts.scheme = Some(scheme);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = http::Version::HTTP_2;
    }

    /// A connection ready for a request: the worker's HTTP/2 one or an idle HTTP/1.1 one
    /// (and true: reused), or a new one (and false). `upgrade` asks for HTTP/1.1.
    async fn checkout(self: &Arc<Self>, upgrade: bool) -> Result<(Sender, bool), ProxyError> {
        let h2_pool = self.settings.transport.protocol != UpstreamProtocol::Http1;
        if h2_pool && !upgrade {
            if let Some(h2) = self.h2_here().load_full() {
                if !h2.is_closed() {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok((Sender::H2((*h2).clone()), true));
                }
                self.h2_here().store(None);
            }
        }
        let idle = self.idle_here();
        while let Some(mut i) = idle.pop() {
            if i.since.elapsed() <= self.settings.idle && i.conn.usable() {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok((Sender::H1(i.conn), true));
            }
        }
        // Boxed: a connect's states would otherwise size every request's future.
        Ok((Box::pin(self.connect(upgrade)).await?, false))
    }

    async fn connect(self: &Arc<Self>, http1_only: bool) -> Result<Sender, ProxyError> {
        let t = &self.settings.transport;
        let opened = connect::open(self.addr, t, self.settings.connect, http1_only)
            .await
            .map_err(|why| self.connect_error(&why))?;
        let addr = self.addr;
        self.opened.fetch_add(1, Ordering::Relaxed);
        if !opened.h2 {
            return Ok(Sender::H1(h1::Conn::new(opened.stream)));
        }
        let io = TokioIo::new(opened.stream);
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| self.connect_error(&format!("HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(backend = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        self.h2_here().store(Some(Arc::new(send.clone())));
        Ok(Sender::H2(send))
    }

    /// A failed connect: a `connect_error` outcome, its reason in the log.
    fn connect_error(&self, why: &str) -> ProxyError {
        tracing::debug!(backend = %self.addr, reason = why, "cannot connect to backend");
        ProxyError::Connect(format!("{} ({why})", self.authority))
    }

    /// Keeps a connection whose response was read to its end, if there is room; a full
    /// queue drops it, which closes it.
    fn checkin(&self, conn: h1::Conn) {
        if self.settings.max_idle == 0 {
            return;
        }
        let _ = self.idle_here().push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes the idle connections that outlived the idle timeout or that the backend closed
    /// (or wrote to) while idle.
    pub fn reap(&self) {
        for idle in &self.idle {
            for _ in 0..idle.len() {
                let Some(mut i) = idle.pop() else { break };
                if i.since.elapsed() <= self.settings.idle && i.conn.usable() {
                    // The queue had room for it a moment ago.
                    let _ = idle.push(i);
                }
            }
        }
    }

    /// The idle connections of this thread's worker.
    fn idle_here(&self) -> &ArrayQueue<Idle> {
        &self.idle[worker::index().min(self.idle.len() - 1)]
    }

    /// The HTTP/2 connection of this thread's worker.
    fn h2_here(&self) -> &ArcSwapOption<H2Send> {
        &self.h2[worker::index().min(self.h2.len() - 1)]
    }
}

/// A backend's response body: an HTTP/1.1 one gives its connection back to the pool once
/// read to its end.
pub struct Pooled {
    body: Inner,
    back: Option<Arc<BackendConns>>,
}

enum Inner {
    H1(h1::Body),
    H2(Incoming),
}

impl Pooled {
    fn give_back(&mut self) {
        if let (Inner::H1(b), Some(pool)) = (&mut self.body, &self.back) {
            if let Some(conn) = b.take_reusable() {
                pool.checkin(conn);
            }
        }
    }

    /// The backend connection of a `101` response, for its tunnel.
    pub fn take_upgraded(&mut self) -> Option<h1::Upgraded> {
        match &mut self.body {
            Inner::H1(b) => b.take_upgraded(),
            Inner::H2(_) => None,
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.body {
            Inner::H1(b) => {
                let r = Pin::new(b).poll_frame(cx).map_err(Into::into);
                self.give_back();
                r
            }
            Inner::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Inner::H1(b) => b.is_end_stream(),
            Inner::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Inner::H1(b) => b.size_hint(),
            Inner::H2(b) => b.size_hint(),
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A body complete before it was polled (an empty one) goes back too; one cut short
        // closes its connection with it.
        self.give_back();
    }
}
