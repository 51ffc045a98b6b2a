//! Stage: decorate. The one place that adds per-request headers to a response, whatever made
//! it (a backend, the cache, or sandgate's own error): `Via`, `X-Request-Id`, `RateLimit-*`
//! and the sticky cookie. Stored cache entries never hold these.

use http::header;
use http::Response;

use crate::body::ProxyBody;
use crate::headers::{VIA_VALUE, X_REQUEST_ID};
use crate::proxy::exchange::Exchange;

/// Adds the per-request headers of `x` to `resp`.
pub fn apply(resp: &mut Response<ProxyBody>, x: &mut Exchange) {
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
}
