//! One backend's keep-alive pool. Idle connections wait in a lock-free queue; a request takes
//! one (or opens one: TCP connect within the connect timeout, `TCP_NODELAY`, an HTTP/1.1
//! handshake whose connection task runs on its own), and the response body gives it back
//! once the response has been read to its end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{classify, PoolSettings, UpstreamBody};
use crate::error::ProxyError;
use crate::reqbody::Sent;
use crate::worker;

/// How long a pooled connection may take to be ready for its next request (it normally is at
/// once: its previous response was read to the end).
const READY_WITHIN: Duration = Duration::from_secs(1);
/// Sends tried on pooled connections that turn out closed before the request goes out.
const STALE_TRIES: usize = 3;

struct Idle {
    send: SendRequest<UpstreamBody>,
    since: Instant,
}

/// The keep-alive connections of one backend.
pub struct BackendConns {
    addr: SocketAddr,
    authority: String,
    settings: PoolSettings,
    /// Idle connections, per worker ([`crate::worker`]): a connection is used only by the
    /// thread whose runtime drives it.
    idle: Box<[ArrayQueue<Idle>]>,
    opened: AtomicU64,
    reused: AtomicU64,
}

impl BackendConns {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, settings: PoolSettings) -> Self {
        Self {
            addr,
            authority: addr.to_string(),
            settings,
            idle: (0..worker::count())
                .map(|_| ArrayQueue::new(settings.max_idle.max(1)))
                .collect(),
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// The pool's settings.
    pub fn settings(&self) -> PoolSettings {
        self.settings
    }

    /// Connections opened, and requests sent on a reused connection, so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.reused.load(Ordering::Relaxed),
        )
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
                // A connection that switched protocols belongs to its tunnel now.
                let back = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| (send, Arc::clone(self)));
                Ok(resp.map(|body| Pooled { body, back }))
            }
            () = deadline => Err(ProxyError::Timeout(self.authority.clone())),
        }
    }

    async fn exchange(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, SendRequest<UpstreamBody>), ProxyError> {
        for _ in 0..STALE_TRIES {
            let (mut send, reused) = self.checkout().await?;
            match send.try_send_request(req).await {
                Ok(resp) => return Ok((resp, send)),
                Err(mut e) => match e.take_message() {
                    // A pooled connection closed just before the request went out: nothing
                    // reached the backend, so it goes on another connection.
                    Some(back) if reused => req = back,
                    _ => return Err(classify(&e.into_error(), &self.authority)),
                },
            }
        }
        let mut send = Box::pin(self.connect()).await?;
        match send.try_send_request(req).await {
            Ok(resp) => Ok((resp, send)),
            Err(e) => Err(classify(&e.into_error(), &self.authority)),
        }
    }

    /// An idle connection ready for a request (and true), or a new one (and false).
    async fn checkout(&self) -> Result<(SendRequest<UpstreamBody>, bool), ProxyError> {
        let idle = self.idle_here();
        while let Some(mut i) = idle.pop() {
            if i.since.elapsed() > self.settings.idle || i.send.is_closed() {
                continue;
            }
            let ready = i.send.is_ready()
                || matches!(
                    tokio::time::timeout(READY_WITHIN, i.send.ready()).await,
                    Ok(Ok(()))
                );
            if ready {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok((i.send, true));
            }
        }
        // Boxed: a connect's states would otherwise size every request's future.
        Ok((Box::pin(self.connect()).await?, false))
    }

    async fn connect(&self) -> Result<SendRequest<UpstreamBody>, ProxyError> {
        let fail = || ProxyError::Connect(self.authority.clone());
        let stream = tokio::time::timeout(self.settings.connect, TcpStream::connect(self.addr))
            .await
            .map_err(|_| fail())?
            .map_err(|_| fail())?;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(backend = %self.addr, error = %e, "set_nodelay failed");
        }
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| fail())?;
        let addr = self.addr;
        tokio::spawn(async move {
            // With upgrades: a 101 hands the connection to a tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(send)
    }

    /// Keeps a connection whose response was read to its end, if there is room.
    fn checkin(&self, send: SendRequest<UpstreamBody>) {
        if self.settings.max_idle == 0 || send.is_closed() {
            return;
        }
        // A full queue drops the connection, which closes it.
        let _ = self.idle_here().push(Idle {
            send,
            since: Instant::now(),
        });
    }

    /// Closes the idle connections that outlived the idle timeout or were closed.
    pub fn reap(&self) {
        for idle in &self.idle {
            for _ in 0..idle.len() {
                let Some(i) = idle.pop() else { break };
                if i.since.elapsed() <= self.settings.idle && !i.send.is_closed() {
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
}

/// A response body from a pooled connection; once read to its end, the connection goes back
/// to its pool.
pub struct Pooled {
    body: Incoming,
    back: Option<(SendRequest<UpstreamBody>, Arc<BackendConns>)>,
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
