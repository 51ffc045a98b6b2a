//! The WebSocket benchmark's roles, lean so that they are not what is measured: an echo
//! backend and a paced client, both speaking the handshake and the framing (RFC 6455)
//! directly over TCP, one read and one write per message or batch of messages.

use std::io::{BufRead, Write};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::current_thread;
use super::load::{env_u64, gather, percentile};

/// The message every client sends: 32 bytes of text.
const PAYLOAD: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// Reads an HTTP head (to its empty line) into `buf`; its length, or None.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Echoes every WebSocket message on 127.0.0.1:0 (unmasked, as a server sends); prints the
/// port.
pub fn echo() {
    current_thread().block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", l.local_addr().expect("addr").port());
        std::io::stdout().flush().ok();
        loop {
            let Ok((s, _)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            s.set_nodelay(true).ok();
            tokio::spawn(serve(s));
        }
    });
}

async fn serve(mut s: TcpStream) -> Option<()> {
    let mut buf = Vec::new();
    let end = read_head(&mut s, &mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    })?;
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    );
    s.write_all(answer.as_bytes()).await.ok()?;
    buf.drain(..end);
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Echo every complete frame in what has arrived, in one write.
        let mut at = 0;
        while let Some((opcode, start, len)) = frame_at(&buf[at..]) {
            let (mask, payload) = buf[at + start - 4..at + start + len].split_at(4);
            if opcode == 0x8 {
                return None;
            }
            out.push(0x80 | opcode);
            match len {
                n if n < 126 => out.push(n as u8),
                n if n <= 0xffff => {
                    out.push(126);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    out.push(127);
                    out.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
            at += start + len;
        }
        buf.drain(..at);
        if !out.is_empty() {
            s.write_all(&out).await.ok()?;
            out.clear();
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A complete masked frame at the start of `b`: its opcode, where its payload starts, and its
/// length.
fn frame_at(b: &[u8]) -> Option<(u8, usize, usize)> {
    let (b0, b1) = (*b.first()?, *b.get(1)?);
    let (len, head) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let start = head + 4;
    (b.len() >= start + len).then_some((b0 & 0x0f, start, len))
}

/// Opens SANDGATE_WS_CONNS connections to SANDGATE_WS_TARGET (at most 200 handshakes at a
/// time), prints `established N failed`, waits for a line on stdin, then has every connection
/// echo a 32-byte message at its share of SANDGATE_WS_RATE messages per second, for
/// SANDGATE_WS_SECS; prints `messages p50_us p99_us errors`.
pub fn client() {
    let target = std::env::var("SANDGATE_WS_TARGET").expect("target");
    let conns = env_u64("SANDGATE_WS_CONNS", 5000).max(1);
    let rate = env_u64("SANDGATE_WS_RATE", 50_000).max(1);
    let secs = env_u64("SANDGATE_WS_SECS", 5);
    current_thread().block_on(async move {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(200));
        let opening: Vec<_> = (0..conns)
            .map(|_| {
                let (target, gate) = (target.clone(), std::sync::Arc::clone(&gate));
                tokio::spawn(async move {
                    let _permit = gate.acquire().await.ok()?;
                    let open = open(&target);
                    tokio::time::timeout(Duration::from_secs(10), open)
                        .await
                        .ok()?
                })
            })
            .collect();
        let mut sockets = Vec::new();
        let mut failed = 0u64;
        for o in opening {
            match o.await.ok().flatten() {
                Some(s) => sockets.push(s),
                None => failed += 1,
            }
        }
        println!("established {} {failed}", sockets.len());
        std::io::stdout().flush().ok();
        let mut go = String::new();
        std::io::stdin().lock().read_line(&mut go).ok();

        let mut frame = vec![0x81, 0x80 | PAYLOAD.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(PAYLOAD); // masked with a zero key
        let every = Duration::from_secs_f64(conns as f64 / rate as f64);
        let start = Instant::now() + Duration::from_millis(100);
        let until = start + Duration::from_secs(secs);
        let n = sockets.len().max(1) as u32;
        let tasks: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                let frame = frame.clone();
                let mut next = start + every * i as u32 / n;
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut echo = [0u8; 2 + PAYLOAD.len()];
                    // Bounded by time and by count.
                    for _ in 0..1_000_000 {
                        tokio::time::sleep_until(next).await;
                        if Instant::now() >= until {
                            break;
                        }
                        let t = Instant::now();
                        let ok = s.write_all(&frame).await.is_ok()
                            && tokio::time::timeout(
                                Duration::from_secs(10),
                                s.read_exact(&mut echo),
                            )
                            .await
                            .is_ok_and(|r| r.is_ok());
                        if !ok {
                            return (lat, 1);
                        }
                        lat.push(t.elapsed().as_micros() as u32);
                        next = (next + every).max(Instant::now());
                    }
                    (lat, 0)
                })
            })
            .collect();
        let (mut lat, errors) = gather(tasks).await;
        lat.sort_unstable();
        println!(
            "{} {} {} {}",
            lat.len(),
            percentile(&lat, 0.50),
            percentile(&lat, 0.99),
            errors + failed
        );
    });
}

/// A WebSocket connection to `target`, past its handshake.
async fn open(target: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(target).await.ok()?;
    s.set_nodelay(true).ok();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {target}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let end = read_head(&mut s, &mut buf).await?;
    (buf.starts_with(b"HTTP/1.1 101") && buf.len() == end).then_some(s)
}
