//! A cache fill, run on its own task so that it can outlive the client that started it. It
//! owns what it needs (an `Arc` of the snapshot, the request, the stale entry, the fill's
//! lead) and reports to the leading client through a oneshot, if one still listens:
//!
//! - a storable response is published to every follower and pumped into the fill until its
//!   end, then stored;
//! - a 304 refreshes the stale entry's headers and freshness;
//! - a failure or a 500/502/503/504 serves the stale entry when `stale-if-error` allows;
//! - anything else goes to the leader alone, and followers go to backends themselves.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use tokio::sync::oneshot;

use crate::cache::entry::{self, Entry, Head};
use crate::cache::fill::{self, FillBody, Leader, Published, Pumped, Served};
use crate::cache::policy::{self, unix, SURROGATE_CONTROL};
use crate::cache::status::CACHE_STATUS;
use crate::cache::{conditional, key, Cache, StoreResult};
use crate::config::RouteCacheConfig;
use crate::error::ProxyError;
use crate::headers::X_REQUEST_ID;
use crate::proxy::exchange::Tried;
use crate::proxy::forward::{self, Fetched, Outgoing};
use crate::state::Snapshot;

/// What the leading client gets.
pub enum Got {
    /// The response is being stored; read it from the fill.
    Shared(Arc<Head>, FillBody),
    /// A complete stored response (revalidated, or stale for an error).
    Entry(Arc<Entry>, Served),
    /// A response that is not stored, for this client only.
    Own(Box<Fetched>),
    /// The fetch failed and no stale response may stand in.
    Failed(ProxyError),
}

/// The leader's report: what it got and how the fetch went.
pub struct LeaderOut {
    /// Backends tried.
    pub tried: Tried,
    /// A sticky cookie for the leader's response.
    pub set_cookie: Option<HeaderValue>,
    /// The response.
    pub got: Got,
}

/// One fill to run.
pub struct FillJob {
    /// The snapshot the request started on.
    pub snap: Arc<Snapshot>,
    /// The route's pool.
    pub pool: usize,
    /// The request as the client sent it (upstream-ready).
    pub out: Outgoing,
    /// The stored response being revalidated, if any.
    pub stale: Option<Arc<Entry>>,
    /// The URL (primary key).
    pub url: String,
    /// The fill's lead.
    pub leader: Leader,
    /// The leading client, if one waits.
    pub tx: Option<oneshot::Sender<LeaderOut>>,
    /// The route's cache settings.
    pub route: RouteCacheConfig,
    /// The cache.
    pub cache: Arc<Cache>,
}

fn now() -> u64 {
    unix(SystemTime::now())
}

/// Removes what never reaches a client or a stored copy from a caching route's response:
/// purge tags (returned) and `Surrogate-Control` (meant for sandgate).
pub fn strip_cache_fields(h: &mut HeaderMap) -> Vec<Box<str>> {
    h.remove(&SURROGATE_CONTROL);
    entry::take_tags(h)
}

/// The longest a stale copy stays useful, for how long Redis keeps an entry.
fn stale_window(route: &RouteCacheConfig, e: &Entry) -> u64 {
    let f = &e.head.freshness;
    f.stale_while_revalidate
        .unwrap_or(route.stale_while_revalidate.as_secs())
        .max(f.stale_if_error.unwrap_or(route.stale_if_error.as_secs()))
}

/// The stored headers of a response: without `Age` (recomputed on use), without what is true
/// of that one fetch only (the backend's `Cache-Status`, an echoed `X-Request-Id`), and
/// without the fields its directives keep out of shared caches.
///
/// Each value is copied: a parsed value shares the buffer the response head was read into
/// (8 KiB at least, up to 256 KiB after large bodies), which a stored entry would otherwise
/// hold for as long as it is cached, unseen by the cache's size.
fn stored_headers(mut h: HeaderMap, omit: &[header::HeaderName]) -> HeaderMap {
    h.remove(header::AGE);
    h.remove(&CACHE_STATUS);
    h.remove(&X_REQUEST_ID);
    for n in omit {
        h.remove(n);
    }
    for v in h.values_mut() {
        if let Ok(mut own) = HeaderValue::from_bytes(v.as_bytes()) {
            own.set_sensitive(v.is_sensitive());
            *v = own;
        }
    }
    h
}

/// Applies a 304's header fields to a stored response (RFC 9111 section 3.2): every field
/// replaces the stored one, but `Content-Length`.
fn freshen(stored: &HeaderMap, update: &HeaderMap) -> HeaderMap {
    let mut h = stored.clone();
    for name in update.keys() {
        if name == header::CONTENT_LENGTH {
            continue;
        }
        h.remove(name);
        for v in update.get_all(name) {
            h.append(name.clone(), v.clone());
        }
    }
    h
}

/// Runs one fill to its end.
pub async fn run(job: FillJob) {
    let FillJob {
        snap,
        pool,
        mut out,
        stale,
        url,
        mut leader,
        tx,
        route,
        cache,
    } = job;
    let report = |tried: Tried, set_cookie, got| {
        if let Some(tx) = tx {
            // The leading client may have gone; the fill goes on without it.
            let _ = tx.send(LeaderOut {
                tried,
                set_cookie,
                got,
            });
        }
    };

    // The upstream request: the whole response by GET, the client's conditionals replaced
    // by the stale entry's validators.
    let req_headers = out.head.headers.clone();
    conditional::strip_client_conditionals(&mut out.head.headers);
    if let Some(s) = stale.as_ref().filter(|s| s.head.freshness.validators) {
        conditional::add_validators(&mut out.head.headers, &s.head.headers);
    }
    if out.head.method == Method::HEAD {
        out.head.method = Method::GET;
    }
    let authorization = req_headers.contains_key(header::AUTHORIZATION);
    let request_time = now();
    let mut tried = Tried::default();
    let result = forward::fetch(&snap, pool, out, &mut tried).await;
    let response_time = now();
    let stale_ok =
        |s: &Arc<Entry>| policy::stale_if_error(&s.head.freshness, now(), route.stale_if_error);

    let Fetched {
        resp,
        slot,
        set_cookie,
    } = match result {
        Ok(f) => f,
        Err(e) => {
            match stale.filter(|s| e.allows_stale() && stale_ok(s)) {
                Some(s) => {
                    let served = Served::StaleIfError(e.status().as_u16());
                    leader
                        .fill()
                        .publish(Published::Entry(Arc::clone(&s), served));
                    report(tried, None, Got::Entry(s, served));
                }
                None => report(tried, None, Got::Failed(e)),
            }
            return;
        }
    };
    let (mut parts, body) = resp.into_parts();
    let status = parts.status;

    // Revalidated: refresh the stored response.
    if let (StatusCode::NOT_MODIFIED, Some(s)) = (status, &stale) {
        drop((body, slot));
        let headers = freshen(&s.head.headers, &parts.headers);
        let mut fresh_headers = headers;
        let tags = strip_cache_fields(&mut fresh_headers);
        let storable = policy::storable(
            s.head.status,
            &fresh_headers,
            authorization,
            request_time,
            response_time,
            route.max_ttl,
        );
        // A cookie set by the 304 reaches this client but is never stored.
        let mut served_headers = fresh_headers.clone();
        fresh_headers.remove(header::SET_COOKIE);
        let omit = storable
            .as_ref()
            .map(|st| st.omit.clone())
            .unwrap_or_default();
        let freshness = storable
            .as_ref()
            .map_or(s.head.freshness, |st| st.freshness);
        let head = Head {
            key: Arc::clone(&s.head.key),
            status: s.head.status,
            headers: stored_headers(fresh_headers, &omit),
            freshness,
            vary: s.head.vary.clone(),
            tags: if tags.is_empty() {
                s.head.tags.clone()
            } else {
                tags
            },
        };
        let updated = Arc::new(Entry {
            head: Arc::new(head),
            body: s.body.clone(),
        });
        match storable {
            Ok(_) => cache.store(
                Arc::clone(&updated),
                stale_window(&route, &updated),
                response_time,
            ),
            Err(_) => {
                cache.memory.remove_variant(s);
                cache.count(StoreResult::Uncacheable);
            }
        }
        leader
            .fill()
            .publish(Published::Entry(Arc::clone(&updated), Served::Revalidated));
        served_headers.remove(header::AGE);
        let for_leader = if served_headers.contains_key(header::SET_COOKIE) {
            Arc::new(Entry {
                head: Arc::new(Head {
                    headers: served_headers,
                    ..(*updated.head).clone()
                }),
                body: updated.body.clone(),
            })
        } else {
            updated
        };
        report(
            tried,
            set_cookie,
            Got::Entry(for_leader, Served::Revalidated),
        );
        return;
    }

    // An error status: a good stale entry stands in, and is never replaced by it.
    if let Some(s) = stale.as_ref().filter(|_| policy::is_error_status(status)) {
        if stale_ok(s) {
            drop((body, slot));
            let served = Served::StaleIfError(status.as_u16());
            leader
                .fill()
                .publish(Published::Entry(Arc::clone(s), served));
            report(tried, set_cookie, Got::Entry(Arc::clone(s), served));
            return;
        }
    }

    let max = usize::try_from(snap.cache.max_object_size).unwrap_or(usize::MAX);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let storable = if status.is_server_error() && stale.is_some() {
        Err(policy::NotStored::Status)
    } else {
        policy::storable(
            status,
            &parts.headers,
            authorization,
            request_time,
            response_time,
            route.max_ttl,
        )
    };
    let vary = key::vary_names(&parts.headers);
    let tags = strip_cache_fields(&mut parts.headers);
    let too_large = declared.is_some_and(|n| n > max as u64);
    match (storable, vary) {
        (Ok(st), Some(names)) if !too_large => {
            cache.mark_cacheable(&url);
            let head = Arc::new(Head {
                key: url.as_str().into(),
                status,
                headers: stored_headers(parts.headers, &st.omit),
                freshness: st.freshness,
                vary: key::selecting(&req_headers, &names),
                tags,
            });
            let fill = Arc::clone(leader.fill());
            match fill.reader() {
                Some(reader) => report(tried, set_cookie, Got::Shared(Arc::clone(&head), reader)),
                None => report(
                    tried,
                    set_cookie,
                    Got::Failed(ProxyError::Upstream(
                        "cache".into(),
                        "the fill could not be read".into(),
                    )),
                ),
            }
            fill.publish(Published::Shared(Arc::clone(&head)));
            let stored = |bytes| {
                let e = Arc::new(Entry { head, body: bytes });
                cache.store(Arc::clone(&e), stale_window(&route, &e), response_time);
                // Off the map before readers see the end: the next request is a hit.
                leader.release();
            };
            let pumped = fill::pump(&fill, body, max, stored).await;
            drop(slot);
            match pumped {
                Pumped::Complete => {}
                Pumped::TooLarge => {
                    cache.count(StoreResult::TooLarge);
                    cache.mark_uncacheable(&url);
                }
                Pumped::Aborted => cache.count(StoreResult::Aborted),
            }
            leader.release();
        }
        (storable, _) => {
            cache.count(if storable.is_ok() && too_large {
                StoreResult::TooLarge
            } else {
                StoreResult::Uncacheable
            });
            cache.mark_uncacheable(&url);
            leader.fill().publish(Published::Alone);
            leader.release();
            let resp = Response::from_parts(parts, body);
            report(
                tried,
                set_cookie,
                Got::Own(Box::new(Fetched {
                    resp,
                    slot,
                    set_cookie: None,
                })),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn stored_values_hold_none_of_the_buffer_the_head_was_read_into() {
        let read = Bytes::from(vec![b'v'; 8192]);
        let mut h = HeaderMap::new();
        h.insert(
            header::ETAG,
            HeaderValue::from_maybe_shared(read.slice(10..20)).expect("value"),
        );
        let mut secret = HeaderValue::from_maybe_shared(read.slice(30..40)).expect("value");
        secret.set_sensitive(true);
        h.insert(header::WWW_AUTHENTICATE, secret);
        h.insert(header::AGE, HeaderValue::from_static("3"));
        let stored = stored_headers(h, &[]);
        assert!(stored.get(header::AGE).is_none());
        let within = |v: &HeaderValue| read.as_ptr_range().contains(&v.as_bytes().as_ptr());
        let etag = &stored[header::ETAG];
        assert_eq!(etag.as_bytes(), b"vvvvvvvvvv");
        assert!(!within(etag), "the stored value shares the read buffer");
        let auth = &stored[header::WWW_AUTHENTICATE];
        assert!(!within(auth) && auth.is_sensitive());
    }
}
