//! Cache keys. The primary key is the client-facing URL: scheme, host (lower-cased, port
//! kept) and path with query. The secondary key is the request's values of the fields the
//! stored response names in `Vary` (RFC 9111 section 4.1), normalised: field lines combined,
//! whitespace around commas removed. Pure.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};

/// The primary key of a request: `scheme://host/path?query`.
pub fn primary(tls: bool, host: Option<&[u8]>, path_and_query: &str) -> String {
    let scheme = if tls { "https://" } else { "http://" };
    let host = host.unwrap_or(b"");
    let mut k = String::with_capacity(scheme.len() + host.len() + path_and_query.len());
    k.push_str(scheme);
    for &b in host {
        k.push(char::from(b.to_ascii_lowercase()));
    }
    k.push_str(path_and_query);
    k
}

/// The host part of a primary key (`http://h:1/p` -> `h:1`).
pub fn host_of(key: &str) -> &str {
    let rest = key.split_once("://").map_or(key, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest)
}

/// One selecting field of a stored variant and the request's normalised value (None when the
/// request did not send it).
pub type Selecting = (HeaderName, Option<Bytes>);

/// The fields a response's `Vary` names, lower-case, in order, without duplicates. None when
/// it holds `*` (never matches).
pub fn vary_names(h: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names: Vec<HeaderName> = Vec::new();
    for v in h.get_all(header::VARY) {
        let s = v.to_str().ok()?;
        for n in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if n == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Some(names)
}

/// The request's value of `name`, normalised: lines joined with commas, whitespace around
/// each member trimmed.
pub fn normalised(req: &HeaderMap, name: &HeaderName) -> Option<Bytes> {
    let mut lines = req.get_all(name).iter().peekable();
    lines.peek()?;
    let mut out = Vec::new();
    for v in lines {
        for member in v.as_bytes().split(|b| *b == b',') {
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(member.trim_ascii());
        }
    }
    Some(Bytes::from(out))
}

/// The selecting fields of a request for a response that varies on `names`.
pub fn selecting(req: &HeaderMap, names: &[HeaderName]) -> Vec<Selecting> {
    names
        .iter()
        .map(|n| (n.clone(), normalised(req, n)))
        .collect()
}

/// Whether a request matches a stored variant's selecting fields.
pub fn matches(req: &HeaderMap, stored: &[Selecting]) -> bool {
    stored
        .iter()
        .all(|(n, v)| normalised(req, n).as_ref() == v.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn req(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn primary_key_lowercases_the_host_and_keeps_port_path_and_query() {
        assert_eq!(
            primary(false, Some(b"API.Example.com:8080"), "/V1/x?b=2&a=1"),
            "http://api.example.com:8080/V1/x?b=2&a=1"
        );
        assert_eq!(primary(true, Some(b"a"), "/"), "https://a/");
        assert_eq!(host_of("http://a.b:1/x?y"), "a.b:1");
        assert_eq!(host_of("http://a.b?y"), "a.b");
    }

    #[test]
    fn vary_parsing() {
        let r = req(&[("vary", "Foo, bar"), ("vary", "foo, Baz")]);
        let names: Vec<_> = vary_names(&r).unwrap();
        assert_eq!(names, ["foo", "bar", "baz"]);
        assert!(vary_names(&req(&[("vary", "Foo, *")])).is_none());
        assert!(vary_names(&req(&[("vary", ""), ("vary", "*")])).is_none());
        assert_eq!(
            vary_names(&HeaderMap::new()).unwrap(),
            Vec::<HeaderName>::new()
        );
    }

    #[test]
    fn selecting_fields_are_normalised() {
        let foo = HeaderName::from_static("foo");
        let stored = selecting(&req(&[("foo", "1, 2")]), std::slice::from_ref(&foo));
        assert!(matches(&req(&[("foo", " 1,2 ")]), &stored));
        assert!(matches(&req(&[("foo", "1"), ("foo", "2")]), &stored));
        assert!(!matches(&req(&[("foo", "2, 1")]), &stored));
        assert!(
            !matches(&HeaderMap::new(), &stored),
            "an omitted field differs"
        );
        let absent = selecting(&HeaderMap::new(), &[foo]);
        assert!(matches(&req(&[("other", "x")]), &absent), "both omitted");
    }
}
