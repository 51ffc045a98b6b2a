//! A stored response: its head ([`Head`]: status, the headers as stored, freshness, the
//! selecting fields of its variant, purge tags) and its complete body. Heads are shared by
//! `Arc`, bodies are `Bytes`, so serving a hit copies neither. Stored headers never hold
//! hop-by-hop fields, purge tags, per-request headers or `Set-Cookie`.
//!
//! [`Entry::encode`]/[`Entry::decode`] give the byte form kept in Redis: length-prefixed
//! fields behind a version tag; decoding checks every length and never panics.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::key::Selecting;
use super::policy::Freshness;

/// `Surrogate-Key`: space-separated purge tags.
pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");
/// `Cache-Tag`: comma-separated purge tags.
pub static CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// Everything about a stored response but its body.
#[derive(Debug, Clone)]
pub struct Head {
    /// Primary key (the URL).
    pub key: Arc<str>,
    /// Status.
    pub status: StatusCode,
    /// Headers as stored.
    pub headers: HeaderMap,
    /// Freshness.
    pub freshness: Freshness,
    /// The request's values of the fields `Vary` names.
    pub vary: Vec<Selecting>,
    /// Purge tags from `Surrogate-Key` and `Cache-Tag`.
    pub tags: Vec<Box<str>>,
}

/// A complete stored response.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its head.
    pub head: Arc<Head>,
    /// Its body.
    pub body: Bytes,
}

/// Removes the purge-tag fields from `h` and returns the tags they held.
pub fn take_tags(h: &mut HeaderMap) -> Vec<Box<str>> {
    let mut tags: Vec<Box<str>> = Vec::new();
    for (name, sep) in [(&SURROGATE_KEY, ' '), (&CACHE_TAG, ',')] {
        if let header::Entry::Occupied(e) = h.entry(name) {
            for v in e.remove_entry_mult().1 {
                if let Ok(s) = v.to_str() {
                    for t in s.split(sep).map(str::trim).filter(|t| !t.is_empty()) {
                        if !tags.iter().any(|x| &**x == t) {
                            tags.push(t.into());
                        }
                    }
                }
            }
        }
    }
    tags
}

impl Head {
    /// Approximate bytes held by the head.
    pub fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, Bytes::len) + 32)
            .sum();
        let tags: usize = self.tags.iter().map(|t| t.len() + 16).sum();
        256 + self.key.len() + headers + vary + tags
    }
}

impl Entry {
    /// Bytes the entry holds, for the memory tier's weigher.
    pub fn weight(&self) -> usize {
        self.head.weight() + self.body.len()
    }

    /// The byte form kept in Redis.
    pub fn encode(&self) -> Bytes {
        let h = &self.head;
        let mut b = BytesMut::with_capacity(self.weight());
        b.put_slice(MAGIC);
        b.put_u16(h.status.as_u16());
        let f = &h.freshness;
        b.put_u64(f.response_time);
        b.put_u64(f.initial_age);
        b.put_u64(f.lifetime);
        b.put_u8(u8::from(f.no_cache) | u8::from(f.no_stale) << 1 | u8::from(f.validators) << 2);
        for o in [f.stale_while_revalidate, f.stale_if_error] {
            b.put_u64(o.map_or(u64::MAX, |s| s.min(u64::MAX - 1)));
        }
        put_bytes(&mut b, h.key.as_bytes());
        b.put_u32(len32(h.vary.len()));
        for (n, v) in &h.vary {
            put_bytes(&mut b, n.as_str().as_bytes());
            match v {
                None => b.put_u8(0),
                Some(v) => {
                    b.put_u8(1);
                    put_bytes(&mut b, v);
                }
            }
        }
        b.put_u32(len32(h.tags.len()));
        for t in &h.tags {
            put_bytes(&mut b, t.as_bytes());
        }
        b.put_u32(len32(h.headers.len()));
        for (n, v) in &h.headers {
            put_bytes(&mut b, n.as_str().as_bytes());
            put_bytes(&mut b, v.as_bytes());
        }
        put_bytes(&mut b, &self.body);
        b.freeze()
    }

    /// Parses [`Entry::encode`]'s output; None for anything malformed.
    pub fn decode(mut b: Bytes) -> Option<Entry> {
        let r = &mut b;
        if r.remaining() < MAGIC.len() || &r.chunk()[..MAGIC.len()] != MAGIC {
            return None;
        }
        r.advance(MAGIC.len());
        let status = StatusCode::from_u16(get_u16(r)?).ok()?;
        let response_time = get_u64(r)?;
        let initial_age = get_u64(r)?;
        let lifetime = get_u64(r)?;
        let flags = get_u8(r)?;
        let opt = |v: u64| (v != u64::MAX).then_some(v);
        let stale_while_revalidate = opt(get_u64(r)?);
        let stale_if_error = opt(get_u64(r)?);
        let key: Arc<str> = std::str::from_utf8(&get_bytes(r)?).ok()?.into();
        let mut vary = Vec::new();
        for _ in 0..get_u32(r)? {
            let n = HeaderName::from_bytes(&get_bytes(r)?).ok()?;
            let v = match get_u8(r)? {
                0 => None,
                _ => Some(get_bytes(r)?),
            };
            vary.push((n, v));
        }
        let mut tags = Vec::new();
        for _ in 0..get_u32(r)? {
            tags.push(std::str::from_utf8(&get_bytes(r)?).ok()?.into());
        }
        let mut headers = HeaderMap::new();
        for _ in 0..get_u32(r)? {
            let n = HeaderName::from_bytes(&get_bytes(r)?).ok()?;
            let v = HeaderValue::from_maybe_shared(get_bytes(r)?).ok()?;
            headers.append(n, v);
        }
        let body = get_bytes(r)?;
        if r.has_remaining() {
            return None;
        }
        Some(Entry {
            head: Arc::new(Head {
                key,
                status,
                headers,
                freshness: Freshness {
                    response_time,
                    initial_age,
                    lifetime,
                    no_cache: flags & 1 != 0,
                    no_stale: flags & 2 != 0,
                    validators: flags & 4 != 0,
                    stale_while_revalidate,
                    stale_if_error,
                },
                vary,
                tags,
            }),
            body,
        })
    }
}

const MAGIC: &[u8] = b"SGC1";

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_bytes(b: &mut BytesMut, v: &[u8]) {
    b.put_u32(len32(v.len()));
    b.put_slice(v);
}

fn get_u8(r: &mut Bytes) -> Option<u8> {
    (r.remaining() >= 1).then(|| r.get_u8())
}

fn get_u16(r: &mut Bytes) -> Option<u16> {
    (r.remaining() >= 2).then(|| r.get_u16())
}

fn get_u32(r: &mut Bytes) -> Option<u32> {
    (r.remaining() >= 4).then(|| r.get_u32())
}

fn get_u64(r: &mut Bytes) -> Option<u64> {
    (r.remaining() >= 8).then(|| r.get_u64())
}

fn get_bytes(r: &mut Bytes) -> Option<Bytes> {
    let n = usize::try_from(get_u32(r)?).ok()?;
    (r.remaining() >= n).then(|| r.split_to(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("1"));
        headers.append("x-multi", HeaderValue::from_static("2"));
        Entry {
            head: Arc::new(Head {
                key: "http://a/b?c".into(),
                status: StatusCode::NOT_FOUND,
                headers,
                freshness: Freshness {
                    response_time: 1_700_000_000,
                    initial_age: 3,
                    lifetime: 60,
                    no_cache: false,
                    no_stale: true,
                    stale_while_revalidate: Some(5),
                    stale_if_error: None,
                    validators: true,
                },
                vary: vec![
                    (HeaderName::from_static("accept"), Some(Bytes::from("a,b"))),
                    (HeaderName::from_static("x-absent"), None),
                ],
                tags: vec!["t1".into(), "t2".into()],
            }),
            body: Bytes::from_static(b"hello"),
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let e = sample();
        let d = Entry::decode(e.encode()).expect("decodes");
        assert_eq!(d.head.status, e.head.status);
        assert_eq!(d.head.headers, e.head.headers);
        assert_eq!(d.head.freshness, e.head.freshness);
        assert_eq!(d.head.vary, e.head.vary);
        assert_eq!(d.head.tags, e.head.tags);
        assert_eq!(&*d.head.key, "http://a/b?c");
        assert_eq!(d.body, e.body);
    }

    #[test]
    fn malformed_input_is_refused_without_panicking() {
        let good = sample().encode();
        for cut in 0..good.len() {
            assert!(Entry::decode(good.slice(..cut)).is_none(), "cut at {cut}");
        }
        let mut extra = good.to_vec();
        extra.push(0);
        assert!(Entry::decode(Bytes::from(extra)).is_none());
        assert!(Entry::decode(Bytes::from_static(b"XXXX")).is_none());
    }

    #[test]
    fn tags_come_from_both_fields_and_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(&SURROGATE_KEY, HeaderValue::from_static("a  b"));
        h.append(&CACHE_TAG, HeaderValue::from_static("b, c"));
        h.insert(header::ETAG, HeaderValue::from_static("\"x\""));
        assert_eq!(
            take_tags(&mut h),
            vec!["a".into(), "b".into(), "c".into()] as Vec<Box<str>>
        );
        assert_eq!(h.len(), 1);
    }
}
