//! Client connection timers, kept apart from hyper's (whose header timer also runs while a
//! keep-alive connection waits for its next request):
//!
//! - `limits.header_read_timeout`: from accept, and from the first byte of each later request
//!   head, until the head is complete. On expiry an HTTP/1 client gets `408` with
//!   `Connection: close`, written here on the socket, and the connection closes.
//! - `limits.keepalive_timeout`: a connection with no request in flight for this long is shut
//!   down gracefully ([`watch`]): HTTP/1 closes, HTTP/2 sends GOAWAY.
//! - `limits.send_timeout`: a client that takes nothing of what is written to it for this long
//!   is cut, which drops the response and frees the backend slot it held.
//!
//! [`ConnState`] is shared by the IO wrapper ([`TimedIo`]), the service (which counts requests
//! in flight with [`InFlight`], held by the response body) and the watchdog.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::error::ProxyError;
use crate::headers;
use crate::keepalive::{Framing, Readable};
use tokio_util::sync::CancellationToken;

mod watch;
pub use watch::{watch, Graceful, DRAIN_LINGER};

/// The HTTP/2 connection preface; a plain connection starting with it is HTTP/2.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The timers of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// Longest time for one request head.
    pub header_read: Duration,
    /// Longest idle time between requests.
    pub keepalive: Duration,
    /// Longest time writing makes no progress.
    pub send: Duration,
}

/// What the IO wrapper, the service and the watchdog share about one connection.
pub struct ConnState {
    born: Instant,
    inflight: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds after `born` when the connection last became idle.
    idle_since: AtomicU64,
    /// The body length the last request announced (`u64::MAX`: unknown, as with chunked).
    body_len: AtomicU64,
    /// A response switched protocols: the connection is no longer HTTP/1.
    upgraded: AtomicBool,
    /// How many times hyper gave the idle connection back ([`crate::keepalive`]).
    parks: AtomicU64,
}

impl ConnState {
    /// State for a connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            born: Instant::now(),
            inflight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            body_len: AtomicU64::new(u64::MAX),
            upgraded: AtomicBool::new(false),
            parks: AtomicU64::new(0),
        })
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.born).as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts a request in flight until the returned guard drops (with the response body).
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Counts the connection busy, without a new request, until the guard drops: an HTTP/2
    /// tunnel keeps its connection from being closed as idle.
    pub fn busy(self: &Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Whether a response switched the connection's protocol.
    pub fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// Notes the body length the request about to be counted announced (None: unknown).
    pub fn note_body(&self, len: Option<u64>) {
        self.body_len
            .store(len.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How many times the idle connection was parked.
    pub fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    /// When an idle connection's keep-alive time runs out (from now, if it is busy).
    pub fn idle_deadline(&self, keepalive: Duration) -> Instant {
        self.idle_since().unwrap_or_else(Instant::now) + keepalive
    }

    /// When the connection became idle, if it is.
    fn idle_since(&self) -> Option<Instant> {
        (self.inflight.load(Ordering::Relaxed) == 0)
            .then(|| self.born + Duration::from_millis(self.idle_since.load(Ordering::Relaxed)))
    }
}

/// One request in flight on its connection; dropped with the response body.
pub struct InFlight(Arc<ConnState>);

impl InFlight {
    /// The response switches protocols (`101`): what follows on the connection is not HTTP/1.
    pub fn upgraded(&self) {
        self.0.upgraded.store(true, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        s.idle_since.store(s.ms(Instant::now()), Ordering::Relaxed);
        s.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's IO with the head and send timers.
pub struct TimedIo<S> {
    inner: S,
    state: Arc<ConnState>,
    timers: Timers,
    /// HTTP/2: no request heads to time (known from ALPN, or from the preface).
    h2: bool,
    /// Bytes read before hyper took the connection (the preface sniff), handed to it first.
    replay: Bytes,
    /// HTTP/1 on a plain socket: what hyper was handed since its connection started, to
    /// tell when it holds nothing unread (see [`crate::keepalive`]).
    framing: Option<Framing>,
    /// An idle connection was taken from hyper: reads end and shutdown is skipped, so hyper
    /// finishes and hands the socket back.
    parked: bool,
    /// hyper gives the connection back as soon as it is idle with nothing unread, not
    /// after [`PARK_AFTER`]: the lane ([`crate::lane`]) serves what comes next.
    prompt: bool,
    /// What `read_sleep` is set for, when it is not the head timer.
    armed: Armed,
    /// When the request head being read started, and the request count then.
    head: Option<(Instant, u64)>,
    read_sleep: Pin<Box<Sleep>>,
    /// Since when writing has made no progress.
    stalled: Option<Instant>,
    /// Made at the first write that cannot go out at once.
    write_sleep: Option<Pin<Box<Sleep>>>,
    /// The 408 being written, and how much of it is out.
    rejecting: Option<(Vec<u8>, usize)>,
    /// On a connection that ALPN made HTTP/2: how much of the client preface has been seen
    /// (None once it is complete).
    preface: Option<usize>,
}

/// What a connection's `read_sleep` is set for.
#[derive(Debug, Clone, Copy)]
enum Armed {
    /// The request head timer, or nothing in particular (it is set before use).
    Head,
    /// To look at parking hyper's connection again at this time.
    Park(Instant),
    /// For [`TimedIo::wait_readable`], until this time.
    Wait(Instant),
}

/// How long an HTTP/1 keep-alive connection is idle before hyper gives it back, with its
/// buffers ([`crate::keepalive`]).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// GOAWAY(last stream 0, PROTOCOL_ERROR), for a client whose HTTP/2 preface is wrong.
const GOAWAY_PROTOCOL_ERROR: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

impl<S> TimedIo<S> {
    /// Wraps the stream of the connection `state` describes; `h2` when it speaks HTTP/2.
    /// The first head's timer runs from accept.
    pub fn new(inner: S, state: Arc<ConnState>, timers: Timers, h2: bool) -> Self {
        let now = Instant::now();
        let born = state.born;
        Self {
            inner,
            state,
            timers,
            h2,
            replay: Bytes::new(),
            framing: None,
            parked: false,
            prompt: false,
            armed: Armed::Head,
            head: Some((born, 0)),
            read_sleep: Box::pin(tokio::time::sleep_until(now + timers.header_read)),
            stalled: None,
            write_sleep: None,
            rejecting: None,
            preface: None,
        }
    }

    /// The same on a TLS connection whose ALPN chose HTTP/2: a bad client preface gets a
    /// GOAWAY.
    pub fn alpn_h2(mut self) -> Self {
        self.preface = Some(0);
        self
    }

    /// Hands `bytes`, already read from the socket, to the reader first.
    pub fn with_replay(mut self, bytes: Bytes) -> Self {
        self.replay = bytes;
        self
    }

    /// Whether no bytes wait to be read again.
    pub fn replay_is_empty(&self) -> bool {
        self.replay.is_empty()
    }

    /// Takes the bytes read before hyper took the connection, to serve them elsewhere.
    pub fn take_replay(&mut self) -> Bytes {
        std::mem::take(&mut self.replay)
    }

    /// Has hyper give the connection back as soon as it is idle with nothing unread.
    pub fn park_promptly(&mut self) {
        self.prompt = true;
    }

    /// Lets hyper give the connection back while it is idle (plain HTTP/1 only).
    pub fn parkable(mut self) -> Self {
        self.framing = Some(Framing::new(self.state.requests.load(Ordering::Relaxed)));
        self
    }

    /// The wrapped stream, to read from it past the timers (the lane times its own reads).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Whether hyper was told the connection ended so that it gives the socket back.
    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// Takes the connection back from a finished hyper connection: its next reads are real
    /// again, with `unread` (what hyper had read and not used) first. True when there is
    /// such a rest.
    pub fn unpark(&mut self, unread: Bytes) -> bool {
        self.parked = false;
        // An empty rest may still hold hyper's whole read buffer: let it go.
        self.replay = if unread.is_empty() {
            Bytes::new()
        } else {
            unread
        };
        if let Some(f) = &mut self.framing {
            *f = Framing::new(self.state.requests.load(Ordering::Relaxed));
        }
        !self.replay.is_empty()
    }

    /// Between requests on a parkable connection: once it has been idle for [`PARK_AFTER`]
    /// and hyper holds nothing unread, hyper is told the connection ended (it finishes
    /// without closing the socket, and frees its buffers). Until then a timer brings hyper
    /// back here; it is set at most once per [`PARK_AFTER`], so a busy connection pays one
    /// extra poll per period, not one per request.
    fn poll_park(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let now = Instant::now();
        let idle = self.state.idle_since();
        let after = if self.prompt {
            Duration::ZERO
        } else {
            PARK_AFTER
        };
        if idle.is_some_and(|t| now >= t + after) && self.may_park() {
            self.parked = true;
            self.armed = Armed::Head;
            self.state.parks.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        if !matches!(self.armed, Armed::Park(t) if now < t) {
            let at = match idle {
                Some(t) if t + PARK_AFTER > now => t + PARK_AFTER,
                _ => now + PARK_AFTER,
            };
            self.read_sleep.as_mut().reset(at);
            self.armed = Armed::Park(at);
        }
        if self.read_sleep.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }

    /// Whether hyper can be told the connection ended: nothing is in flight or unwritten, and
    /// hyper read exactly one request with no body past what it announced.
    fn may_park(&self) -> bool {
        let s = &self.state;
        self.framing.as_ref().is_some_and(|f| {
            f.clean(
                s.requests.load(Ordering::Relaxed),
                s.body_len.load(Ordering::Relaxed),
            )
        }) && s.inflight.load(Ordering::Relaxed) == 0
            && !s.upgraded.load(Ordering::Relaxed)
            && self.stalled.is_none()
            && self.replay.is_empty()
    }
}

/// Shutdown as a connection waits for it: one registration with the token for the
/// connection's life. A fresh `cancelled()` polled on every wait would take the token's
/// lock each time, a lock every connection of every worker shares; after the first poll,
/// reading the token's state is enough, as the registration wakes the task.
pub struct ShutdownWatch<'a> {
    token: &'a CancellationToken,
    registered: Option<Pin<Box<tokio_util::sync::WaitForCancellationFuture<'a>>>>,
}

impl<'a> ShutdownWatch<'a> {
    /// Watches `token`; nothing is registered before the first wait.
    pub fn new(token: &'a CancellationToken) -> Self {
        Self {
            token,
            registered: None,
        }
    }

    /// Whether shutdown has begun.
    pub fn began(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Ready once shutdown has begun; the first call registers the task to be woken then.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.registered {
            Some(_) if self.token.is_cancelled() => Poll::Ready(()),
            Some(_) => Poll::Pending,
            None => self
                .registered
                .insert(Box::pin(self.token.cancelled()))
                .as_mut()
                .poll(cx),
        }
    }
}

impl<S: Readable> TimedIo<S> {
    /// Waits, holding no buffer, until the parked connection is readable (true), or until
    /// `deadline` (its keep-alive time) or shutdown comes (false).
    pub async fn wait_readable(
        &mut self,
        deadline: Instant,
        shutdown: &mut ShutdownWatch<'_>,
    ) -> bool {
        // The timer moves only when it would fire late. Set earlier, it fires, finds the
        // deadline not yet come, and is set again: a busy connection, whose deadline moves
        // on with every request, resets it about once a period instead of once a request.
        if !matches!(self.armed, Armed::Wait(t) if t <= deadline) {
            self.read_sleep.as_mut().reset(deadline);
            self.armed = Armed::Wait(deadline);
        }
        std::future::poll_fn(|cx| {
            if shutdown.poll(cx).is_ready() {
                return Poll::Ready(false);
            }
            if let Poll::Ready(r) = self.inner.poll_read_ready(cx) {
                return Poll::Ready(r.is_ok());
            }
            while self.read_sleep.as_mut().poll(cx).is_ready() {
                if matches!(self.armed, Armed::Wait(t) if t >= deadline) {
                    return Poll::Ready(false);
                }
                self.read_sleep.as_mut().reset(deadline);
                self.armed = Armed::Wait(deadline);
            }
            Poll::Pending
        })
        .await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TimedIo<S> {
    /// Writes the 408 (or, on HTTP/2, a GOAWAY; best effort) and ends reading: hyper sees
    /// the connection close.
    fn reject(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let h2 = self.h2;
        let (out, sent) = self.rejecting.get_or_insert_with(|| {
            if h2 {
                return (GOAWAY_PROTOCOL_ERROR.to_vec(), 0);
            }
            let e = ProxyError::ClientTimeout("the request head took too long");
            (e.raw_http1(&headers::new_request_id()), 0)
        });
        while *sent < out.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &out[*sent..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(n)) => *sent += n,
                // A client that reads nothing does not hold the connection open for long.
                Poll::Pending => break,
            }
        }
        // Best effort as well: the connection ends either way.
        if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_shutdown(cx) {
            tracing::debug!(error = %e, "closing after a request head timeout");
        }
        tracing::debug!("request head timed out: 408 and close");
        Poll::Ready(Ok(()))
    }

    /// The send timer around one write attempt.
    fn timed_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                let now = Instant::now();
                let since = *self.stalled.get_or_insert(now);
                let deadline = since + self.timers.send;
                if now >= deadline {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client read nothing of its response within send_timeout",
                    )));
                }
                let sleep = match &mut self.write_sleep {
                    Some(s) => {
                        s.as_mut().reset(deadline);
                        s
                    }
                    None => self
                        .write_sleep
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                if sleep.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            done => {
                self.stalled = None;
                done
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.rejecting.is_some() || this.parked {
            return Poll::Ready(Ok(()));
        }
        if this.state.is_upgraded() {
            // A tunnel: no request heads to time and nothing to park; its own timers rule.
            if this.replay.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = if this.replay.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            Poll::Ready(Ok(()))
        };
        let requests = this.state.requests.load(Ordering::Relaxed);
        if this.head.is_some_and(|(_, seen)| seen != requests) {
            // The head was complete: hyper handed the request to the service.
            this.head = None;
        }
        match r {
            Poll::Ready(Ok(())) => {
                let got = &buf.filled()[before..];
                if let Some(seen) = this.preface {
                    // ALPN chose HTTP/2: anything but its preface is a protocol error.
                    let n = got.len().min(H2_PREFACE.len() - seen);
                    if got[..n] != H2_PREFACE[seen..seen + n] {
                        buf.set_filled(before);
                        tracing::debug!("bad HTTP/2 preface: GOAWAY and close");
                        return this.reject(cx);
                    }
                    this.preface = (seen + n < H2_PREFACE.len()).then_some(seen + n);
                }
                if let Some(f) = &mut this.framing {
                    f.saw(got);
                }
                let idle = this.state.inflight.load(Ordering::Relaxed) == 0;
                if !got.is_empty() && !this.h2 && idle && this.head.is_none() {
                    this.head = Some((Instant::now(), requests));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending
                if this.head.is_none()
                    && this
                        .framing
                        .as_ref()
                        .is_some_and(|f| f.may_be_clean(requests)) =>
            {
                this.poll_park(cx)
            }
            Poll::Pending if !this.h2 => {
                let idle = this.state.inflight.load(Ordering::Relaxed) == 0;
                match this.head {
                    Some((since, _)) if idle => {
                        this.armed = Armed::Head;
                        let deadline = since + this.timers.header_read;
                        if Instant::now() >= deadline {
                            return this.reject(cx);
                        }
                        this.read_sleep.as_mut().reset(deadline);
                        if this.read_sleep.as_mut().poll(cx).is_ready() {
                            cx.waker().wake_by_ref();
                        }
                        Poll::Pending
                    }
                    _ => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.timed_write(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.timed_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.timed_write(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.parked {
            // hyper is done with an idle connection that stays open.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
