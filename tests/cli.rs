//! `sandgate check`: output and exit codes, and config.example.yaml staying valid.

mod common;

use std::process::Command;

use common::sandgate_bin;

fn check(yaml: &str) -> (i32, String, String) {
    check_with(yaml, &[])
}

/// `sandgate check` with extra arguments.
pub fn check_with(yaml: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sandgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(sandgate_bin())
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_a_valid_file() {
    let (code, out, _) = check(
        "listeners: [{ name: p, address: 127.0.0.1:8080 }]\nroutes: [{ name: r, pool: s }]\npools:\n  s: { backends: [{ address: 127.0.0.1:9001 }] }\n",
    );
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "ok");
}

#[test]
fn check_warns_about_unverified_backends_and_rejects_bad_transports_with_lines() {
    let (code, out, err) = check(
        "listeners: [{ name: p, address: 127.0.0.1:8080 }]\nroutes: [{ name: r, pool: s }]\npools:\n  s: { tls: { verify: false }, backends: [{ address: 127.0.0.1:9001 }] }\n",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "ok");
    assert!(
        err.contains("warning: pools.s.tls.verify: false"),
        "the check warns: {err}"
    );
    let (code, _, err) = check(
        "listeners: [{ name: p, address: 127.0.0.1:8080, proxy_protocol: { trusted: [not-a-cidr] } }]\nroutes: [{ name: r, pool: s }]\npools:\n  s:\n    protocol: auto\n    backends: [{ address: 127.0.0.1:9001 }]\n  t:\n    tls: { ca_file: /nonexistent/ca.pem, server_name: \"bad name!\" }\n    backends: [{ address: 127.0.0.1:9002 }]\n",
    );
    assert_eq!(code, 1, "{err}");
    for want in [
        "listeners[0].proxy_protocol.trusted[0]",
        "pools.s.protocol",
        "pools.t.tls.ca_file",
        "pools.t.tls.server_name",
    ] {
        assert!(err.contains(want), "{want} missing from:\n{err}");
    }
}

#[test]
fn check_lists_every_error_with_its_line() {
    let yaml = "\
listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: api
    pool: ghosts
pools:
  sandboxes:
    strategy: weighted
    timeouts: { connect: soon }
    backends:
      - { address: 127.0.0.1:9001 }
      - { address: 127.0.0.1:9001 }
      - { address: 127.0.0.1:9002, weight: 0 }
      - { address: nowhere }
  empty:
    backends: []
limits:
  max_request_body: lots
";
    let (code, out, err) = check(yaml);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!out.contains("ok"));
    let lines: Vec<&str> = err.lines().collect();
    for want in [
        "line 6: routes[0].pool: no pool named \"ghosts\"",
        "line 10: pools.sandboxes.timeouts.connect: invalid duration \"soon\"",
        "line 13: pools.sandboxes.backends[1].address: duplicate backend address 127.0.0.1:9001 in this pool",
        "line 14: pools.sandboxes.backends[2].weight: must be at least 1",
        "line 15: pools.sandboxes.backends[3].address: invalid address \"nowhere\"",
        "line 17: pools.empty.backends: a pool needs at least one backend",
        "line 19: limits.max_request_body: invalid size \"lots\"",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn check_reports_syntax_errors_and_unknown_keys_with_lines() {
    let (code, _, err) =
        check("listeners:\n  - name: a\n    address: 127.0.0.1:1\n    adress: typo\n");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("line 4: listeners[0]: unknown field `adress`"),
        "{err}"
    );

    let (code, _, err) = check("listeners: [\n");
    assert_eq!(code, 1);
    assert!(err.starts_with("line "), "{err}");

    let (code, _, err) = check("pools:\n  p:\n    strategy: random\n    backends: []\n");
    assert_eq!(code, 1);
    assert!(
        err.contains("line 3: pools.p.strategy: unknown variant `random`"),
        "{err}"
    );
}

#[test]
fn check_fails_on_a_missing_file() {
    let out = Command::new(sandgate_bin())
        .args(["check", "-c", "/nonexistent/sandgate.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/sandgate.yaml"));
}

#[test]
fn config_example_passes_check() {
    // The example names files under /etc/sandgate (certificates, the cookie key); create them
    // in a temp dir and point the example there, changing nothing else.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.yaml"))
            .unwrap();
    let mut n = 0;
    for name in ["api", "sandbox"] {
        if example.contains(&format!("/etc/sandgate/tls/{name}.pem")) {
            let ck =
                rcgen::generate_simple_self_signed(vec![format!("{name}.example.com")]).unwrap();
            std::fs::write(dir.path().join(format!("tls/{name}.pem")), ck.cert.pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("tls/{name}.key")),
                ck.key_pair.serialize_pem(),
            )
            .unwrap();
            n += 1;
        }
    }
    assert_eq!(n, 2, "the example should show SNI with two certificates");
    assert!(example.contains("/etc/sandgate/cookie.key"));
    std::fs::write(
        dir.path().join("cookie.key"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    // Backend TLS: a CA and a client certificate signed by it.
    assert!(example.contains("/etc/sandgate/backend-ca.pem"));
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    std::fs::write(dir.path().join("backend-ca.pem"), ca.pem()).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let client = rcgen::CertificateParams::new(vec!["sandgate.client".to_owned()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    assert!(example.contains("/etc/sandgate/client.pem"));
    std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
    assert!(example.contains("/etc/sandgate/admin.token"));
    std::fs::write(
        dir.path().join("admin.token"),
        "an-admin-token-of-at-least-32-bytes\n",
    )
    .unwrap();
    let yaml = example.replace("/etc/sandgate/", &format!("{}/", dir.path().display()));
    let (code, out, err) = check(&yaml);
    assert_eq!(code, 0, "config.example.yaml failed check:\n{err}");
    assert_eq!(out.trim(), "ok");
    assert!(!err.contains("warning"), "example has warnings:\n{err}");

    // --dump: every key resolved, secrets redacted.
    let (code, dump, err) = check_with(&yaml, &["--dump"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_yaml::Value = serde_yaml::from_str(&dump).expect("the dump is YAML");
    assert_eq!(v["admin"]["token_file"], "<redacted>");
    assert_eq!(
        v["pools"]["sessions"]["affinity"]["cookie"]["secret_file"],
        "<redacted>"
    );
    assert_eq!(
        v["listeners"][1]["tls"]["certificates"][0]["key"],
        "<redacted>"
    );
    assert!(!dump.contains("an-admin-token") && !dump.contains("0123456789abcdef"));
    // Defaults are filled in.
    assert_eq!(
        v["pools"]["sessions"]["timeouts"]["connect"], "5s",
        "{dump}"
    );
    assert_eq!(v["pools"]["sessions"]["queue"]["max"], 1000);
    assert_eq!(v["routes"][1]["match"]["path_prefix_segments"], false);
    assert_eq!(v["pools"]["sandboxes"]["health_check"]["jitter"], "10%");
    assert_eq!(v["pools"]["sandboxes"]["discovery"]["dns_refresh"], "30s");
}

#[test]
fn a_dump_loads_again_to_the_same_config() {
    let yaml = "\
listeners: [{ name: p, address: 127.0.0.1:8080, proxy_protocol: { trusted: [10.0.0.0/8] } }]
admin: { address: 127.0.0.1:9900 }
limits: { max_inflight: 100 }
cache: { redis: { url: 'redis://user:hunter2@127.0.0.1:6379/0' } }
routes:
  - { name: r, match: { host: '*.example.com', headers: { x-tenant: acme } }, pool: s,
      rate_limit: { key: 'header:x-key', rate: 100/m }, cache: { enabled: true } }
pools:
  s:
    strategy: affinity
    affinity: { key: 'cookie:sid', bounded_load: 1.25 }
    health_check: { tcp: true, expect_status: '200,204-206' }
    circuit_breaker: {}
    retry: { per_try_timeout: 1500ms }
    max_connections: 8
    backends: [{ address: 127.0.0.1:9001, weight: 3, region: eu }, { address: 'sandbox.internal:9002' }]
  g:
    strategy: geo
    geo: { client_region: [{ header: x-region }, { cidr: { 10.1.0.0/16: eu } }], failover: { eu: [us] } }
    backends: [{ address: '[::1]:9003', region: eu }, { address: 127.0.0.1:9004, region: us }]
";
    let (code, first, err) = check_with(yaml, &["--dump"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        first.contains("redis://<redacted>@127.0.0.1:6379/0"),
        "{first}"
    );
    assert!(!first.contains("hunter2"));
    let (code, second, err) = check_with(&first, &["--dump"]);
    assert_eq!(code, 0, "the dump does not load:\n{err}\n{first}");
    assert_eq!(first, second);
}

#[test]
fn check_refuses_a_key_that_does_not_fit_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
    std::fs::write(dir.path().join("a.pem"), a.cert.pem()).unwrap();
    std::fs::write(dir.path().join("b.key"), b.key_pair.serialize_pem()).unwrap();
    let yaml = format!(
        "listeners:\n  - name: t\n    address: 127.0.0.1:8443\n    tls:\n      certificates:\n        - {{ cert: {d}/a.pem, key: {d}/b.key }}\n\
         routes: [{{ name: r, pool: s }}]\npools:\n  s: {{ backends: [{{ address: 127.0.0.1:9001 }}] }}\n",
        d = dir.path().display()
    );
    let (code, _, err) = check(&yaml);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("listeners[0].tls.certificates[0].key: does not fit the certificate"),
        "{err}"
    );
}

#[test]
fn the_systemd_unit_scores_1_5_or_lower() {
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/sandgate.service");
    let Ok(out) = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", unit])
        .output()
    else {
        eprintln!("systemd-analyze is not installed: the unit's score is not checked");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for sandgate.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no score in:\n{text}"));
    assert!(score <= 1.5, "exposure {score}:\n{text}");
}
