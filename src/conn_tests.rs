//! Unit tests of [`crate::conn`].

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn timers() -> Timers {
    Timers {
        header_read: Duration::from_secs(10),
        keepalive: Duration::from_secs(60),
        send: Duration::from_secs(30),
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_head_gets_408_and_the_connection_ends() {
    let (client, server) = tokio::io::duplex(1024);
    let state = ConnState::new();
    let mut io = TimedIo::new(server, Arc::clone(&state), timers(), false);
    let (mut c_read, mut c_write) = tokio::io::split(client);
    c_write.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let mut buf = [0u8; 64];
    let n = io.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\nHo");
    // Nothing more comes: 10 s later the read ends and the client got a 408.
    let start = Instant::now();
    assert_eq!(io.read(&mut buf).await.unwrap(), 0);
    assert!(start.elapsed() >= Duration::from_secs(9));
    let mut answer = Vec::new();
    c_read.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    assert!(text.contains("Connection: close"));
}

#[tokio::test(start_paused = true)]
async fn no_head_timer_while_a_request_is_in_flight_or_on_http2() {
    let (_client, server) = tokio::io::duplex(1024);
    let state = ConnState::new();
    let mut io = TimedIo::new(server, Arc::clone(&state), timers(), false);
    let _req = state.request();
    let mut buf = [0u8; 8];
    let waited = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
    assert!(
        waited.is_err(),
        "still waiting: the body timer is not the head timer"
    );

    let (mut client, server) = tokio::io::duplex(1024);
    let mut io = TimedIo::new(server, ConnState::new(), timers(), true);
    client.write_all(H2_PREFACE).await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(io.read(&mut buf).await.unwrap(), H2_PREFACE.len());
    let waited = tokio::time::timeout(Duration::from_secs(60), io.read(&mut buf)).await;
    assert!(waited.is_err(), "HTTP/2 has no head timer");
}

#[tokio::test]
async fn a_bad_http2_preface_gets_goaway() {
    let (client, server) = tokio::io::duplex(1024);
    let mut io = TimedIo::new(server, ConnState::new(), timers(), true).alpn_h2();
    let (mut c_read, mut c_write) = tokio::io::split(client);
    c_write.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(io.read(&mut buf).await.unwrap(), 16, "a good start passes");
    c_write.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert_eq!(
        io.read(&mut buf).await.unwrap(),
        0,
        "then the connection ends"
    );
    drop(io);
    let mut out = Vec::new();
    c_read.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, GOAWAY_PROTOCOL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_reads_nothing_is_cut_after_send_timeout() {
    let (_client, server) = tokio::io::duplex(16);
    let mut io = TimedIo::new(server, ConnState::new(), timers(), false);
    let start = Instant::now();
    let big = vec![b'x'; 1024];
    let err = io.write_all(&big).await.expect_err("cut");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(start.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn idle_time_counts_from_the_last_response() {
    let state = ConnState::new();
    assert!(state.idle_since().is_some(), "idle from accept");
    let req = state.request();
    assert!(state.idle_since().is_none());
    tokio::time::advance(Duration::from_secs(5)).await;
    drop(req);
    let since = state.idle_since().expect("idle again");
    assert!(since >= state.born + Duration::from_secs(5));
}

/// Sets `io`'s wait timer `deadline_in` on: the client writes a byte after 1 s, the wait
/// ends then (readable), and the byte is read. Gives the client back.
async fn readable_before(
    io: &mut TimedIo<tokio::net::TcpStream>,
    mut client: tokio::net::TcpStream,
    deadline_in: Duration,
) -> tokio::net::TcpStream {
    let token = CancellationToken::new();
    let poke = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        client.write_all(b"x").await.unwrap();
        client
    });
    let deadline = Instant::now() + deadline_in;
    assert!(
        io.wait_readable(deadline, &mut ShutdownWatch::new(&token))
            .await
    );
    let client = poke.await.unwrap();
    // Larger than what comes: a short read clears the readiness.
    let mut byte = [0u8; 16];
    assert_eq!(io.get_mut().read(&mut byte).await.unwrap(), 1);
    client
}

#[tokio::test(start_paused = true)]
async fn a_wait_ends_at_its_own_deadline_whatever_the_timer_held() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let mut io = TimedIo::new(server, ConnState::new(), timers(), false);
    let token = CancellationToken::new();
    let mut watch = ShutdownWatch::new(&token);
    let ends_at = |deadline: Instant| {
        let now = Instant::now();
        now >= deadline && now < deadline + Duration::from_millis(100)
    };
    // The timer set 10 s on, and the wait over after 1 s.
    let client = readable_before(&mut io, client, Duration::from_secs(10)).await;
    // A later deadline leaves the timer where it was: it fires first, and the wait goes on
    // to its own deadline.
    let later = Instant::now() + Duration::from_secs(20);
    assert!(!io.wait_readable(later, &mut watch).await);
    assert!(
        ends_at(later),
        "a wait ended before or long after its deadline"
    );
    // The timer set 60 s on, then a wait with an earlier deadline: it moves the timer.
    let _client = readable_before(&mut io, client, Duration::from_secs(60)).await;
    let near = Instant::now() + Duration::from_secs(2);
    assert!(!io.wait_readable(near, &mut watch).await);
    assert!(ends_at(near), "a wait outlived its deadline");
}
