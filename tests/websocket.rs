//! WebSocket through sandgate: HTTP/1.1 upgrades and HTTP/2 extended CONNECT (RFC 8441) to
//! real echo backends, refused upgrades, slots held by tunnels, the idle timeout, and
//! shutdown closing tunnels with 1001.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::ws::*;
use common::*;
use futures_util::StreamExt;
use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// One route to one pool at `backend`, with `extra` pool settings (YAML lines).
fn ws_config(extra: &str, backend: std::net::SocketAddr) -> String {
    basic_config(&format!(
        "{extra}    backends: [{{ address: {backend} }}]\n"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_over_http1_with_headers_metrics_and_a_log_line() {
    let b = ws_backend("plain").await;
    let proxy = spawn_proxy(&ws_config("", b.addr()));
    let addr = proxy.listeners["public"];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let req = tokio_tungstenite::tungstenite::http::Request::builder()
        .uri(format!("ws://{addr}/term?x=1"))
        .header("host", addr.to_string())
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "WebSocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "term.v1, term.v0")
        .body(())
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "term.v1",
        "the backend's choice reaches the client"
    );
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(
        b.last_header("sec-websocket-protocol").as_deref(),
        Some("term.v1, term.v0")
    );
    assert!(b.last_header("x-forwarded-for").is_some());

    echo(&mut ws, Message::text("hello sandbox")).await;
    // A reload that takes the backend out of the pool leaves the open tunnel alone; new
    // sessions go to the new backend.
    let b2 = ws_backend("plain").await;
    let applied = proxy.reload(&ws_config("", b2.addr()));
    assert!(matches!(applied, Reload::Applied(_)), "{applied:?}");
    let mut other = ws_connect(addr, "/other").await.unwrap();
    echo(&mut other, Message::text("to the new backend")).await;
    assert_eq!((b.open(), b2.open()), (1, 1));
    drop(other);
    echo(&mut ws, Message::binary(vec![0u8, 1, 2, 255])).await;
    let big = Message::binary(vec![7u8; 200_000]);
    echo(&mut ws, big).await;

    wait_until(|| b2.open() == 0).await;
    wait_until_async(|| async {
        metric(
            &metrics_text(&proxy).await,
            "sandgate_tunnels_open{route=\"all\"}",
        ) == Some(1.0)
    })
    .await;
    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "sandgate_tunnels_total{route=\"all\",result=\"upgraded\"}"
        ),
        Some(2.0),
        "{m}"
    );
    let up = metric(
        &m,
        "sandgate_tunnel_bytes_total{route=\"all\",direction=\"up\"}",
    )
    .unwrap();
    let down = metric(
        &m,
        "sandgate_tunnel_bytes_total{route=\"all\",direction=\"down\"}",
    )
    .unwrap();
    assert!(up > 200_000.0 && down > 200_000.0, "up {up} down {down}");

    ws.close(None).await.unwrap();
    // The backend answers the close and goes; the tunnel ends and logs one line.
    let line = proxy
        .logs
        .wait_for(Duration::from_secs(10), |v| {
            v["tunnel"].is_string() && v["path"] == "/term"
        })
        .expect("a tunnel log line");
    assert_eq!(line["status"], 101);
    assert_eq!(line["path"], "/term");
    assert_eq!(line["route"], "all");
    assert!(line["bytes_up"].as_u64().unwrap() > 200_000, "{line}");
    assert!(line["bytes_down"].as_u64().unwrap() > 200_000, "{line}");
    wait_until_async(|| async {
        metric(
            &metrics_text(&proxy).await,
            "sandgate_tunnels_open{route=\"all\"}",
        ) == Some(0.0)
    })
    .await;
    assert_eq!(b.open(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_a_response_and_the_connection_serves_the_next_request() {
    let b = ws_backend("plain answer").await;
    let proxy = spawn_proxy(&ws_config("", b.addr()));
    let addr = proxy.listeners["public"];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let refused = Request::get("/refuse")
        .header("host", "sandbox")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(empty())
        .unwrap();
    let resp = send.send_request(refused).await.unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from("refused"));

    // The same connection, a plain request.
    send.ready().await.unwrap();
    let plain = Request::get("/next")
        .header("host", "sandbox")
        .body(empty())
        .unwrap();
    let resp = send.send_request(plain).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from("plain answer"));

    // An h2c upgrade is not a WebSocket: it goes on as an ordinary request, without it.
    let h2c = Request::get("/h2c")
        .header("host", "sandbox")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .body(empty())
        .unwrap();
    send.ready().await.unwrap();
    let resp = send.send_request(h2c).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.last_header("upgrade"), None);
    assert_eq!(b.last_header("http2-settings"), None);

    let m = metrics_text(&proxy).await;
    assert_eq!(
        metric(
            &m,
            "sandgate_tunnels_total{route=\"all\",result=\"refused\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_http2_extended_connect_is_bridged_to_an_http1_upgrade() {
    let b = ws_backend("plain").await;
    let proxy = spawn_proxy(&ws_config("", b.addr()));
    let (head, mut ws) = ws_connect_h2(proxy.listeners["public"], "/lsp").await;
    assert!(head.headers.get("sec-websocket-accept").is_none());
    assert_eq!(b.last_header("upgrade").as_deref(), Some("websocket"));
    assert!(b.last_header("sec-websocket-key").is_some());
    echo(&mut ws, Message::text("over h2")).await;
    echo(&mut ws, Message::binary(vec![9u8; 70_000])).await;
    assert_eq!(b.open(), 1);
    close_h2(&mut ws).await;
    wait_until(|| b.open() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_spreads_long_lived_sessions_evenly() {
    let bs = [
        ws_backend("a").await,
        ws_backend("b").await,
        ws_backend("c").await,
    ];
    let proxy = spawn_proxy(&basic_config(&format!(
        "    strategy: least_connections\n    backends:\n      - {{ address: {} }}\n      - {{ address: {} }}\n      - {{ address: {} }}\n",
        bs[0].addr(),
        bs[1].addr(),
        bs[2].addr()
    )));
    let addr = proxy.listeners["public"];
    let mut sessions = Vec::new();
    for _ in 0..30 {
        let mut ws = ws_connect(addr, "/s").await.unwrap();
        echo(&mut ws, Message::text("hi")).await;
        sessions.push(ws);
    }
    let open: Vec<usize> = bs.iter().map(WsBackend::open).collect();
    assert_eq!(open, vec![10, 10, 10], "sessions per backend");
    drop(sessions);
    wait_until(|| bs.iter().all(|b| b.open() == 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_tunnels_to_the_cap() {
    let b = ws_backend("plain").await;
    let proxy = spawn_proxy(&ws_config(
        "    max_connections: 2\n    queue: { max: 1, timeout: 300ms }\n",
        b.addr(),
    ));
    let addr = proxy.listeners["public"];
    let mut one = ws_connect(addr, "/1").await.unwrap();
    let mut two = ws_connect(addr, "/2").await.unwrap();
    echo(&mut one, Message::text("1")).await;
    echo(&mut two, Message::text("2")).await;
    // Both slots are held by open tunnels: the third waits, then is refused.
    match ws_connect(addr, "/3").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    assert_eq!(b.open(), 2);
    // A closed tunnel frees its slot.
    one.close(None).await.unwrap();
    drop(one);
    wait_until(|| b.open() == 1).await;
    let mut three = None;
    for _ in 0..50 {
        if let Ok(ws) = ws_connect(addr, "/3").await {
            three = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    echo(
        &mut three.expect("a slot after a close"),
        Message::text("3"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_tunnel_idle() {
    let b = ws_backend("plain").await;
    let proxy = spawn_proxy(&ws_config("    timeouts: { tunnel_idle: 1s }\n", b.addr()));
    let mut ws = ws_connect(proxy.listeners["public"], "/idle")
        .await
        .unwrap();
    echo(&mut ws, Message::text("alive")).await;
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the idle tunnel is closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let line = proxy
        .logs
        .wait_for(Duration::from_secs(5), |v| v["tunnel"].is_string())
        .expect("a tunnel log line");
    assert_eq!(line["tunnel"], "idle_timeout");
    wait_until(|| b.open() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_tunnels_with_1001_after_the_grace() {
    let b = ws_backend("plain").await;
    let yaml = format!(
        "runtime: {{ shutdown_grace: 1s }}\n{}",
        ws_config("", b.addr())
    );
    let mut proxy = spawn_proxy(&yaml);
    let mut ws = ws_connect(proxy.listeners["public"], "/long")
        .await
        .unwrap();
    echo(&mut ws, Message::text("before")).await;
    proxy.signal("TERM");
    // Within the grace the tunnel still works.
    echo(&mut ws, Message::text("during the grace")).await;
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("closed after the grace");
    match got {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Away),
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
    let status = proxy.wait_exit(Duration::from_secs(10)).expect("exited");
    assert!(status.success(), "{status:?}");
    // The backend was told too.
    wait_until(|| b.open() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_over_a_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::make_pki(dir.path(), &["api.test"]);
    let b = ws_backend("plain").await;
    let yaml = format!(
        "listeners:\n  - name: tls\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n\
         \x20       - {{ cert: api.test.pem, key: api.test.key }}\n\
         routes: [{{ name: all, pool: p }}]\npools:\n  p: {{ backends: [{{ address: {} }}] }}\n",
        b.addr()
    );
    let proxy = spawn_proxy_in(dir, &yaml);
    let tcp = TcpStream::connect(proxy.listeners["tls"]).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let tls = common::pki::connector(&pki.ca, &[b"http/1.1"])
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://api.test/tls", tls)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(b.last_header("x-forwarded-proto").as_deref(), Some("https"));
    echo(&mut ws, Message::text("over tls")).await;
    echo(&mut ws, Message::binary(vec![3u8; 100_000])).await;
    ws.close(None).await.unwrap();
    wait_until(|| b.open() == 0).await;

    // RFC 8441 over TLS, where ALPN chose h2.
    let tcp = TcpStream::connect(proxy.listeners["tls"]).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let tls = common::pki::connector(&pki.ca, &[b"h2"])
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (_, mut ws) = ws_over_h2(tls, "https://api.test", "/tls-h2").await;
    echo(&mut ws, Message::text("over tls and h2")).await;
    close_h2(&mut ws).await;
    wait_until(|| b.open() == 0).await;
}
