//! Serving HTTP/3: accepting QUIC connections, their request streams, and each request through
//! the proxy's request path, its response streamed back frame by frame.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use h3::server::RequestStream;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::sync::Notify;

use crate::body::ProxyBody;
use crate::connection::{ConnCtx, ConnState};
use crate::downstream_body::DownstreamBody;
use crate::listener::ListenerSlot;
use crate::proxy::{ProxyService, Routed};
use crate::registry::Registry;
use crate::upstream::{BoxError, BoxLocal as _};

type SendStream = RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

/// Accepts QUIC connections until the listener stops or the worker shuts down (its registry
/// then drains the open ones).
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    slot: Rc<ListenerSlot>,
    registry: Rc<Registry>,
    open: Rc<Cell<usize>>,
    stop: Rc<Notify>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            () = stop.notified() => break,
        };
        // `None`: the endpoint was closed.
        let Some(incoming) = incoming else { break };
        let listener = slot.current();
        let peer = incoming.remote_address();
        let Some(permit) = listener.limit.acquire() else {
            tracing::warn!(
                listener = &*listener.name,
                %peer,
                max_connections = listener.config.max_connections,
                "connection limit reached, refusing new HTTP/3 connection"
            );
            incoming.refuse();
            continue;
        };
        let slot = Rc::clone(&slot);
        let registry = Rc::clone(&registry);
        let open = Rc::clone(&open);
        open.set(open.get() + 1);
        tokio::task::spawn_local(async move {
            let timeout = slot.current().config.http.request_headers_timeout;
            match tokio::time::timeout(timeout, incoming).await {
                Ok(Ok(connection)) => serve(connection, slot, peer, &registry).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "QUIC handshake failed"),
                Err(_) => tracing::debug!(%peer, "QUIC handshake timed out"),
            }
            drop(permit);
            open.set(open.get() - 1);
        });
    }
}

/// One HTTP/3 connection: a task per request stream, a graceful GOAWAY when the registry
/// closes it (idle, drain, listener removed).
async fn serve(
    connection: quinn::Connection,
    slot: Rc<ListenerSlot>,
    peer: SocketAddr,
    registry: &Rc<Registry>,
) {
    let listener = slot.current();
    let max_field_section_size = listener.config.http.max_request_headers_bytes as u64;
    let mut h3 = match h3::server::builder()
        .max_field_section_size(max_field_section_size)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection))
        .await
    {
        Ok(h3) => h3,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection setup failed");
            return;
        }
    };
    let state = Rc::new(ConnState::new());
    let ctx = Rc::new(ConnCtx {
        listener: Rc::clone(&slot),
        peer,
        client_address: crate::headers::client_address_value(peer.ip()),
        tls: true,
        state: Rc::clone(&state),
    });
    let idle_timeout = listener
        .config
        .http3
        .as_ref()
        .map_or(listener.config.http.idle_timeout, |h3| h3.idle_timeout);
    let registration = registry.register(state, slot.id, idle_timeout);
    drop(listener);
    let mut closing = false;
    loop {
        let accepted = if closing {
            h3.accept().await
        } else {
            tokio::select! {
                accepted = h3.accept() => accepted,
                () = registration.closing() => {
                    closing = true;
                    // GOAWAY: requests already open finish, then `accept` says `None`.
                    if let Err(e) = h3.shutdown(0).await {
                        tracing::debug!(%peer, error = %e, "HTTP/3 shutdown failed");
                        break;
                    }
                    continue;
                }
            }
        };
        match accepted {
            Ok(Some(resolver)) => {
                let service = ProxyService::new(Rc::clone(&ctx));
                tokio::task::spawn_local(async move {
                    // A stream that never brings its head would hold a stream credit for good
                    // (slowloris over QUIC): it gets the request head timeout, as on TCP.
                    let head = tokio::time::timeout(
                        service.request_headers_timeout(),
                        resolver.resolve_request(),
                    );
                    match head.await {
                        Ok(Ok((request, stream))) => {
                            if let Err(e) = request_stream(service, request, stream).await {
                                tracing::debug!(error = %e, "HTTP/3 request stream failed");
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, "HTTP/3 request head refused"),
                        Err(_) => tracing::debug!("HTTP/3 request head timed out"),
                    }
                });
            }
            Ok(None) => break,
            Err(e) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                }
                break;
            }
        }
    }
}

/// One request: through the proxy, then the response out on the same stream.
async fn request_stream(
    service: ProxyService,
    request: Request<()>,
    stream: RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
) -> Result<(), BoxError> {
    let (send, recv) = stream.split();
    let expect_body = request.headers().contains_key(http::header::CONTENT_LENGTH)
        || !matches!(
            *request.method(),
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::DELETE
                | http::Method::TRACE
        );
    let within = service.request_headers_timeout();
    let body = match super::body::open(recv, expect_body, within).await? {
        Some(body) => DownstreamBody::boxed(body.boxed_local()),
        None => DownstreamBody::empty(),
    };
    let (parts, ()) = request.into_parts();
    let request = Request::from_parts(parts, body);
    let response = match service.route(request) {
        Routed::Forward(forwarding) => forwarding.run().await,
        Routed::Other(future) => future.await,
    };
    let Ok(response) = response;
    let mut responding = Responding {
        send,
        finished: false,
    };
    respond(&mut responding.send, response).await?;
    responding.finished = true;
    Ok(())
}

/// A response stream that is reset unless it was finished: quinn finishes a stream that is
/// dropped, which would make a response cut short (the upstream failed mid-body, the worker
/// stopped) look complete to the client.
struct Responding {
    send: SendStream,
    finished: bool,
}

impl Drop for Responding {
    fn drop(&mut self) {
        if !self.finished {
            self.send.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
        }
    }
}

async fn respond(send: &mut SendStream, response: Response<ProxyBody>) -> Result<(), BoxError> {
    let (mut parts, mut body) = response.into_parts();
    // HTTP/3 has no connection-specific headers; the codecs of the other protocols drop
    // them the same way.
    for name in [
        http::header::CONNECTION,
        http::header::TRANSFER_ENCODING,
        http::header::UPGRADE,
    ] {
        parts.headers.remove(name);
    }
    parts.version = http::Version::HTTP_3;
    send.send_response(Response::from_parts(parts, ())).await?;
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame?;
        match frame.into_data() {
            Ok(data) => {
                if !data.is_empty() {
                    send.send_data(data).await?;
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                    break;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}
