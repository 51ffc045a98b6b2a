//! Strategy invariants, checked on real `Pool`s through the library API (no network):
//! weights respected, affinity stable and minimally disruptive, bounded loads, sealed
//! cookies, geo decisions from header and CIDR sources, slow start's ramp, least-connections.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use sandgate::balance::{ramp, PickCtx, Pool};
use sandgate::config;

fn addr(i: usize) -> SocketAddr {
    format!("10.0.{}.{}:8080", i / 250, i % 250 + 1)
        .parse()
        .unwrap()
}

/// A pool from a YAML pool body (`backends` may be omitted: they come from `addrs`).
fn pool_yaml(
    body: &str,
    backends: &[(SocketAddr, u32, Option<&str>)],
    dir: &std::path::Path,
) -> Pool {
    let mut y = format!("listeners: [{{ name: l, address: 127.0.0.1:0 }}]\nroutes: [{{ name: r, pool: p }}]\npools:\n  p:\n{body}    backends:\n");
    for (a, w, r) in backends {
        y.push_str(&format!(
            "      - {{ address: {a}, weight: {w}{} }}\n",
            r.map(|r| format!(", region: {r}")).unwrap_or_default()
        ));
    }
    let loaded = config::parse_str(&y, dir).unwrap_or_else(|e| panic!("{e}\n{y}"));
    Pool::from_config(&loaded.config.pools[0])
}

fn ctx<'a>(headers: &'a HeaderMap, ip: &str, query: Option<&'a str>) -> PickCtx<'a> {
    PickCtx {
        client_ip: ip.parse::<IpAddr>().unwrap(),
        peer: ip.parse::<IpAddr>().unwrap(),
        headers,
        query,
        tls: false,
        now: Instant::now(),
    }
}

fn pick_addr(p: &Pool, c: &PickCtx<'_>) -> SocketAddr {
    p.select(c, &[]).expect("a backend").backend.addr()
}

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

const GEO: &str = "    strategy: geo
    geo:
      client_region:
        - header: x-client-region
        - cidr: { '10.1.0.0/16': eu-west, '10.2.0.0/16': us-east, '10.2.5.0/24': us-west }
      trusted_proxies: [127.0.0.0/8]
      failover: { eu-west: [eu-central, us-east], us-east: [us-west, eu-west], ap-south: [us-east] }
      within_region: round_robin
";

#[test]
fn geo_local_failover_any_and_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let bs = [
        (addr(0), 1, Some("eu-west")),
        (addr(1), 1, Some("eu-west")),
        (addr(2), 1, Some("us-east")),
        (addr(3), 1, Some("us-west")),
    ];
    let p = pool_yaml(GEO, &bs, dir.path());
    let region = |r: &str| {
        let mut h = HeaderMap::new();
        h.insert("x-client-region", HeaderValue::from_str(r).unwrap());
        h
    };
    // Header from a trusted peer: local, rotating within the region.
    let h = region("eu-west");
    let picks: Vec<_> = (0..4)
        .map(|_| p.select(&ctx(&h, "127.0.0.1", None), &[]).unwrap())
        .collect();
    assert!(picks
        .iter()
        .all(|x| x.index < 2 && x.decision == Some("geo:local")));
    assert_ne!(picks[0].index, picks[1].index);

    // eu-west down: failover in order, eu-central (no backends) then us-east.
    p.backends[0].state.set_healthy(false);
    p.backends[1].state.set_healthy(false);
    let x = p.select(&ctx(&h, "127.0.0.1", None), &[]).unwrap();
    assert_eq!((x.index, x.decision), (2, Some("geo:failover")));
    // ... and us-east down too: nothing left in the list, so any usable backend.
    p.backends[2].state.set_healthy(false);
    let x = p.select(&ctx(&h, "127.0.0.1", None), &[]).unwrap();
    assert_eq!((x.index, x.decision), (3, Some("geo:any")));
    for b in &p.backends {
        b.state.set_healthy(true);
    }

    // A region with no backends of its own goes straight to its failover list.
    let x = p
        .select(&ctx(&region("ap-south"), "127.0.0.1", None), &[])
        .unwrap();
    assert_eq!((x.index, x.decision), (2, Some("geo:failover")));

    // The header is ignored from an untrusted peer; the CIDR table decides (most specific first).
    let x = p
        .select(&ctx(&region("eu-west"), "10.2.5.9", None), &[])
        .unwrap();
    assert_eq!((x.index, x.decision), (3, Some("geo:local")));
    let x = p
        .select(&ctx(&HeaderMap::new(), "10.2.7.1", None), &[])
        .unwrap();
    assert_eq!((x.index, x.decision), (2, Some("geo:local")));
    // Behind a trusted proxy, the forwarded client address is used.
    let mut xff = HeaderMap::new();
    xff.insert(
        "x-forwarded-for",
        HeaderValue::from_static("10.1.3.3, 127.0.0.5"),
    );
    let x = p.select(&ctx(&xff, "127.0.0.1", None), &[]).unwrap();
    assert_eq!(x.decision, Some("geo:local"));
    assert!(x.index < 2);

    // Unknown region, no default: every backend, rotating.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        let x = p
            .select(&ctx(&HeaderMap::new(), "192.0.2.1", None), &[])
            .unwrap();
        assert_eq!(x.decision, Some("geo:unknown"));
        seen.insert(x.index);
    }
    assert_eq!(seen.len(), 4);

    // With default_region, unknown clients start there.
    let with_default = pool_yaml(
        &format!("{GEO}      default_region: us-east\n"),
        &bs,
        dir.path(),
    );
    let x = with_default
        .select(&ctx(&HeaderMap::new(), "192.0.2.1", None), &[])
        .unwrap();
    assert_eq!((x.index, x.decision), (2, Some("geo:unknown")));
}

#[test]
fn geo_check_warns_about_failover_regions_without_backends() {
    let y = format!(
        "listeners: [{{ name: l, address: 127.0.0.1:0 }}]\nroutes: [{{ name: r, pool: p }}]\npools:\n  p:\n{GEO}    backends:\n      - {{ address: 127.0.0.1:1, region: eu-west }}\n      - {{ address: 127.0.0.1:2, region: us-east }}\n"
    );
    let loaded = config::parse_str(&y, std::path::Path::new(".")).expect("a warning, not an error");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.contains("eu-central") && w.contains("no backends")),
        "{:?}",
        loaded.warnings
    );
}

#[test]
fn slow_start_ramps_a_new_backend_up_to_full_weight() {
    assert_eq!(ramp(Duration::ZERO, Duration::from_secs(30)), 0.1);
    assert_eq!(ramp(Duration::from_secs(15), Duration::from_secs(30)), 0.5);
    assert_eq!(ramp(Duration::from_secs(60), Duration::from_secs(30)), 1.0);

    let dir = tempfile::tempdir().unwrap();
    let bs = [(addr(0), 1, None), (addr(1), 1, None)];
    for body in [
        "    strategy: round_robin\n",
        "    strategy: weighted\n",
        "    strategy: least_connections\n",
    ] {
        let p = pool_yaml(&format!("{body}    slow_start: 30s\n"), &bs, dir.path());
        let h = HeaderMap::new();
        let mut shares = Vec::new();
        for elapsed in [0u64, 10, 20, 30] {
            // Backend 1 became usable `elapsed` seconds before the picks.
            let now = Instant::now() + Duration::from_secs(120);
            p.backends[1]
                .state
                .mark_usable_at(now - Duration::from_secs(elapsed));
            let mut c = ctx(&h, "127.0.0.1", None);
            c.now = now;
            let n = 4000;
            // Keep a window of 8 requests in flight, as real traffic would.
            let mut window = std::collections::VecDeque::new();
            let mut hits = 0;
            for _ in 0..n {
                let pick = p.select(&c, &[]).unwrap();
                hits += usize::from(pick.index == 1);
                window.push_back(sandgate::admission::Slot::hold(&pick.backend.state));
                if window.len() > 8 {
                    window.pop_front();
                }
            }
            shares.push(hits as f64 / f64::from(n));
            assert!(
                (p.effective_weight(1, now)
                    - ramp(Duration::from_secs(elapsed), Duration::from_secs(30)))
                .abs()
                    < 1e-9
            );
        }
        assert!(shares[0] < 0.15, "{body}: starts small: {shares:?}");
        assert!(
            shares.windows(2).all(|w| w[1] > w[0] - 0.02),
            "{body}: ramps up: {shares:?}"
        );
        assert!(
            (shares[3] - 0.5).abs() < 0.05,
            "{body}: full weight at the end: {shares:?}"
        );
    }
}

#[test]
fn least_connections_prefers_the_idle_and_rotates_ties() {
    let dir = tempfile::tempdir().unwrap();
    let bs: Vec<_> = (0..3).map(|i| (addr(i), 1, None)).collect();
    let p = pool_yaml("    strategy: least_connections\n", &bs, dir.path());
    let h = HeaderMap::new();
    let c = ctx(&h, "127.0.0.1", None);
    // All idle: ties rotate over every backend.
    let picks: std::collections::HashSet<_> =
        (0..3).map(|_| p.select(&c, &[]).unwrap().index).collect();
    assert_eq!(picks.len(), 3);
    // Load 0 and 1; 2 is the least loaded.
    let _g = [
        sandgate::admission::Slot::hold(&p.backends[0].state),
        sandgate::admission::Slot::hold(&p.backends[0].state),
        sandgate::admission::Slot::hold(&p.backends[1].state),
    ];
    for _ in 0..5 {
        assert_eq!(p.select(&c, &[]).unwrap().index, 2);
    }
    // Relative to weight: weight 4 with 3 in flight beats weight 1 with 1.
    let w = pool_yaml(
        "    strategy: least_connections\n",
        &[(addr(0), 4, None), (addr(1), 1, None)],
        dir.path(),
    );
    let _g2 = [
        sandgate::admission::Slot::hold(&w.backends[0].state),
        sandgate::admission::Slot::hold(&w.backends[0].state),
        sandgate::admission::Slot::hold(&w.backends[0].state),
        sandgate::admission::Slot::hold(&w.backends[1].state),
    ];
    assert_eq!(w.select(&c, &[]).unwrap().index, 0);

    // Large pools use two random choices: a loaded backend is almost never picked.
    let big: Vec<_> = (0..100).map(|i| (addr(i), 1, None)).collect();
    let p = pool_yaml("    strategy: least_connections\n", &big, dir.path());
    let _hot: Vec<_> = (0..50)
        .map(|_| sandgate::admission::Slot::hold(&p.backends[7].state))
        .collect();
    let hot = (0..2000)
        .filter(|_| p.select(&c, &[]).unwrap().index == 7)
        .count();
    assert!(hot < 5, "hot backend picked {hot} times");
}
