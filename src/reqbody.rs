//! The client's request body on its way to a backend:
//!
//! - `limits.body_read_timeout` bounds the gap between two pieces of it; on expiry the body
//!   fails, which aborts the upstream request (the backend sees a reset, not a complete
//!   request), and the client gets 408 when no response has started;
//! - a client that goes away mid-body is told apart from a backend fault, so it blames no
//!   backend;
//! - [`Sent`] says when the body has been sent whole: the backend's `response_header` timer
//!   starts then, not before, so a long upload is not a backend timeout.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Set once a request body has been sent whole.
#[derive(Debug, Default)]
pub struct Sent {
    done: AtomicBool,
    notify: Notify,
}

impl Sent {
    /// Marks the body as sent.
    pub fn mark(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Waits until the body is sent.
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.done.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// Why a client's body failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// No piece came within `body_read_timeout`.
    #[error("the request body stalled for longer than body_read_timeout")]
    Stalled,
    /// The client's side broke (it went away mid-body).
    #[error("the client went away mid-body: {0}")]
    Aborted(hyper::Error),
}

/// A client's request body with the gap timer and the sent signal.
pub struct ClientBody {
    inner: Incoming,
    gap: Duration,
    sleep: Pin<Box<Sleep>>,
    sent: Arc<Sent>,
}

impl ClientBody {
    /// Wraps `inner`, allowing `gap` between two pieces; `sent` is set at its end.
    pub fn new(inner: Incoming, gap: Duration, sent: Arc<Sent>) -> Self {
        if inner.is_end_stream() {
            sent.mark();
        }
        Self {
            inner,
            gap,
            sleep: Box::pin(tokio::time::sleep_until(Instant::now() + gap)),
            sent,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                let next = Instant::now() + this.gap;
                this.sleep.as_mut().reset(next);
                if this.inner.is_end_stream() {
                    this.sent.mark();
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Aborted(e)))),
            Poll::Ready(None) => {
                this.sent.mark();
                Poll::Ready(None)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Stalled))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_sent_signal_wakes_waiters_once_set() {
        let s = Arc::new(Sent::default());
        let w = {
            let s = Arc::clone(&s);
            tokio::spawn(async move { s.wait().await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!w.is_finished());
        s.mark();
        w.await.unwrap();
        // Set already: no wait.
        s.wait().await;
    }
}
