//! The `Cache-Status` response header (RFC 9211) and the result label of
//! `sandgate_cache_requests_total`. Pure.

use std::fmt::Write;

use http::{HeaderName, HeaderValue};

/// `Cache-Status` (RFC 9211).
pub static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The cache's name in `Cache-Status`.
pub const CACHE_NAME: &str = "sandgate";

/// How the cache handled one request, for `sandgate_cache_requests_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Answered from a fresh stored response.
    Hit,
    /// Forwarded to a backend.
    Miss,
    /// A stale response served (while revalidating, or standing in for an error).
    Stale,
    /// A stored response confirmed by a backend's 304.
    Revalidated,
    /// Answered from another request's fill.
    Coalesced,
    /// The cache stood aside (request `no-store`, an unsafe method, a range on a miss).
    Bypass,
}

impl CacheResult {
    /// Every result, in label order.
    pub const ALL: [CacheResult; 6] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Revalidated,
        CacheResult::Coalesced,
        CacheResult::Bypass,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Coalesced => "coalesced",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// One `Cache-Status` member for sandgate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStatus {
    /// Served from a stored response without going forward.
    pub hit: bool,
    /// Why the request went forward: `uri-miss`, `vary-miss`, `stale`, `request`, `bypass`,
    /// `method`.
    pub fwd: Option<&'static str>,
    /// The status the backend answered a forwarded request with.
    pub fwd_status: Option<u16>,
    /// Freshness left of the response served (negative when stale).
    pub ttl: Option<i64>,
    /// The response was stored.
    pub stored: bool,
    /// Served from another request's fill.
    pub collapsed: bool,
    /// `stale-if-error` or `stale-while-revalidate`.
    pub detail: Option<&'static str>,
}

impl CacheStatus {
    /// A fresh hit with `ttl` seconds of freshness left.
    pub fn hit(ttl: i64) -> Self {
        Self {
            hit: true,
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    /// Forwarded for `why`.
    pub fn fwd(why: &'static str) -> Self {
        Self {
            fwd: Some(why),
            ..Self::default()
        }
    }

    /// The header value, e.g. `sandgate; fwd=uri-miss; stored`.
    pub fn value(&self) -> HeaderValue {
        let mut s = String::with_capacity(64);
        s.push_str(CACHE_NAME);
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(f) = self.fwd {
            let _ = write!(s, "; fwd={f}");
        }
        if let Some(st) = self.fwd_status {
            let _ = write!(s, "; fwd-status={st}");
        }
        if let Some(t) = self.ttl {
            let _ = write!(s, "; ttl={t}");
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            let _ = write!(s, "; detail={d}");
        }
        // Only ASCII goes in.
        HeaderValue::try_from(s).unwrap_or_else(|_| HeaderValue::from_static(CACHE_NAME))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_rfc_9211() {
        assert_eq!(CacheStatus::hit(42).value(), "sandgate; hit; ttl=42");
        let mut m = CacheStatus::fwd("uri-miss");
        m.stored = true;
        assert_eq!(m.value(), "sandgate; fwd=uri-miss; stored");
        m.collapsed = true;
        assert_eq!(m.value(), "sandgate; fwd=uri-miss; stored; collapsed");
        let s = CacheStatus {
            fwd: Some("stale"),
            fwd_status: Some(503),
            ttl: Some(-12),
            detail: Some("stale-if-error"),
            ..CacheStatus::default()
        };
        assert_eq!(
            s.value(),
            "sandgate; fwd=stale; fwd-status=503; ttl=-12; detail=stale-if-error"
        );
    }
}
