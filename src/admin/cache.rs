//! Cache actions: `POST /admin/cache/purge` (by URL, URL prefix, tag, or everything, on every
//! instance sharing the Redis tier) and `POST /admin/cache/warm` (fetch URLs through the normal
//! pipeline, at most 8 at a time).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;

use super::{error, reply, Admin, AdminResponse};
use crate::cache::Purge;
use crate::proxy::{self, ConnCtx, ConnInfo};

/// Warm requests in flight at once.
const WARM_CONCURRENCY: usize = 8;
/// URLs one warm request may name.
const WARM_MAX_URLS: usize = 10_000;

/// `POST /admin/cache/warm`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Warm {
    urls: Vec<String>,
}

/// Checks that `u` is an absolute http(s) URL.
fn absolute(u: &str) -> Result<Uri, String> {
    let uri: Uri = u.parse().map_err(|e| format!("{u:?}: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(uri),
        _ => Err(format!("{u:?}: not an absolute http:// or https:// URL")),
    }
}

/// An absolute URL as the cache keys it: scheme and host lower-case; a URL (not a prefix)
/// without a path gets `/`.
fn cache_url(u: &str, whole: bool) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let path = &rest[end..];
    let slash = if whole && !path.starts_with('/') {
        "/"
    } else {
        ""
    };
    format!(
        "{}://{}{slash}{path}",
        scheme.to_ascii_lowercase(),
        rest[..end].to_ascii_lowercase()
    )
}

impl Admin {
    pub(super) async fn purge(&self, body: &Bytes, peer: SocketAddr) -> AdminResponse {
        let p: Purge = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        };
        let bad: Vec<String> = p
            .urls
            .iter()
            .chain(&p.prefixes)
            .filter_map(|u| absolute(u).err())
            .collect();
        if !bad.is_empty() {
            return error(StatusCode::BAD_REQUEST, "bad_request", &bad.join("; "));
        }
        let p = Purge {
            urls: p.urls.iter().map(|u| cache_url(u, true)).collect(),
            prefixes: p.prefixes.iter().map(|u| cache_url(u, false)).collect(),
            ..p
        };
        let purged = self.services.cache.purge(&p).await;
        tracing::info!(%peer, urls = p.urls.len(), prefixes = p.prefixes.len(), tags = p.tags.len(), all = p.all, purged, "cache purged");
        reply(StatusCode::OK, json!({"purged": purged}))
    }

    pub(super) async fn warm(&self, body: &Bytes, peer: SocketAddr) -> AdminResponse {
        let w: Warm = match serde_json::from_slice(body) {
            Ok(w) => w,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
        };
        if w.urls.len() > WARM_MAX_URLS {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("at most {WARM_MAX_URLS} URLs per request"),
            );
        }
        let gate = Arc::new(Semaphore::new(WARM_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, u) in w.urls.into_iter().enumerate() {
            let (gate, state, shed, services) = (
                Arc::clone(&gate),
                Arc::clone(&self.state),
                Arc::clone(&self.shed),
                Arc::clone(&self.services),
            );
            tasks.spawn(async move {
                let uri = match absolute(&u) {
                    Ok(uri) => uri,
                    Err(e) => return (i, json!({"url": u, "error": e})),
                };
                let Ok(_permit) = gate.acquire().await else {
                    return (i, json!({"url": u, "error": "shutting down"}));
                };
                let ctx = ConnCtx {
                    state,
                    shed,
                    services,
                    conn: ConnInfo {
                        listener: Arc::from("admin"),
                        peer,
                        tls: uri.scheme_str() == Some("https"),
                    },
                    activity: None,
                };
                let authority = uri.authority().map(|a| a.as_str().to_owned());
                let Ok(req) = Request::get(uri).body(()) else {
                    return (i, json!({"url": u, "error": "cannot build the request"}));
                };
                let (mut parts, ()) = req.into_parts();
                if let Some(a) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
                    parts.headers.insert(header::HOST, a);
                }
                let resp = proxy::handle_parts(&ctx, parts, None).await;
                let status = resp.status().as_u16();
                let cache_status = resp
                    .headers()
                    .get("cache-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                // Read to the end, so the answer comes once the response is stored.
                let bytes = resp.into_body().collect().await.map(|b| b.to_bytes().len());
                match bytes {
                    Ok(n) => (i, json!({"url": u, "status": status, "bytes": n, "cache_status": cache_status})),
                    Err(e) => (i, json!({"url": u, "status": status, "error": e.to_string()})),
                }
            });
        }
        let mut results = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r {
                Ok(x) => results.push(x),
                Err(e) => tracing::error!(error = %e, "cache warm task failed"),
            }
        }
        results.sort_by_key(|(i, _)| *i);
        let results: Vec<_> = results.into_iter().map(|(_, v)| v).collect();
        tracing::info!(%peer, urls = results.len(), "cache warmed");
        reply(StatusCode::OK, json!({"results": results}))
    }
}
