//! The Prometheus exposition: every series sandgate exports has HELP text, and
//! `promtool check metrics` (when installed, as CI installs it) finds nothing to fix; the
//! shipped alert rules and dashboard use only metrics sandgate exports, and the rules pass
//! `promtool check rules`.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_has_help_and_promtool_is_clean() {
    let b = named_backend("b").await;
    // Enough features on that their series exist: health checks, breaker, retries, a queue,
    // a rate limit, affinity, tenant shares.
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n\
         routes:\n  - name: all\n    pool: p\n    rate_limit: {{ rate: 1000/s }}\n\
         \x20 - {{ name: cached, pool: p, match: {{ path_prefix: /c }}, cache: {{ enabled: true }} }}\n\
         \x20 - {{ name: flaky, pool: f, match: {{ path_prefix: /f }} }}\n\
         pools:\n  p:\n    strategy: affinity\n    affinity: {{ key: header:x-session }}\n\
         \x20   health_check: {{ path: /, interval: 200ms }}\n    circuit_breaker: {{ consecutive_failures: 5 }}\n\
         \x20   retry: {{ attempts: 2 }}\n    max_connections: 10\n\
         \x20   tenant: {{ key: header:x-session, max_share: 50% }}\n\
         \x20   backends: [{{ address: {} }}]\n\
         \x20 f: {{ retry: {{ attempts: 2 }}, backends: [{{ address: {} }}, {{ address: {} }}] }}\n",
        b.addr,
        closed_port(),
        b.addr
    );
    let proxy = spawn_proxy(&yaml);
    // Two requests to `f`: one of them meets the closed port first and is retried.
    for path in ["/", "/", "/c", "/f", "/f"] {
        let got = get_with(&proxy.url("public", path), &[("x-session", "s1")]).await;
        assert_eq!(got.status, 200, "{path}");
    }
    let text = metrics_text(&proxy).await;
    let names = |prefix: &str| -> HashSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    };
    let (typed, helped) = (names("# TYPE "), names("# HELP "));
    let missing: Vec<_> = typed.difference(&helped).collect();
    assert!(missing.is_empty(), "metrics without HELP: {missing:?}");
    for want in [
        "sandgate_requests_total",
        "sandgate_breaker_state",
        "sandgate_backend_healthy",
        "sandgate_queue_depth",
        "sandgate_affinity_total",
        "sandgate_tenant_limited_total",
        "sandgate_rate_limited_total",
    ] {
        assert!(typed.contains(want), "{want} missing from:\n{text}");
    }

    // What the shipped alerts and dashboard use must exist.
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "contrib/prometheus/alerts.yml",
        "contrib/grafana/sandgate.json",
    ] {
        let body = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let mut used = 0;
        for (i, _) in body.match_indices("sandgate_") {
            let name: String = body[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                typed.contains(base),
                "{file} uses {name}, which /metrics lacks"
            );
            used += 1;
        }
        assert!(used >= 6, "{file} uses only {used} metrics");
    }
    if let Ok(out) = Command::new("promtool")
        .args([
            "check",
            "rules",
            &format!("{root}/contrib/prometheus/alerts.yml"),
        ])
        .output()
    {
        assert!(out.status.success(), "promtool check rules: {out:?}");
    }

    let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed: its check is skipped (apt-get install prometheus)");
        return;
    };
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}
