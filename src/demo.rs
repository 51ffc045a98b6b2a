//! `sandgate demo`: three small sandbox backends on loopback and a config that puts sandgate
//! in front of them on 127.0.0.1:8080 (admin on 127.0.0.1:9900).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

/// Proxy address used by the demo.
pub const PROXY_ADDR: &str = "127.0.0.1:8080";
/// Admin address used by the demo.
pub const ADMIN_ADDR: &str = "127.0.0.1:9900";

type DemoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn sandbox(name: String, req: Request<Incoming>) -> Response<DemoBody> {
    if req.uri().path().starts_with("/stream") {
        // Five chunks, 300ms apart: shows that sandgate streams instead of buffering.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for i in 1..=5 {
                let chunk = Frame::data(Bytes::from(format!("{name}: chunk {i}/5\n")));
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let body = StreamBody::new(ReceiverStream::new(rx)).boxed();
        return Response::new(body);
    }
    let text = serde_json::json!({
        "sandbox": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "x_forwarded_for": req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()),
        "x_request_id": req.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
    })
    .to_string()
        + "\n";
    let mut r = Response::new(http_body_util::Full::new(Bytes::from(text)).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if req.uri().path().starts_with("/cached") {
        // The demo's caching route: sandgate keeps this for 30 seconds.
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=30"),
        );
    }
    r
}

/// Starts one demo sandbox on an ephemeral loopback port and returns its address.
pub async fn spawn_sandbox(name: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "demo sandbox accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(sandbox(name, req).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!(error = %e, "demo sandbox connection error");
                }
            });
        }
    });
    Ok(addr)
}

/// The demo config for three sandboxes.
pub fn config_yaml(sandboxes: &[SocketAddr]) -> String {
    let mut y = format!(
        "listeners:\n  - name: public\n    address: {PROXY_ADDR}\nadmin:\n  address: {ADMIN_ADDR}\n\
         routes:\n  - name: demo\n    match: {{ path_prefix: / }}\n    pool: sandboxes\n\
         \x20 - name: cached\n    match: {{ path_prefix: /cached }}\n    pool: sandboxes\n\
         \x20   cache: {{ enabled: true, stale_if_error: 5m }}\n\
         pools:\n  sandboxes:\n    strategy: weighted\n    backends:\n"
    );
    for (i, a) in sandboxes.iter().enumerate() {
        let weight = if i == 0 { 2 } else { 1 };
        y.push_str(&format!("      - {{ address: {a}, weight: {weight} }}\n"));
    }
    y
}

#[cfg(test)]
mod tests {
    #[test]
    fn demo_config_is_valid() {
        let addrs: Vec<std::net::SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let loaded =
            crate::config::parse_str(&super::config_yaml(&addrs), std::path::Path::new("."))
                .expect("demo config validates");
        assert_eq!(loaded.config.pools[0].backends.len(), 3);
        assert!(
            loaded.config.routes[1].cache.is_some(),
            "the demo caches /cached"
        );
        assert!(loaded.warnings.is_empty());
    }
}
