//! Reading a request head the lane answers itself: an HTTP/1.1 request in origin form with
//! no body and nothing that changes the connection (no `Upgrade`, `Expect` or `TE`).
//! Anything else, valid or not, is hyper's to read, and to answer or refuse.

use std::mem::MaybeUninit;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Uri, Version};

/// The most header fields the lane reads in one head; a head with more goes to hyper.
const MAX_FIELDS: usize = 64;
/// Fields the map has room for beyond the request's own: those the pipeline adds.
const MAP_ROOM: usize = 8;

/// What the bytes at the start of a connection's read buffer hold.
#[derive(Debug)]
pub enum Head {
    /// Not a whole head yet.
    Partial,
    /// A whole head, or bytes that cannot become one, that hyper is to read: a body, an
    /// upgrade, HTTP/1.0, another target form, or an error hyper answers.
    Hyper,
    /// A request the lane serves, taken off the buffer.
    Simple {
        /// Its head.
        parts: Box<Parts>,
        /// The client asked to close the connection after it (`Connection: close`).
        close: bool,
    },
}

/// Reads the request head at the start of `buf`; when the lane serves it, takes it off `buf`.
pub fn parse(buf: &mut BytesMut) -> Head {
    // Where each field's name and value sit, as offsets: the parse borrows `buf`, and the
    // values are taken from it afterwards without a copy.
    let mut spans = [(0u16, 0u16, 0u16, 0u16); MAX_FIELDS];
    let (len, method, target, fields) = {
        let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let bytes: &[u8] = buf;
        let len = match httparse::ParserConfig::default()
            .parse_request_with_uninit_headers(&mut req, bytes, &mut raw)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Head::Partial,
            Err(_) => return Head::Hyper,
        };
        // Offsets fit 16 bits: the lane reads at most a few KiB before it hands over.
        let Ok(len16) = u16::try_from(len) else {
            return Head::Hyper;
        };
        if req.version != Some(1) {
            return Head::Hyper;
        }
        let base = bytes.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u16;
        for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
            if changes_framing(h.name) {
                return Head::Hyper;
            }
            *span = (
                at(h.name.as_bytes()),
                h.name.len() as u16,
                at(h.value),
                h.value.len() as u16,
            );
        }
        let (Some(m), Some(t)) = (req.method, req.path) else {
            return Head::Hyper;
        };
        if !t.starts_with('/') {
            return Head::Hyper;
        }
        let Ok(method) = Method::from_bytes(m.as_bytes()) else {
            return Head::Hyper;
        };
        let target = (at(t.as_bytes()), t.len() as u16);
        (len16, method, target, req.headers.len())
    };
    if method == Method::CONNECT {
        return Head::Hyper;
    }
    let head = buf.split_to(usize::from(len)).freeze();
    let slice = |off: u16, n: u16| head.slice(usize::from(off)..usize::from(off + n));
    let Ok(uri) = Uri::from_maybe_shared(slice(target.0, target.1)) else {
        return hand_back(buf, head);
    };
    let mut map = HeaderMap::with_capacity(fields + MAP_ROOM);
    let mut close = false;
    for &(no, nl, vo, vl) in &spans[..fields] {
        let name = &head[usize::from(no)..usize::from(no + nl)];
        let Ok(name) = HeaderName::from_bytes(name) else {
            return hand_back(buf, head);
        };
        let Ok(value) = HeaderValue::from_maybe_shared(slice(vo, vl)) else {
            return hand_back(buf, head);
        };
        if name == header::CONNECTION && !value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
            for t in crate::headers::tokens(std::iter::once(&value)) {
                close |= t.eq_ignore_ascii_case("close");
            }
        }
        map.append(name, value);
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = map;
    Head::Simple {
        parts: Box::new(parts),
        close,
    }
}

/// Fields that give a request a body or change what the connection carries next.
const HYPERS: [&str; 5] = [
    "content-length",
    "transfer-encoding",
    "upgrade",
    "expect",
    "te",
];

/// Whether the field `name` makes the request hyper's.
fn changes_framing(name: &str) -> bool {
    HYPERS
        .iter()
        .any(|h| h.len() == name.len() && h.eq_ignore_ascii_case(name))
}

/// Puts a head taken off `buf` back in front of it, for hyper to read.
fn hand_back(buf: &mut BytesMut, head: bytes::Bytes) -> Head {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Head::Hyper
}
