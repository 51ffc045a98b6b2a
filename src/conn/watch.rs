//! The connection watchdog: drives a client connection to its end and shuts it down
//! gracefully on the keep-alive timeout or at shutdown.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use http_body::Body;
use tokio::time::Instant;

use super::ConnState;

/// A connection that can be shut down gracefully (hyper's HTTP/1 and auto connections).
pub trait Graceful: Future {
    /// Stops taking requests; finishes those in flight.
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: Body + 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How long an idle keep-alive connection may still bring one last request once shutdown
/// began: its client may be sending one right now, and would see the connection close under
/// it. That request is answered with `Connection: close` (HTTP/2: after the GOAWAY).
pub const DRAIN_LINGER: Duration = Duration::from_secs(1);

/// What woke [`watch`] up.
enum Woke<T> {
    /// The connection ended.
    Done(T),
    /// Shutdown began.
    Shutdown,
    /// The timer fired.
    Timer,
}

/// Drives `conn` to its end, shutting it down gracefully once it has been idle for
/// `keepalive` or when `shutdown` fires: at once when a request is in flight (its response
/// closes the connection), else when one starts or [`DRAIN_LINGER`] has passed.
///
/// The connection is polled on every wake-up (twice a request); the timer and the token are
/// polled once after each arming, which registers the task to be woken, and after that only
/// their state is read: polling them on every wake-up cost about 400 instructions a request.
pub async fn watch<C: Graceful>(
    mut conn: Pin<&mut C>,
    state: &ConnState,
    keepalive: Duration,
    shutdown: &tokio_util::sync::CancellationToken,
) -> C::Output {
    let mut closing = false;
    let mut linger: Option<Instant> = None;
    let timer = tokio::time::sleep(keepalive);
    tokio::pin!(timer);
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        // One timer: the drain's 10 ms look while lingering; else the idle deadline, or
        // while busy `keepalive` from now (the first look after the last request ends finds
        // the connection idle, and the next arming is exactly that request's end +
        // `keepalive`); none once closing.
        let now = Instant::now();
        let armed = !closing;
        if armed {
            let at = match (linger, state.idle_since()) {
                (Some(_), _) => now + Duration::from_millis(10),
                (None, Some(t)) => t + keepalive,
                (None, None) => now + keepalive,
            };
            timer.as_mut().reset(at);
        }
        let watching = !closing && linger.is_none();
        let mut fresh = true;
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Woke::Done(r));
            }
            if std::mem::take(&mut fresh) {
                if watching && cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Shutdown);
                }
                if armed && timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Timer);
                }
                return Poll::Pending;
            }
            if watching && shutdown.is_cancelled() {
                return Poll::Ready(Woke::Shutdown);
            }
            if armed && timer.is_elapsed() {
                return Poll::Ready(Woke::Timer);
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Done(r) => return r,
            Woke::Shutdown => {
                if state.idle_since().is_some() {
                    linger = Some(Instant::now() + DRAIN_LINGER);
                } else {
                    // Finish the requests in flight, then close.
                    conn.as_mut().shut_down();
                    closing = true;
                }
            }
            Woke::Timer => {
                let now = Instant::now();
                let idle = state.idle_since();
                // Still idle at the deadline (a request may have started meanwhile); or,
                // while draining, a request started or the linger is over.
                let idle_over = idle.is_some_and(|t| t + keepalive <= now);
                let drained = linger.is_some_and(|t| idle.is_none() || now >= t);
                if idle_over || drained {
                    conn.as_mut().shut_down();
                    closing = true;
                }
            }
        }
    }
}
