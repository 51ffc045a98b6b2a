//! The worker's read arena. Request heads from clients and short responses from backends
//! are read into the spare room of one buffer per worker thread, and each read takes what it
//! read from there as its own `BytesMut`, which shares the arena. One allocation serves a
//! hundred reads or so, where each read had a buffer of its own (an allocation, a promotion
//! to shared storage when the head was split off, and a free a request, each way).
//!
//! The price: what a request keeps of its read (its head's values, a body chunk a slow
//! client has yet to take) holds the arena it came from, up to [`SIZE`], where it held its
//! own buffer before (4 KiB for a request head, 8 KiB for a response). Between requests a
//! connection holds none of it, and a cached response copies what it stores.

use std::cell::RefCell;
use std::io;
use std::task::Poll;

use bytes::buf::Limit;
use bytes::{BufMut, BytesMut};

/// The arena's size. A read takes room from it only up to a quarter of it.
pub const SIZE: usize = 32 * 1024;

thread_local! {
    static ARENA: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

/// Reads at most `limit` more bytes into `buf` with `read`, which reads into the room it is
/// given. An empty `buf` reading at most a quarter of [`SIZE`] takes its bytes from the
/// worker's arena; otherwise `buf` grows on its own.
pub fn poll_read(
    buf: &mut BytesMut,
    limit: usize,
    read: impl FnOnce(&mut Limit<&mut BytesMut>) -> Poll<io::Result<usize>>,
) -> Poll<io::Result<usize>> {
    if !buf.is_empty() || limit > SIZE / 4 {
        // Room of its own. `reserve` would do it, but on a buffer that shares the arena it
        // allocates the arena's whole size again.
        if buf.capacity() - buf.len() < limit {
            let mut own = BytesMut::with_capacity(buf.len() + limit);
            own.extend_from_slice(buf);
            *buf = own;
        }
        return read(&mut (&mut *buf).limit(limit));
    }
    ARENA.with_borrow_mut(|arena| {
        if arena.capacity() - arena.len() < limit {
            *arena = BytesMut::with_capacity(SIZE);
        }
        let got = read(&mut (&mut *arena).limit(limit));
        if matches!(got, Poll::Ready(Ok(n)) if n > 0) {
            *buf = arena.split();
        }
        got
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts this thread on a new arena, whatever earlier tests on it left.
    fn fresh() {
        ARENA.with_borrow_mut(|a| *a = BytesMut::new());
    }

    /// Reads `bytes` (or nothing, when empty: Pending) into `buf` through the arena.
    fn feed(buf: &mut BytesMut, limit: usize, bytes: &[u8]) -> Poll<io::Result<usize>> {
        poll_read(buf, limit, |room| {
            if bytes.is_empty() {
                return Poll::Pending;
            }
            let n = bytes.len().min(room.remaining_mut());
            room.put_slice(&bytes[..n]);
            Poll::Ready(Ok(n))
        })
    }

    #[test]
    fn reads_share_the_arena_and_keep_their_own_bytes() {
        fresh();
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        assert!(matches!(feed(&mut a, 4096, b"first"), Poll::Ready(Ok(5))));
        assert!(matches!(feed(&mut b, 4096, b"second"), Poll::Ready(Ok(6))));
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        // Side by side in one allocation.
        assert_eq!(a.as_ptr().wrapping_add(5), b.as_ptr());
        // A read that finds nothing leaves an empty buffer empty.
        let mut c = BytesMut::new();
        assert!(feed(&mut c, 4096, b"").is_pending());
        assert!(c.is_empty());
    }

    #[test]
    fn the_limit_holds_and_a_started_buffer_grows_on_its_own() {
        fresh();
        let mut a = BytesMut::new();
        let long = vec![b'x'; 5000];
        assert!(matches!(feed(&mut a, 4096, &long), Poll::Ready(Ok(4096))));
        // More for the same buffer: it leaves the arena, keeps what it had, and takes at
        // most the limit more.
        let before = a.as_ptr();
        assert!(matches!(feed(&mut a, 100, &long), Poll::Ready(Ok(100))));
        assert_eq!(a.len(), 4196);
        assert_ne!(a.as_ptr(), before);
        assert!(a.capacity() < SIZE, "a buffer of the arena's size");
        // A read larger than a quarter of the arena has room of its own.
        let mut big = BytesMut::new();
        assert!(matches!(feed(&mut big, SIZE, &long), Poll::Ready(Ok(5000))));
        // (What a read takes from the arena has just the room it filled.)
        assert!(big.capacity() >= SIZE, "taken from the arena");
    }

    #[test]
    fn a_full_arena_is_replaced_and_the_old_one_stays_with_its_readers() {
        fresh();
        let mut kept = Vec::new();
        let chunk = vec![b'k'; 1000];
        for _ in 0..100 {
            let mut b = BytesMut::new();
            assert!(matches!(feed(&mut b, 8192, &chunk), Poll::Ready(Ok(1000))));
            kept.push(b.freeze());
        }
        assert!(kept.iter().all(|b| b[..] == chunk[..]));
    }
}
