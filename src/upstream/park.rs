//! Idle backend connections that hold no buffers.
//!
//! hyper keeps about 20 KiB (its read and write buffers, its state and its task) for every
//! keep-alive connection to a backend, idle or not; after a burst a pool can hold hundreds
//! of them. Once a connection has been idle for [`crate::conn::PARK_AFTER`] the pool parks
//! it, as the client side does ([`crate::keepalive`]):
//!
//! 1. The upkeep task marks the connection and drops its `SendRequest`; hyper, idle and with
//!    no sender left, shuts its IO down.
//! 2. That IO ([`ParkableIo`]) then skips the shutdown and hands the socket to its pool's
//!    parked queue instead; hyper's buffers, state and task are freed.
//! 3. The next request that finds no live idle connection takes a parked socket that is
//!    still quiet ([`Parked::usable`]) and starts a fresh hyper connection on it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::connect::Stream;
use super::pool::BackendConns;

/// A backend connection's socket as hyper holds it: hyper's shutdown parks it when its pool
/// asked for that.
pub struct ParkableIo {
    stream: Option<Stream>,
    park: Arc<AtomicBool>,
    pool: Weak<BackendConns>,
}

impl ParkableIo {
    /// `stream` for `pool`; setting `park` turns hyper's shutdown into parking.
    pub fn new(stream: Stream, park: Arc<AtomicBool>, pool: Weak<BackendConns>) -> Self {
        Self {
            stream: Some(stream),
            park,
            pool,
        }
    }
}

/// A parked socket, waiting for a request.
pub struct Parked {
    pub stream: Stream,
    /// When the connection became idle.
    pub since: Instant,
}

impl Parked {
    /// Whether the backend left the parked socket alone: no close, no byte. Anything it
    /// sent while no request was out (an EOF, a TLS alert, stray bytes) retires it.
    pub fn usable(&self) -> bool {
        let tcp = match &self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        tcp.poll_peek(&mut cx, &mut buf).is_pending()
    }
}

impl AsyncRead for ParkableIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Some(s) => Pin::new(s).poll_read(cx, buf),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for ParkableIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Some(s) => Pin::new(s).poll_write(cx, buf),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Some(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Some(s) => Pin::new(s).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.park.load(Ordering::Relaxed) {
            // hyper shuts down only an idle connection whose sender is gone: the upkeep
            // task's doing, as the mark says. A pool that was dropped closes the socket.
            if let (Some(stream), Some(pool)) = (this.stream.take(), this.pool.upgrade()) {
                pool.park(stream);
            }
            return Poll::Ready(Ok(()));
        }
        match &mut this.stream {
            Some(s) => Pin::new(s).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}
