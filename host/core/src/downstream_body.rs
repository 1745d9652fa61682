//! The body of a client's request, whichever protocol brought it: RustNg's own HTTP/1.1
//! connection, hyper's HTTP/2 or HTTP/3. It also carries the protocol switch an HTTP/1.1 request may
//! lead to, so that the tunnel finds it with the request it belongs to.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::h1::{H1RequestBody, OnUpgrade};
use crate::upstream::BoxError;

enum Kind {
    Empty,
    Http1(H1RequestBody),
    Http2(Incoming),
    /// A translated body (gRPC-Web text, decoded).
    Boxed(crate::upstream::LocalBody),
}

/// A request body from downstream.
pub(crate) struct DownstreamBody {
    kind: Kind,
    upgrade: Option<OnUpgrade>,
}

impl DownstreamBody {
    pub(crate) fn http1(body: Option<H1RequestBody>, upgrade: Option<OnUpgrade>) -> Self {
        DownstreamBody {
            kind: body.map_or(Kind::Empty, Kind::Http1),
            upgrade,
        }
    }

    /// A request without a body.
    pub(crate) fn empty() -> Self {
        DownstreamBody {
            kind: Kind::Empty,
            upgrade: None,
        }
    }

    /// A body from a codec without a variant of its own (HTTP/3).
    pub(crate) fn boxed(body: crate::upstream::LocalBody) -> Self {
        DownstreamBody {
            kind: Kind::Boxed(body),
            upgrade: None,
        }
    }

    pub(crate) fn http2(body: Incoming) -> Self {
        DownstreamBody {
            kind: Kind::Http2(body),
            upgrade: None,
        }
    }

    /// The body through `translate` (which gets the original, without its protocol switch).
    pub(crate) fn translated(
        self,
        translate: impl FnOnce(DownstreamBody) -> crate::upstream::LocalBody,
    ) -> Self {
        let upgrade = None;
        DownstreamBody {
            kind: Kind::Boxed(translate(self)),
            upgrade,
        }
    }

    /// The connection's protocol switch, if the request may lead to one (HTTP/1.1 only).
    pub(crate) fn take_upgrade(&mut self) -> Option<OnUpgrade> {
        self.upgrade.take()
    }
}

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Http1(body) => Pin::new(body).poll_frame(cx),
            Kind::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Kind::Boxed(body) => body.as_mut().poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Http1(body) => body.is_end_stream(),
            Kind::Http2(body) => body.is_end_stream(),
            Kind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Http1(body) => body.size_hint(),
            Kind::Http2(body) => body.size_hint(),
            Kind::Boxed(body) => body.size_hint(),
        }
    }
}
