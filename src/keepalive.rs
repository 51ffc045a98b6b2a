//! HTTP/1 keep-alive connections that hold no buffers between requests.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for as long as a connection
//! lives, idle or not. On a plain HTTP/1 connection sandgate takes the connection back from
//! hyper once it is idle and waits for the next request with no buffer at all, as nginx
//! does:
//!
//! 1. When hyper asks for the next request head and none has arrived, the IO wrapper
//!    ([`crate::conn::TimedIo`]) tells hyper the connection ended, but only when hyper holds
//!    nothing unread: exactly one request was handed to it since it took the connection, and
//!    every byte it was given belongs to that request's head and announced body
//!    ([`Framing`]). Pipelined, chunked or upgraded connections simply stay with hyper.
//! 2. hyper finishes without closing the socket ([`crate::conn::TimedIo`] skips its
//!    shutdown) and hands the socket back ([`serve_h1`]); its buffers are freed.
//! 3. The socket waits for readability (or the keep-alive timeout, or shutdown), and a fresh
//!    hyper connection serves the next request.
//!
//! At shutdown (or a binary upgrade) a parked connection is not cut at once: its client may
//! be sending a request on it right now, and would see the connection close under it. For up
//! to [`conn::DRAIN_LINGER`] a request that arrives is still served, with `Connection: close`.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::{self, ConnState, Graceful, ShutdownWatch, TimedIo, Timers, H2_PREFACE};
use crate::lane::{Lane, Next};

/// What hyper was handed since its connection started, to tell whether it holds unread
/// bytes once its one request is answered.
#[derive(Debug)]
pub struct Framing {
    /// The request count when the hyper connection started.
    requests_at_start: u64,
    /// Bytes handed to hyper since.
    delivered: u64,
    /// Where the first request head ends (just past its empty line), once seen.
    head_end: Option<u64>,
    /// The head scan across reads: 0 in a line, 1 just after `\n`, 2 just after `\n\r`.
    scan: u8,
    /// The bytes start with something the scan does not model (empty lines before the
    /// request line): this hyper connection keeps the socket.
    unknown: bool,
}

impl Framing {
    /// Framing for a hyper connection starting when `requests` requests were counted.
    pub fn new(requests: u64) -> Self {
        Self {
            requests_at_start: requests,
            delivered: 0,
            head_end: None,
            scan: 0,
            unknown: false,
        }
    }

    /// Accounts for `bytes` handed to hyper.
    pub fn saw(&mut self, bytes: &[u8]) {
        if self.delivered == 0 && matches!(bytes.first(), Some(b'\r' | b'\n')) {
            self.unknown = true;
        }
        if self.head_end.is_none() && !self.unknown {
            self.head_end = self.scan(bytes).map(|i| self.delivered + i as u64);
        }
        self.delivered += bytes.len() as u64;
    }

    /// Where in `bytes` the head ends (an empty line, `\n\n` or `\n\r\n`, as httparse reads
    /// it), carrying the scan state to the next call when it does not.
    fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            if self.scan == 0 {
                i += memchr::memchr(b'\n', &bytes[i..])? + 1;
                self.scan = 1;
                continue;
            }
            self.scan = match (self.scan, bytes[i]) {
                (_, b'\n') => return Some(i + 1),
                (1, b'\r') => 2,
                _ => 0,
            };
            i += 1;
        }
        None
    }

    /// Whether [`Framing::clean`] can still become true: at most one request so far, and
    /// bytes the scan models.
    pub fn may_be_clean(&self, requests: u64) -> bool {
        requests <= self.requests_at_start + 1 && !self.unknown
    }

    /// Whether hyper holds nothing unread: one request since the start (`requests` counted
    /// now), and everything delivered is its head and its announced body (`body_len`,
    /// `u64::MAX` when unknown).
    pub fn clean(&self, requests: u64, body_len: u64) -> bool {
        requests == self.requests_at_start + 1
            && body_len != u64::MAX
            && self
                .head_end
                .is_some_and(|h| h.checked_add(body_len) == Some(self.delivered))
    }
}

/// A stream that can wait to be readable without reading.
pub trait Readable {
    /// Ready once a read would not block.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Reads what the socket has into `buf`'s spare room; Pending (and woken later) when it
    /// has nothing. A read shorter than the room clears the socket's readiness, so the next
    /// wait does not begin with a read that finds nothing.
    fn poll_read_buf<B: BufMut>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<io::Result<usize>>;
}

impl Readable for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn poll_read_buf<B: BufMut>(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut B,
    ) -> Poll<io::Result<usize>> {
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }
}

impl Readable for tokio_rustls::server::TlsStream<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Not used: TLS connections are not parked (rustls may hold decrypted bytes).
        self.get_ref().0.poll_read_ready(cx)
    }

    fn poll_read_buf<B: BufMut>(
        &mut self,
        _: &mut Context<'_>,
        _: &mut B,
    ) -> Poll<io::Result<usize>> {
        // Not used either: the lane serves plain connections only.
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

/// The start of a plain connection: whether it is HTTP/2 (prior knowledge), and the bytes
/// read to tell, to be handed to hyper first. None when the client closed first. When
/// `deadline` passes first the connection is HTTP/1 and the head timer answers it.
pub async fn sniff(stream: &TcpStream, deadline: Instant) -> io::Result<Option<(bool, Bytes)>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    loop {
        if tokio::time::timeout_at(deadline, stream.readable())
            .await
            .is_err()
        {
            return Ok(Some((false, Bytes::copy_from_slice(&buf[..n]))));
        }
        match stream.try_read(&mut buf[n..]) {
            Ok(0) => return Ok(None),
            Ok(k) => {
                n += k;
                if buf[..n] != H2_PREFACE[..n] {
                    return Ok(Some((false, Bytes::copy_from_slice(&buf[..n]))));
                }
                if n == H2_PREFACE.len() {
                    return Ok(Some((true, Bytes::copy_from_slice(&buf))));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

impl<I, S> Graceful for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: http_body::Body + 'static,
    <S::ResBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves HTTP/1 (with upgrades) on `io` until the connection ends, parking it between
/// requests when `io` is parkable.
pub async fn serve_h1<T, S, B>(
    mut io: Box<TimedIo<T>>,
    mut svc: S,
    builder: &http1::Builder,
    state: &Arc<ConnState>,
    timers: Timers,
    shutdown: &CancellationToken,
    lane: Option<&Lane>,
) -> hyper::Result<()>
where
    T: AsyncRead + AsyncWrite + Readable + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Unpin,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Everything that lives across a wait is boxed or small, so that a parked connection
    // costs little more than its socket: hyper's state and buffers are freed while parked.
    // With the lane, hyper serves only what the lane leaves it, and gives the connection back
    // as soon as it is idle; the lane starts with what was read before (the replay).
    let mut last = false;
    let mut slot = None;
    let mut watch = ShutdownWatch::new(shutdown);
    // Nothing came before the head timer ran out (the protocol sniff gave up empty): hyper's
    // connection answers that with 408, its head timer running from accept.
    let mut silent = lane.is_some() && io.replay_is_empty();
    if lane.is_some() {
        io.park_promptly();
    }
    loop {
        if let Some(lane) = lane.filter(|_| !std::mem::take(&mut silent)) {
            let start = BytesMut::from(&io.take_replay()[..]);
            let pipeline = |parts| lane.start(parts);
            let run = lane.run(&mut io, start, state, shutdown, last, &mut slot, pipeline);
            match run.await {
                Next::Done => return Ok(()),
                Next::Hyper(bytes) => {
                    slot = None;
                    // A copy: the bytes may share the worker's read arena, which hyper
                    // would then hold for as long as it takes to read the request.
                    io.unpark(Bytes::copy_from_slice(&bytes));
                }
                Next::Idle => {
                    // The pipeline's slot stays while requests keep coming; a connection idle
                    // for longer holds none.
                    if slot.is_some() {
                        // From when it went idle, as the keep-alive time: no clock read.
                        let brief = state.idle_deadline(timers.keepalive.min(conn::PARK_AFTER));
                        if io.wait_readable(brief, &mut watch).await {
                            continue;
                        }
                        slot = None;
                    }
                    match idle(&mut io, state, timers, &mut watch).await {
                        Wait::Readable => {}
                        Wait::Last => last = true,
                        Wait::Over => return Ok(()),
                    }
                    continue;
                }
            }
        }
        let mut conn = Box::new(
            builder
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades(),
        );
        Box::pin(conn::watch(
            Pin::new(&mut *conn),
            state,
            timers.keepalive,
            shutdown,
        ))
        .await?;
        let unread;
        (io, svc, unread) = match conn.into_parts() {
            Some(parts) => (parts.io.into_inner(), parts.service, parts.read_buf),
            None => return Ok(()), // upgraded: the tunnel owns the socket now
        };
        if !io.is_parked() {
            return Ok(());
        }
        tracing::trace!("idle connection parked");
        // Back to the lane; without it, hyper had read ahead after all: serve that at once.
        if io.unpark(unread) || lane.is_some() {
            continue;
        }
        match idle(&mut io, state, timers, &mut watch).await {
            Wait::Readable => continue,
            Wait::Over => return Ok(()),
            Wait::Last => {}
        }
        // Draining: one last request, answered with `Connection: close` (keep-alive off) and
        // not cut short by the shutdown. Boxed: a hyper connection held inline would weigh on
        // every parked connection's task, where this path is rare.
        return Box::pin(async move {
            let never = CancellationToken::new();
            let mut last = builder.clone();
            last.keep_alive(false);
            let conn = last.serve_connection(TokioIo::new(io), svc).with_upgrades();
            tokio::pin!(conn);
            conn::watch(conn, state, timers.keepalive, &never).await
        })
        .await;
    }
}

/// How a wait for the next request on an idle connection ended.
enum Wait {
    /// The socket has bytes.
    Readable,
    /// It has bytes, and shutdown began: the request they start is the last one.
    Last,
    /// The keep-alive time ran out, shutdown came with nothing sent, or the socket failed:
    /// closing an idle HTTP/1 connection, dropping the socket is all.
    Over,
}

/// Waits, holding no buffer, for the next request on an idle connection: until the socket
/// is readable, the connection has been idle for its keep-alive time, or shutdown. Once
/// shutdown began, a request that comes within [`conn::DRAIN_LINGER`] is still served: its
/// client may be sending it right now, and would see the connection close under it.
async fn idle<T: Readable>(
    io: &mut TimedIo<T>,
    state: &ConnState,
    timers: Timers,
    shutdown: &mut ShutdownWatch<'_>,
) -> Wait {
    let idle_deadline = state.idle_deadline(timers.keepalive);
    if io.wait_readable(idle_deadline, shutdown).await {
        return Wait::Readable;
    }
    if !shutdown.began() {
        return Wait::Over;
    }
    let linger = idle_deadline.min(Instant::now() + conn::DRAIN_LINGER);
    let never = CancellationToken::new();
    if io
        .wait_readable(linger, &mut ShutdownWatch::new(&never))
        .await
    {
        Wait::Last
    } else {
        Wait::Over
    }
}

#[cfg(test)]
#[path = "keepalive_tests.rs"]
mod tests;
