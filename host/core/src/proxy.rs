//! The per-request pipeline: clean the request, pick the cluster, forward, stream the answer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper::body::Incoming;

use crate::downstream_body::DownstreamBody;

use crate::access_log::AccessRecord;
use crate::body::{Exchange, ProxyBody};
use crate::connection::ConnCtx;
use crate::error::ProxyError;
use crate::filtered;
use crate::filters::LocalAnswer;
use crate::grpc_web::Encoding;
use crate::headers;
use crate::tunnel;
use crate::upstream::{BoxLocal as _, ClusterRt, Outgoing, RequestBody};

/// The hyper service of one downstream connection.
pub(crate) struct ProxyService {
    ctx: Rc<ConnCtx>,
}

impl ProxyService {
    pub(crate) fn new(ctx: Rc<ConnCtx>) -> Self {
        ProxyService { ctx }
    }

    /// The listener's bound on receiving a request head (HTTP/3 also waits this long for the
    /// end of a body-less request).
    pub(crate) fn request_headers_timeout(&self) -> std::time::Duration {
        self.ctx
            .listener
            .current()
            .config
            .http
            .request_headers_timeout
    }
}

pub(crate) type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>>>>;

/// hyper serves HTTP/2; HTTP/1.1 has RustNg's own connection loop (`h1::Connection`).
impl hyper::service::Service<Request<Incoming>> for ProxyService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> ResponseFuture {
        match self.route(req.map(DownstreamBody::http2)) {
            Routed::Forward(forwarding) => Box::pin(forwarding.run()),
            Routed::Other(future) => future,
        }
    }
}

/// Where a request goes once its head has been dealt with.
#[allow(
    clippy::large_enum_variant,
    reason = "a return value that lives for one match; boxing the common variant is what it avoids"
)]
pub(crate) enum Routed {
    /// Plain proxying, the common case: its future can live inside the connection's (the
    /// HTTP/1.1 loop awaits it in place), so nothing is boxed or copied per request.
    Forward(Forwarding),
    /// Through filters, a tunnel, or a local answer.
    Other(ResponseFuture),
}

/// A request on its way to a cluster: its head dealt with (by the filters too, if the
/// listener has any), nothing left to wait for before it leaves.
pub(crate) struct Forwarding {
    cluster: Rc<ClusterRt>,
    outgoing: Outgoing,
    exchange: Exchange,
    version: Version,
    /// A gRPC-Web request: the gRPC response goes back translated.
    grpc_web: Option<Encoding>,
    /// The listener announces HTTP/3 (`alt-svc`).
    alt_svc: Option<HeaderValue>,
    /// The filters' response phases, on a listener with filters.
    filters: Option<filtered::Responding>,
}

impl Forwarding {
    /// A request the filters let through, their response phases still to run.
    pub(crate) fn filtered(
        cluster: Rc<ClusterRt>,
        outgoing: Outgoing,
        exchange: Exchange,
        version: Version,
        responding: filtered::Responding,
    ) -> Forwarding {
        Forwarding {
            cluster,
            outgoing,
            exchange,
            version,
            grpc_web: None,
            alt_svc: None,
            filters: Some(responding),
        }
    }

    pub(crate) fn run(self) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
        forward(self)
    }
}

impl Routed {
    /// The same, with the response announcing HTTP/3.
    fn announcing(self, alt_svc: HeaderValue) -> Routed {
        match self {
            Routed::Forward(mut forwarding) => {
                forwarding.alt_svc = Some(alt_svc);
                Routed::Forward(forwarding)
            }
            Routed::Other(future) => Routed::Other(then(future, move |mut response| {
                response.headers_mut().insert(header::ALT_SVC, alt_svc);
                response
            })),
        }
    }

    /// The same, with the response translated back to gRPC-Web.
    fn answered_as_grpc_web(self, encoding: Encoding) -> Routed {
        match self {
            Routed::Forward(mut forwarding) => {
                forwarding.grpc_web = Some(encoding);
                Routed::Forward(forwarding)
            }
            Routed::Other(future) => Routed::Other(then(future, move |response| {
                crate::grpc_web::translate_response(response, encoding)
            })),
        }
    }
}

/// `future`'s response through `change`.
fn then(
    future: ResponseFuture,
    change: impl FnOnce(Response<ProxyBody>) -> Response<ProxyBody> + 'static,
) -> ResponseFuture {
    Box::pin(async move { Ok(change(future.await?)) })
}

impl ProxyService {
    /// Everything that needs no waiting (header rules, request id, cluster choice) happens here,
    /// before any future exists: the future then holds only what crosses an `.await`.
    pub(crate) fn route(&self, req: Request<DownstreamBody>) -> Routed {
        let listener = self.ctx.listener.current();
        match listener.alt_svc.clone() {
            Some(alt_svc) if req.version() != Version::HTTP_3 => {
                self.route_grpc_web(req, listener).announcing(alt_svc)
            }
            _ => self.route_grpc_web(req, listener),
        }
    }

    fn route_grpc_web(
        &self,
        mut req: Request<DownstreamBody>,
        listener: Rc<crate::listener::ListenerRt>,
    ) -> Routed {
        if !listener.config.grpc_web {
            return self.route_with(req, listener);
        }
        // gRPC-Web: translated to gRPC first, so that everything after (filters included)
        // sees gRPC, and back at the end.
        match crate::grpc_web::translate_request(req.headers_mut()) {
            None => self.route_with(req, listener),
            Some(encoding) => {
                if encoding == Encoding::Text {
                    req = req.map(|body| {
                        body.translated(|b| crate::grpc_web::DecodeText::new(b).boxed_local())
                    });
                }
                self.route_with(req, listener)
                    .answered_as_grpc_web(encoding)
            }
        }
    }

    fn route_with(
        &self,
        mut req: Request<DownstreamBody>,
        listener: Rc<crate::listener::ListenerRt>,
    ) -> Routed {
        let ctx = &self.ctx;
        let downstream_version = req.version();
        let removed = headers::strip_hop_by_hop(req.headers_mut());
        headers::add_forwarding(req.headers_mut(), &ctx.client_address, ctx.tls);
        let request_id = headers::ensure_request_id(req.headers_mut());
        let (trace, span) = match &listener.tracer {
            Some(tracer) => {
                let (ids, span) = tracer.begin(&mut req, ctx.tls);
                (Some(ids), span)
            }
            None => (None, None),
        };

        let record = (listener.config.access_log || span.is_some()).then(|| {
            Box::new(AccessRecord {
                listener: Rc::clone(&listener.name),
                client: ctx.peer,
                method: req.method().clone(),
                path: req.uri().path_and_query().cloned(),
                version: downstream_version,
                request_id: Some(request_id),
                status: 499,
                upstream: None,
                error: None,
                trace_id: trace.map(|ids| ids.trace_id),
                logged: listener.config.access_log,
                span,
            })
        });
        let mut exchange = Exchange::begin(Rc::clone(ctx), record);
        exchange.trace = trace;
        let grpc = crate::grpc::is_grpc(req.headers());
        if grpc {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            exchange.mark_grpc(path);
        }

        // The filters see the request as it will leave (forwarding headers and request id
        // included), and may change it or answer it, as Envoy's HTTP filters do.
        if !listener.filters.is_empty() {
            return filtered::serve(ctx, listener, req, exchange, removed.upgrade);
        }

        let Some(cluster) = listener.default_cluster.clone() else {
            let response = local_error(
                crate::error::ErrorKind::NoRoute.into_error(),
                exchange,
                downstream_version,
            );
            return Routed::Other(Box::pin(std::future::ready(Ok(response))));
        };

        if let Some(protocol) = removed.upgrade
            && downstream_version == Version::HTTP_11
        {
            return Routed::Other(Box::pin(async move {
                Ok(tunnel::forward(&cluster, req, protocol, exchange).await)
            }));
        }

        let (head, body) = req.into_parts();
        let timeout = if grpc {
            crate::grpc::bounded(
                None,
                cluster.config().timeout,
                crate::grpc::timeout(&head.headers),
            )
        } else {
            None
        };
        let outgoing = Outgoing {
            head,
            body: Some(RequestBody::Downstream(body)),
            timeout,
            hash: None,
        };
        Routed::Forward(Forwarding {
            cluster,
            outgoing,
            exchange,
            version: downstream_version,
            grpc_web: None,
            alt_svc: None,
            filters: None,
        })
    }
}

/// Sends the request upstream and builds the response head.
// Not an `async fn` on purpose: its parameters would be copied into locals, and the request
// would sit in the future twice (measured with -Zprint-type-sizes: 1.9 KB against 1 KB). The
// answer's last touches (gRPC-Web, `alt-svc`) are in here too: awaiting this future from
// another would keep two copies of it in that one (4 KB, copied per request).
#[allow(clippy::manual_async_fn)]
fn forward(
    forwarding: Forwarding,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
    let Forwarding {
        cluster,
        mut outgoing,
        mut exchange,
        version: downstream_version,
        grpc_web,
        alt_svc,
        filters,
    } = forwarding;
    async move {
        exchange.set_cluster(&cluster);
        let sent = cluster.send(&mut outgoing).await;
        let response = match filters {
            Some(responding) => {
                // A gRPC-Web translation wraps the body, which then cannot give the head back
                // to the filters once written: they keep a copy of the gRPC head instead.
                let logging = grpc_web.map(|_| Rc::clone(responding.filters()));
                // The request is gone: its body (filtered or not) ends before the response
                // phases.
                outgoing.body = None;
                filtered::keep_sent_head(&responding, outgoing.head);
                let response = match filtered::respond(
                    sent,
                    &cluster,
                    responding,
                    exchange,
                    downstream_version,
                ) {
                    filtered::Responded::Now(response) => response,
                    // Awaited here, never stored: the future keeps only the box.
                    filtered::Responded::Later(waiting) => waiting.await,
                };
                if let Some(filters) = logging {
                    filters
                        .borrow_mut()
                        .keep_response_head(|| rustng_wasm::ResponseHead {
                            status: response.status(),
                            headers: response.headers().clone(),
                        });
                }
                response
            }
            None => match sent {
                Ok(upstream) => {
                    let mut parts = upstream.head;
                    headers::strip_hop_by_hop(&mut parts.headers);
                    parts.version = response_version(downstream_version);
                    exchange.set_status(parts.status.as_u16());
                    // A trailers-only answer has its status in the head.
                    exchange.observe_grpc_status(&parts.headers);
                    exchange.set_upstream(Some(upstream.endpoint));
                    Response::from_parts(parts, ProxyBody::upstream(upstream.body, exchange))
                }
                Err(error) => {
                    tracing::warn!(cluster = cluster.name(), %error, source = ?error.source, "request failed");
                    local_error(error, exchange, downstream_version)
                }
            },
        };
        let mut response = match grpc_web {
            None => response,
            Some(encoding) => crate::grpc_web::translate_response(response, encoding),
        };
        if let Some(value) = alt_svc {
            response.headers_mut().insert(header::ALT_SVC, value);
        }
        Ok(response)
    }
}

pub(crate) fn response_version(downstream: Version) -> Version {
    if downstream == Version::HTTP_2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

/// A filter's local response, or the answer of a failing filter's policy.
pub(crate) fn local_answer(
    answer: LocalAnswer,
    mut exchange: Exchange,
    version: Version,
) -> Response<ProxyBody> {
    exchange.set_error(answer.reason);
    let grpc = exchange.is_grpc().then(|| {
        answer
            .grpc_status
            .unwrap_or_else(|| crate::grpc::status_for(answer.status))
    });
    if let Some(code) = grpc {
        exchange.set_grpc_status(code);
    }
    let status = if grpc.is_some() {
        StatusCode::OK
    } else {
        answer.status
    };
    exchange.set_status(status.as_u16());
    let (body, message) = if grpc.is_some() {
        (
            Bytes::new(),
            String::from_utf8_lossy(&answer.body).into_owned(),
        )
    } else {
        (Bytes::from(answer.body), String::new())
    };
    let mut response = Response::new(ProxyBody::local_bytes(body, Some(exchange)));
    *response.status_mut() = status;
    *response.version_mut() = response_version(version);
    for (name, value) in answer.headers {
        if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
            response.headers_mut().append(name, value);
        }
    }
    if let Some(code) = grpc {
        crate::grpc::trailers_only(response.headers_mut(), code, &message);
    }
    response
}

/// A response RustNg makes itself, with the error's text as body (as Envoy does).
pub(crate) fn local_error(
    error: ProxyError,
    mut exchange: Exchange,
    version: Version,
) -> Response<ProxyBody> {
    let status = error.kind.status();
    exchange.set_error(error.kind.as_str());
    exchange.set_upstream(error.endpoint);
    let mut response = if exchange.is_grpc() {
        // The request's deadline passed: gRPC's own word for it, whatever HTTP would say.
        let code = if error.kind == crate::error::ErrorKind::UpstreamTimeout {
            crate::grpc::DEADLINE_EXCEEDED
        } else {
            crate::grpc::status_for(status)
        };
        exchange.set_status(StatusCode::OK.as_u16());
        exchange.set_grpc_status(code);
        let mut response = Response::new(ProxyBody::local_bytes(Bytes::new(), Some(exchange)));
        *response.version_mut() = response_version(version);
        crate::grpc::trailers_only(response.headers_mut(), code, error.kind.as_str());
        response
    } else {
        exchange.set_status(status.as_u16());
        local_response(status, error.kind.as_str(), Some(exchange), version)
    };
    if error.kind == crate::error::ErrorKind::Overflow {
        // Envoy's header for a circuit breaker's 503: clients and dashboards know it.
        response.headers_mut().insert(
            http::HeaderName::from_static("x-envoy-overloaded"),
            HeaderValue::from_static("true"),
        );
    }
    response
}

pub(crate) fn local_response(
    status: StatusCode,
    text: &'static str,
    exchange: Option<Exchange>,
    version: Version,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(text, exchange));
    *response.status_mut() = status;
    *response.version_mut() = response_version(version);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
