//! Tests of the pure RFC 9111 decisions: one per rule, time passed in.

use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use super::*;
use crate::cache::directives::Directives;

/// 2023-11-14T22:13:20Z, a round number of seconds.
const NOW: u64 = 1_700_000_000;
const DAY: Duration = Duration::from_secs(86_400);

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn store(status: u16, pairs: &[(&str, &str)]) -> Result<Storable, NotStored> {
    storable(
        StatusCode::from_u16(status).unwrap(),
        &headers(pairs),
        false,
        NOW,
        NOW,
        DAY,
    )
}

fn fresh(pairs: &[(&str, &str)]) -> Freshness {
    store(200, pairs).expect("storable").freshness
}

fn req(cc: &str) -> Directives {
    Directives::parse(&headers(&[("cache-control", cc)]), &header::CACHE_CONTROL)
}

#[test]
fn lifetime_prefers_s_maxage_then_max_age_then_expires() {
    let date = http_date(NOW);
    assert_eq!(
        fresh(&[("cache-control", "max-age=60, s-maxage=5")]).lifetime,
        5
    );
    assert_eq!(fresh(&[("cache-control", "max-age=60")]).lifetime, 60);
    let exp = http_date(NOW + 30);
    assert_eq!(fresh(&[("expires", &exp), ("date", &date)]).lifetime, 30);
    // max-age wins over a past Expires.
    let past = http_date(NOW - 100);
    let f = fresh(&[
        ("cache-control", "max-age=60"),
        ("expires", &past),
        ("date", &date),
    ]);
    assert_eq!(f.lifetime, 60);
}

#[test]
fn invalid_or_conflicting_values_are_stale_not_fresh() {
    for cc in [
        "max-age=a100",
        "max-age=-1",
        "max-age=1800, max-age=1",
        "s-maxage=x",
    ] {
        let f = fresh(&[("cache-control", cc), ("etag", "\"v\"")]);
        assert_eq!(f.lifetime, 0, "{cc}");
    }
    let date = http_date(NOW);
    for exp in [
        "0",
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu, 18-Aug-2050 02:01:18 GMT",
    ] {
        let f = fresh(&[("expires", exp), ("date", &date), ("etag", "\"v\"")]);
        assert_eq!(f.lifetime, 0, "{exp}");
    }
}

#[test]
fn received_age_and_delay_count_toward_the_age() {
    let f = fresh(&[("cache-control", "max-age=10"), ("age", "15")]);
    assert!(!f.is_fresh(NOW));
    let f = fresh(&[("cache-control", "max-age=600"), ("age", "30")]);
    assert_eq!(f.age(NOW + 5), 35);
    // An Age that is not a non-negative integer is ignored; a list uses its first member.
    assert_eq!(
        fresh(&[("cache-control", "max-age=60"), ("age", "abc")]).age(NOW),
        0
    );
    assert_eq!(
        fresh(&[("cache-control", "max-age=60"), ("age", "7, 0")]).age(NOW),
        7
    );
    // A Date in the past: apparent age.
    let old = http_date(NOW - 20);
    assert_eq!(
        fresh(&[("cache-control", "max-age=60"), ("date", &old)]).age(NOW),
        20
    );
    // The response delay counts too.
    let s = storable(
        StatusCode::OK,
        &headers(&[("cache-control", "max-age=60"), ("age", "5")]),
        false,
        NOW - 3,
        NOW,
        DAY,
    )
    .unwrap();
    assert_eq!(s.freshness.initial_age, 8);
}

#[test]
fn heuristic_freshness_only_for_heuristically_cacheable_statuses() {
    let date = http_date(NOW);
    let lm = http_date(NOW - 10_000);
    let with_lm = [("last-modified", lm.as_str()), ("date", date.as_str())];
    assert_eq!(store(200, &with_lm).unwrap().freshness.lifetime, 1000);
    assert_eq!(store(404, &with_lm).unwrap().freshness.lifetime, 1000);
    for s in [201, 202, 403, 502, 503, 504, 599] {
        assert_eq!(store(s, &with_lm), Err(NotStored::Useless), "{s}");
    }
    let public = [
        ("last-modified", lm.as_str()),
        ("date", date.as_str()),
        ("cache-control", "public"),
    ];
    assert_eq!(store(599, &public).unwrap().freshness.lifetime, 1000);
    // No default TTL: nothing to go on and no validator means nothing to store.
    assert_eq!(store(200, &[]), Err(NotStored::Useless));
    // A validator alone is stored, stale, for revalidation.
    let f = store(200, &[("etag", "\"v\"")]).unwrap().freshness;
    assert!(!f.is_fresh(NOW));
    assert!(f.validators);
}

#[test]
fn max_ttl_caps_every_lifetime() {
    let s = storable(
        StatusCode::OK,
        &headers(&[("cache-control", "max-age=99999999")]),
        false,
        NOW,
        NOW,
        Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(s.freshness.lifetime, 60);
}

#[test]
fn what_is_never_stored() {
    assert_eq!(
        store(200, &[("cache-control", "no-store, max-age=60")]),
        Err(NotStored::NoStore)
    );
    assert_eq!(
        store(200, &[("cache-control", "private, max-age=60")]),
        Err(NotStored::Private)
    );
    assert_eq!(
        store(
            200,
            &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
        ),
        Err(NotStored::SetCookie)
    );
    assert_eq!(
        store(200, &[("cache-control", "max-age=60"), ("vary", "Foo, *")]),
        Err(NotStored::VaryAll)
    );
    for s in [206, 304, 101] {
        assert_eq!(
            store(s, &[("cache-control", "max-age=60")]),
            Err(NotStored::Status)
        );
    }
    // must-understand: stored despite no-store when the status is understood.
    assert!(store(
        200,
        &[("cache-control", "must-understand, no-store, max-age=60")]
    )
    .is_ok());
    assert_eq!(
        store(
            299,
            &[("cache-control", "must-understand, no-store, max-age=60")]
        ),
        Err(NotStored::Status)
    );
}

#[test]
fn authorization_needs_an_explicit_allowance() {
    let auth = |cc: &str| {
        storable(
            StatusCode::OK,
            &headers(&[("cache-control", cc)]),
            true,
            NOW,
            NOW,
            DAY,
        )
    };
    assert_eq!(auth("max-age=60"), Err(NotStored::Authorization));
    assert!(auth("max-age=60, public").is_ok());
    assert!(auth("s-maxage=60").is_ok());
    assert!(auth("max-age=60, must-revalidate").is_ok());
}

#[test]
fn qualified_no_cache_and_private_omit_fields() {
    let s = store(
        200,
        &[("cache-control", "max-age=60, no-cache=\"a, b\", private=c")],
    )
    .unwrap();
    assert_eq!(s.omit, ["a", "b", "c"]);
    assert!(s.freshness.is_fresh(NOW));
}

#[test]
fn no_cache_is_stored_but_revalidated_on_every_use() {
    let f = fresh(&[
        ("cache-control", "max-age=600, no-cache"),
        ("etag", "\"v\""),
    ]);
    assert_eq!(
        decide(&f, &Directives::default(), NOW, Duration::ZERO),
        Use::Forward(Forward::Stale)
    );
}

#[test]
fn cdn_cache_control_then_surrogate_control_take_precedence() {
    let f = fresh(&[
        ("cache-control", "no-store"),
        ("cdn-cache-control", "max-age=600"),
    ]);
    assert_eq!(f.lifetime, 600);
    let f = fresh(&[
        ("cache-control", "max-age=3600"),
        ("cdn-cache-control", "max-age=1"),
    ]);
    assert_eq!(f.lifetime, 1);
    assert_eq!(
        store(
            200,
            &[
                ("cdn-cache-control", "private"),
                ("cache-control", "max-age=60")
            ]
        ),
        Err(NotStored::Private)
    );
    // An invalid Structured Field, or a wrong type, is ignored, so Cache-Control applies.
    assert_eq!(
        store(
            200,
            &[
                ("cdn-cache-control", "max-age=\"100\""),
                ("cache-control", "no-store"),
                ("etag", "\"v\"")
            ]
        ),
        Err(NotStored::NoStore)
    );
    assert_eq!(
        store(
            200,
            &[
                ("cdn-cache-control", "max-age=100, &&&"),
                ("cache-control", "no-store")
            ]
        ),
        Err(NotStored::NoStore)
    );
    let f = fresh(&[
        ("cache-control", "max-age=3600"),
        ("surrogate-control", "max-age=1"),
    ]);
    assert_eq!(f.lifetime, 1);
    assert_eq!(
        store(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("surrogate-control", "no-store")
            ]
        ),
        Err(NotStored::NoStore)
    );
}

#[test]
fn request_directives() {
    let f = fresh(&[("cache-control", "max-age=600"), ("age", "100")]);
    let none = Duration::ZERO;
    assert_eq!(decide(&f, &Directives::default(), NOW, none), Use::Fresh);
    assert_eq!(
        decide(&f, &req("no-cache"), NOW, none),
        Use::Forward(Forward::Request)
    );
    assert_eq!(
        decide(&f, &req("max-age=0"), NOW, none),
        Use::Forward(Forward::Request)
    );
    assert_eq!(
        decide(&f, &req("max-age=50"), NOW, none),
        Use::Forward(Forward::Request)
    );
    assert_eq!(decide(&f, &req("max-age=200"), NOW, none), Use::Fresh);
    assert_eq!(
        decide(&f, &req("min-fresh=600"), NOW, none),
        Use::Forward(Forward::Request)
    );
    assert_eq!(decide(&f, &req("min-fresh=100"), NOW, none), Use::Fresh);
    // max-stale is ignored: a stale response is not served for it.
    let stale = fresh(&[
        ("cache-control", "max-age=1"),
        ("age", "100"),
        ("etag", "\"v\""),
    ]);
    assert_eq!(
        decide(&stale, &req("max-stale=1000"), NOW, none),
        Use::Forward(Forward::Stale)
    );
}

#[test]
fn stale_while_revalidate_from_the_response_or_the_route() {
    let own = fresh(&[
        ("cache-control", "max-age=1, stale-while-revalidate=60"),
        ("age", "30"),
    ]);
    let d = Directives::default();
    assert_eq!(
        decide(&own, &d, NOW, Duration::ZERO),
        Use::StaleWhileRevalidate
    );
    assert_eq!(
        decide(&own, &d, NOW + 40, Duration::ZERO),
        Use::Forward(Forward::Stale)
    );
    let plain = fresh(&[("cache-control", "max-age=1"), ("age", "30")]);
    assert_eq!(
        decide(&plain, &d, NOW, Duration::from_secs(60)),
        Use::StaleWhileRevalidate
    );
    assert_eq!(
        decide(&plain, &d, NOW, Duration::ZERO),
        Use::Forward(Forward::Stale)
    );
}

#[test]
fn stale_if_error_windows_and_what_forbids_stale() {
    let sie = Duration::from_secs(300);
    let plain = fresh(&[("cache-control", "max-age=1"), ("age", "30")]);
    assert!(stale_if_error(&plain, NOW, sie));
    assert!(!stale_if_error(&plain, NOW + 400, sie));
    assert!(!stale_if_error(&plain, NOW, Duration::ZERO));
    let own = fresh(&[
        ("cache-control", "max-age=1, stale-if-error=10"),
        ("age", "5"),
    ]);
    assert!(stale_if_error(&own, NOW, Duration::ZERO));
    assert!(
        !stale_if_error(&own, NOW + 20, sie),
        "the response's own window wins"
    );
    for cc in [
        "must-revalidate",
        "proxy-revalidate",
        "no-cache",
        "s-maxage=1",
    ] {
        let f = fresh(&[
            ("cache-control", &format!("max-age=1, {cc}")),
            ("age", "30"),
            ("etag", "\"v\""),
        ]);
        assert!(!stale_if_error(&f, NOW, sie), "{cc}");
        assert_eq!(
            decide(&f, &Directives::default(), NOW, sie),
            Use::Forward(Forward::Stale),
            "{cc}"
        );
    }
    assert!(is_error_status(StatusCode::SERVICE_UNAVAILABLE));
    assert!(!is_error_status(StatusCode::NOT_FOUND));
}
