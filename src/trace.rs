//! W3C Trace Context (`traceparent`, `tracestate`) on sandgate's hop: a valid `traceparent`
//! is passed on with a new span id for this hop (its trace id and flags kept, `tracestate`
//! untouched); an invalid one is dropped with its `tracestate`; with none, sandgate starts a
//! trace (sampled), unless `tracing.generate: false`. Pure, with randomness from `fastrand`.

use http::header::{HeaderMap, HeaderName};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// This hop's place in a trace: the trace id (as 32 lowercase hex digits), sandgate's span
/// id, the caller's span id (0 when sandgate started the trace) and whether it is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId {
    hex: [u8; 32],
    /// sandgate's span id for this hop.
    pub span: u64,
    /// The parent span id from the incoming `traceparent` (0: none).
    pub parent: u64,
    /// The sampled flag.
    pub sampled: bool,
    /// The trace flags, as two hex digits.
    flags: [u8; 2],
}

impl TraceId {
    /// The hex digits.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored.
        std::str::from_utf8(&self.hex).unwrap_or("-")
    }

    /// The trace id as a number.
    pub fn trace(&self) -> u128 {
        u128::from_str_radix(self.as_str(), 16).unwrap_or(0)
    }

    /// The next hop's `traceparent`: `00-<trace>-<span>-<flags>`, with sandgate's span as
    /// its parent.
    pub fn traceparent(&self) -> [u8; 55] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        out[3..35].copy_from_slice(&self.hex);
        hex(&mut out[36..52], &self.span.to_be_bytes());
        out[53..55].copy_from_slice(&self.flags);
        out
    }
}

/// The two lowercase hex digits of every byte.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    t
};

/// Writes `bytes` as lowercase hex into `out` (twice as long): one table load a byte, as
/// this runs three times a request (trace id, span id, request id).
pub(crate) fn hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

fn is_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// The trace id, flags and parent span id of a valid `traceparent` (version 00, or a later
/// version read as 00 as the spec asks).
fn parse(v: &[u8]) -> Option<([u8; 32], [u8; 2], u64)> {
    if v.len() < 55 || (v.len() > 55 && v[55] != b'-') {
        return None;
    }
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    let dashes = v[2] == b'-' && v[35] == b'-' && v[52] == b'-';
    let ok = dashes
        && is_hex(version)
        && version != b"ff"
        && (version != b"00" || v.len() == 55)
        && is_hex(trace)
        && trace.iter().any(|c| *c != b'0')
        && is_hex(parent)
        && parent.iter().any(|c| *c != b'0')
        && is_hex(flags);
    ok.then(|| {
        let mut t = [0u8; 32];
        t.copy_from_slice(trace);
        let parent = std::str::from_utf8(parent)
            .ok()
            .and_then(|p| u64::from_str_radix(p, 16).ok())
            .unwrap_or(0);
        (t, [flags[0], flags[1]], parent)
    })
}

/// This hop's place in the trace the request's `traceparent` names, or in a new one. The
/// request's own `traceparent` leaves its head: the backend gets this hop's
/// ([`TraceId::traceparent`], written with the other fields sandgate adds,
/// [`crate::headers::Hop`]); an invalid one goes with its `tracestate`.
pub fn hop(h: &mut HeaderMap, generate: bool) -> Option<TraceId> {
    let incoming = if crate::headers::holds(h, &TRACEPARENT) {
        let mut lines = h.get_all(&TRACEPARENT).iter();
        match (lines.next(), lines.next()) {
            (None, _) => None,
            (Some(v), None) => Some(parse(v.as_bytes())),
            // Two traceparent lines are as good as an invalid one.
            (Some(_), Some(_)) => Some(None),
        }
    } else {
        None
    };
    if incoming.is_some() {
        h.remove(&TRACEPARENT);
    }
    let (trace, flags, parent) = match incoming {
        Some(Some(found)) => found,
        invalid_or_none => {
            if invalid_or_none.is_some() {
                h.remove(&TRACESTATE);
            }
            if !generate {
                return None;
            }
            let mut t = [0u8; 32];
            // All zeros is not a valid id; a full-range draw is cheaper than a ranged one.
            hex(&mut t, &fastrand::u128(..).max(1).to_be_bytes());
            (t, *b"01", 0)
        }
    };
    // Bit 0 of the flags is `sampled`: the last hex digit is odd.
    let sampled = matches!(
        flags[1],
        b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f'
    );
    Some(TraceId {
        hex: trace,
        span: fastrand::u64(..).max(1),
        parent,
        sampled,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    fn with(tp: &[&str], ts: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in tp {
            h.append(&TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        if let Some(s) = ts {
            h.insert(&TRACESTATE, HeaderValue::from_str(s).unwrap());
        }
        h
    }

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_keeps_its_trace_and_flags_with_a_new_span() {
        let mut h = with(&[GOOD], Some("congo=t61rcWkgMzE"));
        let id = hop(&mut h, true).unwrap();
        assert_eq!(id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(id.trace(), 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!((id.parent, id.sampled), (0x00f067aa0ba902b7, true));
        assert!(
            h.get(&TRACEPARENT).is_none(),
            "the client's traceparent is replaced"
        );
        let out = String::from_utf8(id.traceparent().to_vec()).unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(out.ends_with("-01"));
        assert_ne!(
            &out[36..52],
            "00f067aa0ba902b7",
            "a span id of sandgate's own"
        );
        assert_eq!(h[&TRACESTATE], "congo=t61rcWkgMzE");
        // A later version is read as 00, extra fields and all.
        let mut h = with(&[&format!("01{}-extra", &GOOD[2..])], None);
        assert_eq!(hop(&mut h, false).unwrap().as_str(), &GOOD[3..35]);
    }

    #[test]
    fn invalid_parents_are_dropped_with_their_state() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut h = with(&[bad], Some("a=b"));
            assert_eq!(hop(&mut h, false), None, "{bad}");
            assert!(
                h.get(&TRACEPARENT).is_none() && h.get(&TRACESTATE).is_none(),
                "{bad}"
            );
            let mut h = with(&[bad], Some("a=b"));
            let id = hop(&mut h, true).expect("a new trace");
            assert_ne!(id.as_str(), &GOOD[3..35]);
            assert!(h.get(&TRACESTATE).is_none());
        }
        let mut h = with(&[GOOD, GOOD], None);
        assert_eq!(hop(&mut h, false), None, "two traceparent lines");
    }

    #[test]
    fn without_a_parent_a_trace_starts_unless_told_not_to() {
        let mut h = HeaderMap::new();
        assert_eq!(hop(&mut h, false), None);
        assert!(h.is_empty());
        let id = hop(&mut h, true).unwrap();
        assert!(
            h.is_empty(),
            "the traceparent goes with the fields sandgate adds"
        );
        let (trace, flags, parent) = parse(&id.traceparent()).expect("valid");
        assert_eq!((&trace, flags), (&id.hex, *b"01"));
        assert_eq!(parent, id.span, "the next hop's parent is sandgate's span");
        assert_eq!((id.parent, id.sampled), (0, true));
    }
}
