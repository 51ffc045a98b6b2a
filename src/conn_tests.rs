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

/// Writes a byte on `client` after `after`, and gives the client back.
fn poke(
    mut client: tokio::net::TcpStream,
    after: Duration,
) -> tokio::task::JoinHandle<tokio::net::TcpStream> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        client.write_all(b"x").await.unwrap();
        client
    })
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
    // Larger than what comes: a short read clears the readiness.
    let mut byte = [0u8; 16];
    let ends_at = |deadline: Instant| {
        let now = Instant::now();
        now >= deadline && now < deadline + Duration::from_millis(100)
    };
    // Readable after 1 s, well before the deadline: the timer stays set for 10 s on.
    let poked = poke(client, Duration::from_secs(1));
    assert!(
        io.wait_readable(Instant::now() + Duration::from_secs(10), &mut watch)
            .await
    );
    let client = poked.await.unwrap();
    assert_eq!(io.get_mut().read(&mut byte).await.unwrap(), 1);
    // A later deadline leaves the timer where it was: it fires first, and the wait goes on
    // to its own deadline.
    let later = Instant::now() + Duration::from_secs(20);
    assert!(!io.wait_readable(later, &mut watch).await);
    assert!(
        ends_at(later),
        "a wait ended before or long after its deadline"
    );
    // Timer set 60 s on, and the socket readable after 1 s again.
    let poked = poke(client, Duration::from_secs(1));
    assert!(
        io.wait_readable(Instant::now() + Duration::from_secs(60), &mut watch)
            .await
    );
    let _client = poked.await.unwrap();
    assert_eq!(io.get_mut().read(&mut byte).await.unwrap(), 1);
    // An earlier deadline than the timer holds moves it.
    let near = Instant::now() + Duration::from_secs(2);
    assert!(!io.wait_readable(near, &mut watch).await);
    assert!(ends_at(near), "a wait outlived its deadline");
}
