//! Writing a response on the lane: the head (status line, fields, `Date`, and the framing
//! hyper's server would choose), then the body, in as few writes as it arrives in.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::response::Parts;
use http::StatusCode;
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Wire;
use crate::upstream::h1::head;

/// Body bytes up to this size are copied behind the head, to go out in one write; larger
/// ones are written from where they are.
const COPY_BELOW: usize = 4096;

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// None at all: a `HEAD` request's answer, `1xx`, `204`, `304`.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: the length is not known before the end.
    Chunked,
}

/// Writes the status line and fields of `parts` into `out`, and decides the body's framing
/// as hyper's server does: a response that has no body has none; else its own
/// `Content-Length`, or its exact size `hint` when known (and then said), else chunked.
/// `Date` is added when the response has none, and `Connection: close` when `close`. The
/// fields are looked at in one pass, without a lookup by name.
pub fn encode_head(
    parts: &Parts,
    hint: Option<u64>,
    head_req: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Framing {
    let mut length = Length::None;
    let (mut date, mut has_close) = (false, false);
    for (name, value) in &parts.headers {
        if *name == header::CONTENT_LENGTH {
            length = match length {
                Length::None => Length::One(value),
                _ => Length::Several,
            };
        } else if *name == header::DATE {
            date = true;
        } else if *name == header::CONNECTION {
            has_close |= crate::headers::tokens(std::iter::once(value))
                .any(|t| t.eq_ignore_ascii_case("close"));
        }
    }
    let s = parts.status;
    let bodiless = head_req
        || s.is_informational()
        || s == StatusCode::NO_CONTENT
        || s == StatusCode::NOT_MODIFIED;
    let own = match length {
        Length::None => None,
        Length::One(v) => head::length_of(v),
        Length::Several => head::content_length(&parts.headers),
    };
    // A `Content-Length` that is not a number is not sent with the one sandgate gives.
    let (framing, announce) = match (bodiless, own, hint) {
        (true, ..) => (Framing::None, false),
        (false, Some(n), _) => (Framing::Length(n), false),
        (false, None, Some(n)) => (Framing::Length(n), true),
        (false, None, None) => (Framing::Chunked, true),
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(s.as_str().as_bytes());
    out.push(b' ');
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes())
        .or_else(|| s.canonical_reason().map(str::as_bytes))
        .unwrap_or(b"<none>");
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if *name == header::TRANSFER_ENCODING || (announce && *name == header::CONTENT_LENGTH) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !date {
        out.extend_from_slice(b"date: ");
        write_date(out);
        out.extend_from_slice(b"\r\n");
    }
    match (announce, framing) {
        (true, Framing::Length(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        (true, Framing::Chunked) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if close && !has_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// The `Content-Length` fields of a response.
enum Length<'a> {
    None,
    One(&'a HeaderValue),
    Several,
}

thread_local! {
    /// The `Date` value of the current second, rendered once per second and thread.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends the current time as an HTTP date.
fn write_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Writes the body after the head already in `out`, which goes out with the body's first
/// bytes when they are there. An error is the body's or the client's: the connection
/// cannot carry another response. While the body is slow to come, the client is watched
/// ([`Wire::poll_gone`], with `buf` for what it sends meanwhile).
pub async fn send_body<W, B>(
    io: &mut W,
    buf: &mut BytesMut,
    body: &mut B,
    framing: Framing,
    out: &mut Vec<u8>,
) -> io::Result<()>
where
    W: Wire,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    loop {
        // What the body has now; before waiting for more, what is written goes out.
        let ready = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(f) => Some(f),
                Poll::Pending => None,
            })
        })
        .await;
        let frame = match ready {
            Some(f) => f,
            None => {
                flush(io, out).await?;
                // A client that goes away while the body is slow to come takes it with it.
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(f) = Pin::new(&mut *body).poll_frame(cx) {
                        return Poll::Ready(Ok(f));
                    }
                    io.poll_gone(buf, cx)
                        .map(|()| Err(io::Error::from(io::ErrorKind::ConnectionReset)))
                })
                .await?
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(io::Error::other(e.to_string())),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers: HTTP/1.1 clients get them only through hyper
            },
        };
        match framing {
            Framing::None => {}
            Framing::Length(_) => {
                left = left
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| io::Error::other("body longer than its Content-Length"))?;
                push(io, out, &data, b"").await?;
            }
            Framing::Chunked if data.is_empty() => {}
            Framing::Chunked => {
                let mut size = [0u8; 18];
                let n = hex(data.len(), &mut size);
                out.extend_from_slice(&size[..n]);
                push(io, out, &data, b"\r\n").await?;
            }
        }
    }
    if left != 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "body shorter than its Content-Length",
        ));
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    flush(io, out).await
}

/// `n` in hex followed by CRLF, into `buf`; the length written.
fn hex(mut n: usize, buf: &mut [u8; 18]) -> usize {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    buf[..len].copy_from_slice(&digits[i..]);
    buf[len..len + 2].copy_from_slice(b"\r\n");
    len + 2
}

/// Queues `data` then `tail` behind `out`; a large `data` is written at once with `out`
/// in front of it.
async fn push<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    data: &[u8],
    tail: &[u8],
) -> io::Result<()> {
    if data.len() < COPY_BELOW {
        out.extend_from_slice(data);
        out.extend_from_slice(tail);
        return Ok(());
    }
    write_two(io, out, data).await?;
    out.clear();
    out.extend_from_slice(tail);
    Ok(())
}

/// Writes `out` and clears it.
async fn flush<W: AsyncWrite + Unpin>(io: &mut W, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Writes `a` then `b`, gathered into as few writes as the socket takes.
async fn write_two<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut a: &[u8],
    mut b: &[u8],
) -> io::Result<()> {
    while !a.is_empty() {
        let n = io
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n >= a.len() {
            b = &b[n - a.len()..];
            a = &[];
        } else {
            a = &a[n..];
        }
    }
    io.write_all(b).await
}
