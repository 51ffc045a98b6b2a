//! Tunnels: connections that switched protocols (WebSocket over an HTTP/1.1 upgrade, or over
//! HTTP/2 extended CONNECT), copied both ways until either side closes.
//!
//! - No byte either way for `pools.NAME.timeouts.tunnel_idle`: closed.
//! - One side finished (it closed, and that was passed on): the other gets [`HALF_CLOSE`],
//!   unless a WebSocket close frame went by, after which nothing may follow: it ends at once.
//! - Shutdown: tunnels run through `runtime.shutdown_grace`; when it runs out (`closing`),
//!   a WebSocket gets a close frame 1001 (going away) on each side that is between two
//!   frames, and both sides are closed.
//!
//! The tunnel keeps its backend's in-flight slot (held by the caller's future) for its whole
//! life, so caps, queues and least-connections count open sessions.

mod copy;
pub mod frames;
pub mod stats;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use copy::Half;
use stats::RouteTunnels;

/// How long the other side may go on after one side has finished.
pub const HALF_CLOSE: Duration = Duration::from_secs(30);
/// How long the close frames may take at shutdown.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// How a tunnel runs.
pub struct Spec {
    /// Closed after this long with no byte either way.
    pub idle: Duration,
    /// The bytes are WebSocket frames (a close frame can be added at shutdown).
    pub websocket: bool,
    /// Fires when the shutdown grace has run out.
    pub closing: CancellationToken,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides closed.
    Closed,
    /// No byte for `tunnel_idle`.
    Idle,
    /// One side closed and the other did not within [`HALF_CLOSE`].
    HalfClose,
    /// The shutdown grace ran out.
    Shutdown,
    /// A side failed (reset, or a write that took nothing).
    Error,
}

impl End {
    /// The word for the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Idle => "idle_timeout",
            End::HalfClose => "half_close_timeout",
            End::Shutdown => "shutdown",
            End::Error => "error",
        }
    }
}

/// What a tunnel did.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    /// Bytes from the client to the backend.
    pub up: u64,
    /// Bytes from the backend to the client.
    pub down: u64,
    /// Why it ended.
    pub end: End,
}

/// Copies between `client` and `backend` until the tunnel ends.
pub async fn run<C, B>(client: C, backend: B, spec: Spec, counters: &RouteTunnels) -> Done
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client, mut backend) = (client, backend);
    let mut up = Half::new(spec.websocket);
    let mut down = Half::new(spec.websocket);
    let mut last = Instant::now();
    let mut half_deadline: Option<Instant> = None;
    let timer = tokio::time::sleep_until(last + spec.idle);
    tokio::pin!(timer);
    let closing = spec.closing.cancelled();
    tokio::pin!(closing);

    let end = std::future::poll_fn(|cx| {
        let (mut moved_up, mut moved_down) = (0, 0);
        let ru = up.poll_copy(
            cx,
            Pin::new(&mut client),
            Pin::new(&mut backend),
            &mut moved_up,
        );
        let rd = down.poll_copy(
            cx,
            Pin::new(&mut backend),
            Pin::new(&mut client),
            &mut moved_down,
        );
        if moved_up > 0 {
            counters.up.increment(moved_up);
        }
        if moved_down > 0 {
            counters.down.increment(moved_down);
        }
        if let (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) = (&ru, &rd) {
            tracing::debug!(error = %e, "tunnel side failed");
            return Poll::Ready(End::Error);
        }
        // Both sides closed, or one closed after a WebSocket close frame (no data may follow
        // one: the session is over).
        let closing_sent = up.saw_close() || down.saw_close();
        if (up.is_done() && down.is_done()) || ((up.is_done() || down.is_done()) && closing_sent) {
            return Poll::Ready(End::Closed);
        }
        let now = Instant::now();
        if moved_up + moved_down > 0 {
            last = now;
        }
        if (up.is_done() || down.is_done()) && half_deadline.is_none() {
            half_deadline = Some(now + HALF_CLOSE);
        }
        if closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Shutdown);
        }
        // One timer for both deadlines, moved only when it fires or the nearer one changes:
        // activity does not touch it.
        loop {
            let idle_at = last + spec.idle;
            if half_deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(End::HalfClose);
            }
            if now >= idle_at {
                return Poll::Ready(End::Idle);
            }
            let next = half_deadline.map_or(idle_at, |d| d.min(idle_at));
            if next < timer.deadline() {
                timer.as_mut().reset(next);
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Fired early (activity moved the idle deadline): wait for the real one.
                Poll::Ready(()) => timer.as_mut().reset(next),
            }
        }
    })
    .await;

    if end == End::Shutdown {
        let to_client: &[u8] = if spec.websocket && down.between_frames() {
            &frames::GOING_AWAY_TO_CLIENT
        } else {
            &[]
        };
        let masked = frames::going_away_to_server(fastrand::u32(..).to_be_bytes());
        let to_backend: &[u8] = if spec.websocket && up.between_frames() {
            &masked
        } else {
            &[]
        };
        let close = std::future::poll_fn(|cx| {
            let c = down.poll_close(cx, Pin::new(&mut client), to_client);
            let b = up.poll_close(cx, Pin::new(&mut backend), to_backend);
            match (c, b) {
                (Poll::Ready(c), Poll::Ready(b)) => Poll::Ready(c.and(b)),
                _ => Poll::Pending,
            }
        });
        match tokio::time::timeout(CLOSE_WITHIN, close).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "closing a tunnel failed"),
            Err(_) => tracing::debug!("closing a tunnel timed out"),
        }
    }
    Done {
        up: up.bytes,
        down: down.bytes,
        end,
    }
}

#[cfg(test)]
mod tests;
