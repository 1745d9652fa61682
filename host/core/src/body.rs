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
use crate::filters::SharedFilters;
use crate::upstream::{BoxError, H1Body, LocalBody, UpstreamBody};

/// Everything that must happen when a request ends, however it ends: with the body read to
/// the end, with the client gone mid-body, or with the request future dropped before any
/// response (the access log then says 499, nginx's "client closed request"). The upstream
/// connection is not its business: the upstream body returns it when, and only if, it was read
/// to the end.
pub(crate) struct Exchange {
    conn: Rc<ConnCtx>,
    /// For the access log and the listener's latency histogram.
    start: Instant,
    /// The status answered; 0 until there is one.
    status: u16,
    /// Boxed: ~200 bytes that every request future would otherwise carry (and copy) even
    /// with the access log off.
    pub(crate) record: Option<Box<AccessRecord>>,
    /// The filters' stream contexts, ended (done, log, delete) when the last holder (this,
    /// or a filtered body) lets go.
    pub(crate) filters: Option<SharedFilters>,
    bytes: u64,
    completed: bool,
    /// A gRPC request (its path, and the status once seen): RustNg's own answers to it are
    /// gRPC statuses, and it is counted per method. Boxed: only gRPC requests carry it.
    grpc: Option<Box<GrpcCall>>,
    /// The request's trace context, while tracing is on (filters read it as properties).
    pub(crate) trace: Option<rustng_abi::trace::TraceIds>,
}

struct GrpcCall {
    path: http::uri::PathAndQuery,
    status: Option<u32>,
}

impl Exchange {
    pub(crate) fn begin(conn: Rc<ConnCtx>, record: Option<Box<AccessRecord>>) -> Self {
        conn.state.request_started();
        Exchange {
            conn,
            start: Instant::now(),
            status: 0,
            record,
            filters: None,
            bytes: 0,
            completed: false,
            grpc: None,
            trace: None,
        }
    }

    /// Marks a gRPC request to `path` (see `crate::grpc`).
    pub(crate) fn mark_grpc(&mut self, path: http::uri::PathAndQuery) {
        self.grpc = Some(Box::new(GrpcCall { path, status: None }));
    }

    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc.is_some()
    }

    /// The call's gRPC status, when RustNg answered it or saw it in a head or trailers.
    pub(crate) fn set_grpc_status(&mut self, status: u32) {
        if let Some(call) = &mut self.grpc {
            call.status = Some(status);
        }
    }

    /// Takes `grpc-status` from response headers or trailers of a gRPC call.
    pub(crate) fn observe_grpc_status(&mut self, fields: &http::HeaderMap) {
        if let Some(call) = &mut self.grpc
            && let Some(status) = fields
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        {
            call.status = Some(status);
        }
    }

    /// The cluster the request goes to, for its span.
    pub(crate) fn set_cluster(&mut self, cluster: &crate::upstream::ClusterRt) {
        if let Some(span) = self.record.as_mut().and_then(|r| r.span.as_mut()) {
            span.cluster = Some(cluster.name().to_owned());
        }
    }

    /// The endpoint that answered (or failed), for the access log and the span.
    pub(crate) fn set_upstream(&mut self, endpoint: Option<std::net::SocketAddr>) {
        if let Some(record) = &mut self.record {
            record.upstream = endpoint;
        }
    }

    /// Why RustNg answered itself (Envoy's response flags), for the access log and the span.
    pub(crate) fn set_error(&mut self, reason: &'static str) {
        if let Some(record) = &mut self.record {
            record.error = Some(reason);
        }
    }

    /// Records the response status for the access log.
    pub(crate) fn set_status(&mut self, status: u16) {
        self.status = status;
        if let Some(record) = &mut self.record {
            record.status = status;
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.start);
        if let Some(record) = &mut self.record {
            if record.logged {
                record.emit(elapsed, self.bytes, self.completed);
            }
            if let Some(span) = record.span.take() {
                let active = self.filters.as_ref().and_then(|f| f.try_borrow().ok());
                let route_name = active.as_ref().and_then(|a| {
                    a.stream.properties.iter().find_map(|(path, value)| {
                        rustng_abi::extensions::property_is(
                            path,
                            rustng_abi::extensions::ROUTE_NAME,
                        )
                        .then(|| std::str::from_utf8(value).ok())
                        .flatten()
                    })
                });
                span.finish(
                    record,
                    &crate::trace::span::Outcome {
                        elapsed,
                        bytes: self.bytes,
                        grpc_status: self.grpc.as_ref().and_then(|call| call.status),
                        plugin_time: active.as_ref().map_or(&[], |a| a.plugin_time()),
                        route_name,
                    },
                );
            }
        }
        self.conn.listener.record_request(self.status, elapsed);
        if let Some(call) = &self.grpc {
            self.conn
                .listener
                .record_grpc(call.path.path(), call.status);
        }
        self.conn.state.request_finished(now);
    }
}

enum Kind {
    Http1(H1Body),
    Incoming(Incoming),
    Http2(crate::upstream::H2Body),
    Local(Option<Bytes>),
    /// Through the filters (listeners with plugins only).
    Boxed(LocalBody),
}

/// A downstream response body: the upstream's, streamed, or a local one.
pub(crate) struct ProxyBody {
    kind: Kind,
    exchange: Option<Exchange>,
    bytes: u64,
    ended: bool,
}

impl ProxyBody {
    pub(crate) fn upstream(body: UpstreamBody, exchange: Exchange) -> Self {
        let kind = match body {
            UpstreamBody::Http1(body) => Kind::Http1(body),
            UpstreamBody::Http2(body) => Kind::Http2(body),
        };
        ProxyBody {
            kind,
            exchange: Some(exchange),
            bytes: 0,
            ended: false,
        }
    }

    /// A body RustNg made (a plugin's local response); empty means no body frame at all.
    pub(crate) fn local_bytes(body: Bytes, exchange: Option<Exchange>) -> Self {
        ProxyBody {
            kind: Kind::Local((!body.is_empty()).then_some(body)),
            exchange,
            bytes: 0,
            ended: false,
        }
    }

    /// A body the filters produce.
    pub(crate) fn boxed(body: LocalBody, exchange: Exchange) -> Self {
        ProxyBody {
            kind: Kind::Boxed(body),
            exchange: Some(exchange),
            bytes: 0,
            ended: false,
        }
    }

    /// A body that wraps another `ProxyBody` (which keeps the exchange): a translation.
    pub(crate) fn wrapping(body: LocalBody) -> Self {
        ProxyBody {
            kind: Kind::Boxed(body),
            exchange: None,
            bytes: 0,
            ended: false,
        }
    }

    /// A body straight from hyper (the answer to a protocol-switch request).
    pub(crate) fn incoming(body: Incoming, exchange: Exchange) -> Self {
        ProxyBody {
            kind: Kind::Incoming(body),
            exchange: Some(exchange),
            bytes: 0,
            ended: false,
        }
    }

    /// A fixed local body (error texts).
    pub(crate) fn local(text: &'static str, exchange: Option<Exchange>) -> Self {
        ProxyBody::local_bytes(Bytes::from_static(text.as_bytes()), exchange)
    }

    /// The response head, once written to an HTTP/1.1 client: kept for the filters'
    /// `proxy_on_log` (Envoy shows it there) when one of them has it, else dropped. The
    /// HTTP/2 and HTTP/3 servers give the head away, so the filters keep a copy for those.
    pub(crate) fn head_sent(&self, head: http::response::Parts) {
        let Some(filters) = self.exchange.as_ref().and_then(|e| e.filters.as_ref()) else {
            return;
        };
        filters
            .borrow_mut()
            .keep_response_head(|| rustng_wasm::ResponseHead {
                status: head.status,
                headers: head.headers,
            });
    }

    fn inner_ended(&self) -> bool {
        match &self.kind {
            Kind::Http1(body) => body.is_end_stream(),
            Kind::Incoming(body) => body.is_end_stream(),
            Kind::Http2(body) => body.is_end_stream(),
            Kind::Local(data) => data.is_none(),
            Kind::Boxed(body) => body.is_end_stream(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Http1(body) => Pin::new(body).poll_frame(cx),
            Kind::Incoming(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Kind::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
            Kind::Local(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Boxed(body) => Pin::new(body).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                } else if let (Some(trailers), Some(exchange)) =
                    (frame.trailers_ref(), this.exchange.as_mut())
                {
                    exchange.observe_grpc_status(trailers);
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
            Kind::Http1(body) => body.size_hint(),
            Kind::Incoming(body) => body.size_hint(),
            Kind::Http2(body) => body.size_hint(),
            Kind::Local(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Boxed(body) => body.size_hint(),
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
