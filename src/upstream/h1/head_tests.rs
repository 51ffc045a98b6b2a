use super::*;

fn parse(wire: &str, method: Method) -> Result<Parsed, HeadError> {
    parse_response(&mut BytesMut::from(wire), &method)
}

fn final_head(wire: &str, method: Method) -> Response {
    match parse(wire, method) {
        Ok(Parsed::Final(r)) => *r,
        other => panic!("{wire:?}: {other:?}"),
    }
}

#[test]
fn framing_follows_rfc_9112_section_6_3() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::GET,
            In::Length(5),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            Method::GET,
            In::Length(5),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            Method::HEAD,
            In::Empty,
        ),
        ("HTTP/1.1 204 No Content\r\n\r\n", Method::GET, In::Empty),
        (
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            Method::GET,
            In::Empty,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            Method::GET,
            In::Chunked,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            Method::GET,
            In::Chunked,
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            Method::GET,
            In::Close,
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", Method::GET, In::Close),
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            Method::GET,
            In::Upgrade,
        ),
    ];
    for (wire, method, want) in cases {
        assert_eq!(final_head(wire, method).framing, want, "{wire:?}");
    }
}

#[test]
fn a_coding_that_is_not_ascii_is_not_chunked() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: \xffzip\r\n\r\n"[..],
    );
    match parse_response(&mut buf, &Method::GET) {
        Ok(Parsed::Final(r)) => assert_eq!(r.framing, In::Close),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ambiguous_framing_is_an_error() {
    for wire in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: x\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0x5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        assert!(
            matches!(parse(wire, Method::GET), Err(HeadError::Framing(_))),
            "{wire:?}"
        );
    }
    for wire in [
        "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
    ] {
        assert!(
            matches!(parse(wire, Method::GET), Err(HeadError::Malformed(_))),
            "{wire:?}"
        );
    }
}

#[test]
fn keep_alive_follows_version_and_connection() {
    let ka = |wire: &str| final_head(wire, Method::GET).keep_alive;
    assert!(ka("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(!ka(
        "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!ka(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(!ka("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
    assert!(ka(
        "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    ));
    assert!(
        !ka("HTTP/1.1 200 OK\r\n\r\n"),
        "a close-delimited body ends the connection"
    );
    assert!(!ka("HTTP/1.1 101 Switching Protocols\r\n\r\n"));
}

#[test]
fn a_head_is_taken_off_the_buffer_with_its_fields() {
    let mut buf = BytesMut::from(
        "HTTP/1.1 404 Gone Fishing\r\nX-A: 1\r\nx-a: 2\r\nServer:  nginx \r\nContent-Length: 3\r\n\r\nabcHTTP",
    );
    let Ok(Parsed::Final(r)) = parse_response(&mut buf, &Method::GET) else {
        panic!("not parsed");
    };
    assert_eq!(&buf[..], b"abcHTTP", "the body and what follows stay");
    assert_eq!(r.head.status, StatusCode::NOT_FOUND);
    assert_eq!(r.head.version, Version::HTTP_11);
    let a: Vec<_> = r.head.headers.get_all("x-a").iter().collect();
    assert_eq!(a, ["1", "2"]);
    assert_eq!(r.head.headers["server"], "nginx");
    let reason = r.head.extensions.get::<hyper::ext::ReasonPhrase>();
    assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Gone Fishing"[..]));
    let canonical = final_head(
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        Method::GET,
    );
    assert!(canonical
        .head
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .is_none());
}

#[test]
fn hop_by_hop_fields_stay_on_the_connection() {
    let r = final_head(
        "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Trace\r\nKeep-Alive: timeout=5\r\nX-Trace: 1\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n",
        Method::GET,
    );
    let mut names: Vec<_> = r.head.headers.keys().map(|n| n.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-length", "x-kept"]);
    assert!(r.keep_alive);
    let up = final_head(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        Method::GET,
    );
    assert_eq!(
        up.head.headers["upgrade"], "websocket",
        "a 101 keeps them to be checked"
    );
}

#[test]
fn interim_and_partial_heads() {
    let wire = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
    let mut buf = BytesMut::from(wire);
    match parse_response(&mut buf, &Method::POST) {
        Ok(Parsed::Interim(n)) => assert_eq!(n, 25),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        buf.len(),
        wire.len(),
        "an interim head is left for the caller to skip"
    );
    assert!(matches!(
        parse("HTTP/1.1 200 OK\r\nContent-Len", Method::GET),
        Ok(Parsed::Partial)
    ));
    let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD));
    assert_eq!(parse(&huge, Method::GET).err(), Some(HeadError::TooLarge));
    let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
    assert_eq!(parse(&many, Method::GET).err(), Some(HeadError::TooLarge));
}

#[test]
fn request_framing_and_head() {
    let (mut head, ()) = http::Request::post("/up?x=1")
        .header("host", "sandbox")
        .header("transfer-encoding", "chunked")
        .body(())
        .expect("request")
        .into_parts();
    assert_eq!(request_framing(&mut head, false, None), Out::Chunked);
    assert_eq!(head.headers["transfer-encoding"], "chunked");
    let mut wire = Vec::new();
    let hop = Hop::new(
        &mut HeaderMap::new(),
        std::net::Ipv4Addr::LOCALHOST.into(),
        false,
        None,
        None,
        &HeaderValue::from_static("id1"),
        None,
    );
    encode_request(&head, Some(&hop), &mut wire);
    assert_eq!(
        String::from_utf8(wire).expect("ascii"),
        "POST /up?x=1 HTTP/1.1\r\nhost: sandbox\r\ntransfer-encoding: chunked\r\n\
         x-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: http\r\nvia: 1.1 sandgate\r\n\
         x-request-id: id1\r\n\r\n",
        "the hop's fields come after the request's own"
    );
    // A head whose map holds the hop's fields already (it went to an HTTP/2 connection
    // first) goes as it is.
    let mut as_is = Vec::new();
    encode_request(&head, None, &mut as_is);
    assert_eq!(
        String::from_utf8(as_is).expect("ascii"),
        "POST /up?x=1 HTTP/1.1\r\nhost: sandbox\r\ntransfer-encoding: chunked\r\n\r\n"
    );

    let (mut sized, ()) = http::Request::put("/")
        .body(())
        .expect("request")
        .into_parts();
    assert_eq!(request_framing(&mut sized, false, Some(7)), Out::Length(7));
    assert_eq!(sized.headers["content-length"], "7");

    let (mut declared, ()) = http::Request::put("/")
        .header("content-length", "9")
        .body(())
        .expect("request")
        .into_parts();
    assert_eq!(request_framing(&mut declared, false, None), Out::Length(9));

    let (mut get, ()) = http::Request::get("/")
        .body(())
        .expect("request")
        .into_parts();
    assert_eq!(request_framing(&mut get, true, Some(0)), Out::Empty);
    assert!(get.headers.is_empty());
}

#[test]
fn a_request_given_back_in_http2_form_gets_its_host_again() {
    let mut req = http::Request::get("https://sandbox.example:8443/a?b=c")
        .version(Version::HTTP_2)
        .body(())
        .expect("request");
    h1_form(&mut req);
    assert_eq!(req.version(), Version::HTTP_11);
    assert_eq!(req.headers()["host"], "sandbox.example:8443");
    let (head, ()) = req.into_parts();
    let mut wire = Vec::new();
    encode_request(&head, None, &mut wire);
    assert!(wire.starts_with(b"GET /a?b=c HTTP/1.1\r\nhost: sandbox.example:8443\r\n"));
}
