//! The request path of a listener with proxy-wasm filters: every phase goes through the
//! filter chain with Envoy's semantics (pauses, buffering bodies, local answers, HTTP
//! calls), then the exchange is the plain one. Listeners without filters never come here, so
//! the plain path pays nothing for it.

use std::cell::RefCell;
use std::convert::Infallible;
use std::rc::Rc;

use http::{HeaderMap, HeaderValue, Request, Response, Version, header};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use rustng_wasm::{Direction, RequestHead, ResponseHead, StreamInfo};

use crate::body::{Exchange, ProxyBody};
use crate::connection::ConnCtx;
use crate::error::ErrorKind;
use crate::filters::{FilteredBody, Resumed, SharedFilters, Step, wait_for_resume};
use crate::headers;
use crate::proxy::{local_answer, local_error, protocol_name, response_version};
use crate::tunnel;
use crate::upstream::{BoxError, BoxLocal as _, LocalBody, Outgoing, RequestBody, UpstreamBody};

/// Serves one request through the listener's filters.
pub(crate) async fn forward(
    ctx: Rc<ConnCtx>,
    req: Request<Incoming>,
    mut exchange: Exchange,
    upgrade: Option<HeaderValue>,
) -> Result<Response<ProxyBody>, Infallible> {
    let version = req.version();
    let limit = ctx.listener.config.http.buffer_limit_bytes;
    let (mut parts, body) = req.into_parts();
    let mut head = RequestHead {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: std::mem::take(&mut parts.headers),
        scheme: if ctx.tls { "https" } else { "http" },
    };
    let stream = StreamInfo {
        source: Some(ctx.peer),
        // The listener's address: a wildcard bind shows as such (getsockname per connection
        // is not worth it until a filter needs the exact interface).
        destination: Some(ctx.listener.config.address),
        protocol: protocol_name(version),
        tls: ctx.tls,
        properties: Vec::new(),
    };
    let filters: SharedFilters = Rc::new(RefCell::new(ctx.listener.filters.begin(stream)));
    exchange.filters = Some(Rc::clone(&filters));

    // Request headers, first filter to last, waiting wherever one pauses.
    let no_body = body.is_end_stream();
    let mut from = 0;
    loop {
        let step = {
            let mut active = filters.borrow_mut();
            ctx.listener
                .filters
                .request_headers(&mut active, &mut head, from, no_body)
        };
        match step {
            Step::Continue => break,
            Step::Answer(answer) => return Ok(local_answer(answer, exchange, version)),
            Step::Pause(index) => {
                let position = filters.borrow().last_position();
                let resumed =
                    wait_for_resume(&filters, Direction::Request, position, Some(&mut head)).await;
                match resumed {
                    Resumed::Continue => from = index + 1,
                    Resumed::Answer(answer) => return Ok(local_answer(answer, exchange, version)),
                }
            }
        }
    }
    parts.method = head.method;
    parts.uri = head.uri;
    parts.headers = head.headers;

    let Some(cluster) = ctx.listener.default_cluster.clone() else {
        return Ok(local_error(
            ErrorKind::NoRoute.into_error(),
            exchange,
            version,
        ));
    };
    if let Some(protocol) = upgrade
        && version == Version::HTTP_11
    {
        let req = Request::from_parts(parts, body);
        return Ok(tunnel::forward(&cluster, req, protocol, exchange).await);
    }

    let body = request_body(&filters, &parts.headers, body, limit);
    let mut outgoing = Outgoing {
        head: parts,
        body: Some(body),
    };
    let sent = cluster.send(&mut outgoing).await;
    drop(outgoing);
    // A body filter that answered while the request went out wins over the upstream's error.
    let answered = filters.borrow_mut().answer.take();
    if let Some(answer) = answered {
        return Ok(local_answer(answer, exchange, version));
    }
    let upstream = match sent {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(cluster = cluster.name(), %error, source = ?error.source, "request failed");
            return Ok(local_error(error, exchange, version));
        }
    };

    // Response headers, last filter first.
    let mut parts = upstream.head;
    headers::strip_hop_by_hop(&mut parts.headers);
    parts.version = response_version(version);
    let mut head = ResponseHead {
        status: parts.status,
        headers: std::mem::take(&mut parts.headers),
    };
    let no_body = upstream.body.is_end_stream();
    let mut from = 0;
    loop {
        let step = filters
            .borrow_mut()
            .response_headers(&mut head, from, no_body);
        match step {
            Step::Continue => break,
            // The upstream body is dropped unread: its connection is not reused.
            Step::Answer(answer) => return Ok(local_answer(answer, exchange, version)),
            Step::Pause(position) => {
                let resumed = wait_for_resume(&filters, Direction::Response, position, None).await;
                match resumed {
                    Resumed::Continue => from = position + 1,
                    Resumed::Answer(answer) => return Ok(local_answer(answer, exchange, version)),
                }
            }
        }
    }
    parts.status = head.status;
    parts.headers = head.headers;
    exchange.set_status(parts.status.as_u16());
    if let Some(record) = &mut exchange.record {
        record.upstream = Some(upstream.endpoint);
    }
    let body = if no_body || !filters.borrow().wants_body(Direction::Response) {
        // Nothing to run on the body: it streams untouched.
        boxed(upstream.body)
    } else {
        FilteredBody::new(
            Direction::Response,
            boxed(upstream.body),
            Rc::clone(&filters),
            content_length(&parts.headers),
            limit,
        )
        .boxed_local()
    };
    Ok(Response::from_parts(
        parts,
        ProxyBody::boxed(body, exchange),
    ))
}

/// The request body as it leaves: through the body callbacks if any filter has them.
fn request_body(
    filters: &SharedFilters,
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> RequestBody {
    if body.is_end_stream() || !filters.borrow().wants_body(Direction::Request) {
        return RequestBody::Incoming(body);
    }
    let source = body.map_err(|e| Box::new(e) as BoxError).boxed_local();
    RequestBody::Boxed(
        FilteredBody::new(
            Direction::Request,
            source,
            Rc::clone(filters),
            content_length(headers),
            limit,
        )
        .boxed_local(),
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn boxed(body: UpstreamBody) -> LocalBody {
    match body {
        UpstreamBody::Http1(body) => body.boxed_local(),
        UpstreamBody::Http2(body) => body.map_err(|e| Box::new(e) as BoxError).boxed_local(),
    }
}
