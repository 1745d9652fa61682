//! The body of a request on its way upstream: the client's own body, streamed as it arrives
//! (the common case, no allocation), a body held in full (a plugin's HTTP call, a body a
//! filter buffered whole), or any other body (the client's, passed through filters), boxed.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::downstream_body::DownstreamBody;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Any body, boxed, that stays on its worker (filters' bodies hold `Rc`s, so `Send` bodies
/// such as `UnsyncBoxBody` do not fit).
pub(crate) type LocalBody = Pin<Box<dyn Body<Data = Bytes, Error = BoxError>>>;

/// Boxing into a [`LocalBody`].
pub(crate) trait BoxLocal {
    fn boxed_local(self) -> LocalBody;
}

impl<B> BoxLocal for B
where
    B: Body<Data = Bytes, Error = BoxError> + 'static,
{
    fn boxed_local(self) -> LocalBody {
        Box::pin(self)
    }
}

/// A request body for either upstream protocol.
pub(crate) enum RequestBody {
    Downstream(DownstreamBody),
    Full(Option<Bytes>),
    Boxed(LocalBody),
}

impl RequestBody {
    /// A body of exactly `bytes` (none at all when empty).
    pub(crate) fn full(bytes: Bytes) -> Self {
        RequestBody::Full((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Downstream(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Boxed(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Downstream(body) => body.is_end_stream(),
            RequestBody::Full(data) => data.is_none(),
            RequestBody::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Downstream(body) => body.size_hint(),
            RequestBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Boxed(body) => body.size_hint(),
        }
    }
}
