//! Geo decisions from header and CIDR sources, slow start's ramp and least-connections,
//! checked on real `Pool`s through the library API (no network).

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use sandgate::balance::ramp;
use sandgate::config;

mod pools;

use pools::*;

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
