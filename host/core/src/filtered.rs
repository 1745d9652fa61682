//! The request path of a listener with proxy-wasm filters: every phase goes through the
//! filter chain with Envoy's semantics (pauses, buffering bodies, local answers, HTTP
//! calls), then the exchange is the plain one. Listeners without filters never come here, so
//! the plain path pays nothing for it.
//!
//! Pauses are rare and the request future is copied into its box on every request, so the
//! common path stays small: the request headers run before any future exists, and a phase
//! that pauses waits in a future of its own, boxed only then.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

use http::{HeaderMap, HeaderValue, Request, Response, Version, request};
use http_body::Body as _;
use rustng_wasm::{Direction, RequestHead, ResponseHead, StreamInfo};

use rustng_abi::extensions;
use rustng_runtime_config::UpstreamProtocol;

use crate::body::{Exchange, ProxyBody};
use crate::connection::ConnCtx;
use crate::downstream_body::DownstreamBody;
use crate::error::ErrorKind;
use crate::error::ProxyError;
use crate::filters::{
    FilteredBody, Held, LocalAnswer, Resumed, SharedFilters, Step, wait_for_resume,
};
use crate::headers;
use crate::listener::ListenerRt;
use crate::proxy::{Forwarding, Routed, local_answer, local_error, response_version};
use crate::tunnel;
use crate::upstream::{
    BoxLocal as _, ClusterRt, Outgoing, RequestBody, RetryPolicy, UpstreamBody, UpstreamResponse,
    send_with_retries,
};

/// A request through the listener's filters: the request headers now, the rest in what is
/// returned. A request no filter paused goes on as a [`Forwarding`] (its future lives in the
/// connection's, as a plain request's does); the rest (a pause, retries, an upgrade) in a
/// boxed future.
pub(crate) fn serve(
    ctx: &Rc<ConnCtx>,
    listener: Rc<ListenerRt>,
    req: Request<DownstreamBody>,
    mut exchange: Exchange,
    upgrade: Option<HeaderValue>,
) -> Routed {
    let version = req.version();
    let (mut parts, body) = req.into_parts();
    let mut head = RequestHead {
        method: std::mem::take(&mut parts.method),
        uri: std::mem::take(&mut parts.uri),
        headers: std::mem::take(&mut parts.headers),
        scheme: if ctx.tls { "https" } else { "http" },
    };
    let stream = StreamInfo {
        source: Some(ctx.peer),
        // The listener's address: a wildcard bind shows as such (getsockname per connection
        // is not worth it until a filter needs the exact interface).
        destination: Some(listener.config.address),
        version,
        tls: ctx.tls,
        properties: Vec::new(),
        trace: exchange.trace,
    };
    let timed = exchange.trace.is_some_and(|ids| ids.sampled);
    let filters = listener.filters.begin(stream, timed);
    exchange.filters = Some(Rc::clone(&filters));
    let no_body = body.is_end_stream();
    let step = {
        let mut active = filters.borrow_mut();
        listener
            .filters
            .request_headers(&mut active, &mut head, 0, no_body)
    };
    let upgrading = upgrade.is_some() && version == Version::HTTP_11;
    if matches!(step, Step::Continue) && !upgrading {
        // The common case, straight on: no `Pending` (440 bytes) to build and move through.
        restore_head(&mut parts, head);
        let limit = listener.config.http.buffer_limit_bytes;
        let responding = Responding {
            filters: Rc::clone(&filters),
            limit,
        };
        let prepared = prepare(&listener, parts, body, exchange, &filters, version);
        return routed(prepared, responding, version);
    }
    let mut request = Pending {
        listener,
        parts,
        body,
        exchange,
        filters,
        upgrade,
        version,
    };
    match step {
        // Only an upgrade gets here: its tunnel is a future of its own.
        Step::Continue => {
            request.finish_head(head);
            Routed::Other(Box::pin(request.send()))
        }
        Step::Answer(answer) => {
            keep_for_log(&request.filters, head);
            let response = local_answer(answer, request.exchange, version);
            Routed::Other(Box::pin(std::future::ready(Ok(response))))
        }
        Step::Pause(index) => Routed::Other(Box::pin(request.paused(head, index))),
    }
}

/// What the response phases of a request need, for [`respond`].
pub(crate) struct Responding {
    filters: SharedFilters,
    /// The listener's `http.buffer_limit_bytes`.
    limit: usize,
}

impl Responding {
    pub(crate) fn filters(&self) -> &SharedFilters {
        &self.filters
    }
}

/// A request ready to leave: where to, and what goes.
struct Prepared {
    cluster: Rc<ClusterRt>,
    outgoing: Outgoing,
    exchange: Exchange,
    retries: Option<RetryPolicy>,
}

/// A request whose headers went through (some of) the filters.
struct Pending {
    /// The listener's version this request runs on, start to end.
    listener: Rc<ListenerRt>,
    parts: request::Parts,
    body: DownstreamBody,
    exchange: Exchange,
    filters: SharedFilters,
    upgrade: Option<HeaderValue>,
    version: Version,
}

impl Pending {
    /// Puts the head the filters went through back into the request. In place: a `Pending`
    /// is ~440 bytes, and passing it through by value copied it twice per request.
    fn finish_head(&mut self, head: RequestHead) {
        restore_head(&mut self.parts, head);
    }

    /// Waits where a filter paused the request headers, runs the remaining filters (which
    /// may pause again), then sends.
    async fn paused(
        self,
        mut head: RequestHead,
        mut index: usize,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let no_body = self.body.is_end_stream();
        loop {
            let position = self.filters.borrow().last_position();
            let resumed = wait_for_resume(
                &self.filters,
                Direction::Request,
                position,
                Held::Request(&mut head),
            )
            .await;
            if let Resumed::Answer(answer) = resumed {
                keep_for_log(&self.filters, head);
                return Ok(local_answer(answer, self.exchange, self.version));
            }
            let step = {
                let mut active = self.filters.borrow_mut();
                self.listener
                    .filters
                    .request_headers(&mut active, &mut head, index + 1, no_body)
            };
            match step {
                Step::Continue => break,
                Step::Answer(answer) => {
                    keep_for_log(&self.filters, head);
                    return Ok(local_answer(answer, self.exchange, self.version));
                }
                Step::Pause(next) => index = next,
            }
        }
        let mut request = self;
        request.finish_head(head);
        request.send().await
    }

    fn prepare(self) -> Result<Prepared, Box<Response<ProxyBody>>> {
        let Pending {
            listener,
            parts,
            body,
            exchange,
            filters,
            upgrade: _,
            version,
        } = self;
        prepare(&listener, parts, body, exchange, &filters, version)
    }

    /// Sends the request and runs the response phases (after a pause, or for an upgrade).
    async fn send(self) -> Result<Response<ProxyBody>, Infallible> {
        let version = self.version;
        let limit = self.listener.config.http.buffer_limit_bytes;
        let filters = Rc::clone(&self.filters);
        if let Some(protocol) = self.upgrade.clone()
            && version == Version::HTTP_11
        {
            let Pending {
                listener,
                parts,
                body,
                mut exchange,
                filters,
                ..
            } = self;
            let cluster = match routed_cluster(&listener, &filters) {
                Ok(cluster) => cluster,
                Err(kind) => return Ok(local_error(kind.into_error(), exchange, version)),
            };
            exchange.set_cluster(&cluster);
            let req = Request::from_parts(parts, body);
            return Ok(tunnel::forward(&cluster, req, protocol, exchange).await);
        }
        match self.prepare() {
            Ok(prepared) => send_prepared(prepared, Responding { filters, limit }, version).await,
            Err(response) => Ok(*response),
        }
    }
}

/// Puts the head the filters went through back into the request.
fn restore_head(parts: &mut request::Parts, head: RequestHead) {
    parts.method = head.method;
    parts.uri = head.uri;
    parts.headers = head.headers;
}

/// The cluster the filters chose, and the request as it leaves (its body through the body
/// callbacks if a filter has them); or the answer when there is no such cluster.
fn prepare(
    listener: &ListenerRt,
    parts: request::Parts,
    body: DownstreamBody,
    exchange: Exchange,
    filters: &SharedFilters,
    version: Version,
) -> Result<Prepared, Box<Response<ProxyBody>>> {
    let limit = listener.config.http.buffer_limit_bytes;
    let cluster = match routed_cluster(listener, filters) {
        Ok(cluster) => cluster,
        Err(kind) => return Err(Box::new(local_error(kind.into_error(), exchange, version))),
    };
    let body = request_body(filters, &parts.headers, body, limit);
    let timeout = if exchange.is_grpc() {
        crate::grpc::bounded(
            routed_timeout(filters),
            cluster.config().timeout,
            crate::grpc::timeout(&parts.headers),
        )
    } else {
        routed_timeout(filters)
    };
    let outgoing = Outgoing {
        head: parts,
        body: Some(body),
        timeout,
        hash: routed_hash(filters),
    };
    let retries = RetryPolicy::from_properties(&filters.borrow().stream.properties);
    {
        // `proxy_on_log` reads the head as it left. An HTTP/1.1 upstream leaves it in
        // place and it is taken back after the send (see `keep_sent_head`); an HTTP/2
        // upstream and retries consume it, so those keep a copy now.
        if retries.is_some() || cluster.config().protocol != UpstreamProtocol::Http1 {
            let head = &outgoing.head;
            filters
                .borrow_mut()
                .keep_request_head(|scheme| RequestHead {
                    method: head.method.clone(),
                    uri: head.uri.clone(),
                    headers: head.headers.clone(),
                    scheme,
                });
        }
    }
    Ok(Prepared {
        cluster,
        outgoing,
        exchange,
        retries,
    })
}

/// Where a prepared request goes: on as a [`Forwarding`] (its future lives in the
/// connection's), unless it retries (its state boxed instead) or was answered.
fn routed(
    prepared: Result<Prepared, Box<Response<ProxyBody>>>,
    responding: Responding,
    version: Version,
) -> Routed {
    match prepared {
        Ok(Prepared {
            cluster,
            outgoing,
            exchange,
            retries: None,
        }) => Routed::Forward(Forwarding::filtered(
            cluster, outgoing, exchange, version, responding,
        )),
        Ok(prepared) => Routed::Other(Box::pin(send_prepared(prepared, responding, version))),
        Err(response) => Routed::Other(Box::pin(std::future::ready(Ok(*response)))),
    }
}

/// Sends a prepared request (with its retries, if any) and runs the response phases.
async fn send_prepared(
    prepared: Prepared,
    responding: Responding,
    version: Version,
) -> Result<Response<ProxyBody>, Infallible> {
    let Prepared {
        cluster,
        outgoing,
        mut exchange,
        retries,
    } = prepared;
    exchange.set_cluster(&cluster);
    let sent = match retries {
        None => {
            let mut outgoing = outgoing;
            let sent = cluster.send(&mut outgoing).await;
            outgoing.body = None;
            keep_sent_head(&responding, outgoing.head);
            sent
        }
        // Boxed: retries are per route, and their state would otherwise grow every
        // request's future.
        Some(policy) => {
            let route_timeout = outgoing.timeout.unwrap_or(cluster.config().timeout);
            Box::pin(send_with_retries(
                &cluster,
                outgoing,
                &policy,
                route_timeout,
                responding.limit,
            ))
            .await
        }
    };
    Ok(
        match respond(sent, &cluster, responding, exchange, version) {
            Responded::Now(response) => response,
            Responded::Later(waiting) => waiting.await,
        },
    )
}

/// Takes the head of a request sent to an HTTP/1.1 upstream back for `proxy_on_log`, when a
/// filter has it and no copy was kept (see `Pending::prepare`). The head alone: the rest of
/// the request (its body) has ended before this.
pub(crate) fn keep_sent_head(responding: &Responding, head: request::Parts) {
    responding.filters.borrow_mut().keep_sent_request(head);
}

/// What the response phases came to: the response, or (a filter paused them) the rest of
/// them, boxed. Pauses are rare: the common path needs no future of its own, so the
/// forwarding future that calls this stays small.
#[allow(
    clippy::large_enum_variant,
    reason = "a return value matched at once; boxing the common variant is what it avoids"
)]
pub(crate) enum Responded {
    Now(Response<ProxyBody>),
    Later(Pin<Box<dyn Future<Output = Response<ProxyBody>>>>),
}

/// An upstream's response while the filters' response headers phase runs on it.
struct Answer {
    parts: http::response::Parts,
    head: ResponseHead,
    body: UpstreamBody,
    endpoint: std::net::SocketAddr,
    no_body: bool,
    /// The whole body, when it came with the head and was taken then, and whether its body
    /// callbacks ran already.
    whole: Option<(bytes::Bytes, bool)>,
}

/// The response phases: the upstream's answer (or the error) through the filters, last
/// filter first. Called with the request gone (its body, if filtered, dropped).
// Inlined, as are the two it ends in, into its callers: the answer and the response on their
// way are then not copied out of each call (a few hundred bytes apiece).
#[inline(always)]
pub(crate) fn respond(
    sent: Result<UpstreamResponse, ProxyError>,
    cluster: &ClusterRt,
    responding: Responding,
    exchange: Exchange,
    version: Version,
) -> Responded {
    let Responding { filters, limit } = responding;
    // A body filter that answered while the request went out wins over the upstream's
    // error.
    let answered = filters.borrow_mut().answer.take();
    if let Some(answer) = answered {
        return Responded::Now(local_answer(answer, exchange, version));
    }
    let upstream = match sent {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(cluster = cluster.name(), %error, source = ?error.source, "request failed");
            return Responded::Now(local_error(error, exchange, version));
        }
    };

    // Response headers, last filter first.
    let UpstreamResponse {
        head: mut parts,
        body,
        endpoint,
    } = upstream;
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = response_version(version);
    let head = ResponseHead {
        status: parts.status,
        headers: std::mem::take(&mut parts.headers),
    };
    let no_body = body.is_end_stream();
    let mut answer = Answer {
        parts,
        head,
        body,
        endpoint,
        no_body,
        whole: None,
    };
    // A small response's whole body comes with its head: taken now, its body callbacks run
    // at once (see `whole_response`), and with one filter in the same guest entry as its
    // headers callback.
    if !no_body && filters.borrow().wants_body(Direction::Response) {
        answer.whole = answer.body.take_buffered().map(|data| (data, false));
    }
    let single = filters.borrow().single_context();
    let step = match &mut answer.whole {
        Some((data, body_done)) if single => {
            let (step, done) = filters.borrow_mut().whole_response(&mut answer.head, data);
            *body_done = done;
            step
        }
        _ => filters
            .borrow_mut()
            .response_headers(&mut answer.head, 0, no_body),
    };
    match step {
        Step::Continue => {
            Responded::Now(finish_response(answer, filters, limit, exchange, version))
        }
        // The upstream body is dropped unread: its connection is not reused.
        Step::Answer(local) => Responded::Now(local_answer(local, exchange, version)),
        Step::Pause(position) => Responded::Later(Box::pin(respond_after_pause(
            answer, filters, limit, exchange, version, position,
        ))),
    }
}

/// The response headers phase from where a filter paused it, to the end.
async fn respond_after_pause(
    mut answer: Answer,
    filters: SharedFilters,
    limit: usize,
    exchange: Exchange,
    version: Version,
    mut position: usize,
) -> Response<ProxyBody> {
    loop {
        let held = Held::Response(&mut answer.head);
        match wait_for_resume(&filters, Direction::Response, position, held).await {
            Resumed::Continue => {}
            Resumed::Answer(local) => return local_answer(local, exchange, version),
        }
        let step =
            filters
                .borrow_mut()
                .response_headers(&mut answer.head, position + 1, answer.no_body);
        match step {
            Step::Continue => return finish_response(answer, filters, limit, exchange, version),
            Step::Answer(local) => return local_answer(local, exchange, version),
            Step::Pause(next) => position = next,
        }
    }
}

/// The response once its headers went through every filter: its body through the body
/// callbacks if a filter has them.
#[inline(always)]
fn finish_response(
    answer: Answer,
    filters: SharedFilters,
    limit: usize,
    mut exchange: Exchange,
    version: Version,
) -> Response<ProxyBody> {
    let Answer {
        mut parts,
        head,
        body,
        endpoint,
        no_body,
        whole,
    } = answer;
    if !matches!(version, Version::HTTP_10 | Version::HTTP_11) {
        // HTTP/2 and HTTP/3 give the head away: `proxy_on_log` gets a copy. (The HTTP/1.1
        // server hands it back once written, `ProxyBody::head_sent`.)
        filters.borrow_mut().keep_response_head(|| head.clone());
    }
    parts.status = head.status;
    parts.headers = head.headers;
    exchange.set_status(parts.status.as_u16());
    exchange.observe_grpc_status(&parts.headers);
    exchange.set_upstream(Some(endpoint));
    if no_body || !filters.borrow().wants_body(Direction::Response) {
        // Nothing to run on the body: it streams untouched.
        return Response::from_parts(parts, ProxyBody::upstream(body, exchange));
    }
    if let Some((data, body_done)) = whole {
        return whole_response(parts, data, body_done, &filters, exchange, version);
    }
    let body = FilteredBody::new(
        Direction::Response,
        body,
        Rc::clone(&filters),
        content_length(&parts.headers),
        limit,
    );
    Response::from_parts(parts, ProxyBody::boxed(body.boxed_local(), exchange))
}

/// A response whose body came whole with its head (a small one, the common case): its body
/// callbacks run now, once, with the end of the stream, and it leaves as one complete message.
/// No body stream is polled through the filters, and an answer a filter gives instead still
/// comes before anything was sent.
#[inline(always)]
fn whole_response(
    parts: http::response::Parts,
    mut data: bytes::Bytes,
    body_done: bool,
    filters: &SharedFilters,
    exchange: Exchange,
    version: Version,
) -> Response<ProxyBody> {
    let step = match body_done {
        // Fused with the headers callback (see `respond`).
        true => Step::Continue,
        false => filters
            .borrow_mut()
            .body(Direction::Response, &mut data, true, 0),
    };
    match step {
        // Nothing is held at the end of the stream: a filter that buffers gets it all now.
        Step::Continue | Step::Pause(_) => {}
        Step::Answer(answer) => return local_answer(answer, exchange, version),
    }
    if content_length(&parts.headers).is_some_and(|announced| announced != data.len() as u64) {
        // As a streamed body would have been cut off; here the client gets a clean answer.
        tracing::warn!("a filter changed the response body's size but not its content-length");
        let answer = LocalAnswer::text(
            http::StatusCode::BAD_GATEWAY,
            "filter changed the body size but not content-length",
        );
        return local_answer(answer, exchange, version);
    }
    Response::from_parts(parts, ProxyBody::local_bytes(data, Some(exchange)))
}

/// A request answered before it left: its head stays for `proxy_on_log` (no copy needed).
fn keep_for_log(filters: &SharedFilters, head: RequestHead) {
    filters.borrow_mut().keep_request_head(|_| head);
}

/// Where the request goes: the cluster a filter named in `rustng.route.cluster`, else the
/// listener's default.
fn routed_cluster(
    listener: &ListenerRt,
    filters: &SharedFilters,
) -> Result<Rc<ClusterRt>, ErrorKind> {
    let filters = filters.borrow();
    let named = filters
        .stream
        .properties
        .iter()
        .find(|(path, _)| extensions::property_is(path, extensions::ROUTE_CLUSTER));
    match named {
        Some((_, name)) => std::str::from_utf8(name)
            .ok()
            .and_then(|name| listener.clusters.get(name))
            .ok_or(ErrorKind::ClusterNotFound),
        None => listener.default_cluster.clone().ok_or(ErrorKind::NoRoute),
    }
}

/// The response-head timeout a filter set in `rustng.route.timeout_ms`, if a valid one.
fn routed_timeout(filters: &SharedFilters) -> Option<std::time::Duration> {
    let filters = filters.borrow();
    let (_, value) = filters
        .stream
        .properties
        .iter()
        .find(|(path, _)| extensions::property_is(path, extensions::ROUTE_TIMEOUT_MS))?;
    let ms: u64 = std::str::from_utf8(value).ok()?.trim().parse().ok()?;
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// The hash of the key a filter set in `rustng.route.hash_key` (ring hash, Maglev).
fn routed_hash(filters: &SharedFilters) -> Option<u64> {
    let filters = filters.borrow();
    let (_, key) = filters
        .stream
        .properties
        .iter()
        .find(|(path, _)| extensions::property_is(path, extensions::ROUTE_HASH_KEY))?;
    Some(crate::upstream::hash_key(key))
}

/// The request body as it leaves: through the body callbacks if any filter has them.
fn request_body(
    filters: &SharedFilters,
    headers: &HeaderMap,
    body: DownstreamBody,
    limit: usize,
) -> RequestBody {
    if body.is_end_stream() || !filters.borrow().wants_body(Direction::Request) {
        return RequestBody::Downstream(body);
    }
    RequestBody::Boxed(
        FilteredBody::new(
            Direction::Request,
            body,
            Rc::clone(filters),
            content_length(headers),
            limit,
        )
        .boxed_local(),
    )
}

/// The announced body length, a hint for the body filters' buffers.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    crate::h1::decode::content_length(headers).ok().flatten()
}
