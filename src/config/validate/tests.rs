//! Validation tests: every error collected, with its line.

use crate::config::parse_str;
use std::path::Path;

fn errs(src: &str) -> Vec<String> {
    match parse_str(src, Path::new(".")) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|x| x.to_string()).collect(),
    }
}

#[test]
fn collects_all_errors_with_lines() {
    let src = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: api
    pool: missing
pools:
  empty:
    backends: []
  sandboxes:
    timeouts: { connect: 5 parsecs }
    backends:
      - { address: 127.0.0.1:9001 }
      - { address: 127.0.0.1:9001, weight: 0 }
      - { address: not-an-address }
";
    let mut e = errs(src);
    assert_eq!(e.len(), 6, "{e:?}");
    let duration = e.remove(2);
    assert!(
        duration.starts_with(
            "line 11: pools.sandboxes.timeouts.connect: invalid duration \"5 parsecs\""
        ),
        "{duration}"
    );
    assert_eq!(
        e,
        vec![
            "line 6: routes[0].pool: no pool named \"missing\"",
            "line 9: pools.empty.backends: a pool needs at least one backend (or a discovery.file)",
            "line 14: pools.sandboxes.backends[1].address: duplicate backend address 127.0.0.1:9001 in this pool",
            "line 14: pools.sandboxes.backends[1].weight: must be at least 1",
            "line 15: pools.sandboxes.backends[2].address: invalid address \"not-an-address\"; write ip:port or host:port, e.g. 127.0.0.1:9001",
        ]
    );
}

#[test]
fn unknown_keys_are_errors_with_line() {
    let src = "listeners:\n  - name: a\n    address: 127.0.0.1:1\n    colour: blue\n";
    let e = errs(src);
    assert_eq!(e.len(), 1);
    assert!(
        e[0].starts_with("line 4: listeners[0]: unknown field `colour`"),
        "{e:?}"
    );
}

#[test]
fn sizes_and_hosts() {
    let src = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
limits: { max_request_body: 1MiB, max_header_bytes: 1KiB }
routes:
  - { name: r, match: { host: '*.example.com' }, pool: p }
  - { name: s, match: { host: 'a*b' }, pool: p }
pools:
  p: { backends: [{ address: 127.0.0.1:2 }] }
";
    let e = errs(src);
    assert_eq!(
        e,
        vec![
            "line 2: limits.max_header_bytes: must be at least 8KiB",
            "line 5: routes[1].match.host: invalid host \"a*b\"; write an exact host or *.example.com",
        ]
    );
}

#[test]
fn protection_keys_are_validated() {
    let src = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
limits: { max_inflight: 0 }
routes:
  - { name: r, pool: p, rate_limit: { rate: 10/fortnight, key: 'cookie:x' } }
pools:
  p:
    health_check: { path: healthz, interval: 1s, timeout: 2s, jitter: lots, expect_status: 600-700 }
    circuit_breaker: { failure_on: [connect_error, teapot], open_for: 10s, max_open_for: 1s }
    retry: { attempts: 0, budget: 150% }
    max_connections: 0
    backends: [{ address: 127.0.0.1:2 }]
";
    let e = errs(src);
    let want = [
        "line 2: limits.max_inflight: must be at least 1",
        "line 4: routes[0].rate_limit.key: invalid key \"cookie:x\"; write client_ip or header:NAME",
        "line 4: routes[0].rate_limit.rate: invalid rate \"10/fortnight\"; write e.g. 100/s, 600/m or 3600/h",
        "line 7: pools.p.health_check.path: must be an origin-form path, e.g. /healthz or /health?deep=1",
        "line 7: pools.p.health_check.expect_status: invalid status range \"600-700\"; write e.g. 200-399 or 200,204",
        "line 7: pools.p.health_check.timeout: must not exceed interval",
        "line 7: pools.p.health_check.jitter: invalid percentage \"lots\"; write e.g. 50%",
        "line 8: pools.p.circuit_breaker.max_open_for: must be at least open_for",
        "line 8: pools.p.circuit_breaker.failure_on[1]: unknown outcome \"teapot\"; use connect_error, timeout, error, 5xx or a status code",
        "line 9: pools.p.retry.attempts: must be at least 1",
        "line 9: pools.p.retry.budget: invalid percentage \"150%\"; write e.g. 50%",
        "line 10: pools.p.max_connections: must be at least 1",
    ];
    for w in want {
        assert!(e.iter().any(|x| x == w), "missing {w:?} in {e:#?}");
    }
    assert_eq!(e.len(), want.len(), "{e:#?}");
}

#[test]
fn run_time_failures_are_caught_by_check() {
    let e = errs(
        "\
listeners:
  - { name: p, address: 127.0.0.1:8080 }
routes:
  - { name: r, pool: s }
pools:
  s:
    timeouts: { idle: 100years }
    health_check: { path: \"/a b\", host: \"bad\\nhost\" }
    backends: [{ address: 127.0.0.1:9001 }]
",
    );
    let has = |s: &str| e.iter().any(|x| x.contains(s));
    assert!(
        has("pools.s.timeouts.idle: \"100years\" is longer than a year"),
        "{e:#?}"
    );
    assert!(
        has("pools.s.health_check.path: must be an origin-form path"),
        "{e:#?}"
    );
    assert!(has("pools.s.health_check.host"), "{e:#?}");
    // A default that contradicts a chosen value is not an error.
    let ok = errs(
        "\
listeners:
  - { name: p, address: 127.0.0.1:8080 }
routes:
  - { name: r, pool: s }
pools:
  s:
    health_check: { interval: 1s }
    backends: [{ address: 127.0.0.1:9001 }]
",
    );
    assert!(ok.is_empty(), "{ok:#?}");
}

#[test]
fn discovery_names_and_files() {
    let src = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
routes: [{ name: r, pool: p }]
pools:
  p:
    max_connections: 4
    discovery: { dns_refresh: 5s, file: sandboxes.json }
    backends:
      - { address: 127.0.0.1:2 }
      - { address: 'Sandbox.internal:9001', weight: 3, region: eu }
  q:
    discovery: { file: q.json }
";
    let loaded = parse_str(src, Path::new("/etc/sandgate")).expect("valid");
    let p = &loaded.config.pools[0];
    let d = p.discovery.as_ref().expect("discovery");
    assert_eq!(d.dns_refresh, std::time::Duration::from_secs(5));
    assert_eq!(
        d.file.as_deref(),
        Some(Path::new("/etc/sandgate/sandboxes.json"))
    );
    assert_eq!(d.names.len(), 1);
    assert_eq!(
        (d.names[0].host.as_str(), d.names[0].port),
        ("sandbox.internal", 9001)
    );
    assert_eq!(
        (d.names[0].weight, d.names[0].max_connections),
        (3, Some(4))
    );
    assert_eq!(p.backends.len(), 1);
    assert!(
        loaded.config.pools[1].backends.is_empty(),
        "a file alone is enough"
    );

    let bad = "\
listeners: [{ name: a, address: 127.0.0.1:1 }]
routes: [{ name: r, pool: p }]
pools:
  p:
    discovery: { dns_refresh: 0s }
    backends: [{ address: 'sandbox.internal:9001' }, { address: 'Sandbox.Internal:9001' }]
";
    assert_eq!(
        errs(bad),
        vec![
            "line 5: pools.p.discovery.dns_refresh: must be greater than 0",
            "line 6: pools.p.backends[1].address: duplicate backend address sandbox.internal:9001 in this pool",
        ]
    );
}

#[test]
fn a_global_rate_limit_needs_cache_redis() {
    let route = "routes:\n  - name: r\n    pool: p\n    rate_limit: { rate: 50/s, scope: global, algorithm: sliding_window }\n";
    let pools = "pools:\n  p: { backends: [{ address: 127.0.0.1:2 }] }\n";
    let bare = format!("listeners: [{{ name: a, address: 127.0.0.1:1 }}]\n{route}{pools}");
    assert_eq!(
        errs(&bare),
        ["line 5: routes[0].rate_limit.scope: global needs cache.redis: the fleet's counters are kept there"]
    );
    let with_redis = format!("{bare}cache: {{ redis: {{ url: 'redis://127.0.0.1:1/0' }} }}\n");
    let cfg =
        crate::config::parse_str(&with_redis, Path::new(".")).expect("valid with cache.redis");
    let rl = cfg.config.routes[0].rate_limit.clone().expect("rate limit");
    assert_eq!(rl.scope, crate::config::RateScope::Global);
    assert_eq!(rl.algorithm, crate::config::RateAlgorithm::SlidingWindow);
    assert_eq!(rl.per_window(), 50.0);
    let unknown = bare.replace("scope: global", "scope: planet");
    assert!(
        errs(&unknown)[0].contains("unknown variant `planet`"),
        "{:?}",
        errs(&unknown)
    );
}
