//! OTLP export: one server span per request reaches the collector with the trace id, the
//! caller's span as parent and the span id sandgate sent on; a dead collector costs requests
//! nothing but dropped spans.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An OTLP/HTTP collector that keeps every body POSTed to /v1/traces.
async fn collector() -> (std::net::SocketAddr, Arc<Mutex<Vec<Bytes>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let g = Arc::clone(&g);
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        if let (true, Ok(b)) = (path == "/v1/traces", body) {
                            g.lock().unwrap().push(b);
                        }
                        let resp = Response::builder()
                            .header("content-type", "application/x-protobuf")
                            .body(http_body_util::Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, got)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_becomes_a_span_under_its_callers() {
    let (addr, got) = collector().await;
    // The backend answers with the traceparent it was sent.
    let backend = spawn_backend(|req| {
        let tp = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Box::pin(async move { Response::new(full(tp)) })
    })
    .await;
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         tracing:\n  otlp: {{ endpoint: 'http://{addr}/v1/traces', timeout: 2s }}\n\
         routes:\n  - name: traced-route\n    pool: p\n\
         pools:\n  p:\n    backends: [{{ address: {} }}]\n",
        backend.addr
    );
    let proxy = spawn_proxy(&yaml);
    let sent = get_with(&proxy.url("public", "/work"), &[("traceparent", PARENT)]).await;
    let ours = sent.text();
    assert_eq!(ours.len(), 55, "{ours}");
    let span = hex(&ours[36..52]);
    wait_until(|| !got.lock().unwrap().is_empty()).await;
    let body: Vec<u8> = got.lock().unwrap().concat();
    assert!(contains(&body, &hex(&PARENT[3..35])), "the trace id");
    assert!(
        contains(&body, &hex(&PARENT[36..52])),
        "the caller's span as parent"
    );
    assert!(
        contains(&body, &span),
        "the span id the backend saw as its parent"
    );
    for text in [
        "traced-route",
        "http.response.status_code",
        "sandgate",
        "/work",
    ] {
        assert!(contains(&body, text.as_bytes()), "{text}");
    }
    let text = metrics_text(&proxy).await;
    assert!(
        metric(&text, "sandgate_otlp_spans_exported_total").is_some_and(|v| v >= 1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_only_drops_spans() {
    let backend = named_backend("ok").await;
    // A collector that takes connections and never answers. (A closed port could be reused
    // by another test's collector meanwhile.)
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = hung.local_addr().expect("addr");
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n\
         admin:\n  address: 127.0.0.1:0\n\
         tracing:\n  otlp: {{ endpoint: 'http://{dead}/v1/traces', timeout: 1s }}\n\
         routes:\n  - name: all\n    pool: p\n\
         pools:\n  p:\n    backends: [{{ address: {} }}]\n",
        backend.addr
    );
    let proxy = spawn_proxy(&yaml);
    for _ in 0..50 {
        assert_eq!(get(&proxy.url("public", "/")).await.text(), "ok");
    }
    wait_until_async(|| async {
        metric(
            &metrics_text(&proxy).await,
            "sandgate_otlp_spans_dropped_total",
        )
        .is_some_and(|v| v >= 1.0)
    })
    .await;
}
