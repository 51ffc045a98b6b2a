//! Coalescing: one fill per URL at a time. The first miss leads: its fetch runs on its own
//! task and publishes what it got ([`Published`]). Concurrent misses follow: they wait up to
//! the route's `lock_timeout` for that, then read the same body as it streams
//! ([`FillBody`]), or go to a backend themselves when the response cannot be shared.
//!
//! The body is pumped by the fill's task, not by any client, so a fill that fits runs to its
//! end when every client has left. Past `max_object_size` storing stops, the chunks every
//! reader has seen are dropped, and the pump waits for the slowest reader (bounded memory);
//! with no reader left it stops, which resets the backend's response.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use super::entry::{Entry, Head};

/// Chunks buffered past the slowest reader, once the body is no longer being stored.
const WINDOW: usize = 64;

/// What a fill made of its response, as its waiters see it.
#[derive(Clone)]
pub enum Published {
    /// The response is being stored: read its body with [`Fill::reader`].
    Shared(Arc<Head>),
    /// A complete response to serve (revalidated, or a stale one standing in for an error).
    Entry(Arc<Entry>, Served),
    /// Nothing to share: each waiter goes to a backend itself.
    Alone,
}

/// How a published entry came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A backend confirmed it with 304.
    Revalidated,
    /// The backend failed with this status; the stale entry stands in.
    StaleIfError(u16),
}

#[derive(Default)]
struct Inner {
    published: Option<Published>,
    /// Tasks waiting for `published` or for a chunk.
    wakers: Vec<Waker>,
    /// The pump, waiting for readers to make room.
    pump: Option<Waker>,
    chunks: VecDeque<Bytes>,
    /// Index of `chunks[0]` in the whole body.
    base: usize,
    /// Whether every chunk is still kept (false past `max_object_size`).
    keeping: bool,
    /// The body's end: Ok when complete, Err when it broke.
    end: Option<Result<(), ()>>,
    /// Next chunk index of each reader; None once it left.
    readers: Vec<Option<usize>>,
}

impl Inner {
    fn wake_all(&mut self) {
        for w in self.wakers.drain(..) {
            w.wake();
        }
    }

    fn slowest(&self) -> Option<usize> {
        self.readers.iter().flatten().min().copied()
    }

    /// Drops chunks every reader has seen (only once they are no longer kept for storing).
    fn trim(&mut self) {
        if self.keeping {
            return;
        }
        let upto = self.slowest().unwrap_or(self.base + self.chunks.len());
        while self.base < upto && self.chunks.pop_front().is_some() {
            self.base += 1;
        }
    }
}

/// One fill in progress.
pub struct Fill {
    inner: Mutex<Inner>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // std Mutex: a few field updates per chunk or wake-up, never across an await.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fill {
    fn new() -> Arc<Self> {
        Arc::new(Fill {
            inner: Mutex::new(Inner {
                keeping: true,
                ..Inner::default()
            }),
        })
    }

    /// Tells every waiter what the fill got (once; later calls are ignored).
    pub fn publish(&self, p: Published) {
        let mut g = lock(&self.inner);
        if g.published.is_none() {
            g.published = Some(p);
            g.wake_all();
        }
    }

    /// Waits up to `timeout` for the fill's outcome.
    pub async fn wait(&self, timeout: Duration) -> Option<Published> {
        let published = poll_fn(|cx| {
            let mut g = lock(&self.inner);
            match &g.published {
                Some(p) => Poll::Ready(p.clone()),
                None => {
                    g.wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        tokio::time::timeout(timeout, published).await.ok()
    }

    /// A reader of the body from its first byte; None when the first chunks are gone
    /// already (the body outgrew `max_object_size` and was trimmed).
    pub fn reader(self: &Arc<Self>) -> Option<FillBody> {
        let mut g = lock(&self.inner);
        if g.base > 0 {
            return None;
        }
        g.readers.push(Some(0));
        Some(FillBody {
            fill: Arc::clone(self),
            id: g.readers.len() - 1,
        })
    }

    /// Whether a reader is still attached.
    fn has_readers(&self) -> bool {
        lock(&self.inner).readers.iter().any(Option::is_some)
    }

    fn push(&self, chunk: Bytes) {
        let mut g = lock(&self.inner);
        g.chunks.push_back(chunk);
        g.trim();
        g.wake_all();
    }

    fn stop_keeping(&self) {
        let mut g = lock(&self.inner);
        g.keeping = false;
        g.trim();
    }

    fn finish(&self, ok: bool) {
        let mut g = lock(&self.inner);
        if g.end.is_none() {
            g.end = Some(if ok { Ok(()) } else { Err(()) });
        }
        g.wake_all();
    }

    /// Waits until the slowest reader is within [`WINDOW`] chunks (or every reader left).
    async fn room(&self) {
        poll_fn(|cx| {
            let mut g = lock(&self.inner);
            g.trim();
            if g.chunks.len() < WINDOW || g.slowest().is_none() {
                Poll::Ready(())
            } else {
                g.pump = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// How pumping a body ended.
pub enum Pumped {
    /// The whole body, within `max_object_size`, handed to the store step.
    Complete,
    /// It outgrew `max_object_size`; readers got all of it.
    TooLarge,
    /// It broke, or it outgrew `max_object_size` and every reader left.
    Aborted,
}

/// Reads `body` to its end into the fill, keeping it whole while it fits in `max` bytes.
///
/// A whole body goes to `store` before readers can tell it is complete: the last chunk of a
/// body that knows its end (`Content-Length`) is held back until `store` returns, and the end
/// of any other body is signalled after it. A client that read the whole response and asks
/// again finds it stored.
pub async fn pump<B>(fill: &Fill, mut body: B, max: usize, store: impl FnOnce(Bytes)) -> Pumped
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut kept: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    let mut keeping = true;
    let mut last = None;
    loop {
        let data = match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            None => break,
            Some(Err(_)) => {
                fill.finish(false);
                return Pumped::Aborted;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers are not stored
            },
        };
        size = size.saturating_add(data.len());
        if keeping && size > max {
            keeping = false;
            kept.clear();
            fill.stop_keeping();
        }
        if keeping {
            kept.push(data.clone());
            if body.is_end_stream() {
                last = Some(data);
                break;
            }
        }
        fill.push(data);
        if !keeping {
            if !fill.has_readers() {
                fill.finish(false);
                return Pumped::Aborted;
            }
            fill.room().await;
        }
    }
    if !keeping {
        fill.finish(true);
        return Pumped::TooLarge;
    }
    let mut whole = BytesMut::with_capacity(size);
    for c in kept {
        whole.extend_from_slice(&c);
    }
    store(whole.freeze());
    if let Some(data) = last {
        fill.push(data);
    }
    fill.finish(true);
    Pumped::Complete
}

/// A body read from a fill; several clients read one fill at their own pace.
pub struct FillBody {
    fill: Arc<Fill>,
    id: usize,
}

/// A fill's body broke before its end.
#[derive(Debug, thiserror::Error)]
#[error("the backend's response body broke")]
pub struct FillBroken;

impl Body for FillBody {
    type Data = Bytes;
    type Error = FillBroken;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FillBroken>>> {
        let id = self.id;
        let mut g = lock(&self.fill.inner);
        let Some(pos) = g.readers.get(id).copied().flatten() else {
            return Poll::Ready(None);
        };
        if let Some(c) = pos
            .checked_sub(g.base)
            .and_then(|i| g.chunks.get(i))
            .cloned()
        {
            g.readers[id] = Some(pos + 1);
            if let Some(w) = g.pump.take() {
                w.wake();
            }
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        match g.end {
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(())) => Poll::Ready(Some(Err(FillBroken))),
            None => {
                g.wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for FillBody {
    fn drop(&mut self) {
        let mut g = lock(&self.fill.inner);
        if let Some(r) = g.readers.get_mut(self.id) {
            *r = None;
        }
        g.trim();
        if let Some(w) = g.pump.take() {
            w.wake();
        }
    }
}

/// The fills in progress, by URL.
#[derive(Default)]
pub struct Fills {
    // std Mutex: one map lookup or removal per cache miss, never across an await.
    map: Mutex<HashMap<Arc<str>, Arc<Fill>>>,
}

/// The outcome of joining a URL's fill.
pub enum Join {
    /// No fill was running: this request leads a new one.
    Lead(Leader),
    /// A fill is running: wait for it.
    Follow(Arc<Fill>),
}

/// The lead of a fill. Dropping it takes the fill off the map, and tells any waiter still
/// waiting to go alone, so nobody waits on a fill that died.
pub struct Leader {
    fill: Arc<Fill>,
    registry: Option<(Arc<Fills>, Arc<str>)>,
}

impl Leader {
    /// A fill no other request can join (the URL was found uncacheable recently).
    pub fn unregistered() -> Self {
        Leader {
            fill: Fill::new(),
            registry: None,
        }
    }

    /// The fill.
    pub fn fill(&self) -> &Arc<Fill> {
        &self.fill
    }

    /// Takes the fill off the map now: requests from here on start their own.
    pub fn release(&mut self) {
        if let Some((fills, key)) = self.registry.take() {
            let mut m = fills.map.lock().unwrap_or_else(|p| p.into_inner());
            if m.get(&key).is_some_and(|f| Arc::ptr_eq(f, &self.fill)) {
                m.remove(&key);
            }
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.release();
        self.fill.publish(Published::Alone);
        self.fill.finish(false);
    }
}

impl Fills {
    /// Joins the fill of `key`, or starts one.
    pub fn join(self: &Arc<Self>, key: &str) -> Join {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = m.get(key) {
            return Join::Follow(Arc::clone(f));
        }
        let fill = Fill::new();
        let key: Arc<str> = key.into();
        m.insert(Arc::clone(&key), Arc::clone(&fill));
        Join::Lead(Leader {
            fill,
            registry: Some((Arc::clone(self), key)),
        })
    }

    /// Fills in progress.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether no fill is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = Infallible> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = (0..n)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + (i % 26) as u8; size]))))
            .collect();
        StreamBody::new(tokio_stream::iter(frames))
    }

    #[tokio::test]
    async fn followers_read_the_same_body_and_the_fill_completes_alone() {
        let fills = Arc::new(Fills::default());
        let Join::Lead(mut lead) = fills.join("k") else {
            panic!("first leads")
        };
        let Join::Follow(f) = fills.join("k") else {
            panic!("second follows")
        };
        let fill = Arc::clone(lead.fill());
        let reader = fill.reader().expect("reader");
        let abandoned = fill.reader().expect("reader");
        drop(abandoned); // a client that leaves at once
        let got = tokio::spawn(async move { reader.collect().await.map(|c| c.to_bytes()) });
        let mut stored = 0;
        let pumped = pump(&fill, chunks(10, 100), 10_000, |b| {
            assert!(
                lock(&fill.inner).end.is_none(),
                "stored before the end shows"
            );
            stored = b.len();
        })
        .await;
        assert!(matches!(pumped, Pumped::Complete));
        assert_eq!(stored, 1000);
        assert_eq!(got.await.unwrap().unwrap().len(), 1000);
        lead.fill().publish(Published::Alone);
        assert!(matches!(
            f.wait(Duration::from_secs(1)).await,
            Some(Published::Alone)
        ));
        lead.release();
        assert!(fills.is_empty());
    }

    #[tokio::test]
    async fn a_dropped_leader_sends_waiters_alone() {
        let fills = Arc::new(Fills::default());
        let Join::Lead(lead) = fills.join("k") else {
            panic!()
        };
        let Join::Follow(f) = fills.join("k") else {
            panic!()
        };
        drop(lead);
        assert!(matches!(
            f.wait(Duration::from_secs(1)).await,
            Some(Published::Alone)
        ));
        assert!(
            matches!(fills.join("k"), Join::Lead(_)),
            "the map entry is gone"
        );
    }

    #[tokio::test]
    async fn past_the_limit_storing_stops_and_readers_still_get_everything() {
        let fill = Fill::new();
        let reader = fill.reader().expect("reader");
        let got = tokio::spawn(async move { reader.collect().await.map(|c| c.to_bytes()) });
        assert!(matches!(
            pump(&fill, chunks(200, 1000), 5000, |_| panic!(
                "too large to store"
            ))
            .await,
            Pumped::TooLarge
        ));
        let body = got.await.unwrap().unwrap();
        assert_eq!(body.len(), 200_000);
        assert!(fill.reader().is_none(), "the start is gone");
        assert!(lock(&fill.inner).chunks.len() <= WINDOW);
    }

    #[tokio::test]
    async fn past_the_limit_with_no_reader_the_pump_stops() {
        let fill = Fill::new();
        assert!(matches!(
            pump(&fill, chunks(200, 1000), 5000, |_| panic!(
                "too large to store"
            ))
            .await,
            Pumped::Aborted
        ));
    }

    #[tokio::test]
    async fn the_last_chunk_of_a_sized_body_waits_for_the_store() {
        let fill = Fill::new();
        let reader = fill.reader().expect("reader");
        let body = http_body_util::Full::new(Bytes::from_static(b"whole"));
        let pumped = pump(&fill, body, 100, |b| {
            assert_eq!(&b[..], b"whole");
            let g = lock(&fill.inner);
            assert!(g.chunks.is_empty(), "no reader has a byte of it yet");
            assert!(g.end.is_none());
        })
        .await;
        assert!(matches!(pumped, Pumped::Complete));
        let got = reader.collect().await.map(|c| c.to_bytes());
        assert_eq!(&got.unwrap()[..], b"whole");
    }

    #[tokio::test]
    async fn waiting_times_out() {
        let fill = Fill::new();
        assert!(fill.wait(Duration::from_millis(5)).await.is_none());
    }
}
