//! The response body sandgate sends to clients: either a backend's streamed body, which holds
//! the backend's in-flight slot until its last byte (or until the client goes away and the body
//! is dropped), or a small body sandgate wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::admission::Slot;
use crate::cache::fill::FillBody;
use crate::conn::InFlight;
use crate::limit::InflightSlot;
use crate::upstream::Pooled;

/// Errors a response body can end with.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Body of a response to a client.
pub enum ProxyBody {
    /// Streamed from a backend.
    Upstream {
        /// The backend's body (its connection goes back to the pool at the end).
        body: Pooled,
        /// The backend's in-flight slot, released when this body is dropped.
        slot: Slot,
        /// The global in-flight count, released with it.
        inflight: InflightSlot,
    },
    /// Read from a cache fill that another task pumps from the backend.
    Fill {
        /// The fill's reader.
        body: FillBody,
        /// The global in-flight count, released with it.
        inflight: InflightSlot,
    },
    /// Complete: written by sandgate (errors, admin) or a stored response; `None` once sent.
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A complete body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Fill { body, .. } => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Fill { body, .. } => body.is_end_stream(),
            ProxyBody::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Fill { body, .. } => body.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
pub struct Tracked<B> {
    body: B,
    _inflight: InFlight,
}

impl<B> Tracked<B> {
    /// Wraps `body`.
    pub fn new(body: B, inflight: InFlight) -> Self {
        Self {
            body,
            _inflight: inflight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
