//! RFC 9111 shared-cache decisions, pure, with time passed in (whole seconds since the Unix
//! epoch, the resolution of HTTP dates and `Age`).
//!
//! - [`storable`]: may this response be stored, how fresh is it, and which fields are left out.
//! - [`decide`]: may a stored response answer this request now, or must it go to a backend.
//! - [`stale_if_error`]: may a stale response stand in for a failed backend.
//!
//! The directives sandgate obeys are `CDN-Cache-Control` when it is present and valid (RFC
//! 9213: a cache that acts as a CDN uses its targeted field instead of `Cache-Control`), else
//! `Surrogate-Control`, else `Cache-Control`. Malformed or contradictory values get the safest
//! reading: stale, or not stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderName};
use http::StatusCode;

use super::directives::{Dir, Directives, Fields, DELTA_MAX};

/// `CDN-Cache-Control` (RFC 9213).
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Surrogate-Control` (W3C Edge Architecture).
pub static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Statuses RFC 9110 section 15.1 calls heuristically cacheable.
const HEURISTIC: [u16; 12] = [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// Statuses sandgate understands (for `must-understand`): those RFC 9110 defines.
fn understood(s: u16) -> bool {
    matches!(
        s,
        200..=206 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429 | 431 | 451 | 500..=505
    )
}

/// Seconds since the Unix epoch.
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How fresh a stored response is, computed once when it is stored (RFC 9111 section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// When the response was received.
    pub response_time: u64,
    /// Its age when received: `corrected_initial_age` of section 4.2.3.
    pub initial_age: u64,
    /// Freshness lifetime, capped by the route's `max_ttl`.
    pub lifetime: u64,
    /// `no-cache`: it must be revalidated on every use.
    pub no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage`: never served stale.
    pub no_stale: bool,
    /// The response's own `stale-while-revalidate`.
    pub stale_while_revalidate: Option<u64>,
    /// The response's own `stale-if-error`.
    pub stale_if_error: Option<u64>,
    /// It carries `ETag` or `Last-Modified`, so it can be revalidated.
    pub validators: bool,
}

impl Freshness {
    /// Current age at `now` (section 4.2.3).
    pub fn age(&self, now: u64) -> u64 {
        self.initial_age
            .saturating_add(now.saturating_sub(self.response_time))
    }

    /// Seconds of freshness left at `now`; negative once stale.
    pub fn ttl(&self, now: u64) -> i64 {
        let age = i64::try_from(self.age(now)).unwrap_or(i64::MAX);
        i64::try_from(self.lifetime).unwrap_or(i64::MAX) - age
    }

    /// Whether it may be used without revalidation at `now`.
    pub fn is_fresh(&self, now: u64) -> bool {
        !self.no_cache && self.ttl(now) > 0
    }

    /// Seconds past its freshness at `now` (0 while fresh).
    pub fn staleness(&self, now: u64) -> u64 {
        u64::try_from(-self.ttl(now)).unwrap_or(0)
    }
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Not a final status sandgate may store (1xx, 206, 304), or not understood under
    /// `must-understand`.
    Status,
    /// `no-store`.
    NoStore,
    /// `private`.
    Private,
    /// The request carried `Authorization` and the response does not allow sharing it.
    Authorization,
    /// The response sets a cookie.
    SetCookie,
    /// `Vary: *`.
    VaryAll,
    /// Nothing makes it reusable: no freshness, no validator, no stale allowance.
    Useless,
}

/// A response that may be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storable {
    /// Its freshness.
    pub freshness: Freshness,
    /// Fields to leave out of the stored copy (`no-cache="..."`, `private="..."`).
    pub omit: Vec<HeaderName>,
}

/// The response directives sandgate obeys: the targeted field if any, else `Cache-Control`.
pub fn response_directives(h: &HeaderMap) -> Directives {
    if let Some(d) = Directives::parse_cdn(h, &CDN_CACHE_CONTROL) {
        return d;
    }
    if h.contains_key(&SURROGATE_CONTROL) {
        return Directives::parse(h, &SURROGATE_CONTROL);
    }
    Directives::parse(h, &header::CACHE_CONTROL)
}

/// An HTTP date header, if present once (or repeated with one value) and valid.
fn date(h: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ()> {
    let mut found: Option<u64> = None;
    for v in h.get_all(name) {
        let t = v
            .to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s.trim()).ok())
            .map(unix)
            .ok_or(())?;
        match found {
            Some(prev) if prev != t => return Err(()),
            _ => found = Some(t),
        }
    }
    Ok(found)
}

/// `Age`: the first member of the first line; an invalid value is ignored (section 5.1).
fn age_value(h: &HeaderMap) -> u64 {
    h.get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.split(',').next())
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .map_or(0, |s| {
            s.parse::<u64>().map_or(DELTA_MAX, |n| n.min(DELTA_MAX))
        })
}

fn secs(d: Dir) -> Option<u64> {
    match d {
        Dir::Secs(s) => Some(s),
        _ => None,
    }
}

/// Decides whether a response to a GET may be stored, given whether the request carried
/// `Authorization`, when the request was sent and the response received, and the route's
/// `max_ttl`.
pub fn storable(
    status: StatusCode,
    h: &HeaderMap,
    authorization: bool,
    request_time: u64,
    response_time: u64,
    max_ttl: Duration,
) -> Result<Storable, NotStored> {
    let code = status.as_u16();
    let d = response_directives(h);
    if code < 200 || code == 206 || code == 304 || (d.must_understand && !understood(code)) {
        return Err(NotStored::Status);
    }
    if d.no_store && !d.must_understand {
        return Err(NotStored::NoStore);
    }
    if d.private == Fields::All {
        return Err(NotStored::Private);
    }
    if authorization && !(d.public || d.s_maxage.present() || d.must_revalidate) {
        return Err(NotStored::Authorization);
    }
    if h.contains_key(header::SET_COOKIE) {
        return Err(NotStored::SetCookie);
    }
    let vary_all = crate::headers::tokens(h.get_all(header::VARY).iter()).any(|n| n == "*");
    if vary_all {
        return Err(NotStored::VaryAll);
    }

    // Section 4.2.3: the age it already had when it arrived.
    let date_value = date(h, &header::DATE)
        .ok()
        .flatten()
        .unwrap_or(response_time);
    let apparent = response_time.saturating_sub(date_value);
    let delay = response_time.saturating_sub(request_time);
    let initial_age = apparent.max(age_value(h).saturating_add(delay));

    // Section 4.2.1: s-maxage, then max-age, then Expires - Date, then a heuristic.
    let explicit = match (d.s_maxage, d.max_age) {
        (Dir::Secs(s), _) => Some(s),
        (Dir::Invalid, _) => Some(0),
        (Dir::Absent, Dir::Secs(s)) => Some(s),
        (Dir::Absent, Dir::Invalid) => Some(0),
        (Dir::Absent, Dir::Absent) => match date(h, &header::EXPIRES) {
            Ok(Some(exp)) => Some(exp.saturating_sub(date_value)),
            // An invalid Expires means "already expired".
            Err(()) => Some(0),
            Ok(None) => None,
        },
    };
    let heuristic_ok = HEURISTIC.contains(&code) || d.public;
    let lifetime = match explicit {
        Some(l) => l,
        None if heuristic_ok => match date(h, &header::LAST_MODIFIED) {
            Ok(Some(lm)) if lm < date_value => (date_value - lm) / 10,
            _ => 0,
        },
        None => return Err(NotStored::Useless),
    };
    let lifetime = lifetime.min(max_ttl.as_secs());

    let no_cache = d.no_cache == Fields::All;
    let validators = h.contains_key(header::ETAG) || h.contains_key(header::LAST_MODIFIED);
    let stale_while_revalidate = secs(d.stale_while_revalidate);
    let stale_if_error = secs(d.stale_if_error);
    let freshness = Freshness {
        response_time,
        initial_age,
        lifetime,
        no_cache,
        no_stale: no_cache || d.must_revalidate || d.proxy_revalidate || d.s_maxage.present(),
        stale_while_revalidate,
        stale_if_error,
        validators,
    };
    let reusable = (lifetime > 0 && !no_cache)
        || validators
        || stale_while_revalidate.is_some_and(|s| s > 0)
        || stale_if_error.is_some_and(|s| s > 0);
    if !reusable {
        return Err(NotStored::Useless);
    }
    let mut omit = Vec::new();
    for f in [&d.no_cache, &d.private] {
        if let Fields::Named(names) = f {
            omit.extend(names.iter().cloned());
        }
    }
    Ok(Storable { freshness, omit })
}

/// Why a request goes to a backend although something is stored (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// The stored response is stale (or `no-cache`): revalidate it.
    Stale,
    /// The request's own directives refuse the stored response.
    Request,
}

/// What to do with a stored response for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Serve it as it is.
    Fresh,
    /// Serve it stale now and revalidate in the background.
    StaleWhileRevalidate,
    /// Go to a backend (revalidating when it has validators).
    Forward(Forward),
}

/// Decides how a stored response may answer a request with directives `req` at `now`, under
/// the route's `stale_while_revalidate` (used when the response has none of its own). A
/// client's `max-stale` is not honoured: sandgate's entries serve other users too.
pub fn decide(f: &Freshness, req: &Directives, now: u64, route_swr: Duration) -> Use {
    let age = f.age(now);
    let refused = req.no_cache != Fields::Absent
        || match req.max_age {
            Dir::Secs(n) => n == 0 || age > n,
            Dir::Invalid => true,
            Dir::Absent => false,
        }
        || match req.min_fresh {
            Dir::Secs(n) => f.ttl(now) < i64::try_from(n).unwrap_or(i64::MAX),
            Dir::Invalid => true,
            Dir::Absent => false,
        };
    if refused {
        return Use::Forward(Forward::Request);
    }
    if f.is_fresh(now) {
        return Use::Fresh;
    }
    let window = f.stale_while_revalidate.unwrap_or(route_swr.as_secs());
    if !f.no_stale && f.staleness(now) <= window && window > 0 {
        return Use::StaleWhileRevalidate;
    }
    Use::Forward(Forward::Stale)
}

/// Whether a stored response may stand in for a failed backend at `now`, under the route's
/// `stale_if_error` (used when the response has none of its own).
pub fn stale_if_error(f: &Freshness, now: u64, route_sie: Duration) -> bool {
    let window = f.stale_if_error.unwrap_or(route_sie.as_secs());
    !f.no_stale && window > 0 && f.staleness(now) <= window
}

/// Statuses after which a stale response may be served instead (RFC 5861 section 4).
pub fn is_error_status(s: StatusCode) -> bool {
    matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
