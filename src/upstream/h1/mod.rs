//! sandgate's HTTP/1.1 client for backend connections.
//!
//! A request is written and its response read by the request's own task: no connection task,
//! no channel between the two, and a connection holds no buffer while it is idle (its socket
//! alone waits in the pool). httparse reads the response head and chunk-size lines; this
//! module frames bodies (RFC 9112 sections 6 and 7) and never guesses: a response whose
//! framing is invalid or ambiguous is an error, and its connection is not used again.
//!
//! - [`head`]: the request head and its body framing; the response head and its framing.
//! - [`chunked`]: the chunked coding of response bodies.
//! - [`body`]: the response body, which owns the connection until its last byte and then
//!   hands it back for the pool to keep.
//!
//! A response that arrives while the request body is still being sent (a `413` to an upload,
//! say) ends the upload: the response is passed on, and the connection is closed after it.
//! Interim `1xx` responses are skipped; a `101` hands the connection to a tunnel
//! ([`Upgraded`]).

pub mod body;
pub mod chunked;
pub mod head;
#[cfg(test)]
mod tests;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request};
use http_body::Body as _;
use http_body_util::Either;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use body::{Body, Upgraded};
use head::{Out, Parsed};

use super::connect::Stream;
use super::UpstreamBody;
use crate::headers::Hop;

/// The least a read reserves. Reads that fill what they reserved double it; reads that take
/// less than a quarter of it halve it. The size carries over from one response to the next
/// on a connection (it holds no memory while the connection is idle), so a backend that
/// sends large bodies is read in large pieces from the start, as hyper's adaptive reads do.
const READ_MIN: usize = 8 * 1024;
/// The most one read takes.
const READ_MAX: usize = 256 * 1024;

/// A backend connection: its stream, and the bytes read from it and not yet used.
pub struct Conn {
    io: Stream,
    buf: BytesMut,
    /// How much the next read reserves.
    read_size: usize,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection broke.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The backend closed the connection before its response was complete.
    #[error("connection closed before the response was complete")]
    Closed,
    /// The response head was refused.
    #[error(transparent)]
    Head(#[from] head::HeadError),
    /// The chunked body was refused.
    #[error(transparent)]
    Chunked(#[from] chunked::ChunkError),
    /// The request body did not match its `Content-Length`.
    #[error("the request body does not match its Content-Length")]
    BodyLength,
    /// The request body failed on the client's side (too large, stalled, aborted).
    #[error("request body: {0}")]
    ClientBody(Box<dyn std::error::Error + Send + Sync>),
}

/// A failed exchange, and the request when none of it reached the backend (it may go on
/// another connection as it is).
pub struct Failed {
    /// What went wrong.
    pub error: Error,
    /// The request, untouched: nothing of it was sent, or the backend closed a reused
    /// connection without a byte of answer to a request that may be sent twice.
    pub unsent: Option<Request<UpstreamBody>>,
}

impl Conn {
    /// A connection on `io`.
    pub fn new(io: Stream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            read_size: READ_MIN,
        }
    }

    /// Whether an idle connection can carry a request: the backend neither closed it nor
    /// sent anything while no request was out (an EOF, a TLS alert, stray bytes, plaintext
    /// TLS decrypted and left unread: all retire it). A read that would block tells; it costs
    /// no system call unless the socket was marked readable, and on TLS it also takes records
    /// that carry no data (session tickets).
    pub fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Reads what the backend sent into the buffer: the count, 0 at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        // The first look after a request went out usually finds nothing yet: asking costs
        // less than a read that comes back empty.
        ready!(self.io.poll_maybe_readable(cx));
        let room = self.read_size;
        let io = &mut self.io;
        let n = ready!(crate::arena::poll_read(&mut self.buf, room, |buf| {
            tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
        }))?;
        if n == room {
            self.read_size = (self.read_size * 2).min(READ_MAX);
        } else if n < self.read_size / 4 {
            self.read_size = (self.read_size / 2).max(READ_MIN);
        }
        Poll::Ready(Ok(n))
    }

    /// Lets go of the read buffer once it holds nothing: an idle connection keeps none.
    fn release(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }
}

/// Sends `req` on `conn` (origin-form target, `Host` set), with the fields of `hop` after its
/// own, and reads the response head. The body streams from the returned response, which owns
/// the connection until its end.
/// `reused`: the connection carried a request before, so the backend may have closed it as
/// the request went out. `batch`: the request is written once the runtime has run the other
/// tasks ready now, so that the requests of one batch reach the backend together and wake
/// it once rather than once each (see [`super::BackendConns::send`]).
pub async fn send(
    mut conn: Conn,
    req: Request<UpstreamBody>,
    hop: Option<&Hop>,
    reused: bool,
    batch: bool,
) -> Result<http::Response<Body>, Failed> {
    let (mut head, mut body) = req.into_parts();
    let out = head::request_framing(&mut head, body.is_end_stream(), body.size_hint().exact());
    // A buffered body goes out with the head, in one write. Its size is known, so it is
    // framed by length, and that length must be the one the head says.
    let whole = match &mut body {
        Either::Right(full) if out != Out::Empty => {
            let mut cx = Context::from_waker(Waker::noop());
            let data = match Pin::new(full).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(f))) => f.into_data().unwrap_or_default(),
                _ => Bytes::new(),
            };
            if out != Out::Length(data.len() as u64) {
                return Err(Failed {
                    error: Error::BodyLength,
                    unsent: None,
                });
            }
            Some(data)
        }
        _ => None,
    };
    let replayable = matches!(body, Either::Right(_)) || out == Out::Empty;
    let give_back = |head, whole: Option<Bytes>, body| {
        let body = match whole {
            Some(b) => Either::Right(http_body_util::Full::new(b)),
            None => body,
        };
        Some(Request::from_parts(head, body))
    };
    let mut wire = Vec::new();
    head::encode_request(&head, hop, &mut wire);
    let mut outbox = Outbox::default();
    outbox.set(
        Bytes::from(wire),
        whole.clone().unwrap_or_default(),
        Bytes::new(),
    );
    if batch {
        tokio::task::yield_now().await;
    }
    if let Err(e) = poll_fn(|cx| outbox.poll_write(cx, &mut conn.io)).await {
        let unsent = (outbox.sent == 0)
            .then(|| give_back(head, whole, body))
            .flatten();
        return Err(Failed {
            error: e.into(),
            unsent,
        });
    }
    let method = std::mem::take(&mut head.method);
    let mut early = None;
    let mut complete = true;
    if let (Either::Left(stream), Out::Length(_) | Out::Chunked) = (body, out) {
        // Boxed: an upload's state would otherwise size every request's future.
        early = Box::pin(upload(&mut conn, stream, out, &method))
            .await
            .map_err(|error| Failed {
                error,
                unsent: None,
            })?;
        complete = early.is_none();
    }
    let resp = match early {
        Some(r) => r,
        None => match read_head(&mut conn, &method).await {
            Ok(r) => r,
            Err((Error::Closed, false)) if reused && replayable && idempotent(&method) => {
                head.method = method;
                return Err(Failed {
                    error: Error::Closed,
                    unsent: Some(Request::from_parts(
                        head,
                        Either::Right(http_body_util::Full::new(whole.unwrap_or_default())),
                    )),
                });
            }
            Err((error, _)) => {
                return Err(Failed {
                    error,
                    unsent: None,
                })
            }
        },
    };
    let head::Response {
        head,
        framing,
        keep_alive,
    } = *resp;
    Ok(http::Response::from_parts(
        head,
        Body::new(conn, framing, keep_alive && complete),
    ))
}

/// Methods whose request may be sent twice (RFC 9110 section 9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Reads until a final response head is complete, skipping interim ones. The error comes
/// with whether any byte of an answer arrived.
async fn read_head(conn: &mut Conn, method: &Method) -> Result<Box<head::Response>, (Error, bool)> {
    let mut answered = !conn.buf.is_empty();
    loop {
        if let Some(r) = final_head(&mut conn.buf, method).map_err(|e| (e.into(), true))? {
            return Ok(r);
        }
        match poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) => return Err((Error::Closed, answered)),
            Ok(_) => answered = true,
            Err(e) => return Err((e.into(), answered)),
        }
    }
}

/// Streams a request body framed as `out`. A final response that arrives before the body is
/// sent whole ends the upload and is returned.
async fn upload(
    conn: &mut Conn,
    mut body: http_body_util::Limited<crate::reqbody::ClientBody>,
    out: Out,
    method: &Method,
) -> Result<Option<Box<head::Response>>, Error> {
    let mut outbox = Outbox::default();
    let mut left = match out {
        Out::Length(n) => Some(n),
        _ => None,
    };
    let mut finished = false;
    poll_fn(|cx| loop {
        if let Poll::Ready(r) = poll_early(conn, cx, method) {
            return Poll::Ready(r.map(Some));
        }
        if !outbox.is_empty() {
            ready!(outbox.poll_write(cx, &mut conn.io))?;
        }
        if finished {
            return Poll::Ready(Ok(None));
        }
        let frame = match ready!(Pin::new(&mut body).poll_frame(cx)) {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Poll::Ready(Err(Error::ClientBody(e))),
            None => {
                finished = true;
                match left {
                    Some(0) => {}
                    Some(_) => return Poll::Ready(Err(Error::BodyLength)),
                    None => {
                        outbox.set(Bytes::from_static(b"0\r\n\r\n"), Bytes::new(), Bytes::new())
                    }
                }
                continue;
            }
        };
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) => match &mut left {
                Some(l) => {
                    *l = l.checked_sub(data.len() as u64).ok_or(Error::BodyLength)?;
                    outbox.set(data, Bytes::new(), Bytes::new());
                }
                None => outbox.set(
                    chunked::size_line(data.len()),
                    data,
                    Bytes::from_static(b"\r\n"),
                ),
            },
            // Trailers end a chunked body; with a length they have no place and are dropped.
            Err(frame) => {
                if let (Ok(trailers), None) = (frame.into_trailers(), left) {
                    let mut end = b"0\r\n".to_vec();
                    head::write_fields(&trailers, &mut end);
                    end.extend_from_slice(b"\r\n");
                    outbox.set(Bytes::from(end), Bytes::new(), Bytes::new());
                    finished = true;
                }
            }
        }
    })
    .await
}

/// While a body is being sent: whether the backend has answered already. Interim responses
/// (`100 Continue`) are skipped; Ready with a final head, or with the error that ends the
/// exchange; Pending (registered to be woken) while nothing final has come.
fn poll_early(
    conn: &mut Conn,
    cx: &mut Context<'_>,
    method: &Method,
) -> Poll<Result<Box<head::Response>, Error>> {
    loop {
        match ready!(conn.poll_fill(cx)) {
            Ok(0) => return Poll::Ready(Err(Error::Closed)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
        if let Some(r) = final_head(&mut conn.buf, method)? {
            return Poll::Ready(Ok(r));
        }
    }
}

/// The final response head at the start of `buf`, taken off it with the interim ones before
/// it; None while the bytes read hold no whole final head yet.
fn final_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<Box<head::Response>>, head::HeadError> {
    while !buf.is_empty() {
        match head::parse_response(buf, method)? {
            Parsed::Final(r) => return Ok(Some(r)),
            Parsed::Interim(n) => buf.advance(n),
            Parsed::Partial => break,
        }
    }
    Ok(None)
}

/// Up to three buffers written in order with vectored writes, and how much went out in all.
#[derive(Default)]
struct Outbox {
    bufs: [Bytes; 3],
    sent: usize,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.bufs.iter().all(Bytes::is_empty)
    }

    /// Queues `a`, `b` and `c`; the outbox is empty.
    fn set(&mut self, a: Bytes, b: Bytes, c: Bytes) {
        self.bufs = [a, b, c];
    }

    /// Writes everything queued, then flushes.
    fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let slices = self.bufs.each_ref().map(|b| io::IoSlice::new(b));
            let mut n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
            for b in &mut self.bufs {
                let k = n.min(b.len());
                b.advance(k);
                n -= k;
            }
        }
        Pin::new(io).poll_flush(cx)
    }
}

/// What a connection's read side is: reads hand over bytes already read first.
impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.buf.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.buf.len().min(buf.remaining());
        buf.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
