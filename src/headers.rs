//! Header rewriting, pure: hop-by-hop stripping (including names listed in `Connection`),
//! the fields sandgate adds upstream ([`Hop`]: `X-Forwarded-*`, `Via`, `X-Request-Id`,
//! `traceparent`), and request ids.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

mod hop;
pub use hop::Hop;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// The value sandgate adds to `Via`.
pub static VIA_VALUE: HeaderValue = HeaderValue::from_static("1.1 sandgate");

/// The fixed hop-by-hop headers of RFC 9110 section 7.6.1 (and the old `Keep-Alive` and
/// `Proxy-Connection`).
const FIXED_HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Maps of at most this many names are searched by walking them for a name outside the
/// standard set: hashing such a name costs more than comparing it with each (a request
/// carries a handful of fields).
const WALK_UP_TO: usize = 8;

/// The first value of `name` in `h`, as [`HeaderMap::get`] gives it; for names outside the
/// standard set (see [`WALK_UP_TO`]).
pub fn first<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if h.keys_len() <= WALK_UP_TO {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    } else {
        h.get(name)
    }
}

/// Whether `h` holds a field `name`; for names outside the standard set (see
/// [`WALK_UP_TO`]).
pub fn holds(h: &HeaderMap, name: &HeaderName) -> bool {
    if h.keys_len() <= WALK_UP_TO {
        h.keys().any(|k| k == name)
    } else {
        h.contains_key(name)
    }
}

/// Whether `n` is one of the fixed hop-by-hop headers.
pub fn hop_by_hop(n: &HeaderName) -> bool {
    *n == header::CONNECTION
        || *n == KEEP_ALIVE
        || *n == PROXY_CONNECTION
        || *n == header::PROXY_AUTHENTICATE
        || *n == header::PROXY_AUTHORIZATION
        || *n == header::TE
        || *n == header::TRANSFER_ENCODING
        || *n == header::UPGRADE
}

/// Whether a `Connection` token names a field beyond `close` and the fixed hop-by-hop set:
/// that field is hop-by-hop too.
pub fn names_another_field(token: &str) -> bool {
    !token.is_empty()
        && !token.eq_ignore_ascii_case("close")
        && !FIXED_HOP_BY_HOP
            .iter()
            .any(|n| token.eq_ignore_ascii_case(n))
}

/// Removes hop-by-hop headers: the fixed set of RFC 9110 section 7.6.1 and any header named in
/// `Connection`. One pass over the names finds the ones to remove, so each is looked up once
/// and the common case (nothing, or only `Connection`) costs one removal at most.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Names to remove, gathered before any is removed (the map cannot change while its names
    // are walked); more than fit are taken in another round. `Connection` itself goes last,
    // as the later rounds read it.
    const BATCH: usize = 12;
    let lines = h.get_all(header::CONNECTION);
    let listed = lines.iter().next().is_some();
    // Whether `Connection` names anything beyond `close` and the fixed set: only then is every
    // name checked against it.
    let extra = listed && tokens(lines.iter()).any(names_another_field);
    // The common case: nothing to remove but `Connection` itself (a keep-alive backend's
    // `Connection: keep-alive`), found in one pass with nothing gathered.
    if !extra && !h.keys().any(|n| *n != header::CONNECTION && hop_by_hop(n)) {
        if listed {
            h.remove(header::CONNECTION);
        }
        return;
    }
    loop {
        let mut doomed: [Option<HeaderName>; BATCH] = [const { None }; BATCH];
        let mut n = 0;
        for name in h.keys() {
            if *name == header::CONNECTION {
                continue;
            }
            if hop_by_hop(name) || (extra && named_in_connection(h, name)) {
                doomed[n] = Some(name.clone());
                n += 1;
                if n == BATCH {
                    break;
                }
            }
        }
        for name in doomed.iter().flatten() {
            // `TE: trailers` says the client takes trailers (gRPC needs it to reach the
            // backend); it is kept, whatever else TE held. `Trailer` is not hop-by-hop (RFC
            // 9110 section 6.6.2).
            let trailers = *name == header::TE && has_token(h, &header::TE, "trailers");
            h.remove(name);
            if trailers {
                h.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
        if n < BATCH {
            break;
        }
    }
    if listed {
        h.remove(header::CONNECTION);
    }
}

/// The tokens `Connection` lists, trimmed.
fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    tokens(h.get_all(header::CONNECTION).iter())
}

/// The comma-separated tokens of a header's lines, trimmed (lines that are not visible
/// ASCII are skipped). From either end: `X-Forwarded-For` is read from the right.
pub fn tokens<'a>(
    lines: impl DoubleEndedIterator<Item = &'a HeaderValue>,
) -> impl DoubleEndedIterator<Item = &'a str> {
    lines
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether `Connection` lists `name` (which is lower case, as every `HeaderName`).
fn named_in_connection(h: &HeaderMap, name: &HeaderName) -> bool {
    // `TE: trailers` survives being listed too: it is handled as part of the fixed set.
    connection_tokens(h).any(|t| t.eq_ignore_ascii_case(name.as_str()))
}

/// Whether a comma-separated header `name` holds `token` (ASCII case-insensitive; for
/// `Upgrade`, a protocol's version after `/` is ignored).
pub fn has_token(h: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    tokens(h.get_all(name).iter())
        .map(|t| t.split('/').next().unwrap_or("").trim())
        .any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether `ip` is one of the `trusted` proxies.
pub fn trusted_peer(ip: &IpAddr, trusted: &[ipnet::IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(ip))
}

/// The client a request is from: the peer, or, when the peer is a trusted proxy, the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Without a
/// `trusted_proxies` list, always the peer.
pub fn client_ip(peer: IpAddr, h: &HeaderMap, trusted: Option<&[ipnet::IpNet]>) -> IpAddr {
    let Some(trusted) = trusted.filter(|t| trusted_peer(&peer, t)) else {
        return peer;
    };
    tokens(h.get_all(&X_FORWARDED_FOR).iter())
        .rev()
        .filter_map(|s| s.parse::<IpAddr>().ok())
        .find(|ip| !trusted_peer(ip, trusted))
        .unwrap_or(peer)
}

/// `a.b.c.d` in `buf`, without the formatting machinery (this runs for every request).
pub fn ipv4_text(ip: std::net::Ipv4Addr, buf: &mut [u8; 15]) -> &[u8] {
    let mut n = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        if octet >= 100 {
            buf[n] = b'0' + octet / 100;
            n += 1;
        }
        if octet >= 10 {
            buf[n] = b'0' + octet / 10 % 10;
            n += 1;
        }
        buf[n] = b'0' + octet % 10;
        n += 1;
    }
    &buf[..n]
}

/// A fresh request id: 32 lower-case hex digits from a fast non-cryptographic generator
/// (ids need to be unique enough to correlate logs, not unguessable).
pub fn new_request_id() -> HeaderValue {
    let mut out = [0u8; 32];
    crate::trace::hex(&mut out, &fastrand::u128(..).to_be_bytes());
    // Hex digits are always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The client's request id if it sent a usable one, else a fresh one.
///
/// It is marked sensitive, which HTTP/2 sends as a never-indexed literal (RFC 7541 section
/// 6.2.3): an id is unique to one exchange, so entering it in the HPACK dynamic table would
/// only evict fields that do repeat.
pub fn request_id(h: &HeaderMap) -> HeaderValue {
    let mut id = match first(h, &X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 200 => v.clone(),
        _ => new_request_id(),
    };
    id.set_sensitive(true);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_holds_agree_with_the_map_small_or_large() {
        for extra in [0usize, 3, 12] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("a"));
            for i in 0..extra {
                let name = HeaderName::from_bytes(format!("x-f{i}").as_bytes()).expect("name");
                h.insert(name, HeaderValue::from_static("f"));
            }
            assert!(!holds(&h, &X_REQUEST_ID));
            assert!(first(&h, &X_REQUEST_ID).is_none());
            h.append(&X_REQUEST_ID, HeaderValue::from_static("one"));
            h.append(&X_REQUEST_ID, HeaderValue::from_static("two"));
            assert!(holds(&h, &X_REQUEST_ID), "{extra} more fields");
            assert!(holds(&h, &header::HOST));
            // The first line, as `get` gives it.
            assert_eq!(first(&h, &X_REQUEST_ID), h.get(&X_REQUEST_ID));
            assert_eq!(
                first(&h, &X_REQUEST_ID).map(|v| v.as_bytes()),
                Some(&b"one"[..])
            );
        }
    }

    #[test]
    fn strips_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn a_lone_connection_header_goes_and_the_rest_stays() {
        let values: [&[u8]; 4] = [b"keep-alive", b"close", b"", b"caf\xe9"];
        for v in values {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, HeaderValue::from_bytes(v).unwrap());
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
            h.insert("x-keep", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 2, "Connection: {v:?} left {h:?}");
            assert!(h.contains_key("x-keep") && h.contains_key(header::CONTENT_LENGTH));
        }
        let mut plain = HeaderMap::new();
        plain.insert(header::HOST, HeaderValue::from_static("a"));
        plain.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(
            plain.len(),
            1,
            "a fixed hop-by-hop header without Connection goes too"
        );
        assert!(plain.contains_key(header::HOST));
    }

    #[test]
    fn ipv4_text_matches_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.30.4",
            "255.255.255.255",
            "1.20.100.9",
        ] {
            let a: std::net::Ipv4Addr = ip.parse().unwrap();
            let mut buf = [0u8; 15];
            assert_eq!(ipv4_text(a, &mut buf), a.to_string().as_bytes());
        }
    }

    #[test]
    fn many_listed_names_and_te_trailers() {
        let mut h = HeaderMap::new();
        let names: Vec<String> = (0..30).map(|i| format!("x-hop-{i}")).collect();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_str(&names.join(", ")).unwrap(),
        );
        for n in &names {
            h.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        assert!(h.contains_key("x-keep"));
        let mut no_trailers = HeaderMap::new();
        no_trailers.insert(header::TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut no_trailers);
        assert!(no_trailers.is_empty());
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_right_most_untrusted_entry() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("2.2.2.2, 10.0.0.5"),
        );
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let outsider: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, Some(&trusted)),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(outsider, &h, Some(&trusted)), outsider);
        assert_eq!(client_ip(proxy, &h, None), proxy, "no list: the peer");
    }

    #[test]
    fn request_ids() {
        let a = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(a
            .as_bytes()
            .iter()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(a, new_request_id());
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        assert_eq!(request_id(&h), "abc");
        assert!(request_id(&h).is_sensitive() && request_id(&HeaderMap::new()).is_sensitive());
    }
}
