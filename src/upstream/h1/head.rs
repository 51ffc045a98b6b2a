//! HTTP/1.1 heads on a backend connection, pure: the request head sandgate writes with its
//! body's framing, and the response head it reads with its body's framing (RFC 9112 sections
//! 6.1 to 6.3). Parsing is httparse's; this file decides what the parsed head means.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, StatusCode, Version};

use crate::headers::{self, Hop};

/// The longest response head sandgate reads from a backend; a longer one is a `502`.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a response head may carry (hyper's default, too).
const MAX_FIELDS: usize = 100;
/// Fields a parsed response's map has room for beyond its own (see [`parse_response`]).
const MAP_ROOM: usize = 16;

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding: the length is not known up front.
    Chunked,
}

/// Decides a request body's framing and sets the head to say it: the body's own
/// `Content-Length` when the head carries a valid one, else its exact size when known, else
/// chunked. A body known to be empty goes without one (a `GET`), as hyper's client does.
pub fn request_framing(head: &mut Parts, empty: bool, exact: Option<u64>) -> Out {
    // A request's own coding never reaches a backend: sandgate frames what it sends.
    head.headers.remove(header::TRANSFER_ENCODING);
    if empty {
        // A length the body does not have would leave the backend waiting for it, or reading
        // the next request on the connection as its rest.
        if content_length(&head.headers).is_some_and(|n| n != 0) {
            head.headers.remove(header::CONTENT_LENGTH);
        }
        return Out::Empty;
    }
    if let Some(n) = content_length(&head.headers) {
        return Out::Length(n);
    }
    head.headers.remove(header::CONTENT_LENGTH);
    match exact {
        Some(n) => {
            head.headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            Out::Length(n)
        }
        None => {
            head.headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Out::Chunked
        }
    }
}

/// Writes the request line and header fields of `head` (origin-form target, HTTP/1.1), and
/// after them the fields this `hop` adds, if any.
pub fn encode_request(head: &Parts, hop: Option<&Hop>, out: &mut Vec<u8>) {
    let target = head
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .as_bytes();
    let fields: usize = head
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let added = hop.map_or(0, Hop::wire_len);
    out.reserve(head.method.as_str().len() + target.len() + 13 + fields + added + 2);
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match hop {
        Some(hop) if hop.replaces_any() => {
            for (name, value) in &head.headers {
                if !hop.replaces(name) {
                    field(out, name, value);
                }
            }
        }
        _ => write_fields(&head.headers, out),
    }
    if let Some(hop) = hop {
        hop.write(out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Puts a request that an HTTP/2 connection gave back (absolute target, no `Host`) back in
/// HTTP/1.1 form: `Host` from the target's authority. The target is written in origin form
/// whatever the URI holds.
pub fn h1_form<B>(req: &mut http::Request<B>) {
    let host = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    if let Some(h) = host {
        req.headers_mut().insert(header::HOST, h);
    }
    *req.version_mut() = Version::HTTP_11;
}

/// Writes `name: value` lines.
pub fn write_fields(fields: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in fields {
        field(out, name, value);
    }
}

/// Writes one `name: value` line.
fn field(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How a response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    /// No body (a `HEAD` request, `204`, `304`).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the backend closes the connection.
    Close,
    /// `101 Switching Protocols`: the connection now carries another protocol.
    Upgrade,
}

/// A final response head read off the wire.
#[derive(Debug)]
pub struct Response {
    /// Status, version and header fields (header values share the read buffer), without
    /// the hop-by-hop ones unless it is a `101`.
    pub head: http::response::Parts,
    /// How its body is framed.
    pub framing: In,
    /// Whether the connection may carry another request once the body is read.
    pub keep_alive: bool,
}

/// What the bytes at the start of a read buffer hold.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// An interim `1xx` response of this many bytes, to be skipped.
    Interim(usize),
    /// A final response head.
    Final(Box<Response>),
}

/// Why a response head is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// httparse refused it.
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    /// Longer than [`MAX_HEAD`].
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    /// An invalid or conflicting framing (RFC 9112 section 6.3).
    #[error("response framing: {0}")]
    Framing(&'static str),
    /// A field httparse passed that the `http` crate does not take.
    #[error("invalid response header field")]
    Field,
}

/// Reads the response head at the start of `buf` (the answer to a `method` request) and, when
/// it is final, takes it off `buf`.
pub fn parse_response(buf: &mut BytesMut, method: &Method) -> Result<Parsed, HeadError> {
    // Where each field's name and value sit in the head, as offsets: the parse borrows `buf`,
    // and the values are taken from it afterwards without a copy.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_FIELDS];
    let (len, code, reason, minor, fields) = {
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut res = httparse::Response::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, bytes, &mut raw)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if bytes.len() >= MAX_HEAD => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(e)),
        };
        if len > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let base = bytes.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        for (span, h) in spans.iter_mut().zip(res.headers.iter()) {
            *span = (
                at(h.name.as_bytes()),
                h.name.len() as u32,
                at(h.value),
                h.value.len() as u32,
            );
        }
        let reason = res.reason.map(|r| (at(r.as_bytes()), r.len() as u32));
        (len, res.code, reason, res.version, res.headers.len())
    };
    let status = code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(HeadError::Malformed(httparse::Error::Status))?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Interim(len));
    }
    let head = buf.split_to(len).freeze();
    let slice = |off: u32, n: u32| head.slice(off as usize..(off + n) as usize);
    // Hop-by-hop fields are this connection's and stay here (RFC 9110 section 7.6.1); a
    // `101` keeps them, for the upgrade to be checked.
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    // Room past the head's own fields: the response gets sandgate's fields (`Via`,
    // `X-Request-Id`, ...), and hyper keeps this map (emptied) for the client connection's
    // next request head, which may carry more fields than this response. Without it that map
    // grew once a request, rehashing every field (about 900 instructions).
    let mut map = HeaderMap::with_capacity(fields + MAP_ROOM);
    let mut seen = Seen::default();
    for &(no, nl, vo, vl) in &spans[..fields] {
        let name = HeaderName::from_bytes(&head[no as usize..(no + nl) as usize])
            .map_err(|_| HeadError::Field)?;
        let value = HeaderValue::from_maybe_shared(slice(vo, vl)).map_err(|_| HeadError::Field)?;
        seen.note(&name, &value);
        if upgrade || !headers::hop_by_hop(&name) {
            map.append(name, value);
        }
    }
    if !upgrade {
        // Fields that `Connection` names are hop-by-hop too.
        for token in headers::tokens(seen.listing.iter()) {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                map.remove(name);
            }
        }
    }
    let version = if minor == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    if let Some((off, n)) = reason {
        let reason = slice(off, n);
        if Some(&reason[..]) != status.canonical_reason().map(str::as_bytes) {
            if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason) {
                parts.extensions.insert(r);
            }
        }
    }
    let framing = response_framing(status, version, method, &seen)?;
    let keep_alive = framing != In::Close
        && framing != In::Upgrade
        && !seen.close
        && (version == Version::HTTP_11 || seen.keep_alive);
    parts.headers = map;
    Ok(Parsed::Final(Box::new(Response {
        head: parts,
        framing,
        keep_alive,
    })))
}

/// RFC 9112 section 6.3, for a response: no body for `HEAD`, `204` and `304`; chunked when
/// that is the last transfer coding, else until close; `Content-Length` otherwise (several
/// that differ, or one that is not a number, are an error); until close without either. A
/// response with both framings "ought to be handled as an error": it is one here, as a
/// backend that sends it may be trying to split the connection.
fn response_framing(
    status: StatusCode,
    version: Version,
    method: &Method,
    seen: &Seen,
) -> Result<In, HeadError> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(In::Upgrade);
    }
    if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(In::Empty);
    }
    let cl = seen.length.is_some();
    if seen.te {
        if version == Version::HTTP_10 {
            return Err(HeadError::Framing(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        if cl {
            return Err(HeadError::Framing(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        return match (seen.chunked, seen.last_chunked) {
            (1, true) => Ok(In::Chunked),
            (0 | 1, _) => Ok(In::Close),
            _ => Err(HeadError::Framing("chunked applied more than once")),
        };
    }
    match seen.length {
        Some(Some(n)) => Ok(In::Length(n)),
        Some(None) => Err(HeadError::Framing("invalid Content-Length")),
        None => Ok(In::Close),
    }
}

/// What the framing and the connection's reuse depend on, noted as the fields are read
/// (looking them up again in the map would cost more than the parse of the head).
#[derive(Default)]
struct Seen {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// A `Transfer-Encoding` field.
    te: bool,
    /// How many times its codings name chunked.
    chunked: u8,
    /// Whether the last coding is chunked.
    last_chunked: bool,
    /// `Content-Length` fields: None when there are none, Some(None) when they are invalid.
    length: Option<Option<u64>>,
    /// `Connection` lines that name other fields (rare: most name none, or `close` or
    /// `keep-alive`).
    listing: Vec<HeaderValue>,
}

impl Seen {
    fn note(&mut self, name: &HeaderName, value: &HeaderValue) {
        if *name == header::CONNECTION {
            // The usual values, whole, need no split into tokens.
            let whole = value.as_bytes();
            if whole.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
                return;
            }
            if whole.eq_ignore_ascii_case(b"close") {
                self.close = true;
                return;
            }
            let mut names = false;
            for t in headers::tokens(std::iter::once(value)) {
                self.close |= t.eq_ignore_ascii_case("close");
                self.keep_alive |= t.eq_ignore_ascii_case("keep-alive");
                names |= headers::names_another_field(t);
            }
            if names {
                self.listing.push(value.clone());
            }
        } else if *name == header::CONTENT_LENGTH {
            self.length = Some(match self.length {
                // Invalid stays invalid, whatever follows.
                Some(None) => None,
                found => lengths(value, found.flatten()),
            });
        } else if *name == header::TRANSFER_ENCODING {
            self.te = true;
            // A line that is not visible ASCII is a coding sandgate cannot name: not chunked.
            self.last_chunked &= value.to_str().is_ok();
            for t in headers::tokens(std::iter::once(value)).filter(|t| !t.is_empty()) {
                self.last_chunked = t.eq_ignore_ascii_case("chunked");
                self.chunked = self.chunked.saturating_add(u8::from(self.last_chunked));
            }
        }
    }
}

/// The value of every `Content-Length` field, when they all hold one and the same number.
pub fn content_length(map: &HeaderMap) -> Option<u64> {
    let mut found = None;
    for line in map.get_all(header::CONTENT_LENGTH) {
        found = Some(lengths(line, found)?);
    }
    found
}

/// The number one `Content-Length` line holds (a list of the same number counts as one).
pub fn length_of(line: &HeaderValue) -> Option<u64> {
    lengths(line, None)
}

/// The number a `Content-Length` line holds (a list of the same number counts as one), when
/// it agrees with `found`, the number of the lines before it.
fn lengths(line: &HeaderValue, mut found: Option<u64>) -> Option<u64> {
    for v in line.as_bytes().split(|&b| b == b',') {
        let n = digits(v.trim_ascii())?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    found
}

fn digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))
            .flatten()
    })
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
