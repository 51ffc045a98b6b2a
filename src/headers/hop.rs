//! The fields sandgate adds to a request going upstream: `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host`, `Via`, `X-Request-Id` and `traceparent`.
//!
//! They never enter the request's `HeaderMap` on the HTTP/1.1 path: [`Hop::write`] writes
//! them straight into the upstream head after the request's own fields, and the client's
//! copies of the fields they replace, which stay in the map for the balancing strategies to
//! read as the client sent them, are skipped on the way out ([`Hop::replaces`]). HTTP/2 goes
//! through hyper's encoder, which needs them in the map: [`Hop::apply`]. Six map
//! insertions, a lookup and two allocations a request were about 1.9k instructions of the
//! 33k a proxied request cost.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::{ipv4_text, trusted_peer, VIA_VALUE, X_FORWARDED_FOR, X_FORWARDED_HOST};
use super::{X_FORWARDED_PROTO, X_REQUEST_ID};
use crate::trace::{TraceId, TRACEPARENT};

/// What this hop adds to one request.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The `X-Forwarded-For` entries received and believed, joined with `, `; the peer's
    /// address follows them.
    before: Option<Box<str>>,
    peer: IpAddr,
    https: bool,
    /// `X-Forwarded-Host`: the host the request was routed by.
    host: Option<HeaderValue>,
    request_id: HeaderValue,
    traceparent: Option<[u8; 55]>,
    /// Which of the fields it replaces the request carries.
    carried: Carried,
}

/// Which of the fields a hop replaces a request carries.
#[derive(Debug, Clone, Copy, Default)]
struct Carried {
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
    forwarded: bool,
    request_id: bool,
}

impl Carried {
    /// One pass over the names, compared only where the length matches: cheaper than a
    /// lookup for each of the five (a request rarely has any of them).
    fn scan(h: &HeaderMap) -> Self {
        let mut c = Carried::default();
        for n in h.keys() {
            match n.as_str().len() {
                15 => c.forwarded_for |= *n == X_FORWARDED_FOR,
                17 => c.forwarded_proto |= *n == X_FORWARDED_PROTO,
                16 => c.forwarded_host |= *n == X_FORWARDED_HOST,
                12 => c.request_id |= *n == X_REQUEST_ID,
                9 => c.forwarded |= *n == header::FORWARDED,
                _ => {}
            }
        }
        c
    }
}

impl Hop {
    /// The fields for the request `h` from `peer` (over TLS when `tls`), routed by `host`,
    /// with its `request_id` and this hop's `trace`. The peer's address goes to
    /// `X-Forwarded-For` after the entries received (combined in order), or, with a
    /// `trusted_proxies` list the peer is not on, in place of them, and `Forwarded` leaves
    /// `h`; `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Request-Id` are overwritten; `Via`
    /// is added.
    pub fn new(
        h: &mut HeaderMap,
        peer: IpAddr,
        tls: bool,
        host: Option<&HeaderValue>,
        trusted: Option<&[ipnet::IpNet]>,
        request_id: &HeaderValue,
        trace: Option<&TraceId>,
    ) -> Self {
        let believed = trusted.is_none_or(|t| trusted_peer(&peer, t));
        let carried = Carried::scan(h);
        let mut before = None;
        if carried.forwarded_for && believed {
            let mut joined = String::new();
            for v in h.get_all(&X_FORWARDED_FOR) {
                let Ok(v) = v.to_str() else { continue };
                let v = v.trim().trim_matches(',').trim();
                if !v.is_empty() {
                    if !joined.is_empty() {
                        joined.push_str(", ");
                    }
                    joined.push_str(v);
                }
            }
            before = (!joined.is_empty()).then(|| joined.into_boxed_str());
        }
        if carried.forwarded && !believed {
            h.remove(header::FORWARDED);
        }
        Hop {
            before,
            peer,
            https: tls,
            host: host.cloned(),
            request_id: request_id.clone(),
            traceparent: trace.map(TraceId::traceparent),
            carried,
        }
    }

    /// Whether the request carries a field this hop replaces: only then does a field of
    /// its head need [`Hop::replaces`].
    pub fn replaces_any(&self) -> bool {
        let c = &self.carried;
        c.forwarded_for || c.forwarded_proto || c.forwarded_host || c.request_id
    }

    /// Whether `name` is a field of the request this hop replaces, to be left out of the
    /// upstream head.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        let c = &self.carried;
        match name.as_str().len() {
            15 => c.forwarded_for && *name == X_FORWARDED_FOR,
            17 => c.forwarded_proto && *name == X_FORWARDED_PROTO,
            16 => c.forwarded_host && *name == X_FORWARDED_HOST,
            12 => c.request_id && *name == X_REQUEST_ID,
            _ => false,
        }
    }

    /// At most how many bytes [`Hop::write`] writes: the names, separators and fixed
    /// values take 172, an address at most 45, and the rest is in the values.
    pub fn wire_len(&self) -> usize {
        224 + self.before.as_ref().map_or(0, |b| b.len())
            + self.host.as_ref().map_or(0, HeaderValue::len)
            + self.request_id.len()
    }

    /// Writes the fields as HTTP/1.1 header lines. The fixed text between the values goes
    /// out in as few pieces as it can: this runs for every request.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-forwarded-for: ");
        self.forwarded_for(out);
        out.extend_from_slice(if self.https {
            b"\r\nx-forwarded-proto: https\r\nvia: 1.1 sandgate\r\nx-request-id: "
        } else {
            b"\r\nx-forwarded-proto: http\r\nvia: 1.1 sandgate\r\nx-request-id: "
        });
        out.extend_from_slice(self.request_id.as_bytes());
        if let Some(h) = &self.host {
            out.extend_from_slice(b"\r\nx-forwarded-host: ");
            out.extend_from_slice(h.as_bytes());
        }
        if let Some(t) = &self.traceparent {
            out.extend_from_slice(b"\r\ntraceparent: ");
            out.extend_from_slice(t);
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Puts the fields in `h`, in place of the client's copies.
    pub fn apply(&self, h: &mut HeaderMap) {
        let mut xff = Vec::with_capacity(64);
        self.forwarded_for(&mut xff);
        // The value takes the buffer over instead of copying it.
        if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)) {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        h.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if self.https { "https" } else { "http" }),
        );
        match &self.host {
            Some(v) => {
                h.insert(X_FORWARDED_HOST.clone(), v.clone());
            }
            None if self.carried.forwarded_host => {
                h.remove(&X_FORWARDED_HOST);
            }
            None => {}
        }
        h.append(header::VIA, VIA_VALUE.clone());
        h.insert(X_REQUEST_ID.clone(), self.request_id.clone());
        if let Some(v) = self
            .traceparent
            .and_then(|t| HeaderValue::from_bytes(&t).ok())
        {
            h.insert(TRACEPARENT.clone(), v);
        }
    }

    /// The `X-Forwarded-For` value.
    fn forwarded_for(&self, out: &mut Vec<u8>) {
        if let Some(b) = &self.before {
            out.extend_from_slice(b.as_bytes());
            out.extend_from_slice(b", ");
        }
        match self.peer {
            IpAddr::V4(v4) => out.extend_from_slice(ipv4_text(v4, &mut [0u8; 15])),
            // Writing to a Vec cannot fail.
            IpAddr::V6(v6) => {
                let _ = write!(out, "{v6}");
            }
        }
    }
}

#[cfg(test)]
#[path = "hop_tests.rs"]
mod tests;
