//! The chunked transfer coding of a response body (RFC 9112 section 7.1), read strictly: a
//! chunk-size line must start with a hex digit and end in CRLF (httparse reads it, extensions
//! included), each chunk's data must be followed by CRLF, and the trailer section is header
//! fields ended by an empty line. Anything else ends the body with an error and the
//! connection is not used again, so a backend cannot make sandgate read one response as two.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The longest chunk-size line (size and extensions) sandgate reads.
const MAX_LINE: usize = 4096;
/// The largest trailer section sandgate reads.
const MAX_TRAILERS: usize = 16 * 1024;
/// The most fields a trailer section may carry.
const MAX_TRAILER_FIELDS: usize = 32;

/// Where the decoder is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data, with this much of it left.
    Data(u64),
    /// After a chunk's data, at its CRLF.
    DataEnd,
    /// After the last chunk, at the trailer section.
    Trailers,
    /// The body is complete.
    Done,
}

/// What the next bytes of a chunked body gave.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Some body data.
    Data(Bytes),
    /// The trailer section: the body is complete.
    Trailers(HeaderMap),
    /// The body is complete, with no trailers.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

/// Decodes one chunked body from the bytes read for it.
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Self {
        Self { state: State::Size }
    }
}

impl Decoder {
    /// Whether the body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes what it can from the front of `buf`.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Step::End),
                State::Size => {
                    let Some(&first) = buf.first() else {
                        return Ok(Step::NeedMore);
                    };
                    if !first.is_ascii_hexdigit() {
                        return Err(ChunkError("a chunk size must start with a hex digit"));
                    }
                    match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((n, _))) if n > MAX_LINE => {
                            return Err(ChunkError("chunk-size line too long"))
                        }
                        Ok(httparse::Status::Complete((n, size))) => {
                            buf.advance(n);
                            self.state = if size == 0 {
                                State::Trailers
                            } else {
                                State::Data(size)
                            };
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => {
                            return Err(ChunkError("chunk-size line too long"))
                        }
                        Ok(httparse::Status::Partial) => return Ok(Step::NeedMore),
                        Err(_) => return Err(ChunkError("invalid chunk-size line")),
                    }
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::DataEnd => match buf.get(..2) {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.state = State::Size;
                    }
                    Some(_) => return Err(ChunkError("chunk data not followed by CRLF")),
                    None if buf.first().is_some_and(|&b| b != b'\r') => {
                        return Err(ChunkError("chunk data not followed by CRLF"))
                    }
                    None => return Ok(Step::NeedMore),
                },
                State::Trailers => return self.trailers(buf),
            }
        }
    }

    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        match buf.get(..2) {
            Some(b"\r\n") => {
                buf.advance(2);
                self.state = State::Done;
                return Ok(Step::End);
            }
            None if buf.first().is_none_or(|&b| b == b'\r') => return Ok(Step::NeedMore),
            _ => {}
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((n, parsed))) => {
                let mut map = HeaderMap::with_capacity(parsed.len());
                for f in parsed.iter() {
                    let name = HeaderName::from_bytes(f.name.as_bytes())
                        .map_err(|_| ChunkError("invalid trailer field name"))?;
                    let value = HeaderValue::from_bytes(f.value)
                        .map_err(|_| ChunkError("invalid trailer field value"))?;
                    map.append(name, value);
                }
                buf.advance(n);
                self.state = State::Done;
                Ok(Step::Trailers(map))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                Err(ChunkError("trailer section too large"))
            }
            Ok(httparse::Status::Partial) => Ok(Step::NeedMore),
            Err(_) => Err(ChunkError("invalid trailer section")),
        }
    }
}

/// A chunk-size line for `len` bytes of data: the length in hex and CRLF.
pub fn size_line(len: usize) -> Bytes {
    Bytes::from(format!("{len:X}\r\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `wire` fed in pieces of `step` bytes: the data, the trailers, and whether the
    /// body ended (None on error).
    fn decode(wire: &[u8], step: usize) -> Option<(Vec<u8>, Option<HeaderMap>, bool)> {
        let mut d = Decoder::default();
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match d.step(&mut buf).ok()? {
                Step::Data(b) => data.extend_from_slice(&b),
                Step::Trailers(t) => {
                    trailers = Some(t);
                    return Some((data, trailers, true));
                }
                Step::End => return Some((data, trailers, true)),
                Step::NeedMore if fed == wire.len() => return Some((data, trailers, false)),
                Step::NeedMore => {
                    let n = step.max(1).min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn reads_chunks_extensions_and_trailers() {
        let wire = b"4\r\nWiki\r\n5;name=\"v\"\r\npedia\r\nE \r\n in\r\n\r\nchunks.\r\n0\r\nx-sum: 1\r\n\r\n";
        let (data, trailers, done) = decode(wire, 1).expect("valid");
        assert_eq!(data, b"Wikipedia in\r\n\r\nchunks.");
        assert!(done);
        assert_eq!(trailers.expect("trailers")["x-sum"], "1");
        let (_, trailers, done) = decode(b"1\r\na\r\n0\r\n\r\n", 3).expect("valid");
        assert!(done && trailers.is_none());
    }

    #[test]
    fn refuses_what_could_be_read_two_ways() {
        for bad in [
            &b"\r\n\r\n"[..],           // an empty size is not a last chunk
            b"x\r\n",                   // not hex
            b" 4\r\nWiki\r\n0\r\n\r\n", // space before the size
            b"4\nWiki\r\n0\r\n\r\n",    // bare LF after the size
            b"4\r\nWikiX\r\n0\r\n\r\n", // data longer than its size
            b"4\r\nWiki\n0\r\n\r\n",    // bare LF after the data
            b"11111111111111111\r\n",   // 17 hex digits overflow
            b"0\r\nbad field\r\n\r\n",  // a trailer that is not a field
        ] {
            assert!(
                decode(bad, 1).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(
                decode(bad, 64).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(MAX_LINE));
        assert!(decode(long.as_bytes(), 512).is_none());
        assert!(decode(long.as_bytes(), 1 << 16).is_none());
    }

    #[test]
    fn size_lines_are_upper_hex() {
        for (n, s) in [
            (0, "0\r\n"),
            (1, "1\r\n"),
            (255, "FF\r\n"),
            (65536, "10000\r\n"),
        ] {
            assert_eq!(size_line(n), s.as_bytes());
        }
        assert_eq!(size_line(usize::MAX).len(), usize::BITS as usize / 4 + 2);
    }

    proptest! {
        /// Any body, chunked any way and fed in any piece size, decodes to itself, and the
        /// decoder stops at the end of the body: bytes after it are left alone.
        #[test]
        fn round_trip(body in proptest::collection::vec(any::<u8>(), 0..2000),
                      cuts in proptest::collection::vec(1usize..300, 1..20),
                      step in 1usize..100) {
            let mut wire = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < body.len() {
                let n = cuts[i % cuts.len()].min(body.len() - at);
                wire.extend_from_slice(&size_line(n));
                wire.extend_from_slice(&body[at..at + n]);
                wire.extend_from_slice(b"\r\n");
                at += n;
                i += 1;
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let (data, trailers, done) = decode(&wire, step).expect("valid");
            prop_assert!(done && trailers.is_none());
            prop_assert_eq!(data, body);

            let mut d = Decoder::default();
            let mut buf = BytesMut::from(&wire[..]);
            buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            while !d.is_done() {
                prop_assert_ne!(d.step(&mut buf).expect("valid"), Step::NeedMore);
            }
            prop_assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
        }
    }
}
