//! HTTP/2 on the wire, below what an HTTP/2 client library shows: how sandgate's answers
//! are HPACK-encoded (RFC 7541).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use httlib_hpack::Decoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A literal field without indexing (RFC 7541 section 6.2.2), name and value raw. The
/// strings here are all shorter than 127 bytes.
fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    for s in [name, value] {
        block.push(u8::try_from(s.len()).unwrap());
        block.extend_from_slice(s);
    }
}

/// A GET for `/` on `stream`, with `x-request-id: id` when given.
fn get(stream: u32, id: Option<&str>) -> Vec<u8> {
    // :method GET, :scheme http, :path / from the static table (Appendix A).
    let mut block = vec![0x82, 0x86, 0x84];
    literal(&mut block, b":authority", b"wire.example");
    if let Some(id) = id {
        literal(&mut block, b"x-request-id", id.as_bytes());
    }
    frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
}

/// Reads frames until each of `streams` has had its response header block, and returns
/// the decoded fields of each, with their HPACK flags, decoding blocks in the order they
/// came (they share one dynamic table).
async fn response_headers(
    s: &mut TcpStream,
    streams: &[u32],
) -> HashMap<u32, Vec<(String, String, u8)>> {
    let mut decoder = Decoder::default();
    let mut out = HashMap::new();
    let mut pending: HashMap<u32, Vec<u8>> = HashMap::new();
    while streams.iter().any(|id| !out.contains_key(id)) {
        let mut head = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
            .await
            .expect("a frame within 5 s")
            .expect("the connection stays open");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        match kind {
            SETTINGS if flags & ACK == 0 => {
                s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap()
            }
            HEADERS | CONTINUATION => {
                assert_eq!(flags & 0x28, 0, "no padding or priority in the answer");
                let block = pending.entry(stream).or_default();
                block.extend_from_slice(&payload);
                if flags & END_HEADERS != 0 {
                    let mut buf = pending.remove(&stream).unwrap_or_default();
                    let mut fields = Vec::new();
                    decoder
                        .decode(&mut buf, &mut fields)
                        .expect("a valid HPACK block");
                    let fields = fields
                        .into_iter()
                        .map(|(n, v, f)| {
                            (
                                String::from_utf8(n).unwrap(),
                                String::from_utf8(v).unwrap(),
                                f,
                            )
                        })
                        .collect();
                    out.insert(stream, fields);
                }
            }
            _ => {}
        }
    }
    out
}

/// The fields of `fields` sent as never-indexed literals (RFC 7541 section 6.2.3).
fn never_indexed(fields: &[(String, String, u8)]) -> Vec<(&str, &str)> {
    fields
        .iter()
        .filter(|(_, _, f)| f & Decoder::NEVER_INDEXED != 0)
        .map(|(n, v, _)| (n.as_str(), v.as_str()))
        .collect()
}

#[tokio::test]
async fn request_ids_are_never_indexed_in_hpack() {
    let b = echo_backend("e").await;
    let proxy = spawn_proxy(&basic_config(&format!(
        "    backends: [{{ address: {} }}]\n",
        b.addr
    )));
    let mut s = TcpStream::connect(proxy.listeners["public"]).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    hello.extend(get(1, Some("client-chosen-id-1")));
    hello.extend(get(3, None));
    hello.extend(get(5, Some("client-chosen-id-1")));
    s.write_all(&hello).await.unwrap();
    let answers = response_headers(&mut s, &[1, 3, 5]).await;

    for (stream, fields) in &answers {
        let status = fields.iter().find(|(n, ..)| n == ":status");
        assert_eq!(status.map(|f| f.1.as_str()), Some("200"), "stream {stream}");
        let sensitive = never_indexed(fields);
        assert_eq!(sensitive.len(), 1, "stream {stream}: {fields:?}");
        assert_eq!(sensitive[0].0, "x-request-id", "stream {stream}");
    }
    let id = |stream: u32| never_indexed(&answers[&stream])[0].1.to_owned();
    assert_eq!(id(1), "client-chosen-id-1", "the client's id is kept");
    assert_eq!(
        id(5),
        "client-chosen-id-1",
        "the same id again, still not from the table"
    );
    let fresh = id(3);
    assert!(
        fresh.len() == 32 && fresh.bytes().all(|c| c.is_ascii_hexdigit()),
        "a fresh id: {fresh}"
    );
}
