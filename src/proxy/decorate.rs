//! Stage: decorate. The one place that adds per-request headers to a response, whatever made
//! it (a backend, the cache, or sandgate's own error): `Via`, `X-Request-Id`, `RateLimit-*`,
//! the sticky cookie, `Cache-Status` and `Sandgate-Explain`. Stored cache entries never hold these.

use http::header;
use http::{Response, Version};

use crate::body::ProxyBody;
use crate::cache::status::CACHE_STATUS;
use crate::headers::{VIA_VALUE, X_REQUEST_ID};
use crate::proxy::exchange::Exchange;
use crate::proxy::explain::SANDGATE_EXPLAIN;

/// Adds the per-request headers of `x` to `resp`.
pub fn apply(resp: &mut Response<ProxyBody>, x: &mut Exchange) {
    // The answer is in sandgate's own HTTP version (RFC 9110 section 6.2), whatever the
    // backend spoke: an HTTP/1.0 backend must not turn keep-alive clients into one-shot ones.
    // (On HTTP/2 connections hyper ignores it.)
    *resp.version_mut() = Version::HTTP_11;
    let h = resp.headers_mut();
    if x.via {
        h.append(header::VIA, VIA_VALUE.clone());
    }
    if let Some(c) = x.set_cookie.take() {
        h.append(header::SET_COOKIE, c);
    }
    h.insert(X_REQUEST_ID.clone(), x.request_id.clone());
    if let Some(d) = &x.rate {
        d.write_headers(h);
    }
    if let Some(c) = &x.cache {
        // After any member a cache nearer the origin added (RFC 9211 section 2).
        h.append(CACHE_STATUS.clone(), c.value());
    }
    if let Some(e) = x.explain.take() {
        h.insert(SANDGATE_EXPLAIN.clone(), e);
    }
}
