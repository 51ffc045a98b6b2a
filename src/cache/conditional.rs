//! A client's conditional and range requests answered from a stored response (RFC 9110
//! sections 13 and 14), and the conditional request sandgate sends to revalidate one. Pure.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::policy::unix;

/// Whether an `If-None-Match` list matches `etag` under weak comparison.
fn none_match(list: &HeaderMap, etag: Option<&HeaderValue>) -> bool {
    let ours = etag
        .and_then(|e| e.to_str().ok())
        .and_then(|e| entity_tags(e).next());
    list.get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(entity_tags)
        .any(|t| t == "*" || ours == Some(t))
}

/// The entity tags of a list (RFC 9110 section 8.8.3), as weak comparison sees them: each
/// one's opaque tag without `W/` and without its quotes. A comma inside the quotes belongs to
/// the tag. `*` comes out as `*`, and a tag sent without quotes runs to the next comma.
fn entity_tags(line: &str) -> impl Iterator<Item = &str> {
    let mut rest = line;
    std::iter::from_fn(move || {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        if rest.is_empty() {
            return None;
        }
        let tag = rest
            .strip_prefix("W/")
            .or_else(|| rest.strip_prefix("w/"))
            .unwrap_or(rest);
        if let Some(quoted) = tag.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            rest = quoted.get(end + 1..).unwrap_or("");
            quoted.get(..end)
        } else {
            let end = tag.find(',').unwrap_or(tag.len());
            rest = tag.get(end..).unwrap_or("");
            tag.get(..end).map(str::trim_end)
        }
    })
}

/// Whether the client's conditionals say its copy is current, so a 304 answers it. Only GET
/// and HEAD are answered from the cache, so both conditionals apply.
pub fn not_modified(req: &HeaderMap, stored: &HeaderMap, response_time: u64) -> bool {
    if req.contains_key(header::IF_NONE_MATCH) {
        return none_match(req, stored.get(header::ETAG));
    }
    let Some(since) = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
        .map(unix)
    else {
        return false;
    };
    // The stored response's modification time: Last-Modified, else Date, else receipt.
    let modified = [header::LAST_MODIFIED, header::DATE]
        .iter()
        .find_map(|n| {
            stored
                .get(n)
                .and_then(|v| v.to_str().ok())
                .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
        })
        .map_or(response_time, unix);
    modified <= since
}

/// The fields a 304 carries over from the stored response (RFC 9110 section 15.4.5).
const NOT_MODIFIED_FIELDS: [HeaderName; 7] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::LAST_MODIFIED,
    header::VARY,
];

/// The headers of a 304 built from a stored response's headers.
pub fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    for n in &NOT_MODIFIED_FIELDS {
        for v in stored.get_all(n) {
            h.append(n.clone(), v.clone());
        }
    }
    h
}

/// Adds validators for revalidating a stored response to an outgoing request: `If-None-Match`
/// from its `ETag`, and `If-Modified-Since` from its `Last-Modified`.
pub fn add_validators(out: &mut HeaderMap, stored: &HeaderMap) {
    if let Some(etag) = stored.get(header::ETAG) {
        let quoted = etag.as_bytes().ends_with(b"\"");
        let v = if quoted {
            Some(etag.clone())
        } else {
            // An unquoted ETag is sent back quoted, as the syntax requires.
            let mut q = Vec::with_capacity(etag.len() + 2);
            q.push(b'"');
            q.extend_from_slice(etag.as_bytes());
            q.push(b'"');
            HeaderValue::from_bytes(&q).ok()
        };
        if let Some(v) = v {
            out.insert(header::IF_NONE_MATCH, v);
        }
    }
    if let Some(lm) = stored.get(header::LAST_MODIFIED) {
        out.insert(header::IF_MODIFIED_SINCE, lm.clone());
    }
}

/// The client's conditional fields, which a fill for the cache does not forward (the cache
/// fetches the whole response and answers the condition itself).
pub fn strip_client_conditionals(h: &mut HeaderMap) {
    for n in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
    ] {
        h.remove(n);
    }
}

/// How to answer a `Range` request from a complete stored body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// Serve the whole body (no range, several ranges, an `If-Range` that does not match, or
    /// a range unit other than bytes).
    Whole,
    /// Serve bytes `start..=end`.
    Part {
        /// First byte.
        start: u64,
        /// Last byte (inclusive).
        end: u64,
    },
    /// 416: no byte of the range exists.
    Unsatisfiable,
}

/// Parses the request's single byte range against a body of `len` bytes.
pub fn range(req: &HeaderMap, stored: &HeaderMap, len: u64) -> Range {
    let Some(spec) = req.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Range::Whole;
    };
    if let Some(cond) = req.get(header::IF_RANGE) {
        // A strong ETag or the exact Last-Modified date must match, else the whole body.
        let etag_ok = stored
            .get(header::ETAG)
            .is_some_and(|e| e == cond && !e.as_bytes().starts_with(b"W/"));
        let date_ok = stored.get(header::LAST_MODIFIED) == Some(cond);
        if !etag_ok && !date_ok {
            return Range::Whole;
        }
    }
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if set.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return Range::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), num(a), num(b)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Part {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        (false, Some(start), end) if b.trim().is_empty() || end.is_some() => {
            if start >= len {
                return Range::Unsatisfiable;
            }
            let end = end.map_or(len - 1, |e| e.min(len - 1));
            if end < start {
                return Range::Whole;
            }
            Range::Part { start, end }
        }
        _ => Range::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_lists() {
        let stored = h(&[("etag", "\"abc\"")]);
        assert!(not_modified(
            &h(&[("if-none-match", "\"abc\"")]),
            &stored,
            0
        ));
        assert!(not_modified(
            &h(&[("if-none-match", "W/\"abc\"")]),
            &stored,
            0
        ));
        assert!(not_modified(
            &h(&[("if-none-match", "\"x\", \"abc\"")]),
            &stored,
            0
        ));
        assert!(not_modified(&h(&[("if-none-match", "*")]), &stored, 0));
        assert!(not_modified(&h(&[("if-none-match", "abc")]), &stored, 0));
        assert!(!not_modified(&h(&[("if-none-match", "\"x\"")]), &stored, 0));
        // If-None-Match takes precedence over If-Modified-Since.
        let both = h(&[
            ("if-none-match", "\"x\""),
            ("if-modified-since", "Thu, 01 Jan 2099 00:00:00 GMT"),
        ]);
        assert!(!not_modified(&both, &stored, 0));
    }

    #[test]
    fn a_comma_inside_an_entity_tag_belongs_to_it() {
        // `,` is an etagc (RFC 9110 section 8.8.3): `"a,b"` is one tag, not `"a` and `b"`.
        let comma = h(&[("etag", "W/\"a,b\"")]);
        let ask = |v: &str| h(&[("if-none-match", v)]);
        assert!(not_modified(&ask("\"x\", \"a,b\""), &comma, 0));
        assert!(not_modified(&ask("\"a,b\",\"x\""), &comma, 0));
        assert!(!not_modified(&ask("\"a\", \"b\""), &comma, 0));
        let plain = h(&[("etag", "\"a\"")]);
        assert!(!not_modified(&ask("\"a,b\""), &plain, 0));
        assert!(!not_modified(&ask("\"b,a\""), &plain, 0));
        assert!(not_modified(&ask(" , W/\"a\" ,"), &plain, 0));
        // An unterminated tag is taken to the end of the line.
        assert!(!not_modified(&ask("\"a"), &h(&[("etag", "\"ab\"")]), 0));
        assert!(not_modified(&ask("\"ab"), &h(&[("etag", "\"ab\"")]), 0));
    }

    #[test]
    fn if_modified_since_compares_last_modified() {
        let stored = h(&[("last-modified", "Tue, 15 Nov 1994 12:45:26 GMT")]);
        let later = h(&[("if-modified-since", "Tue, 15 Nov 1994 12:45:26 GMT")]);
        assert!(not_modified(&later, &stored, 0));
        let earlier = h(&[("if-modified-since", "Mon, 14 Nov 1994 12:45:26 GMT")]);
        assert!(!not_modified(&earlier, &stored, 0));
        assert!(!not_modified(
            &h(&[("if-modified-since", "garbage")]),
            &stored,
            0
        ));
    }

    #[test]
    fn byte_ranges() {
        let s = HeaderMap::new();
        let r = |v: &str| range(&h(&[("range", v)]), &s, 10);
        assert_eq!(r("bytes=0-1"), Range::Part { start: 0, end: 1 });
        assert_eq!(r("bytes=1-"), Range::Part { start: 1, end: 9 });
        assert_eq!(r("bytes=-1"), Range::Part { start: 9, end: 9 });
        assert_eq!(r("bytes=-50"), Range::Part { start: 0, end: 9 });
        assert_eq!(r("bytes=5-100"), Range::Part { start: 5, end: 9 });
        assert_eq!(r("bytes=10-"), Range::Unsatisfiable);
        assert_eq!(r("bytes=0-1,3-4"), Range::Whole);
        assert_eq!(r("items=0-1"), Range::Whole);
        assert_eq!(r("bytes=3-1"), Range::Whole);
        assert_eq!(range(&HeaderMap::new(), &s, 10), Range::Whole);
        // If-Range with a validator that does not match: the whole body.
        let stored = h(&[("etag", "\"v2\"")]);
        let req = h(&[("range", "bytes=0-1"), ("if-range", "\"v1\"")]);
        assert_eq!(range(&req, &stored, 10), Range::Whole);
        let req = h(&[("range", "bytes=0-1"), ("if-range", "\"v2\"")]);
        assert_eq!(range(&req, &stored, 10), Range::Part { start: 0, end: 1 });
    }

    #[test]
    fn validators_for_revalidation() {
        let mut out = HeaderMap::new();
        add_validators(
            &mut out,
            &h(&[
                ("etag", "abc"),
                ("last-modified", "Tue, 15 Nov 1994 12:45:26 GMT"),
            ]),
        );
        assert_eq!(out["if-none-match"], "\"abc\"");
        assert_eq!(out["if-modified-since"], "Tue, 15 Nov 1994 12:45:26 GMT");
        let n = not_modified_headers(&h(&[("etag", "\"a\""), ("content-type", "text/plain")]));
        assert_eq!(n.len(), 1);
        assert_eq!(n["etag"], "\"a\"");
    }
}
