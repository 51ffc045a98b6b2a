//! TLS termination with a generated CA: SNI picks between two certificates, ALPN negotiates
//! h2 or http/1.1, and the backend learns the client used https.

mod common;

use bytes::Bytes;
use common::pki::{connector, make_pki};
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_picks_the_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), &["api.test", "sandbox.test"]);
    let echo = echo_backend("tls-backend").await;
    let yaml = format!(
        "listeners:\n  - name: tls\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n\
         \x20       - {{ cert: api.test.pem, key: api.test.key }}\n\
         \x20       - {{ cert: sandbox.test.pem, key: sandbox.test.key }}\n\
         routes: [{{ name: all, pool: p }}]\npools:\n  p: {{ backends: [{{ address: {} }}] }}\n",
        echo.addr
    );
    let proxy = spawn_proxy_in(dir, &yaml);
    let addr = proxy.listeners["tls"];

    for (sni, leaf) in [
        ("api.test", &pki.leaves[0]),
        ("sandbox.test", &pki.leaves[1]),
    ] {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = connector(&pki.ca, &[alpn])
                .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
                .await
                .expect("handshake verified against the CA");
            let (_, session) = tls.get_ref();
            assert_eq!(session.peer_certificates().unwrap()[0], *leaf, "SNI {sni}");
            assert_eq!(session.alpn_protocol(), Some(alpn));

            let req = Request::get(format!("https://{sni}/secure"))
                .header("host", sni)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = if alpn == b"h2" {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                send.send_request(req).await.unwrap()
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                send.send_request(req).await.unwrap()
            };
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(j["headers"]["x-forwarded-proto"][0], "https");
            assert_eq!(j["headers"]["x-forwarded-host"][0], sni);
        }
    }

    // An unknown name gets the first (default) certificate, which the client then rejects.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let err = connector(&pki.ca, &[b"http/1.1"])
        .connect(ServerName::try_from("other.test").unwrap(), tcp)
        .await;
    assert!(
        err.is_err(),
        "certificate for api.test must not validate for other.test"
    );
}

#[test]
fn missing_tls_files_are_reported_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - name: tls\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n        - { cert: nope.pem, key: nope.key }\nroutes: []\n",
    )
    .unwrap();
    let out = std::process::Command::new(sandgate_bin())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 6: listeners[0].tls.certificates[0].cert: cannot read"),
        "{err}"
    );
    assert!(
        err.contains("line 6: listeners[0].tls.certificates[0].key: cannot read"),
        "{err}"
    );
}

#[tokio::test]
async fn alpn_h2_is_served_as_http2_only_and_a_bad_preface_gets_goaway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), &["api.test"]);
    let b = named_backend("x").await;
    let yaml = format!(
        "listeners:\n  - name: tls\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n\
         \x20       - {{ cert: api.test.pem, key: api.test.key }}\n\
         routes: [{{ name: all, pool: p }}]\npools:\n  p: {{ backends: [{{ address: {} }}] }}\n",
        b.addr
    );
    let proxy = spawn_proxy_in(dir, &yaml);
    let tcp = tokio::net::TcpStream::connect(proxy.listeners["tls"])
        .await
        .unwrap();
    let mut tls = connector(&pki.ca, &[b"h2"])
        .connect(ServerName::try_from("api.test").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // HTTP/1.1 on a connection that chose h2: not answered as HTTP/1.1.
    tls.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    assert!(
        !out.starts_with(b"HTTP/1.1"),
        "answered as HTTP/1.1: {:?}",
        String::from_utf8_lossy(&out)
    );
    // The server speaks HTTP/2 frames: its SETTINGS, then GOAWAY (type 7) with PROTOCOL_ERROR.
    let mut frames = Vec::new();
    let mut rest = &out[..];
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        frames.push((
            rest[3],
            rest.get(9..9 + len).map(<[u8]>::to_vec).unwrap_or_default(),
        ));
        rest = rest.get(9 + len..).unwrap_or_default();
    }
    let goaway = frames
        .iter()
        .find(|(t, _)| *t == 7)
        .unwrap_or_else(|| panic!("a GOAWAY frame: {out:?}"));
    assert_eq!(&goaway.1[4..8], &[0, 0, 0, 1], "PROTOCOL_ERROR");
    assert_eq!(b.hits(), 0);
}
