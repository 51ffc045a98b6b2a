use bytes::{Bytes, BytesMut};
use http::{Method, Response};
use http_body_util::{Full, StreamBody};

use super::request::{parse, Head};
use super::response::{encode_head, send_body, Framing};

fn simple(raw: &[u8]) -> (http::request::Parts, bool, BytesMut) {
    let mut buf = BytesMut::from(raw);
    match parse(&mut buf) {
        Head::Simple { parts, close } => (*parts, close, buf),
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
    }
}

fn hyper_s(raw: &[u8]) {
    let mut buf = BytesMut::from(raw);
    match parse(&mut buf) {
        Head::Hyper => assert_eq!(&buf[..], raw, "hyper gets every byte"),
        other => panic!("{other:?} for {:?}", String::from_utf8_lossy(raw)),
    }
}

#[test]
fn a_bodiless_request_is_the_lanes_and_leaves_the_rest_in_the_buffer() {
    let (parts, close, rest) =
        simple(b"GET /a/b?c=d HTTP/1.1\r\nHost: sandbox\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next");
    assert_eq!(parts.method, Method::GET);
    assert_eq!(parts.uri, "/a/b?c=d");
    assert_eq!(parts.version, http::Version::HTTP_11);
    assert_eq!(parts.headers["host"], "sandbox");
    let two: Vec<_> = parts.headers.get_all("x-two").iter().collect();
    assert_eq!(two, ["1", "2"]);
    assert!(!close);
    assert_eq!(&rest[..], b"GET /next");
}

#[test]
fn connection_close_is_noticed_in_any_case_and_list() {
    let (_, close, _) = simple(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, CLOSE\r\n\r\n");
    assert!(close);
}

#[test]
fn an_unfinished_head_is_partial_and_stays_whole() {
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n"[..]);
    assert!(matches!(parse(&mut buf), Head::Partial));
    assert_eq!(buf.len(), 25);
}

#[test]
fn bodies_upgrades_expectations_old_versions_and_other_forms_go_to_hyper() {
    hyper_s(b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi");
    hyper_s(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n");
    hyper_s(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    hyper_s(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n");
    hyper_s(b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n");
    hyper_s(b"GET / HTTP/1.0\r\n\r\n");
    hyper_s(b"GET http://a/ HTTP/1.1\r\n\r\n");
    hyper_s(b"OPTIONS * HTTP/1.1\r\n\r\n");
    hyper_s(b"CONNECT a:443 HTTP/1.1\r\n\r\n");
}

#[test]
fn what_is_not_valid_goes_to_hyper_untouched() {
    hyper_s(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n");
    hyper_s(b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n");
    hyper_s(b"GET /\x01 HTTP/1.1\r\n\r\n");
    hyper_s(b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n");
    hyper_s(b"G\xffT / HTTP/1.1\r\n\r\n");
    // The target parses for httparse but not as a URI: hyper answers it.
    hyper_s(b"GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n");
}

fn head_of(resp: Response<()>, hint: Option<u64>, head_req: bool, close: bool) -> String {
    let (parts, ()) = resp.into_parts();
    let mut out = Vec::new();
    encode_head(&parts, hint, head_req, close, &mut out);
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn the_head_says_status_fields_date_and_the_framing_hyper_would() {
    let resp = Response::builder()
        .header("x-a", "1")
        .body(())
        .expect("response");
    let h = head_of(resp, Some(5), false, false);
    assert!(h.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "), "{h}");
    assert!(h.ends_with(" GMT\r\ncontent-length: 5\r\n\r\n"), "{h}");

    let own = Response::builder()
        .status(404)
        .header("content-length", "7")
        .header("date", "Mon, 07 Dec 2026 00:00:00 GMT")
        .body(())
        .expect("response");
    assert_eq!(
        head_of(own, None, false, true),
        "HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\ndate: Mon, 07 Dec 2026 00:00:00 GMT\r\nconnection: close\r\n\r\n"
    );

    let streamed = Response::builder().body(()).expect("response");
    assert!(head_of(streamed, None, false, false).ends_with("transfer-encoding: chunked\r\n\r\n"));

    for (status, head_req) in [(204, false), (304, false), (200, true)] {
        let r = Response::builder()
            .status(status)
            .body(())
            .expect("response");
        let h = head_of(r, Some(3), head_req, false);
        assert!(
            !h.contains("content-length") && !h.contains("transfer-encoding"),
            "{h}"
        );
    }
}

#[test]
fn a_length_that_is_not_a_number_gives_way_to_the_bodys_own() {
    let bad = Response::builder()
        .header("content-length", "x1")
        .body(())
        .expect("response");
    let h = head_of(bad, Some(4), false, false);
    assert!(
        h.contains("\r\ncontent-length: 4\r\n") && !h.contains("x1"),
        "{h}"
    );
    let twice = Response::builder()
        .header("content-length", "3")
        .header("content-length", "3")
        .body(())
        .expect("response");
    let h = head_of(twice, Some(3), false, false);
    assert_eq!(h.matches("content-length: 3\r\n").count(), 2, "{h}");
}

#[test]
fn a_reason_the_backend_gave_is_kept() {
    let mut r = Response::builder().status(599).body(()).expect("response");
    r.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b"Sandbox Busy"));
    assert!(head_of(r, Some(0), false, false).starts_with("HTTP/1.1 599 Sandbox Busy\r\n"));
    let bare = Response::builder().status(599).body(()).expect("response");
    assert!(head_of(bare, Some(0), false, false).starts_with("HTTP/1.1 599 <none>\r\n"));
}

/// Takes what is written; its client never goes away.
struct Sink(Vec<u8>);

impl tokio::io::AsyncWrite for Sink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl super::Wire for Sink {
    fn poll_gone(
        &mut self,
        _: &mut BytesMut,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::task::Poll::Pending
    }
}

async fn written<B>(mut body: B, f: Framing) -> std::io::Result<Vec<u8>>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut wire = Sink(Vec::new());
    let mut out = b"HEAD\r\n".to_vec();
    send_body(&mut wire, &mut BytesMut::new(), &mut body, f, &mut out).await?;
    Ok(wire.0)
}

fn chunks(parts: Vec<&'static [u8]>) -> impl http_body::Body<Data = Bytes, Error = String> + Unpin {
    let frames = parts
        .into_iter()
        .map(|p| Ok::<_, String>(http_body::Frame::data(Bytes::from_static(p))));
    StreamBody::new(tokio_stream::iter(frames))
}

#[tokio::test]
async fn bodies_go_out_framed_behind_the_head() {
    let small = written(Full::new(Bytes::from_static(b"hello")), Framing::Length(5)).await;
    assert_eq!(small.expect("written"), b"HEAD\r\nhello");

    let big = vec![b'x'; 10_000];
    let w = written(Full::new(Bytes::from(big.clone())), Framing::Length(10_000)).await;
    assert_eq!(w.expect("written"), [b"HEAD\r\n".to_vec(), big].concat());

    let w = written(chunks(vec![b"ab", b"", b"cde"]), Framing::Chunked).await;
    assert_eq!(
        w.expect("written"),
        b"HEAD\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"
    );

    let w = written(Full::new(Bytes::from_static(b"dropped")), Framing::None).await;
    assert_eq!(w.expect("written"), b"HEAD\r\n");
}

#[tokio::test]
async fn a_body_that_breaks_its_length_is_an_error() {
    let long = written(
        Full::new(Bytes::from_static(b"toolong")),
        Framing::Length(3),
    )
    .await;
    assert!(long.is_err());
    let short = written(Full::new(Bytes::from_static(b"ab")), Framing::Length(3)).await;
    assert_eq!(
        short.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::UnexpectedEof)
    );
    let broken = written(
        StreamBody::new(tokio_stream::iter(vec![Err::<http_body::Frame<Bytes>, _>(
            "backend reset".to_string(),
        )])),
        Framing::Chunked,
    )
    .await;
    assert!(broken.is_err());
}
