//! gRPC calls and streams plugins open (`proxy_grpc_call`, `proxy_grpc_stream`), sent as
//! HTTP/2 requests through the worker's cluster of that name. Events go back to the plugin as
//! Envoy delivers them: a unary call gets its response message, or a close with the status
//! when it failed; a stream gets its initial metadata, each message, its trailing metadata
//! and a close with the status.

use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, header};
use http_body_util::BodyExt as _;
use rustng_wasm::{GrpcAction, GrpcCall, GrpcEvent, PluginInstance};
use tokio::sync::mpsc;

use super::{Filter, StreamEvent};
use crate::upstream::{BoxError, BoxLocal as _, Outgoing, RequestBody, UpstreamBody};

/// gRPC's `UNAVAILABLE`: what a call that never got an answer ends with (Envoy's choice).
const UNAVAILABLE: u32 = 14;
/// gRPC's `DEADLINE_EXCEEDED`.
const DEADLINE_EXCEEDED: u32 = 4;
/// The largest message RustNg accepts from an upstream for a plugin.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// A call or stream in flight.
pub(super) struct GrpcHandle {
    /// Where a stream's messages go (already framed); dropped to half-close.
    messages: Option<mpsc::UnboundedSender<Bytes>>,
    task: tokio::task::AbortHandle,
}

impl GrpcHandle {
    pub(super) fn cancel(self) {
        self.task.abort();
    }
}

/// Carries out what the plugin asked for.
pub(super) fn dispatch(filter: &Rc<Filter>, action: GrpcAction) {
    match action {
        GrpcAction::Open(call) => {
            let token = call.token;
            let (messages, outgoing) = if call.message.is_none() {
                let (sender, receiver) = mpsc::unbounded_channel();
                (Some(sender), Some(receiver))
            } else {
                (None, None)
            };
            let task = tokio::task::spawn_local(run(Rc::clone(filter), call, outgoing));
            filter.grpc.borrow_mut().insert(
                token,
                GrpcHandle {
                    messages,
                    task: task.abort_handle(),
                },
            );
        }
        GrpcAction::Send {
            token,
            message,
            end_stream,
        } => {
            if let Some(handle) = filter.grpc.borrow_mut().get_mut(&token) {
                if let Some(sender) = &handle.messages {
                    let _ = sender.send(frame(&message));
                }
                if end_stream {
                    handle.messages = None;
                }
            }
        }
        GrpcAction::Close(token) => {
            if let Some(handle) = filter.grpc.borrow_mut().get_mut(&token) {
                handle.messages = None;
            }
        }
        GrpcAction::Cancel(token) => {
            if let Some(handle) = filter.grpc.borrow_mut().remove(&token) {
                handle.cancel();
            }
        }
    }
}

/// A message with gRPC's length-prefixed framing (uncompressed).
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    framed.extend_from_slice(message);
    framed.freeze()
}

/// To the stream that waits on the call's context, if one does (it runs the callback with
/// its head in reach), else straight to the instance.
fn deliver(filter: &Rc<Filter>, call: &GrpcCall, event: GrpcEvent) {
    let waiting = filter.waiting.borrow().get(&call.context_id).cloned();
    let ids = (call.token, call.context_id);
    match waiting {
        Some(stream) => {
            let _ = stream.send(StreamEvent::Grpc(Box::new((ids, event))));
        }
        None => filter
            .root_call(|instance: &mut PluginInstance| instance.on_grpc(ids, event, None, None)),
    }
}

/// Runs one call or stream to its end.
async fn run(filter: Rc<Filter>, call: GrpcCall, outgoing: Option<mpsc::UnboundedReceiver<Bytes>>) {
    let token = call.token;
    let unary = call.message.is_some();
    let result = match call.timeout {
        Some(timeout) => tokio::time::timeout(timeout, exchange(&filter, &call, outgoing))
            .await
            .unwrap_or_else(|_| {
                Err(Ended {
                    status: DEADLINE_EXCEEDED,
                    message: "deadline exceeded".into(),
                })
            }),
        None => exchange(&filter, &call, outgoing).await,
    };
    filter.grpc.borrow_mut().remove(&token);
    match result {
        Ok(ended) if unary && ended.status == 0 => {}
        Ok(ended) | Err(ended) => deliver(
            &filter,
            &call,
            GrpcEvent::Close {
                status: ended.status,
                message: ended.message,
            },
        ),
    }
}

/// How a call ended.
struct Ended {
    status: u32,
    message: String,
}

impl Ended {
    fn unavailable(error: impl std::fmt::Display) -> Self {
        Ended {
            status: UNAVAILABLE,
            message: error.to_string(),
        }
    }

    /// From `grpc-status` / `grpc-message` (trailers, or the headers of a trailers-only
    /// response).
    fn from_fields(fields: &HeaderMap) -> Option<Self> {
        let status = fields.get("grpc-status")?.to_str().ok()?.parse().ok()?;
        let message = fields
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Some(Ended { status, message })
    }
}

/// Sends the request and feeds the plugin; `Ok` carries the final status, `Err` a failure
/// before one arrived.
async fn exchange(
    filter: &Rc<Filter>,
    call: &GrpcCall,
    outgoing: Option<mpsc::UnboundedReceiver<Bytes>>,
) -> Result<Ended, Ended> {
    let unary = call.message.is_some();
    let cluster = filter
        .clusters
        .get(&call.upstream)
        .ok_or_else(|| Ended::unavailable("no such cluster"))?;
    let (mut head, ()) = Request::builder()
        .method(Method::POST)
        .uri(format!("/{}/{}", call.service, call.method))
        .body(())
        .map_err(Ended::unavailable)?
        .into_parts();
    head.headers = call.metadata.clone();
    head.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    head.headers
        .insert(header::TE, HeaderValue::from_static("trailers"));
    // The authority is the cluster's name, as Envoy sends it.
    head.headers.insert(
        header::HOST,
        HeaderValue::from_str(&call.upstream).map_err(Ended::unavailable)?,
    );
    if let Some(timeout) = call.timeout {
        head.headers.insert(
            "grpc-timeout",
            HeaderValue::from_str(&format!("{}m", timeout.as_millis()))
                .map_err(Ended::unavailable)?,
        );
    }
    let body = match (&call.message, outgoing) {
        (Some(message), _) => RequestBody::full(frame(message)),
        (None, Some(receiver)) => {
            let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
                receiver
                    .recv()
                    .await
                    .map(|data| (Ok::<_, BoxError>(http_body::Frame::data(data)), receiver))
            });
            RequestBody::Boxed(http_body_util::StreamBody::new(stream).boxed_local())
        }
        (None, None) => RequestBody::full(Bytes::new()),
    };
    let mut outgoing = Outgoing {
        head,
        body: Some(body),
        timeout: None,
        hash: None,
    };
    let response = cluster
        .send(&mut outgoing)
        .await
        .map_err(Ended::unavailable)?;
    drop(outgoing);
    if let Some(ended) = Ended::from_fields(&response.head.headers) {
        // Trailers-only: no messages.
        return Ok(ended);
    }
    if response.head.status != http::StatusCode::OK {
        return Err(Ended::unavailable(format!(
            "upstream answered HTTP {}",
            response.head.status
        )));
    }
    if !unary {
        deliver(
            filter,
            call,
            GrpcEvent::InitialMetadata(response.head.headers),
        );
    }
    let mut body = match response.body {
        UpstreamBody::Http1(body) => body.boxed_local(),
        UpstreamBody::Http2(body) => body.map_err(|e| Box::new(e) as BoxError).boxed_local(),
    };
    let mut pending = BytesMut::new();
    // A unary call's message waits for the status: a failed call gets a close only.
    let mut unary_message = None;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(Ended::unavailable)?;
        match frame.into_data() {
            Ok(data) => {
                pending.extend_from_slice(&data);
                while let Some(message) = next_message(&mut pending)? {
                    if unary {
                        unary_message = Some(message);
                    } else {
                        deliver(filter, call, GrpcEvent::Message(message));
                    }
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    let trailers = trailers.unwrap_or_default();
    let ended = Ended::from_fields(&trailers)
        .ok_or_else(|| Ended::unavailable("the upstream sent no grpc-status"))?;
    if unary {
        if ended.status == 0 {
            let message = unary_message.unwrap_or_default();
            deliver(filter, call, GrpcEvent::Message(message));
        }
    } else {
        deliver(filter, call, GrpcEvent::TrailingMetadata(trailers));
    }
    Ok(ended)
}

/// The next complete message in `pending`, if one is there.
fn next_message(pending: &mut BytesMut) -> Result<Option<Vec<u8>>, Ended> {
    if pending.len() < 5 {
        return Ok(None);
    }
    if pending[0] != 0 {
        return Err(Ended::unavailable(
            "compressed gRPC messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(Ended::unavailable("gRPC message too large"));
    }
    if pending.len() < 5 + len {
        return Ok(None);
    }
    pending.advance(5);
    Ok(Some(pending.split_to(len).to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_reassembled_across_frames() {
        let mut pending = BytesMut::new();
        let framed = frame(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        pending.extend_from_slice(&framed[..3]);
        assert!(matches!(next_message(&mut pending), Ok(None)));
        pending.extend_from_slice(&framed[3..]);
        pending.extend_from_slice(&frame(b""));
        assert_eq!(
            next_message(&mut pending).ok().flatten(),
            Some(b"hello".to_vec())
        );
        assert_eq!(next_message(&mut pending).ok().flatten(), Some(Vec::new()));
        assert!(matches!(next_message(&mut pending), Ok(None)));
    }
}
