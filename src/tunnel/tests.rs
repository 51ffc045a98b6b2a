//! Tunnel timers on tokio's paused clock, over in-memory pipes.

use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::*;

fn counters() -> RouteTunnels {
    RouteTunnels::new("test")
}

/// A tunnel between two pipes; returns the far ends (client side, backend side).
fn start(
    idle: Duration,
    websocket: bool,
    closing: &CancellationToken,
) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Done>) {
    let (client, client_far) = duplex(64 * 1024);
    let (backend, backend_far) = duplex(64 * 1024);
    let spec = Spec {
        idle,
        websocket,
        closing: closing.clone(),
    };
    let task = tokio::spawn(async move { run(client, backend, spec, &counters()).await });
    (client_far, backend_far, task)
}

#[tokio::test(start_paused = true)]
async fn activity_keeps_a_tunnel_open_and_silence_closes_it() {
    let closing = CancellationToken::new();
    let (mut c, mut b, task) = start(Duration::from_secs(10), false, &closing);
    let mut buf = [0u8; 5];
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        c.write_all(b"hello").await.unwrap();
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
    assert!(
        !task.is_finished(),
        "40 s of traffic, never 10 s of silence"
    );
    let done = task.await.unwrap();
    assert_eq!(done.end, End::Idle);
    assert_eq!((done.up, done.down), (25, 0));
}

#[tokio::test(start_paused = true)]
async fn a_half_closed_tunnel_gets_30_seconds() {
    let closing = CancellationToken::new();
    let (mut c, mut b, task) = start(Duration::from_secs(3600), false, &closing);
    c.shutdown().await.unwrap();
    // The backend sees the end, and may still answer for a while.
    let mut rest = Vec::new();
    b.read_to_end(&mut rest).await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    b.write_all(b"late answer").await.unwrap();
    let mut got = [0u8; 11];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"late answer");
    let started = tokio::time::Instant::now();
    let done = task.await.unwrap();
    assert_eq!(done.end, End::HalfClose);
    assert!(started.elapsed() <= Duration::from_secs(11));
}

#[tokio::test(start_paused = true)]
async fn shutdown_adds_close_frames_between_frames_only() {
    let closing = CancellationToken::new();
    let (mut c, mut b, task) = start(Duration::from_secs(3600), true, &closing);
    // A whole masked frame up, and half a frame down.
    let up_frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    c.write_all(&up_frame).await.unwrap();
    let mut got = [0u8; 8];
    b.read_exact(&mut got).await.unwrap();
    b.write_all(&[0x81, 0x05, b'h', b'e']).await.unwrap();
    let mut part = [0u8; 4];
    c.read_exact(&mut part).await.unwrap();
    closing.cancel();
    let done = task.await.unwrap();
    assert_eq!(done.end, End::Shutdown);
    // The backend got a masked close 1001 after the whole frame; the client, mid-frame,
    // got no frame: its connection just ends.
    let mut to_backend = Vec::new();
    b.read_to_end(&mut to_backend).await.unwrap();
    assert_eq!(to_backend.len(), 8);
    assert_eq!(&to_backend[..2], &[0x88, 0x82]);
    let key = &to_backend[2..6];
    assert_eq!(
        [to_backend[6] ^ key[0], to_backend[7] ^ key[1]],
        [0x03, 0xE9]
    );
    let mut to_client = Vec::new();
    c.read_to_end(&mut to_client).await.unwrap();
    assert!(to_client.is_empty(), "{to_client:?}");
}

#[tokio::test(start_paused = true)]
async fn a_close_frame_then_a_closed_side_ends_the_tunnel_at_once() {
    let closing = CancellationToken::new();
    let (mut c, mut b, task) = start(Duration::from_secs(3600), true, &closing);
    c.write_all(&[0x88, 0x80, 9, 9, 9, 9]).await.unwrap();
    let mut got = [0u8; 6];
    b.read_exact(&mut got).await.unwrap();
    drop(b);
    let done = tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("ends without waiting for the half-close time")
        .unwrap();
    assert_eq!(done.end, End::Closed);
}
