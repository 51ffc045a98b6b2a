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
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
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
            path.starts_with(&*r.prefix)
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
    fn ports() {
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a"), "a");
    }
}
