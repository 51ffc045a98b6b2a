//! The HTTP/1.1 lane: plain HTTP/1.1 connections whose requests have no body are served
//! here, without hyper's server connection. Most requests a sandbox fleet gets are of that
//! kind, and hyper's per-request machinery (its dispatcher, its buffered reads and flushes,
//! its extra polls) was about a third of what a request cost.
//!
//! The lane reads a request head ([`request::parse`]), runs it through the same pipeline
//! ([`crate::proxy::handle_parts`]), and writes the response ([`response`]). Anything it does
//! not serve goes to hyper with the bytes read so far: a request with a body, an upgrade, an
//! `Expect`, HTTP/1.0, a head that did not come whole in what the socket had, or one that is
//! not valid, which hyper then refuses as it always did. hyper gives the connection back as
//! soon as it is idle with nothing unread ([`crate::keepalive`]), and the lane takes it on.
//!
//! Between requests the lane holds no buffer: the connection waits for the socket to be
//! readable, as a parked connection does ([`crate::keepalive::serve_h1`]). The pipeline's
//! slot ([`Slot`]) stays for up to a second, so that a busy connection allocates it once.

pub mod request;
pub mod response;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use http::request::Parts;
use http::{Method, Response};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::body::ProxyBody;
use crate::conn::{ConnState, TimedIo};
use crate::keepalive::Readable;
use crate::proxy::ConnCtx;
use request::Head;

/// How much the lane reads for one head before it leaves the connection to hyper: below the
/// smallest `limits.max_header_bytes` (8 KiB), so a head the lane takes is one hyper would.
const READ_SIZE: usize = 4096;

/// Reads what the socket has into `buf`, up to [`READ_SIZE`] in all; an empty `buf` takes
/// its bytes from the worker's read arena ([`crate::arena`]).
fn poll_read_head<T: Readable>(
    io: &mut T,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let limit = READ_SIZE.saturating_sub(buf.len());
    crate::arena::poll_read(buf, limit, |room| io.poll_read_buf(cx, room))
}

/// What serves a connection's requests on the lane.
pub struct Lane {
    /// The connection's context for the pipeline.
    pub ctx: Arc<ConnCtx>,
}

/// The client's side of a connection, as the lane writes to it and watches it.
pub trait Wire: AsyncWrite + Unpin {
    /// Ready once the client is gone: it closed (without half-close, as hyper's server
    /// takes it too) or its socket failed. What it sends meanwhile (a pipelined request)
    /// is kept in `buf`, up to [`READ_SIZE`]; past that the socket is not read.
    fn poll_gone(&mut self, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<()>;
}

impl<T: AsyncRead + AsyncWrite + Readable + Unpin> Wire for TimedIo<T> {
    fn poll_gone(&mut self, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if buf.len() >= READ_SIZE {
                return Poll::Pending;
            }
            // Most looks find nothing: asking whether the socket is readable costs less than
            // a read that comes back empty.
            if self.get_mut().poll_read_ready(cx).is_pending() {
                return Poll::Pending;
            }
            match poll_read_head(self.get_mut(), cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

/// Why the lane stopped serving a connection.
#[derive(Debug)]
pub enum Next {
    /// hyper is to read what follows, starting with these bytes.
    Hyper(BytesMut),
    /// Nothing more to read for now: the connection waits for its next request.
    Idle,
    /// The connection is over.
    Done,
}

/// Where a connection's pipeline futures live, one request after the other: one allocation
/// while the connection is busy, not one a request. The pipeline's future is several KiB,
/// and moving it into a fresh box cost more than the rest of the lane; written into this
/// one, it is made in place.
pub type Slot<F> = Option<Pin<Box<Option<F>>>>;

impl Lane {
    /// Starts `parts`, which has no body, on the pipeline. The caller passes this to
    /// [`Lane::run`] as a closure only because the future's type has no name to give its
    /// slot.
    pub fn start(&self, parts: Parts) -> impl Future<Output = Response<ProxyBody>> + '_ {
        crate::proxy::handle_parts(&self.ctx, parts, None)
    }

    /// Serves requests on `io`, starting with the bytes in `buf`, until one is hyper's, the
    /// connection has nothing more to read for now, or it ends. `last`: the connection is
    /// draining, and the request read now is its last. `pipeline` starts a request
    /// ([`Lane::start`]) in `slot`.
    #[allow(clippy::too_many_arguments)]
    pub async fn run<T, F>(
        &self,
        io: &mut TimedIo<T>,
        mut buf: BytesMut,
        state: &Arc<ConnState>,
        shutdown: &CancellationToken,
        last: bool,
        slot: &mut Slot<F>,
        pipeline: impl Fn(Parts) -> F,
    ) -> Next
    where
        T: AsyncRead + AsyncWrite + Readable + Unpin,
        F: Future<Output = Response<ProxyBody>>,
    {
        loop {
            let (parts, close) = loop {
                if !buf.is_empty() {
                    match request::parse(&mut buf) {
                        Head::Simple { parts, close } => break (parts, close),
                        Head::Hyper => return Next::Hyper(buf),
                        Head::Partial if buf.len() >= READ_SIZE => return Next::Hyper(buf),
                        Head::Partial => {}
                    }
                }
                // The rest of the head, if the socket has it; hyper waits for it otherwise,
                // with the head timer.
                let read = std::future::poll_fn(|cx| {
                    Poll::Ready(match poll_read_head(io.get_mut(), cx, &mut buf) {
                        Poll::Ready(r) => Some(r),
                        Poll::Pending => None,
                    })
                });
                match read.await {
                    Some(Ok(n)) if n > 0 => {}
                    // The client closed between requests.
                    Some(Ok(_)) if buf.is_empty() => return Next::Done,
                    Some(Ok(_)) => return Next::Hyper(buf),
                    // Woken with nothing to read after all.
                    None if buf.is_empty() => return Next::Idle,
                    None => return Next::Hyper(buf),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "connection read failed");
                        return Next::Done;
                    }
                }
            };
            let close = close || last || shutdown.is_cancelled();
            let head_req = parts.method == Method::HEAD;
            let inflight = state.request();
            let fut = match slot {
                Some(fut) => {
                    fut.set(Some(pipeline(*parts)));
                    fut
                }
                None => slot.insert(Box::pin(Some(pipeline(*parts)))),
            };
            // A client that goes away while it waits takes its request with it, as with
            // hyper: the pipeline is dropped (its log line says `client_abort`).
            let answer = std::future::poll_fn(|cx| {
                if let Some(f) = fut.as_mut().as_pin_mut() {
                    if let Poll::Ready(r) = f.poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                }
                io.poll_gone(&mut buf, cx).map(|()| None)
            });
            // Boxed, as the pipeline: inline, the writing's state (and the response, which
            // the task would keep room for) would size the task of every waiting connection.
            // Shutdown that began while the pipeline ran has the answer say close, and the
            // connection closes after it.
            let (respond, close) = match answer.await {
                Some(resp) => {
                    fut.set(None);
                    let close = close || shutdown.is_cancelled();
                    (
                        Box::pin(respond(io, &mut buf, resp, head_req, close)),
                        close,
                    )
                }
                None => {
                    fut.set(None);
                    tracing::debug!("client went away before its response");
                    return Next::Done;
                }
            };
            let sent = respond.await;
            drop(inflight);
            if let Err(e) = sent {
                tracing::debug!(error = %e, "response not completed; closing");
                return Next::Done;
            }
            // An answer that said `Connection: close` ends the connection. One that did not
            // (shutdown began after its head went out) leaves the client free to send more:
            // what it pipelined, or sends within the drain's linger, is still served, with
            // `Connection: close`, rather than lost.
            if close {
                if let Err(e) = io.shutdown().await {
                    tracing::debug!(error = %e, "closing the connection");
                }
                return Next::Done;
            }
            if buf.is_empty() {
                // Nothing is held while the connection waits, the head's allocation included.
                return Next::Idle;
            }
        }
    }
}

/// Writes `resp` to the client: its head, then its body as it comes. The body (the
/// backend's slot) is dropped when this returns.
async fn respond<W: Wire>(
    io: &mut W,
    buf: &mut BytesMut,
    resp: Response<ProxyBody>,
    head_req: bool,
    close: bool,
) -> io::Result<()> {
    let (head, mut body) = resp.into_parts();
    let hint = http_body::Body::size_hint(&body).exact();
    // The worker's spare write buffer, if no other answer holds it; put back after.
    let mut out = SPARE_OUT.take();
    out.reserve(512);
    let framing = response::encode_head(&head, hint, head_req, close, &mut out);
    drop(head);
    let sent = response::send_body(io, buf, &mut body, framing, &mut out).await;
    if out.capacity() <= SPARE_OUT_MAX {
        out.clear();
        SPARE_OUT.set(out);
    }
    sent
}

/// The largest write buffer kept for the worker's next answer.
const SPARE_OUT_MAX: usize = 16 * 1024;

thread_local! {
    /// A write buffer between answers: one allocation for the answers that come one after
    /// another, instead of one each.
    static SPARE_OUT: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(test)]
mod tests;
