//! `Sandgate-Explain: 1`: a request from `admin.explain_from` gets a `Sandgate-Explain`
//! response header saying how it was handled: the route, the pool and its strategy, each try
//! (the backend, why the strategy chose it, the backends it skipped and why, the outcome), the
//! cache status and the error, if any. The same text is logged at debug level.

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::proxy::exchange::Exchange;
use crate::state::Snapshot;

/// The request and response header.
pub static SANDGATE_EXPLAIN: HeaderName = HeaderName::from_static("sandgate-explain");

/// Longest explanation sent; a longer one is cut.
const MAX_LEN: usize = 8 * 1024;

/// Whether the request asks for an explanation and its peer may have one.
pub fn asked(snap: &Snapshot, headers: &HeaderMap, peer: std::net::IpAddr) -> bool {
    // The peer first: it is cheaper than the header lookup, and most peers may not ask.
    snap.explain_from.iter().any(|n| n.contains(&peer))
        && crate::headers::first(headers, &SANDGATE_EXPLAIN)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"1")
}

/// Composes the explanation of `x` (whose try notes are taken), logs it, and keeps it for
/// decoration.
pub fn finish(snap: &Snapshot, x: &mut Exchange, status: u16) {
    let Some(notes) = x.tried.explain.take() else {
        return;
    };
    let mut parts = Vec::with_capacity(notes.len() + 4);
    let route = x.route.and_then(|i| snap.route_stats.get(i));
    parts.push(format!("route={}", route.map_or("none", |r| &*r.name)));
    if let Some(p) = x.pool.and_then(|i| snap.pools.get(i)) {
        let kind = crate::config::raw::config_name(&p.pool.kind);
        parts.push(format!("pool={} strategy={kind}", p.pool.name));
    }
    parts.extend(*notes);
    if let Some(c) = &x.cache {
        parts.push(format!(
            "cache={}",
            String::from_utf8_lossy(c.value().as_bytes())
        ));
    }
    if x.tunnel {
        parts.push("tunnel".to_owned());
    }
    if let Some(e) = x.error {
        parts.push(format!("error={e}"));
    }
    parts.push(format!("status={status}"));
    let mut text: String = parts
        .join("; ")
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.len() > MAX_LEN {
        text.truncate(MAX_LEN - 3);
        text.push_str("...");
    }
    tracing::debug!(request_id = ?x.request_id, explain = %text, "explain");
    x.explain = HeaderValue::from_str(&text).ok();
}
