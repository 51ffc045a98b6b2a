//! Stage: cache, on routes with `cache.enabled`. Between the request's preparation and the
//! fetch:
//!
//! 1. unsafe methods are forwarded, and a success invalidates the URL and its `Location` and
//!    `Content-Location` (same host); safe methods other than GET and HEAD pass through;
//! 2. a request `no-store` bypasses the cache;
//! 3. lookup (memory, then Redis) and [`policy::decide`]: a fresh hit is answered here (304 for
//!    a matching conditional, 206 for a single range); a stale one within
//!    `stale-while-revalidate` is answered here and revalidated in the background, once;
//! 4. `only-if-cached` with nothing usable: 504; a range on a miss is forwarded as it is;
//! 5. otherwise the URL's fill: the first request leads it ([`fill::run`] on its own task),
//!    concurrent ones follow and are served from it, or go alone when it cannot be shared.
//!
//! Every response of the route carries `Cache-Status`, set here and written by decoration.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};
use tokio::sync::oneshot;

use crate::body::ProxyBody;
use crate::cache::conditional::{self, Range};
use crate::cache::directives::Directives;
use crate::cache::entry::{Entry, Head};
use crate::cache::fill::{FillBody, Join, Published, Served};
use crate::cache::key;
use crate::cache::memory::Lookup;
use crate::cache::policy::{self, unix, Forward, Use};
use crate::cache::status::{CacheResult, CacheStatus};
use crate::error::ProxyError;
use crate::limit::InflightSlot;
use crate::proxy::exchange::{Client, ConnCtx, Exchange};
use crate::proxy::fill::{self, FillJob, Got};
use crate::proxy::forward::{self, Fetched, Outgoing};
use crate::proxy::route::Routed;
use crate::state::{RouteCache, Snapshot};

/// A request not yet prepared for a backend: a hit never pays for the upstream head.
pub struct ClientRequest {
    /// The client's request head.
    pub parts: Parts,
    /// Its body, if it has one.
    pub body: Option<hyper::body::Incoming>,
    /// Who sent it.
    pub client: Client,
}

impl ClientRequest {
    async fn prepare(
        self,
        snap: &Snapshot,
        routed: &Routed,
        x: &Exchange,
    ) -> Result<Outgoing, ProxyError> {
        forward::prepare(snap, routed, self.parts, self.body, self.client, x).await
    }
}

/// Answers a request on a caching route.
pub async fn serve(
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    rc: &RouteCache,
    routed: &Routed,
    req: ClientRequest,
    inflight: InflightSlot,
    x: &mut Exchange,
) -> Result<Response<ProxyBody>, ProxyError> {
    let cache = &ctx.services.cache;
    let client = req.client;
    let host = routed.host.as_ref().map(HeaderValue::as_bytes);
    let path = req.parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = key::primary(client.tls, host, path);
    let method = req.parts.method.clone();
    let tls = client.tls;

    if method != Method::GET && method != Method::HEAD {
        rc.count(CacheResult::Bypass);
        x.cache = Some(CacheStatus::fwd("method"));
        let unsafe_method = !matches!(method, Method::OPTIONS | Method::TRACE);
        let out = req.prepare(snap, routed, x).await?;
        let resp = direct(snap, routed.pool, out, inflight, x).await?;
        let s = resp.status();
        if unsafe_method && (s.is_success() || s.is_redirection()) {
            let urls = invalidated(&url, tls, resp.headers());
            cache.invalidate(urls, &ctx.services.tasks);
        }
        return Ok(resp);
    }

    let req_cc = Directives::parse(&req.parts.headers, &header::CACHE_CONTROL);
    if req_cc.no_store {
        rc.count(CacheResult::Bypass);
        x.cache = Some(CacheStatus::fwd("bypass"));
        let out = req.prepare(snap, routed, x).await?;
        return direct(snap, routed.pool, out, inflight, x).await;
    }

    let now = unix(SystemTime::now());
    let (stale, why) = match cache.lookup(&url, &req.parts.headers).await {
        Lookup::Found(e) => {
            let f = &e.head.freshness;
            match policy::decide(f, &req_cc, now, rc.cfg.stale_while_revalidate) {
                Use::Fresh => {
                    rc.count(CacheResult::Hit);
                    x.cache = Some(CacheStatus::hit(f.ttl(now)));
                    x.via = true;
                    return Ok(from_entry(&e, &req.parts.headers, now));
                }
                Use::StaleWhileRevalidate => {
                    rc.count(CacheResult::Stale);
                    x.cache = Some(CacheStatus {
                        fwd: Some("stale"),
                        ttl: Some(f.ttl(now)),
                        detail: Some("stale-while-revalidate"),
                        ..CacheStatus::default()
                    });
                    x.via = true;
                    let resp = from_entry(&e, &req.parts.headers, now);
                    // A revalidation that cannot be prepared leaves the stale answer as it is.
                    if let Ok(out) = req.prepare(snap, routed, x).await {
                        revalidate_in_background(ctx, snap, rc, routed.pool, out, e, url);
                    }
                    return Ok(resp);
                }
                Use::Forward(Forward::Stale) => (Some(e), "stale"),
                Use::Forward(Forward::Request) => (Some(e), "request"),
            }
        }
        Lookup::VaryMiss => (None, "vary-miss"),
        Lookup::Miss => (None, "uri-miss"),
    };

    if req_cc.only_if_cached {
        x.cache = Some(CacheStatus {
            detail: Some("only-if-cached"),
            ..CacheStatus::default()
        });
        return Err(ProxyError::NotCached);
    }
    let range = req.parts.headers.contains_key(header::RANGE);
    let out = req.prepare(snap, routed, x).await?;
    if stale.is_none() && range {
        // A part is not stored; the whole is stored by the next request without a range.
        rc.count(CacheResult::Bypass);
        x.cache = Some(CacheStatus::fwd(why));
        return direct(snap, routed.pool, out, inflight, x).await;
    }

    match cache.join(&url) {
        Join::Follow(f) => {
            let req = out.head.headers.clone();
            match f.wait(rc.cfg.lock_timeout).await {
                Some(Published::Shared(head)) if key::matches(&req, &head.vary) => {
                    if let Some(reader) = f.reader() {
                        rc.count(CacheResult::Coalesced);
                        x.cache = Some(CacheStatus {
                            stored: true,
                            collapsed: true,
                            ..CacheStatus::fwd(why)
                        });
                        x.via = true;
                        return Ok(from_fill(&head, reader, &req, now, inflight));
                    }
                }
                Some(Published::Entry(e, served)) if key::matches(&req, &e.head.vary) => {
                    rc.count(CacheResult::Coalesced);
                    let mut cs = entry_status(&e, served, why, now);
                    cs.collapsed = true;
                    x.cache = Some(cs);
                    x.via = true;
                    return Ok(from_entry(&e, &req, now));
                }
                _ => {}
            }
            // Nothing to share (or no answer within lock_timeout): go alone.
            rc.count(CacheResult::Miss);
            x.cache = Some(CacheStatus::fwd(why));
            direct(snap, routed.pool, out, inflight, x).await
        }
        Join::Lead(leader) => {
            let req = out.head.headers.clone();
            let (tx, rx) = oneshot::channel();
            ctx.services.tasks.spawn(fill::run(FillJob {
                snap: Arc::clone(snap),
                pool: routed.pool,
                out,
                stale,
                url,
                leader,
                tx: Some(tx),
                route: rc.cfg,
                cache: Arc::clone(cache),
            }));
            let Ok(done) = rx.await else {
                return Err(ProxyError::Upstream(
                    "cache".into(),
                    "the cache fill ended without an answer".into(),
                ));
            };
            x.tried = done.tried;
            x.set_cookie = done.set_cookie;
            match done.got {
                Got::Shared(head, reader) => {
                    rc.count(CacheResult::Miss);
                    x.cache = Some(CacheStatus {
                        stored: true,
                        fwd_status: (why == "stale").then_some(head.status.as_u16()),
                        ..CacheStatus::fwd(why)
                    });
                    x.via = true;
                    Ok(from_fill(&head, reader, &req, now, inflight))
                }
                Got::Entry(e, served) => {
                    rc.count(match served {
                        Served::Revalidated => CacheResult::Revalidated,
                        Served::StaleIfError(_) => CacheResult::Stale,
                    });
                    x.cache = Some(entry_status(&e, served, why, now));
                    x.via = true;
                    Ok(from_entry(&e, &req, now))
                }
                Got::Own(fetched) => {
                    rc.count(CacheResult::Miss);
                    x.cache = Some(CacheStatus {
                        fwd_status: Some(fetched.resp.status().as_u16()),
                        ..CacheStatus::fwd(why)
                    });
                    x.via = true;
                    Ok(upstream(*fetched, inflight))
                }
                Got::Failed(e) => {
                    rc.count(CacheResult::Miss);
                    x.cache = Some(CacheStatus::fwd(why));
                    Err(e)
                }
            }
        }
    }
}

/// `Cache-Status` for a published entry.
fn entry_status(e: &Entry, served: Served, why: &'static str, now: u64) -> CacheStatus {
    match served {
        Served::Revalidated => CacheStatus {
            fwd_status: Some(304),
            ttl: Some(e.head.freshness.ttl(now)),
            ..CacheStatus::fwd(why)
        },
        Served::StaleIfError(status) => CacheStatus {
            fwd: Some("stale"),
            fwd_status: Some(status),
            ttl: Some(e.head.freshness.ttl(now)),
            detail: Some("stale-if-error"),
            ..CacheStatus::default()
        },
    }
}

/// Forwards without storing; the response still loses the fields meant for sandgate.
async fn direct(
    snap: &Snapshot,
    pool: usize,
    out: Outgoing,
    inflight: InflightSlot,
    x: &mut Exchange,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut fetched = forward::fetch(snap, pool, out, &mut x.tried).await?;
    x.via = true;
    x.set_cookie = fetched.set_cookie.take();
    fill::strip_cache_fields(fetched.resp.headers_mut());
    Ok(upstream(fetched, inflight))
}

fn upstream(fetched: Fetched, inflight: InflightSlot) -> Response<ProxyBody> {
    let (parts, body) = fetched.resp.into_parts();
    Response::from_parts(
        parts,
        ProxyBody::Upstream {
            body,
            slot: fetched.slot,
            inflight,
        },
    )
}

/// The URLs an unsafe request invalidates: its own, and `Location` and `Content-Location`
/// when they name the same host.
fn invalidated(url: &str, tls: bool, resp: &HeaderMap) -> Vec<String> {
    let host = key::host_of(url);
    let mut urls = vec![url.to_owned()];
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let Some(v) = resp.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        let target = match v.parse::<http::Uri>() {
            Ok(u) if u.scheme().is_some() => match u.authority() {
                Some(a) if a.as_str().eq_ignore_ascii_case(host) => {
                    let pq = u.path_and_query().map_or("/", |p| p.as_str());
                    Some(key::primary(
                        u.scheme_str() == Some("https"),
                        Some(a.as_str().as_bytes()),
                        pq,
                    ))
                }
                _ => None,
            },
            // A relative reference: same host.
            Ok(u) if v.starts_with('/') => {
                let pq = u.path_and_query().map_or("/", |p| p.as_str());
                Some(key::primary(tls, Some(host.as_bytes()), pq))
            }
            _ => None,
        };
        urls.extend(target);
    }
    urls
}

/// Starts a background revalidation of `stale`, unless one runs for the URL already.
fn revalidate_in_background(
    ctx: &ConnCtx,
    snap: &Arc<Snapshot>,
    rc: &RouteCache,
    pool: usize,
    out: Outgoing,
    stale: Arc<Entry>,
    url: String,
) {
    let cache = &ctx.services.cache;
    if let Join::Lead(leader) = cache.join(&url) {
        ctx.services.tasks.spawn(fill::run(FillJob {
            snap: Arc::clone(snap),
            pool,
            out,
            stale: Some(stale),
            url,
            leader,
            tx: None,
            route: rc.cfg,
            cache: Arc::clone(cache),
        }));
    }
}

/// Sets `Age` for a response served from the cache.
fn set_age(h: &mut HeaderMap, age: u64) {
    h.insert(header::AGE, HeaderValue::from(age));
}

/// A 304 for a client whose conditionals match the stored response.
fn not_modified(head: &Head, now: u64) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::new()));
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    *r.headers_mut() = conditional::not_modified_headers(&head.headers);
    set_age(r.headers_mut(), head.freshness.age(now));
    r
}

/// Whether the client's conditionals are answered with 304 (they only apply to 2xx).
fn answers_304(head: &Head, req: &HeaderMap) -> bool {
    head.status.is_success()
        && conditional::not_modified(req, &head.headers, head.freshness.response_time)
}

/// A response built from a stored entry: 304, 206, 416 or the whole response.
fn from_entry(e: &Entry, req: &HeaderMap, now: u64) -> Response<ProxyBody> {
    let head = &e.head;
    if answers_304(head, req) {
        return not_modified(head, now);
    }
    let len = e.body.len() as u64;
    let (status, body, range) = match (head.status, conditional::range(req, &head.headers, len)) {
        (StatusCode::OK, Range::Part { start, end }) => {
            // Bounds come from `range`, which keeps them within the body.
            let part = e.body.slice(start as usize..=end as usize);
            (
                StatusCode::PARTIAL_CONTENT,
                part,
                Some(format!("bytes {start}-{end}/{len}")),
            )
        }
        (StatusCode::OK, Range::Unsatisfiable) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            Bytes::new(),
            Some(format!("bytes */{len}")),
        ),
        _ => (head.status, e.body.clone(), None),
    };
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    *h = head.headers.clone();
    set_age(h, head.freshness.age(now));
    if let Some(cr) = range.and_then(|v| HeaderValue::try_from(v).ok()) {
        h.insert(header::CONTENT_RANGE, cr);
        h.remove(header::CONTENT_LENGTH);
    }
    r
}

/// A response whose body is read from a fill in progress.
fn from_fill(
    head: &Head,
    reader: FillBody,
    req: &HeaderMap,
    now: u64,
    inflight: InflightSlot,
) -> Response<ProxyBody> {
    if answers_304(head, req) {
        return not_modified(head, now);
    }
    let mut r = Response::new(ProxyBody::Fill {
        body: reader,
        inflight,
    });
    *r.status_mut() = head.status;
    *r.headers_mut() = head.headers.clone();
    set_age(r.headers_mut(), head.freshness.age(now));
    r
}
