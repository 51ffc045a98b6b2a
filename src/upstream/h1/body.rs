//! A response body read off a backend connection. It owns the connection while it streams;
//! once read to its end, a connection that may carry another request is handed back
//! ([`Body::take_reusable`]) with no buffer left on it. A body dropped early closes its
//! connection.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::chunked::{Decoder, Step};
use super::head::In;
use super::{Conn, Error};

/// Where the body is.
enum State {
    /// This many bytes are left.
    Length(u64),
    /// Chunked.
    Chunked(Decoder),
    /// Until the backend closes.
    Close,
    /// Switched protocols: the connection is the tunnel's.
    Upgrade,
    /// Read to its end.
    Done,
}

/// A backend's response body.
pub struct Body {
    conn: Option<Conn>,
    state: State,
    /// The connection may carry another request once the body is read.
    keep_alive: bool,
}

/// A connection that switched protocols: bytes the backend sent after its `101` come first.
pub type Upgraded = Conn;

impl Body {
    /// The body framed as `framing` on `conn`.
    pub(super) fn new(conn: Conn, framing: In, keep_alive: bool) -> Self {
        let state = match framing {
            In::Empty | In::Length(0) => State::Done,
            In::Length(n) => State::Length(n),
            In::Chunked => State::Chunked(Decoder::default()),
            In::Upgrade => State::Upgrade,
            In::Close => State::Close,
        };
        let mut body = Self {
            conn: Some(conn),
            state,
            keep_alive,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The connection, once the body has been read whole and the connection may carry another
    /// request (at most once).
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if matches!(self.state, State::Done) && self.keep_alive {
            return self.conn.take();
        }
        None
    }

    /// The connection of a `101` response, for its tunnel.
    pub fn take_upgraded(&mut self) -> Option<Upgraded> {
        match self.state {
            State::Upgrade => self.conn.take(),
            _ => None,
        }
    }

    /// The body is complete: a connection that may be used again holds nothing unread and
    /// lets go of its buffer; any other is closed.
    fn finish(&mut self) {
        self.state = State::Done;
        match &mut self.conn {
            Some(c) if self.keep_alive && c.buf.is_empty() => c.release(),
            _ => {
                // Bytes past the end of the response, or a connection that cannot be used
                // again: it closes here.
                self.keep_alive = false;
                self.conn = None;
            }
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut this.state {
                State::Done | State::Upgrade => return Poll::Ready(None),
                State::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        let data = conn.buf.split_to(n).freeze();
                        *left -= n as u64;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                State::Chunked(d) => match d.step(&mut conn.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Trailers(t)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Step::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::NeedMore) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                State::Close => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::Closed)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done | State::Upgrade)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done | State::Upgrade => SizeHint::with_exact(0),
            State::Chunked(_) | State::Close => SizeHint::default(),
        }
    }
}
