//! Strategy invariants, checked on real `Pool`s through the library API (no network):
//! weights respected, affinity stable and minimally disruptive, bounded loads, sealed
//! cookies (geo, slow start and least-connections are in `strategies_pools.rs`).

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

mod pools;

use pools::*;

fn session(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-sandbox-session", HeaderValue::from_str(key).unwrap());
    h
}

const AFFINITY_BY_HEADER: &str =
    "    strategy: affinity\n    affinity: { key: 'header:x-sandbox-session' }\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

    #[test]
    fn weighted_picks_match_weights_within_one_percent(weights in prop::collection::vec(1u32..20, 2..8)) {
        let dir = tempfile::tempdir().unwrap();
        let bs: Vec<_> = weights.iter().enumerate().map(|(i, w)| (addr(i), *w, None)).collect();
        let p = pool_yaml("    strategy: weighted\n", &bs, dir.path());
        let h = HeaderMap::new();
        let c = ctx(&h, "127.0.0.1", None);
        let mut counts = vec![0u32; weights.len()];
        let n = 100_000;
        for _ in 0..n {
            counts[p.select(&c, &[]).unwrap().index] += 1;
        }
        let total: u32 = weights.iter().sum();
        for (i, w) in weights.iter().enumerate() {
            let expected = f64::from(n) * f64::from(*w) / f64::from(total);
            let err = (f64::from(counts[i]) - expected).abs() / expected;
            prop_assert!(err < 0.01, "backend {i}: {} picks, expected {expected:.0}", counts[i]);
        }
    }

    #[test]
    fn affinity_is_the_same_in_independent_instances(keys in prop::collection::vec("[a-z0-9]{1,24}", 1..50), n in 2usize..12) {
        let dir = tempfile::tempdir().unwrap();
        let bs: Vec<_> = (0..n).map(|i| (addr(i), 1, None)).collect();
        let a = pool_yaml(AFFINITY_BY_HEADER, &bs, dir.path());
        let b = pool_yaml(AFFINITY_BY_HEADER, &bs, dir.path());
        for k in &keys {
            let h = session(k);
            let first = pick_addr(&a, &ctx(&h, "127.0.0.1", None));
            prop_assert_eq!(first, pick_addr(&a, &ctx(&h, "127.0.0.1", None)));
            prop_assert_eq!(first, pick_addr(&b, &ctx(&h, "127.0.0.1", None)));
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys(n in 3usize..20, removed in 0usize..20) {
        let removed = removed % n;
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<_> = (0..n).map(|i| (addr(i), 1, None)).collect();
        let fewer: Vec<_> = all.iter().enumerate().filter(|(i, _)| *i != removed).map(|(_, b)| *b).collect();
        let before = pool_yaml(AFFINITY_BY_HEADER, &all, dir.path());
        let after = pool_yaml(AFFINITY_BY_HEADER, &fewer, dir.path());
        let mut moved_from_removed = 0;
        for k in 0..400 {
            let h = session(&format!("session-{k}"));
            let x = pick_addr(&before, &ctx(&h, "127.0.0.1", None));
            let y = pick_addr(&after, &ctx(&h, "127.0.0.1", None));
            if x == addr(removed) {
                moved_from_removed += 1;
            } else {
                prop_assert_eq!(x, y, "key {} moved although its backend stayed", k);
            }
        }
        prop_assert!(moved_from_removed > 0 || n > 15);
    }
}

#[test]
fn adding_a_backend_moves_about_one_in_n_keys() {
    // 10 backends hash exactly; 40 use the precomputed slot table.
    for n in [10usize, 40] {
        let dir = tempfile::tempdir().unwrap();
        let bs: Vec<_> = (0..n).map(|i| (addr(i), 1, None)).collect();
        let mut more = bs.clone();
        more.push((addr(n), 1, None));
        let before = pool_yaml(AFFINITY_BY_HEADER, &bs, dir.path());
        let after = pool_yaml(AFFINITY_BY_HEADER, &more, dir.path());
        let keys = 8000;
        let mut moved = 0;
        for k in 0..keys {
            let h = session(&format!("k{k}"));
            let (x, y) = (
                pick_addr(&before, &ctx(&h, "127.0.0.1", None)),
                pick_addr(&after, &ctx(&h, "127.0.0.1", None)),
            );
            if x != y {
                assert_eq!(y, addr(n), "a key moved to an old backend");
                moved += 1;
            }
        }
        let share = f64::from(moved) / f64::from(keys);
        let ideal = 1.0 / (n as f64 + 1.0);
        assert!(
            share > ideal * 0.5 && share < ideal * 1.6,
            "n={n}: moved {share:.4}, expected about {ideal:.4}"
        );
    }
}

#[test]
fn unusable_backend_moves_its_keys_along_their_own_hash_order() {
    let dir = tempfile::tempdir().unwrap();
    let bs: Vec<_> = (0..5).map(|i| (addr(i), 1, None)).collect();
    let p = pool_yaml(AFFINITY_BY_HEADER, &bs, dir.path());
    let strict = pool_yaml(
        "    strategy: affinity\n    affinity: { key: 'header:x-sandbox-session', on_unusable: strict }\n",
        &bs,
        dir.path(),
    );
    for k in 0..50 {
        let h = session(&format!("s{k}"));
        let c = ctx(&h, "127.0.0.1", None);
        let home = p.select(&c, &[]).unwrap().index;
        p.backends[home].state.set_healthy(false);
        let next = p.select(&c, &[]).unwrap().index;
        assert_ne!(next, home);
        assert_eq!(
            p.select(&c, &[]).unwrap().index,
            next,
            "the fallback is stable"
        );
        // The fallback is the next backend in the key's order: excluding it too gives a third.
        let third = p.select(&c, &[next]).unwrap().index;
        assert!(third != next && third != home);
        p.backends[home].state.set_healthy(true);
        assert_eq!(
            p.select(&c, &[]).unwrap().index,
            home,
            "the key returns home"
        );

        strict.backends[home].state.set_healthy(false);
        assert!(
            strict.select(&c, &[]).is_none(),
            "strict answers 503 instead of moving"
        );
        strict.backends[home].state.set_healthy(true);
    }
}

#[test]
fn bounded_load_caps_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4;
    let bs: Vec<_> = (0..n).map(|i| (addr(i), 1, None)).collect();
    let p = pool_yaml(
        "    strategy: affinity\n    affinity: { key: 'header:x-sandbox-session', bounded_load: 1.25 }\n",
        &bs,
        dir.path(),
    );
    // Every request has the same hot key and stays in flight.
    let h = session("hot");
    let mut guards = Vec::new();
    for _ in 0..40 {
        let pick = p.select(&ctx(&h, "127.0.0.1", None), &[]).unwrap();
        let total: u64 = p.backends.iter().map(|b| b.state.inflight()).sum();
        let bound = (1.25 * (total + 1) as f64 / n as f64).ceil() as u64;
        assert!(
            pick.backend.state.inflight() < bound,
            "backend over its bound"
        );
        guards.push(sandgate::admission::Slot::hold(&pick.backend.state));
    }
    let loads: Vec<u64> = p.backends.iter().map(|b| b.state.inflight()).collect();
    assert!(loads.iter().all(|&l| l <= 13), "{loads:?}");
    assert_eq!(loads.iter().sum::<u64>(), 40);
}

fn secret_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cookie.key"),
        "0123456789abcdef0123456789abcdef-shared-secret\n",
    )
    .unwrap();
    dir
}

const COOKIE_POOL: &str = "    strategy: affinity\n    affinity:\n      fallback: round_robin\n      cookie: { name: sg_route, max_age: 1h, secret_file: cookie.key }\n";

fn cookie_header(set_cookie: &HeaderValue) -> HeaderMap {
    let pair = set_cookie
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        HeaderValue::from_str(&format!("theme=dark; {pair}")).unwrap(),
    );
    h
}

#[test]
fn sticky_cookie_pins_repins_and_ignores_forgeries() {
    let dir = secret_dir();
    let bs: Vec<_> = (0..3).map(|i| (addr(i), 1, None)).collect();
    let p = pool_yaml(COOKIE_POOL, &bs, dir.path());
    let other_instance = pool_yaml(COOKIE_POOL, &bs, dir.path());
    let none = HeaderMap::new();

    let first = p.select(&ctx(&none, "127.0.0.1", None), &[]).unwrap();
    assert_eq!(first.decision, Some("affinity:new"));
    let set = first.set_cookie.clone().expect("a sticky cookie is issued");
    let s = set.to_str().unwrap();
    assert!(
        s.starts_with("sg_route=")
            && s.contains("HttpOnly")
            && s.contains("SameSite=Lax")
            && s.contains("Max-Age=3600")
    );
    assert!(!s.contains("Secure"), "plain listener");
    assert!(
        !s.contains("10.0.0."),
        "the cookie must not expose the address"
    );
    let home = first.index;

    let h = cookie_header(&set);
    for _ in 0..10 {
        let again = p.select(&ctx(&h, "127.0.0.1", None), &[]).unwrap();
        assert_eq!((again.index, again.decision), (home, Some("affinity:hit")));
        assert!(again.set_cookie.is_none());
    }
    assert_eq!(
        other_instance
            .select(&ctx(&h, "127.0.0.1", None), &[])
            .unwrap()
            .index,
        home
    );

    // The pinned backend becomes unusable: repinned, with a new cookie.
    p.backends[home].state.set_healthy(false);
    let moved = p.select(&ctx(&h, "127.0.0.1", None), &[]).unwrap();
    assert_ne!(moved.index, home);
    assert_eq!(moved.decision, Some("affinity:repinned"));
    let h2 = cookie_header(&moved.set_cookie.expect("re-issued cookie"));
    assert_eq!(
        p.select(&ctx(&h2, "127.0.0.1", None), &[]).unwrap().index,
        moved.index
    );
    p.backends[home].state.set_healthy(true);

    // Forged: flip one character of the token. Treated as absent, never as an error.
    let raw = set.to_str().unwrap().split(';').next().unwrap();
    let (name, token) = raw.split_once('=').unwrap();
    let mut t: Vec<char> = token.chars().collect();
    t[3] = if t[3] == 'A' { 'B' } else { 'A' };
    let mut forged = HeaderMap::new();
    forged.insert(
        "cookie",
        HeaderValue::from_str(&format!("{name}={}", t.iter().collect::<String>())).unwrap(),
    );
    let f = p.select(&ctx(&forged, "127.0.0.1", None), &[]).unwrap();
    assert_eq!(f.decision, Some("affinity:new"));
    assert!(f.set_cookie.is_some());
    for junk in ["sg_route=", "sg_route=%%%", "sg_route=AAAA"] {
        let mut j = HeaderMap::new();
        j.insert("cookie", HeaderValue::from_static(junk));
        assert_eq!(
            p.select(&ctx(&j, "127.0.0.1", None), &[]).unwrap().decision,
            Some("affinity:new")
        );
    }

    // A different secret does not accept the cookie.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(
        other.path().join("cookie.key"),
        "another-secret-of-at-least-32-bytes!!",
    )
    .unwrap();
    let stranger = pool_yaml(COOKIE_POOL, &bs, other.path());
    assert_eq!(
        stranger
            .select(&ctx(&h, "127.0.0.1", None), &[])
            .unwrap()
            .decision,
        Some("affinity:new")
    );
}

#[test]
fn expired_cookie_counts_as_absent() {
    let dir = secret_dir();
    let bs: Vec<_> = (0..3).map(|i| (addr(i), 1, None)).collect();
    let p = pool_yaml(COOKIE_POOL, &bs, dir.path());
    // Seal a token that expired a minute ago with the real key, for backend 0's id.
    use base64::Engine;
    let secret = b"0123456789abcdef0123456789abcdef-shared-secret";
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let id_tag = ring::hmac::sign(&key, format!("sandgate-backend-id\0{}", addr(0)).as_bytes());
    let mut token = Vec::new();
    token.extend_from_slice(&id_tag.as_ref()[..8]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (expiry, want) in [(now - 60, "affinity:new"), (now + 60, "affinity:hit")] {
        let mut t = token.clone();
        t.extend_from_slice(&expiry.to_be_bytes());
        let tag = ring::hmac::sign(&key, &t);
        t.extend_from_slice(tag.as_ref());
        let mut h = HeaderMap::new();
        let v = format!(
            "sg_route={}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&t)
        );
        h.insert("cookie", HeaderValue::from_str(&v).unwrap());
        let pick = p.select(&ctx(&h, "127.0.0.1", None), &[]).unwrap();
        assert_eq!(pick.decision, Some(want));
        if want == "affinity:hit" {
            assert_eq!(pick.index, 0);
        }
    }
}

#[test]
fn affinity_keys_from_cookie_query_and_client_ip() {
    let dir = tempfile::tempdir().unwrap();
    let bs: Vec<_> = (0..8).map(|i| (addr(i), 1, None)).collect();
    for (key, make) in [
        (
            "cookie:sid",
            (|v: &str| (format!("sid={v}"), None, "127.0.0.1".to_owned()))
                as fn(&str) -> (String, Option<String>, String),
        ),
        ("query:session", |v: &str| {
            (
                String::new(),
                Some(format!("a=1&session={v}")),
                "127.0.0.1".to_owned(),
            )
        }),
        ("client_ip", |v: &str| {
            (
                String::new(),
                None,
                format!("10.9.{}.{}", v.len(), v.as_bytes()[0]),
            )
        }),
    ] {
        let p = pool_yaml(
            &format!("    strategy: affinity\n    affinity: {{ key: '{key}' }}\n"),
            &bs,
            dir.path(),
        );
        let mut seen = std::collections::HashSet::new();
        for k in [
            "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
        ] {
            let (cookie, query, ip) = make(k);
            let mut h = HeaderMap::new();
            if !cookie.is_empty() {
                h.insert("cookie", HeaderValue::from_str(&cookie).unwrap());
            }
            let a = p.select(&ctx(&h, &ip, query.as_deref()), &[]).unwrap();
            assert_eq!(a.decision, Some("affinity:hit"), "{key}");
            let b = p.select(&ctx(&h, &ip, query.as_deref()), &[]).unwrap();
            assert_eq!(a.index, b.index, "{key}");
            seen.insert(a.index);
        }
        assert!(seen.len() > 1, "{key}: every key on one backend");
    }
}
