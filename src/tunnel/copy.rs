//! One direction of a tunnel: bytes read from one side are written to the other.
//!
//! A read goes into a buffer on the stack, so an idle tunnel holds no copy buffer at all.
//! Only when the writer cannot take what was read at once do the rest of the bytes move to
//! the heap, and that buffer is freed as soon as it has been written out.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::frames::Frames;

/// Bytes one read may take.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per poll before the direction yields to the other one and to the timers.
const READS_PER_POLL: usize = 16;

/// The state of one direction.
#[derive(Debug, Default)]
pub struct Half {
    /// Read and not yet written (empty, and unallocated, when caught up).
    pending: Vec<u8>,
    written: usize,
    /// Written since the last flush.
    dirty: bool,
    /// The reader reached its end.
    eof: bool,
    /// The writer was shut down after the end: this direction is over.
    done: bool,
    /// Bytes copied so far.
    pub bytes: u64,
    /// WebSocket framing of the bytes read, when the tunnel is a WebSocket.
    pub frames: Option<Frames>,
}

impl Half {
    /// A direction; `websocket` follows frame boundaries.
    pub fn new(websocket: bool) -> Self {
        Self {
            frames: websocket.then(Frames::new),
            ..Self::default()
        }
    }

    /// Whether this direction is over (end read, written, and passed on).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether a WebSocket close frame went this way.
    pub fn saw_close(&self) -> bool {
        self.frames.is_some_and(|f| f.saw_close())
    }

    /// Whether everything read has been written and it ended on a frame boundary: a frame
    /// may be added here.
    pub fn between_frames(&self) -> bool {
        self.pending.is_empty() && self.frames.is_some_and(|f| f.at_boundary())
    }

    /// Copies from `r` to `w` until neither can go on. Ready once the direction is over;
    /// the number of bytes moved by this call is added to `moved`.
    pub fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        moved: &mut u64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        for _ in 0..READS_PER_POLL {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // What an earlier read left goes first.
            while self.written < self.pending.len() {
                match w.as_mut().poll_write(cx, &self.pending[self.written..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(write_zero())),
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.dirty = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if !self.pending.is_empty() {
                // Caught up: the heap buffer goes.
                self.pending = Vec::new();
                self.written = 0;
            }
            if self.eof {
                std::task::ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut stack);
            match r.as_mut().poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    if self.dirty {
                        std::task::ready!(w.as_mut().poll_flush(cx))?;
                        self.dirty = false;
                    }
                    return Poll::Pending;
                }
            }
            let got = buf.filled();
            if got.is_empty() {
                self.eof = true;
                continue;
            }
            self.bytes += got.len() as u64;
            *moved += got.len() as u64;
            if let Some(f) = &mut self.frames {
                f.feed(got);
            }
            // Straight from the stack while the writer takes it; the rest to the heap.
            let mut at = 0;
            while at < got.len() {
                match w.as_mut().poll_write(cx, &got[at..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(write_zero())),
                    Poll::Ready(Ok(n)) => {
                        at += n;
                        self.dirty = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        self.pending.extend_from_slice(&got[at..]);
                        self.written = 0;
                        return Poll::Pending;
                    }
                }
            }
        }
        // Busy: let the other direction and the timers run, and come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes `frame` (a close frame) and shuts the writer down; best effort.
    pub fn poll_close<W: AsyncWrite + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        mut w: Pin<&mut W>,
        frame: &[u8],
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        if self.pending.is_empty() && !frame.is_empty() {
            self.pending.extend_from_slice(frame);
            self.written = 0;
        }
        while self.written < self.pending.len() {
            let n = std::task::ready!(w.as_mut().poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(write_zero()));
            }
            self.written += n;
        }
        std::task::ready!(w.as_mut().poll_shutdown(cx))?;
        self.done = true;
        Poll::Ready(Ok(()))
    }
}

fn write_zero() -> io::Error {
    io::Error::new(io::ErrorKind::WriteZero, "the tunnel peer took no bytes")
}
