//! Route matching: host (exact or `*.suffix`), path prefix, exact headers. The longest prefix
//! wins; among equal prefixes the earlier route wins. Pure: no I/O, no allocation per match.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{HostMatch, RouteConfig};

/// One compiled route.
pub struct Route {
    /// Position in the config's `routes` list.
    pub index: usize,
    /// Route name.
    pub name: Arc<str>,
    host: Option<HostMatch>,
    prefix: Box<str>,
    /// `path_prefix_segments`: the prefix matches whole path segments only.
    segments: bool,
    headers: Box<[(HeaderName, HeaderValue)]>,
    /// Index of the pool in the snapshot.
    pub pool: usize,
}

/// The route table of one config generation.
pub struct Router {
    routes: Vec<Route>,
}

/// `host[:port]` -> `host`; handles `[v6]:port`.
pub fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    // The digits at the end, then the colon before them: one backward scan.
    let b = host.as_bytes();
    let digits = b.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    match b.len().checked_sub(digits + 1) {
        Some(colon) if b[colon] == b':' => &host[..colon],
        _ => host,
    }
}

impl HostMatch {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Wildcard(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl Route {
    /// Whether the path starts with the prefix (as whole segments with
    /// `path_prefix_segments`: `/v1` matches `/v1` and `/v1/x`, not `/v10`).
    fn prefix_matches(&self, path: &str) -> bool {
        path.starts_with(&*self.prefix)
            && (!self.segments
                || path.len() == self.prefix.len()
                || self.prefix.ends_with('/')
                || path.as_bytes().get(self.prefix.len()) == Some(&b'/'))
    }
}

/// A path with a `%` that does not start a `%XX` escape (RFC 3986 section 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEscape;

/// Normalises a request path (RFC 3986 section 6.2.2): percent-encoded unreserved
/// characters are decoded, `.` and `..` segments resolved (never above the root), and empty
/// segments (`//`) merged. `Ok(None)` when the path is already normal (the common case costs
/// no allocation) or is not an absolute path (`*`). A `%` not followed by two hex digits is
/// refused, as nginx does: decoding around it is ambiguous (`/%3%30` would become `/%30`, which
/// a backend decodes again to `/0`), so no two readers could agree on the path.
pub fn normalize_path(path: &str) -> Result<Option<String>, BadEscape> {
    if !path.starts_with('/') || !needs_normalizing(path.as_bytes()) {
        return Ok(None);
    }
    // Decode %XX for unreserved characters; everything else stays as it was sent.
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let Some(c) = b
                .get(i + 1..i + 3)
                .and_then(|h| Some((hex(h[0])? << 4) | hex(h[1])?))
            else {
                return Err(BadEscape);
            };
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                decoded.push(char::from(c));
            } else {
                decoded.push_str(&path[i..i + 3]);
            }
            i += 3;
            continue;
        }
        // Push the (possibly multi-byte) character at i.
        let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
        decoded.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing = false;
    for (k, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing = k == last,
            ".." => {
                out.pop();
                trailing = k == last;
            }
            "" => trailing = k == last,
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut n = String::with_capacity(decoded.len());
    for s in &out {
        n.push('/');
        n.push_str(s);
    }
    if trailing || out.is_empty() {
        n.push('/');
    }
    Ok((n != path).then_some(n))
}

/// Whether a path holds a `%`, a `//` or a `/.`: one pass over its bytes (every request
/// takes it; three substring searches cost ten times as much).
fn needs_normalizing(b: &[u8]) -> bool {
    let mut prev = 0;
    for &c in b {
        if c == b'%' || (prev == b'/' && (c == b'/' || c == b'.')) {
            return true;
        }
        prev = c;
    }
    false
}

/// The value of one hex digit.
fn hex(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

impl Router {
    /// Compiles `routes`, ordered so that the first match is the right one.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut compiled: Vec<Route> = routes
            .iter()
            .enumerate()
            .map(|(index, r)| Route {
                index,
                name: Arc::from(r.name.as_str()),
                host: r.host.clone(),
                prefix: r.path_prefix.clone().into_boxed_str(),
                segments: r.path_prefix_segments,
                headers: r.headers.clone().into_boxed_slice(),
                pool: r.pool,
            })
            .collect();
        // Stable sort: longest prefix first, file order among equals.
        compiled.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes: compiled }
    }

    /// The route for a request, if any. `host` may carry a port.
    pub fn find(&self, host: Option<&str>, path: &str, headers: &HeaderMap) -> Option<&Route> {
        let host = host.map(strip_port);
        self.routes.iter().find(|r| {
            r.prefix_matches(path)
                && match (&r.host, host) {
                    (None, _) => true,
                    (Some(m), Some(h)) => m.matches(h),
                    (Some(_), None) => false,
                }
                && r.headers
                    .iter()
                    .all(|(n, v)| headers.get_all(n).iter().any(|x| x == v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(
        name: &str,
        host: Option<HostMatch>,
        prefix: &str,
        headers: &[(&str, &str)],
    ) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host,
            path_prefix: prefix.into(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        HeaderName::from_bytes(k.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
            pool: 0,
            rate_limit: None,
            cache: None,
            priority: Default::default(),
            path_prefix_segments: false,
        }
    }

    #[test]
    fn precedence() {
        let r = Router::new(&[
            route("root", None, "/", &[]),
            route("v1", None, "/v1", &[]),
            route("v1-acme", None, "/v1", &[("x-tenant", "acme")]),
            route(
                "api",
                Some(HostMatch::Exact("api.example.com".into())),
                "/v1",
                &[],
            ),
            route(
                "wild",
                Some(HostMatch::Wildcard(".example.com".into())),
                "/w",
                &[],
            ),
        ]);
        let h = HeaderMap::new();
        let name = |host, path, h: &HeaderMap| r.find(host, path, h).map(|x| x.name.to_string());
        assert_eq!(name(None, "/v1/x", &h).as_deref(), Some("v1"));
        assert_eq!(name(None, "/v2", &h).as_deref(), Some("root"));
        let mut acme = HeaderMap::new();
        acme.insert("x-tenant", HeaderValue::from_static("acme"));
        // Equal prefixes: file order wins, so v1 shadows v1-acme.
        assert_eq!(name(None, "/v1", &acme).as_deref(), Some("v1"));
        assert_eq!(
            name(Some("a.example.com:8080"), "/w", &h).as_deref(),
            Some("wild")
        );
        assert_eq!(name(Some("example.com"), "/w", &h).as_deref(), Some("root"));
        assert_eq!(
            name(Some("A.B.EXAMPLE.COM"), "/w", &h).as_deref(),
            Some("wild")
        );
    }

    #[test]
    fn segment_prefixes() {
        let mut seg = route("seg", None, "/v1", &[]);
        seg.path_prefix_segments = true;
        let r = Router::new(&[route("root", None, "/", &[]), seg]);
        let h = HeaderMap::new();
        let name = |path| r.find(None, path, &h).map(|x| x.name.to_string());
        assert_eq!(name("/v1").as_deref(), Some("seg"));
        assert_eq!(name("/v1/x").as_deref(), Some("seg"));
        assert_eq!(name("/v10").as_deref(), Some("root"));
    }

    #[test]
    fn paths_are_normalised() {
        let n = |p: &str| normalize_path(p).unwrap().unwrap_or_else(|| p.to_owned());
        assert_eq!(n("/v1/../admin"), "/admin");
        assert_eq!(n("/a//b/"), "/a/b/");
        assert_eq!(n("/a/./b/."), "/a/b/");
        assert_eq!(n("/../../x"), "/x");
        assert_eq!(n("/a/%2e%2E/b"), "/b");
        assert_eq!(n("/%7Euser/%41"), "/~user/A");
        assert_eq!(n("/keep%2Fslash%20and%25"), "/keep%2Fslash%20and%25");
        assert_eq!(n("/a/.."), "/");
        assert_eq!(n("//"), "/");
        assert_eq!(n("/.hidden"), "/.hidden");
        assert_eq!(n("/é/../x"), "/x");
        assert_eq!(
            normalize_path("/plain/path"),
            Ok(None),
            "no allocation when normal"
        );
        assert_eq!(normalize_path("*"), Ok(None));
        assert_eq!(
            n("/a%2fb%3F"),
            "/a%2fb%3F",
            "reserved escapes keep their case and bytes"
        );
    }

    #[test]
    fn the_quick_check_agrees_with_substring_searches() {
        for p in [
            "/", "/a", "/small", "/a/b", "/a.b", "/a/.b", "/a//", "//a", "/.", "/a/.", "/%41",
            "/a%", "/a.", "/a/b/", "/x./y", "/é/./x",
        ] {
            let slow = p.contains("//") || p.contains("/.") || p.contains('%');
            assert_eq!(needs_normalizing(p.as_bytes()), slow, "{p}");
        }
    }

    #[test]
    fn stray_percent_signs_are_refused() {
        for p in [
            "/%", "/a%", "/a%2", "/%zz", "/%3%30", "/%%41", "/%é0", "/ok/%g1",
        ] {
            assert_eq!(normalize_path(p), Err(BadEscape), "{p}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a"), "a");
        for h in [
            "",
            ":",
            "a:",
            "127.0.0.1:18081",
            "a:8b0",
            "a:80:90",
            "x.y",
            "80",
            ":80",
        ] {
            let old = match h.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => h,
            };
            assert_eq!(strip_port(h), old, "{h}");
        }
    }
}
