//! Fuzzing on stable with proptest: arbitrary input to the config loader (bytes and YAML
//! trees), header rewriting, path normalisation and routing, the sticky-cookie decoder,
//! cache directive parsing, the cache key and stored-entry decoding. No input may panic;
//! properties that must hold are asserted too. The case counts keep the whole file to a few
//! seconds.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use sandgate::balance::{PickCtx, Pool};
use sandgate::cache::directives::Directives;
use sandgate::cache::entry::Entry;
use sandgate::cache::{key, policy};
use sandgate::config::parse_str;
use sandgate::headers;
use sandgate::router::normalize_path;

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Header names: real ones that matter and random tokens.
fn header_name() -> impl Strategy<Value = HeaderName> {
    prop_oneof![
        Just(HeaderName::from_static("connection")),
        Just(HeaderName::from_static("x-forwarded-for")),
        Just(HeaderName::from_static("cache-control")),
        Just(HeaderName::from_static("cdn-cache-control")),
        Just(HeaderName::from_static("surrogate-control")),
        Just(HeaderName::from_static("vary")),
        Just(HeaderName::from_static("expires")),
        Just(HeaderName::from_static("age")),
        Just(HeaderName::from_static("cookie")),
        Just(HeaderName::from_static("host")),
        "[a-z][a-z0-9-]{0,12}".prop_map(|s| HeaderName::from_bytes(s.as_bytes()).unwrap()),
    ]
}

/// Header values: any visible ASCII plus obs-text bytes.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..80)
        .prop_map(|b| HeaderValue::from_bytes(&b).unwrap_or(HeaderValue::from_static("x")))
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((header_name(), header_value()), 0..12).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(n, v);
        }
        h
    })
}

/// A YAML tree over the config's real keys and random ones.
fn yaml_tree() -> impl Strategy<Value = serde_yaml::Value> {
    let key = prop_oneof![
        Just("listeners"),
        Just("routes"),
        Just("pools"),
        Just("limits"),
        Just("cache"),
        Just("admin"),
        Just("address"),
        Just("name"),
        Just("pool"),
        Just("backends"),
        Just("strategy"),
        Just("health_check"),
        Just("max_size"),
        Just("weight"),
        Just("enabled"),
        Just("x"),
    ]
    .prop_map(|s| serde_yaml::Value::String(s.to_owned()));
    let leaf = prop_oneof![
        Just(serde_yaml::Value::Null),
        any::<bool>().prop_map(serde_yaml::Value::Bool),
        any::<i64>().prop_map(|n| serde_yaml::Value::Number(n.into())),
        "[ -~]{0,20}".prop_map(serde_yaml::Value::String),
        Just(serde_yaml::Value::String("127.0.0.1:0".into())),
        Just(serde_yaml::Value::String("10s".into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_yaml::Value::Sequence),
            proptest::collection::vec((key.clone(), inner), 0..5)
                .prop_map(|kv| serde_yaml::Value::Mapping(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(cfg(400))]

    #[test]
    fn the_config_loader_takes_any_bytes(src in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&src);
        let _ = parse_str(&text, Path::new("/nonexistent"));
    }

    #[test]
    fn the_config_loader_takes_any_yaml_tree(tree in yaml_tree()) {
        let text = serde_yaml::to_string(&tree).unwrap_or_default();
        if let Err(errors) = parse_str(&text, Path::new("/nonexistent")) {
            prop_assert!(!errors.0.is_empty(), "a rejection says why");
        }
    }
}

proptest! {
    #![proptest_config(cfg(500))]

    #[test]
    fn header_rewriting_takes_any_headers(mut h in header_map(), tls: bool, trusted: bool) {
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        let list: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let trusted = trusted.then_some(list.as_slice());
        let client = headers::client_ip(peer, &h, trusted);
        headers::strip_hop_by_hop(&mut h);
        prop_assert!(!h.contains_key(http::header::CONNECTION));
        let host = HeaderValue::from_static("a.example");
        let id = HeaderValue::from_static("id1");
        let hop = headers::Hop::new(&mut h, peer, tls, Some(&host), trusted, &id, None);
        // The HTTP/1.1 path writes the fields as lines, which any parser takes.
        let mut wire = Vec::new();
        hop.write(&mut wire);
        wire.extend_from_slice(b"\r\n");
        let mut raw = [httparse::EMPTY_HEADER; 8];
        prop_assert!(matches!(httparse::parse_headers(&wire, &mut raw), Ok(httparse::Status::Complete(_))));
        hop.apply(&mut h);
        let xff = h.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or("");
        prop_assert!(xff.ends_with("10.1.2.3"), "the peer is last: {}", xff);
        prop_assert!(client == peer || trusted.is_some());
    }

    #[test]
    fn normalised_paths_are_normal(segs in proptest::collection::vec(
        prop_oneof![Just(".".to_owned()), Just("..".to_owned()), Just("".to_owned()),
                    Just("%2e".to_owned()), Just("%2E%2e".to_owned()), Just("%7E".to_owned()),
                    Just("%zz".to_owned()), Just("%".to_owned()), Just("%30".to_owned()),
                    Just("%2F".to_owned()), "[a-z%0-9é]{1,5}"], 0..10),
        trailing: bool,
    ) {
        let mut path = String::from("/");
        path.push_str(&segs.join("/"));
        if trailing {
            path.push('/');
        }
        // A `%` that is not followed by two hex digits starts no escape (RFC 3986 section 2.1).
        let stray = path.match_indices('%').any(|(i, _)| {
            !path.as_bytes().get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
        let n = match normalize_path(&path) {
            Err(_) => {
                prop_assert!(stray, "{} was refused", path);
                return Ok(());
            }
            Ok(n) => n.unwrap_or_else(|| path.clone()),
        };
        prop_assert!(!stray, "{} -> {} was let through", path, n);
        prop_assert!(n.starts_with('/'), "{}", n);
        prop_assert!(!n.contains("//"), "{} -> {}", path, n);
        prop_assert!(!n.split('/').any(|s| s == "." || s == ".."), "{} -> {}", path, n);
        prop_assert_eq!(normalize_path(&n), Ok(None), "idempotent: {} -> {}", path, n);
    }

    #[test]
    fn cache_directives_and_keys_take_any_headers(h in header_map(), host in proptest::collection::vec(any::<u8>(), 0..40), path in "/[ -~]{0,40}") {
        let _ = Directives::parse(&h, &http::header::CACHE_CONTROL);
        let _ = Directives::parse_cdn(&h, &HeaderName::from_static("cdn-cache-control"));
        let _ = policy::storable(http::StatusCode::OK, &h, false, 1_700_000_000, 1_700_000_001, Duration::from_secs(86_400));
        let k = key::primary(false, Some(&host), &path);
        prop_assert!(k.starts_with("http://"));
        let _ = key::host_of(&k);
        if let Some(names) = key::vary_names(&h) {
            let sel = key::selecting(&h, &names);
            prop_assert!(key::matches(&h, &sel), "a request matches its own variant");
        }
    }

    #[test]
    fn stored_entries_decode_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut with_magic = b"SGC1".to_vec();
        with_magic.extend_from_slice(&b);
        let _ = Entry::decode(Bytes::from(b));
        let _ = Entry::decode(Bytes::from(with_magic));
    }
}

fn sticky_pool() -> &'static Pool {
    static POOL: std::sync::OnceLock<Pool> = std::sync::OnceLock::new();
    POOL.get_or_init(build_sticky_pool)
}

fn build_sticky_pool() -> Pool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("k"), "0123456789abcdef0123456789abcdef").unwrap();
    let yaml = "listeners: [{ name: p, address: 127.0.0.1:0 }]\nroutes: [{ name: r, pool: s }]\npools:\n  s:\n    strategy: affinity\n    affinity: { cookie: { name: sg, secret_file: k } }\n    backends:\n      - { address: 127.0.0.1:9001 }\n      - { address: 127.0.0.1:9002 }\n";
    let loaded = parse_str(yaml, dir.path()).expect("valid");
    Pool::from_config(&loaded.config.pools[0])
}

proptest! {
    #![proptest_config(cfg(2000))]

    #[test]
    fn the_sticky_cookie_decoder_takes_any_cookie(v in "[ -~]{0,120}") {
        let pool = sticky_pool();
        let mut h = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&format!("sg={v}; other=1")) {
            h.insert(http::header::COOKIE, v);
        }
        let ctx = PickCtx {
            client_ip: "127.0.0.1".parse().unwrap(),
            peer: "127.0.0.1".parse().unwrap(),
            headers: &h,
            query: None,
            tls: false,
            now: Instant::now(),
        };
        let pick = pool.select(&ctx, &[]);
        prop_assert!(pick.is_some());
        // A random cookie is never valid: the answer pins the client afresh.
        prop_assert!(pick.unwrap().set_cookie.is_some());
    }
}
