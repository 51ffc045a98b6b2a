//! One backend's connections.
//!
//! - HTTP/1.1: idle keep-alive connections wait in a lock-free queue; a request takes one
//!   (or opens one, see [`super::connect`]), and the response body gives it back once the
//!   response has been read to its end. A `101` leaves the connection to its tunnel. One
//!   idle for [`PARK_AFTER`] is parked without hyper's state ([`super::park`]).
//! - HTTP/2 (`protocol: http2`, or `auto` when ALPN picks h2): one multiplexed connection per
//!   worker, shared by every request; a closed one is replaced on the next request.
//!   Upgrades still open HTTP/1.1 connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::TrySendError;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::connect::Stream;
use super::park::{ParkableIo, Parked};
use super::{classify, connect, PoolSettings, UpstreamBody};
use crate::config::UpstreamProtocol;
use crate::conn::PARK_AFTER;
use crate::error::ProxyError;
use crate::reqbody::Sent;
use crate::worker;

/// How long a pooled connection may take to be ready for its next request (it normally is at
/// once: its previous response was read to the end).
const READY_WITHIN: Duration = Duration::from_secs(1);
/// Sends tried on pooled connections that turn out closed before the request goes out.
const STALE_TRIES: usize = 3;

/// An HTTP/1.1 connection's sender, and the mark that has its IO park rather than close
/// once the sender is gone.
pub struct H1 {
    send: SendRequest<UpstreamBody>,
    park: Arc<AtomicBool>,
}

struct Idle {
    conn: H1,
    since: Instant,
}

type H2Send = hyper::client::conn::http2::SendRequest<UpstreamBody>;

/// A connection ready for one request.
enum Sender {
    H1(H1),
    H2(H2Send),
}

/// The keep-alive connections of one backend.
pub struct BackendConns {
    addr: SocketAddr,
    authority: String,
    settings: PoolSettings,
    /// Idle connections, per worker ([`crate::worker`]): a connection is used only by the
    /// thread whose runtime drives it.
    idle: Box<[ArrayQueue<Idle>]>,
    /// Sockets of connections idle for [`PARK_AFTER`], per worker, without hyper's state.
    parked: Box<[ArrayQueue<Parked>]>,
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
            parked: (0..worker::count())
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

    /// Connections parked now (idle, holding no buffers), over every worker.
    pub fn parked(&self) -> usize {
        self.parked.iter().map(ArrayQueue::len).sum()
    }

    /// Sends `req` (origin-form target, `Host` set) and waits for the response head up to
    /// `header_timeout` from the moment its body has been sent whole (`sent`).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        header_timeout: Duration,
        sent: &Sent,
    ) -> Result<Response<Pooled>, ProxyError> {
        let deadline = async {
            sent.wait().await;
            tokio::time::sleep(header_timeout).await;
        };
        tokio::select! {
            r = self.exchange(req) => {
                let (resp, send) = r?;
                // A connection that switched protocols belongs to its tunnel now; an HTTP/2
                // one is not given back (it is shared).
                let back = send
                    .filter(|_| resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                    .map(|send| (send, Arc::clone(self)));
                Ok(resp.map(|body| Pooled { body, back }))
            }
            () = deadline => Err(ProxyError::Timeout(self.authority.clone())),
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Option<H1>), ProxyError> {
        // Only a pool that may speak HTTP/2 tells upgrades (which need HTTP/1.1) apart.
        let h2 = self.settings.transport.protocol != UpstreamProtocol::Http1;
        let upgrade = h2 && req.headers().contains_key(http::header::UPGRADE);
        for _ in 0..STALE_TRIES {
            let (send, reused) = self.checkout(upgrade).await?;
            match self.try_send(send, req).await {
                Ok(r) => return Ok(r),
                Err(mut e) => match e.take_message() {
                    // A pooled connection closed just before the request went out: nothing
                    // reached the backend, so it goes on another connection.
                    Some(back) if reused => req = back,
                    _ => return Err(classify(&e.into_error(), &self.authority)),
                },
            }
        }
        let send = Box::pin(self.connect(upgrade)).await?;
        self.try_send(send, req)
            .await
            .map_err(|e| classify(&e.into_error(), &self.authority))
    }

    /// Sends on one connection; an HTTP/1.1 connection comes back with the response, to be
    /// given back to the pool once its body is read.
    async fn try_send(
        &self,
        sender: Sender,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Option<H1>), TrySendError<Request<UpstreamBody>>> {
        match sender {
            Sender::H1(mut conn) => {
                let resp = conn.send.try_send_request(req).await?;
                Ok((resp, Some(conn)))
            }
            Sender::H2(mut send) => {
                self.h2_form(&mut req);
                Ok((send.try_send_request(req).await?, None))
            }
        }
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

    /// A connection ready for a request: the worker's HTTP/2 one, an idle HTTP/1.1 one or a
    /// parked one (and true: reused), or a new one (and false). `upgrade` asks for HTTP/1.1.
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
            if i.since.elapsed() > self.settings.idle || i.conn.send.is_closed() {
                continue;
            }
            let ready = i.conn.send.is_ready()
                || matches!(
                    tokio::time::timeout(READY_WITHIN, i.conn.send.ready()).await,
                    Ok(Ok(()))
                );
            if ready {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok((Sender::H1(i.conn), true));
            }
        }
        while let Some(p) = self.parked_here().pop() {
            if p.since.elapsed() > self.settings.idle || !p.usable() {
                continue;
            }
            if let Ok(conn) = self.attach(p.stream).await {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok((Sender::H1(conn), true));
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
            return Ok(Sender::H1(self.attach(opened.stream).await?));
        }
        let io = TokioIo::new(opened.stream);
        {
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
    }

    /// Starts an HTTP/1.1 connection on `stream`, new or parked.
    async fn attach(self: &Arc<Self>, stream: Stream) -> Result<H1, ProxyError> {
        let park = Arc::new(AtomicBool::new(false));
        let io = ParkableIo::new(stream, Arc::clone(&park), Arc::downgrade(self));
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(&format!("handshake: {e}")))?;
        let addr = self.addr;
        tokio::spawn(async move {
            // With upgrades: a 101 hands the connection to a tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(H1 { send, park })
    }

    /// A failed connect: a `connect_error` outcome, its reason in the log.
    fn connect_error(&self, why: &str) -> ProxyError {
        tracing::debug!(backend = %self.addr, reason = why, "cannot connect to backend");
        ProxyError::Connect(format!("{} ({why})", self.authority))
    }

    /// Keeps a connection whose response was read to its end, if there is room.
    fn checkin(&self, conn: H1) {
        if self.settings.max_idle == 0 || conn.send.is_closed() {
            return;
        }
        // The cap counts parked connections too: a live one takes a parked one's place.
        let parked = self.parked_here();
        if self.idle_here().len() + parked.len() >= self.settings.max_idle && parked.pop().is_none()
        {
            return;
        }
        // A full queue drops the connection, which closes it.
        let _ = self.idle_here().push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Keeps the socket of a connection hyper let go of while parking it (on the thread of
    /// the worker that drives it); a full queue closes it.
    pub fn park(&self, stream: Stream) {
        let now = Instant::now();
        // It was idle for about PARK_AFTER already (the upkeep task looks once a second).
        let since = now.checked_sub(PARK_AFTER).unwrap_or(now);
        let _ = self.parked_here().push(Parked { stream, since });
    }

    /// Closes the idle and parked connections that outlived the idle timeout or were closed
    /// by the backend, and parks those idle for [`PARK_AFTER`].
    pub fn reap(&self) {
        for idle in &self.idle {
            for _ in 0..idle.len() {
                let Some(i) = idle.pop() else { break };
                let age = i.since.elapsed();
                if age > self.settings.idle || i.conn.send.is_closed() {
                    continue;
                }
                if age >= PARK_AFTER {
                    // hyper, idle with its sender gone, shuts the IO down: the mark makes
                    // that a park.
                    i.conn.park.store(true, Ordering::Relaxed);
                    continue;
                }
                // The queue had room for it a moment ago.
                let _ = idle.push(i);
            }
        }
        for parked in &self.parked {
            for _ in 0..parked.len() {
                let Some(p) = parked.pop() else { break };
                // One the backend closed while parked is closed here too, not at its
                // next checkout.
                if p.since.elapsed() <= self.settings.idle && p.usable() {
                    let _ = parked.push(p);
                }
            }
        }
    }

    /// The idle connections of this thread's worker.
    fn idle_here(&self) -> &ArrayQueue<Idle> {
        &self.idle[worker::index().min(self.idle.len() - 1)]
    }

    /// The parked connections of this thread's worker.
    fn parked_here(&self) -> &ArrayQueue<Parked> {
        &self.parked[worker::index().min(self.parked.len() - 1)]
    }

    /// The HTTP/2 connection of this thread's worker.
    fn h2_here(&self) -> &ArcSwapOption<H2Send> {
        &self.h2[worker::index().min(self.h2.len() - 1)]
    }
}

/// A response body from a pooled connection; once read to its end, the connection goes back
/// to its pool.
pub struct Pooled {
    body: Incoming,
    back: Option<(H1, Arc<BackendConns>)>,
}

impl Pooled {
    fn give_back(&mut self) {
        if let Some((send, conns)) = self.back.take() {
            conns.checkin(send);
        }
    }
}

impl Body for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None)) || self.body.is_end_stream() {
            self.give_back();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A body never polled because it was empty is complete too; one cut short is not,
        // and its connection closes with it.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}
