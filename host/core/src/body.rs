//! The response body RustNg sends downstream, and the end of an exchange.
//!
//! The body streams the upstream's frames as they come (no buffering) and carries the
//! [`Exchange`], whose drop is the single place where a request ends: the access log line is
//! written, the upstream connection goes back to its pool (only if the body was read to the
//! end) and the downstream connection's idle clock restarts.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::AccessRecord;
use crate::connection::ConnCtx;
use crate::upstream::PoolReturn;

/// Everything that must happen when a request ends, however it ends: with the body read to
/// the end, with the client gone mid-body, or with the request future dropped before any
/// response (the access log then says 499, nginx's "client closed request").
pub(crate) struct Exchange {
    conn: Rc<ConnCtx>,
    start: Instant,
    pub(crate) record: Option<AccessRecord>,
    pub(crate) pool: Option<PoolReturn>,
    bytes: u64,
    completed: bool,
}

impl Exchange {
    pub(crate) fn begin(conn: Rc<ConnCtx>, record: Option<AccessRecord>) -> Self {
        let start = conn.state.request_started();
        Exchange {
            conn,
            start,
            record,
            pool: None,
            bytes: 0,
            completed: false,
        }
    }

    /// Records the response status for the access log.
    pub(crate) fn set_status(&mut self, status: u16) {
        if let Some(record) = &mut self.record {
            record.status = status;
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            // A body not read to the end leaves the connection mid-message: never reuse it.
            if self.completed {
                pool.checkin();
            }
        }
        if let Some(record) = &self.record {
            record.emit(self.start.elapsed(), self.bytes, self.completed);
        }
        self.conn.state.request_finished();
    }
}

enum Kind {
    Upstream(Incoming),
    Local(Option<Bytes>),
}

/// A downstream response body: the upstream's, streamed, or a local one.
pub(crate) struct ProxyBody {
    kind: Kind,
    exchange: Option<Exchange>,
    bytes: u64,
    ended: bool,
}

impl ProxyBody {
    pub(crate) fn upstream(body: Incoming, exchange: Exchange) -> Self {
        ProxyBody {
            kind: Kind::Upstream(body),
            exchange: Some(exchange),
            bytes: 0,
            ended: false,
        }
    }

    pub(crate) fn local(text: &'static str, exchange: Option<Exchange>) -> Self {
        ProxyBody {
            kind: Kind::Local(if text.is_empty() {
                None
            } else {
                Some(Bytes::from_static(text.as_bytes()))
            }),
            exchange,
            bytes: 0,
            ended: false,
        }
    }

    fn inner_ended(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Local(data) => data.is_none(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => this.ended = true,
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner_ended()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // hyper stops polling once `is_end_stream` says so, so "ended" is either.
        let completed = self.ended || self.inner_ended();
        if let Some(exchange) = &mut self.exchange {
            exchange.bytes = self.bytes;
            exchange.completed = completed;
        }
    }
}
