//! `cargo bench --bench select`: time to select one backend, per strategy, over pools of 3,
//! 100 and 1000 backends. Target: under 100 ns per pick at 100 backends for every strategy
//! but geo with an mmdb source (not measured here: it needs a MaxMind database).

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue};
use sandgate::balance::{PickCtx, Pool};
use sandgate::config;

const REGIONS: [&str; 4] = ["eu-west", "eu-central", "us-east", "us-west"];

fn pool(body: &str, n: usize, dir: &std::path::Path) -> Pool {
    let mut y = format!("listeners: [{{ name: l, address: 127.0.0.1:0 }}]\nroutes: [{{ name: r, pool: p }}]\npools:\n  p:\n{body}    backends:\n");
    for i in 0..n {
        y.push_str(&format!(
            "      - {{ address: 10.{}.{}.{}:8080, weight: {}, region: {} }}\n",
            i / 65536,
            (i / 256) % 256,
            i % 256,
            1 + i % 5,
            REGIONS[i % 4]
        ));
    }
    let loaded = config::parse_str(&y, dir).expect("bench config");
    Pool::from_config(&loaded.config.pools[0])
}

/// A request context for the bench loop.
fn ctx(headers: &HeaderMap) -> PickCtx<'_> {
    PickCtx {
        client_ip: IpAddr::from([127, 0, 0, 1]),
        peer: IpAddr::from([127, 0, 0, 1]),
        headers,
        query: None,
        tls: false,
        now: Instant::now(),
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("cookie.key"),
        "bench-secret-bench-secret-bench-secret",
    )
    .expect("key");
    let strategies: [(&str, &str); 6] = [
        ("round_robin", "    strategy: round_robin\n"),
        ("weighted", "    strategy: weighted\n"),
        ("least_connections", "    strategy: least_connections\n"),
        ("affinity_header", "    strategy: affinity\n    affinity: { key: 'header:x-sandbox-session' }\n"),
        (
            "affinity_cookie_hit",
            "    strategy: affinity\n    affinity: { cookie: { name: sg, secret_file: cookie.key } }\n",
        ),
        (
            "geo_header",
            "    strategy: geo\n    geo: { client_region: [{ header: x-client-region }], trusted_proxies: [127.0.0.0/8], within_region: round_robin }\n",
        ),
    ];
    let mut group = c.benchmark_group("select");
    group.warm_up_time(std::time::Duration::from_millis(300));
    group.measurement_time(std::time::Duration::from_secs(1));
    for (name, body) in strategies {
        for n in [3usize, 100, 1000] {
            let p = pool(body, n, dir.path());
            let mut headers = HeaderMap::new();
            headers.insert(
                "x-sandbox-session",
                HeaderValue::from_static("3f6c2a1e-session"),
            );
            headers.insert("x-client-region", HeaderValue::from_static("us-east"));
            if name == "affinity_cookie_hit" {
                // Get a cookie first, so the loop measures the pinned path.
                let set = p
                    .select(&ctx(&headers), &[])
                    .and_then(|x| x.set_cookie)
                    .expect("cookie");
                let pair = set
                    .to_str()
                    .expect("ascii")
                    .split(';')
                    .next()
                    .expect("pair")
                    .to_owned();
                headers.insert(
                    "cookie",
                    HeaderValue::from_str(&pair).expect("cookie header"),
                );
            }
            let ctx = ctx(&headers);
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| black_box(p.select(black_box(&ctx), &[]).map(|x| x.index)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
