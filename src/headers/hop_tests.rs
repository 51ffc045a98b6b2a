use super::*;
use http::header::HeaderName;

/// What the HTTP/1.1 path sends for `h` and `hop`: the request's fields but those the hop
/// replaces, then the hop's lines, read back into a map.
fn written(h: &HeaderMap, hop: &Hop) -> HeaderMap {
    let mut wire = Vec::new();
    for (n, v) in h {
        if !hop.replaces_any() || !hop.replaces(n) {
            wire.extend_from_slice(format!("{n}: ").as_bytes());
            wire.extend_from_slice(v.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
    }
    hop.write(&mut wire);
    wire.extend_from_slice(b"\r\n");
    let mut raw = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(&wire, &mut raw)
    else {
        panic!("unparsable: {:?}", String::from_utf8_lossy(&wire));
    };
    let mut out = HeaderMap::new();
    for f in fields {
        out.append(
            HeaderName::from_bytes(f.name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(f.value).unwrap(),
        );
    }
    out
}

/// `h` after `hop` put its fields in (the HTTP/2 path), checked to be what the HTTP/1.1
/// path sends.
fn applied(mut h: HeaderMap, hop: &Hop) -> HeaderMap {
    let wire = written(&h, hop);
    hop.apply(&mut h);
    assert_eq!(wire, h, "both paths send the same fields");
    h
}

fn id() -> HeaderValue {
    HeaderValue::from_static("0123abcd")
}

fn new_hop(
    h: &mut HeaderMap,
    peer: &str,
    tls: bool,
    host: Option<&HeaderValue>,
    trusted: Option<&[ipnet::IpNet]>,
) -> Hop {
    Hop::new(h, peer.parse().unwrap(), tls, host, trusted, &id(), None)
}

#[test]
fn a_first_hop_gets_its_address_and_the_rest() {
    let mut h = HeaderMap::new();
    let hop = new_hop(&mut h, "::1", true, None, None);
    let out = applied(h, &hop);
    assert_eq!(out["x-forwarded-for"], "::1");
    assert_eq!(out["x-forwarded-proto"], "https");
    assert!(!out.contains_key("x-forwarded-host"));
    assert_eq!(out["via"], "1.1 sandgate");
    assert_eq!(out["x-request-id"], "0123abcd");
    assert!(!out.contains_key("traceparent"));
    let mut h = HeaderMap::new();
    let hop = new_hop(&mut h, "192.168.10.200", false, None, None);
    assert_eq!(applied(h, &hop)["x-forwarded-for"], "192.168.10.200");
}

#[test]
fn the_clients_copies_are_replaced_and_its_via_kept() {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
    h.insert("x-request-id", HeaderValue::from_static("theirs"));
    h.insert("via", HeaderValue::from_static("1.0 edge"));
    h.insert("x-keep", HeaderValue::from_static("1"));
    let host = HeaderValue::from_static("a.example");
    let hop = new_hop(&mut h, "127.0.0.1", false, Some(&host), None);
    assert_eq!(
        h.len(),
        6,
        "the client's copies stay in the map for the strategies"
    );
    assert!(hop.replaces_any());
    let replaced: Vec<_> = h.keys().filter(|n| hop.replaces(n)).collect();
    assert_eq!(
        replaced,
        [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-request-id"
        ]
    );
    let out = applied(h, &hop);
    assert_eq!(out["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(out["x-forwarded-proto"], "http");
    assert_eq!(out["x-forwarded-host"], "a.example");
    assert_eq!(out["x-request-id"], "0123abcd");
    let via: Vec<_> = out.get_all("via").iter().collect();
    assert_eq!(via, ["1.0 edge", "1.1 sandgate"], "ours comes last");
    assert_eq!(out["x-keep"], "1");
}

#[test]
fn a_forwarded_host_without_a_routing_host_is_dropped() {
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-host", HeaderValue::from_static("spoofed"));
    let hop = new_hop(&mut h, "127.0.0.1", false, None, None);
    assert!(!applied(h, &hop).contains_key("x-forwarded-host"));
    let mut plain = HeaderMap::new();
    plain.insert("x-keep", HeaderValue::from_static("1"));
    assert!(!new_hop(&mut plain, "127.0.0.1", false, None, None).replaces_any());
}

#[test]
fn several_forwarded_for_lines_are_combined_and_trust_decides() {
    let mut h = HeaderMap::new();
    h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
    h.append(
        "x-forwarded-for",
        HeaderValue::from_static(" 2.2.2.2, 10.0.0.5,"),
    );
    h.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    let mut kept = h.clone();
    let hop = new_hop(&mut kept, "10.0.0.9", false, None, Some(&trusted));
    let kept = applied(kept, &hop);
    assert_eq!(
        kept["x-forwarded-for"],
        "1.1.1.1, 2.2.2.2, 10.0.0.5, 10.0.0.9"
    );
    assert!(kept.contains_key("forwarded"));
    let mut replaced = h.clone();
    let hop = new_hop(&mut replaced, "8.8.8.8", false, None, Some(&trusted));
    let replaced = applied(replaced, &hop);
    assert_eq!(replaced["x-forwarded-for"], "8.8.8.8");
    assert!(!replaced.contains_key("forwarded"));
    let mut appended = h;
    let hop = new_hop(&mut appended, "8.8.8.8", false, None, None);
    assert_eq!(
        applied(appended, &hop)["x-forwarded-for"],
        "1.1.1.1, 2.2.2.2, 10.0.0.5, 8.8.8.8"
    );
}

#[test]
fn the_traceparent_is_this_hops() {
    let mut h = HeaderMap::new();
    let trace = crate::trace::hop(&mut h, true).unwrap();
    let hop = Hop::new(
        &mut h,
        "127.0.0.1".parse().unwrap(),
        false,
        None,
        None,
        &id(),
        Some(&trace),
    );
    let out = applied(h, &hop);
    assert_eq!(out["traceparent"].as_bytes(), trace.traceparent());
}

#[test]
fn the_wire_length_is_enough() {
    let mut h = HeaderMap::new();
    h.insert(
        "x-forwarded-for",
        HeaderValue::from_static("2001:db8::1, 2001:db8::2"),
    );
    let host = HeaderValue::from_static("a-rather-long-host-name.example.com:8443");
    let mut t = HeaderMap::new();
    let trace = crate::trace::hop(&mut t, true);
    let hop = Hop::new(
        &mut h,
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
        true,
        Some(&host),
        None,
        &id(),
        trace.as_ref(),
    );
    let mut wire = Vec::new();
    hop.write(&mut wire);
    assert!(
        wire.len() <= hop.wire_len(),
        "{} > {}",
        wire.len(),
        hop.wire_len()
    );
}
