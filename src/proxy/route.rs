//! Stage: routing. The request's authority is checked (RFC 9112 section 3.2: an HTTP/1.1
//! request without `Host`, with two, or with an invalid one is refused; on HTTP/2 and for an
//! absolute-form target, the target's authority wins), its path normalised (what is routed
//! is what goes upstream), and host + path + headers pick the route and its pool.

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::uri::{PathAndQuery, Uri};
use http::{Method, Version};

use crate::error::ProxyError;
use crate::router::normalize_path;
use crate::state::Snapshot;

/// A request matched to a route.
pub struct Routed {
    /// Index of the route in the config.
    pub index: usize,
    /// Index of its pool in the snapshot.
    pub pool: usize,
    /// The client-facing host (with its port, if any).
    pub host: Option<HeaderValue>,
}

/// Whether `h` is a valid `Host` value: `reg-name / IPv4 / [IPv6]`, optionally `:port`.
fn valid_host(h: &[u8]) -> bool {
    let (host, port) = match h.strip_prefix(b"[") {
        Some(rest) => {
            let Some(end) = rest.iter().position(|b| *b == b']') else {
                return false;
            };
            let ip = &rest[..end];
            if ip.is_empty()
                || !ip
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
            {
                return false;
            }
            (&h[..end + 2], &rest[end + 1..])
        }
        None => match h.iter().rposition(|b| *b == b':') {
            Some(i) => (&h[..i], &h[i..]),
            None => (h, &h[h.len()..]),
        },
    };
    let port_ok = match port.strip_prefix(b":") {
        None => port.is_empty(),
        Some(p) => p.len() <= 5 && p.iter().all(u8::is_ascii_digit),
    };
    let host_ok = host.starts_with(b"[")
        || (!host.is_empty() && host.iter().all(|b| REG_NAME[usize::from(*b)]));
    port_ok && host_ok
}

/// The bytes of a reg-name (RFC 3986 section 3.2.2: unreserved, sub-delims and `%`), as a
/// table: this runs for every request.
const REG_NAME: [bool; 256] = {
    const OTHERS: &[u8] = b"-._~!$&'()*+,;=%";
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = (i as u8).is_ascii_alphanumeric();
        i += 1;
    }
    let mut j = 0;
    while j < OTHERS.len() {
        t[OTHERS[j] as usize] = true;
        j += 1;
    }
    t
};

/// The authority a request is for, checked.
fn authority(parts: &Parts) -> Result<Option<HeaderValue>, ProxyError> {
    // HTTP/2's :authority, and an absolute-form target, win over Host.
    if let Some(a) = parts.uri.authority() {
        if parts.version == Version::HTTP_2 || parts.uri.scheme().is_some() {
            return HeaderValue::from_str(a.as_str())
                .map(Some)
                .map_err(|_| ProxyError::BadRequest("invalid authority"));
        }
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    match host {
        Some(h) if valid_host(h.as_bytes()) => Ok(Some(h.clone())),
        Some(_) => Err(ProxyError::BadRequest("invalid Host header")),
        None if parts.version == Version::HTTP_11 => Err(ProxyError::BadRequest(
            "an HTTP/1.1 request needs a Host header",
        )),
        None => Ok(None),
    }
}

/// Normalises the request path in place (see [`normalize_path`]); 400 for a stray `%`.
pub fn normalize(parts: &mut Parts) -> Result<(), ProxyError> {
    let normal = normalize_path(parts.uri.path())
        .map_err(|_| ProxyError::BadRequest("invalid percent-encoding in the path"))?;
    let Some(path) = normal else {
        return Ok(());
    };
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query =
        Some(PathAndQuery::try_from(pq).map_err(|_| ProxyError::BadRequest("invalid path"))?);
    parts.uri = Uri::from_parts(uri).map_err(|_| ProxyError::BadRequest("invalid path"))?;
    Ok(())
}

/// Finds the route of a request: 400 for a bad authority, 404 when no route matches.
pub fn find(snap: &Snapshot, parts: &Parts) -> Result<Routed, ProxyError> {
    let host = authority(parts)?;
    let route = snap
        .router
        .find(
            host.as_ref().and_then(|h| h.to_str().ok()),
            parts.uri.path(),
            &parts.headers,
        )
        .ok_or(ProxyError::NoRoute)?;
    Ok(Routed {
        index: route.index,
        pool: route.pool,
        host,
    })
}

/// Refuses request forms sandgate does not forward (CONNECT).
pub fn supported(parts: &Parts) -> Result<(), ProxyError> {
    // Extended CONNECT for a WebSocket (RFC 8441) is a tunnel; plain CONNECT is not proxied.
    if parts.method == Method::CONNECT && super::upgrade::asked(parts).is_none() {
        return Err(ProxyError::BadRequest("CONNECT is not supported"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, uri: &str, hosts: &[&str]) -> Parts {
        let mut b = http::Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_reg_name_table_is_the_rfc_set() {
        for b in 0..=255u8 {
            let rfc = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b);
            assert_eq!(REG_NAME[usize::from(b)], rfc, "byte {b}");
        }
    }

    #[test]
    fn host_rules() {
        let ok = |p: &Parts| {
            authority(p)
                .unwrap()
                .map(|h| h.to_str().unwrap().to_owned())
        };
        assert_eq!(
            ok(&parts(Version::HTTP_11, "/", &["a.example:8080"])).as_deref(),
            Some("a.example:8080")
        );
        assert_eq!(
            ok(&parts(Version::HTTP_11, "/", &["[::1]:80"])).as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(ok(&parts(Version::HTTP_10, "/", &[])), None);
        for bad in [
            vec![],
            vec!["a", "b"],
            vec!["a b"],
            vec!["a/b"],
            vec!["a:xx"],
            vec![""],
            vec!["[zz]"],
            vec!["u@h"],
        ] {
            assert!(
                authority(&parts(Version::HTTP_11, "/", &bad)).is_err(),
                "{bad:?}"
            );
        }
        // :authority (HTTP/2) and an absolute-form target win over Host.
        assert_eq!(
            ok(&parts(Version::HTTP_2, "https://h2.example/x", &["other"])).as_deref(),
            Some("h2.example")
        );
        assert_eq!(
            ok(&parts(Version::HTTP_11, "http://abs.example/x", &["other"])).as_deref(),
            Some("abs.example")
        );
    }

    #[test]
    fn the_normalised_path_replaces_the_target() {
        let mut p = parts(Version::HTTP_11, "/v1/../admin/./x?q=1/../2", &["a"]);
        normalize(&mut p).unwrap();
        assert_eq!(p.uri, "/admin/x?q=1/../2");
    }
}
