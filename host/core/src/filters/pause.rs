//! A phase that a filter paused: the stream waits until the plugin lets it go, as in Envoy.
//!
//! While it waits, the plugin may resume it (`proxy_continue_stream`) or answer it
//! (`proxy_send_local_response`, `proxy_close_stream`) from another callback, and an HTTP
//! call the stream's context made may come back, in which case the stream runs
//! `proxy_on_http_call_response` itself, with its head in reach. The body is not read
//! meanwhile: a paused head stops the whole stream, body callbacks included, and the unread
//! body stays in the socket (backpressure). Envoy behaves the same: proxy-wasm turns a
//! paused head into `StopAllIterationAndWatermark` (the differential tests showed it).

use http::StatusCode;
use rustng_wasm::{Direction, PausedHead, RequestHead, ResponseHead, StreamAction};
use tokio::sync::mpsc;

use super::{LocalAnswer, SharedFilters, StreamEvent};

/// How a pause ended.
#[derive(Debug)]
pub(crate) enum Resumed {
    /// Go on with the phase, from the filter after the one that paused.
    Continue,
    /// Answer the client with this.
    Answer(LocalAnswer),
}

/// The head a paused phase holds, lent to the answers of the calls it waits on.
pub(crate) enum Held<'a> {
    Request(&'a mut RequestHead),
    Response(&'a mut ResponseHead),
}

impl Held<'_> {
    fn lend(&mut self) -> PausedHead<'_> {
        match self {
            Held::Request(head) => PausedHead::Request(head),
            Held::Response(head) => PausedHead::Response(head),
        }
    }
}

/// Waits until the filter at `position` (in `direction`'s order) lets the stream go on.
pub(crate) async fn wait_for_resume(
    filters: &SharedFilters,
    direction: Direction,
    position: usize,
    mut head: Held<'_>,
) -> Resumed {
    let Some((filter, context)) = filters.borrow().context_at(direction, position) else {
        return Resumed::Continue;
    };
    let (sender, mut events) = mpsc::unbounded_channel();
    filter.wait_on(context.id(), sender);
    let resumed = loop {
        match events.recv().await {
            // The instance died and dropped its waiting streams.
            None => break failed(&filter),
            Some(StreamEvent::Action(action)) => match (action, direction) {
                (StreamAction::ContinueRequest, Direction::Request)
                | (StreamAction::ContinueResponse, Direction::Response) => {
                    break Resumed::Continue;
                }
                (StreamAction::LocalResponse(local), _) => {
                    break Resumed::Answer(LocalAnswer::from_plugin(local));
                }
                (StreamAction::Close, _) => {
                    break Resumed::Answer(LocalAnswer::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "stream closed by plugin",
                    ));
                }
                // Resuming the other direction: nothing waits there.
                _ => {}
            },
            Some(StreamEvent::CallResponse(answered)) => {
                let (call, response) = *answered;
                let outcome = {
                    let mut active = filters.borrow_mut();
                    let stream = &mut active.stream;
                    let head = Some(head.lend());
                    filter.with_instance(|instance| {
                        instance.on_http_call_response(&call, response, head, Some(stream))
                    })
                };
                if let Some(resumed) = after_answer(&filter, outcome) {
                    break resumed;
                }
            }
            Some(StreamEvent::Grpc(event)) => {
                let (call, event) = *event;
                let outcome = {
                    let mut active = filters.borrow_mut();
                    let stream = &mut active.stream;
                    let head = Some(head.lend());
                    filter
                        .with_instance(|instance| instance.on_grpc(call, event, head, Some(stream)))
                };
                if let Some(resumed) = after_answer(&filter, outcome) {
                    break resumed;
                }
            }
        }
    };
    filter.stop_waiting(context.id());
    resumed
}

/// After a call's answer ran in the plugin: a failure ends the wait (as the policy says);
/// otherwise what the plugin decided arrives as actions.
fn after_answer(
    filter: &super::Filter,
    outcome: Option<Result<(), rustng_wasm::WasmError>>,
) -> Option<Resumed> {
    match outcome {
        Some(Ok(())) => None,
        Some(Err(error)) => Some(if filter.fail(&error) {
            Resumed::Continue
        } else {
            Resumed::Answer(LocalAnswer::plugin_failed())
        }),
        None => Some(failed(filter)),
    }
}

fn failed(filter: &super::Filter) -> Resumed {
    if filter.fails_open() {
        Resumed::Continue
    } else {
        Resumed::Answer(LocalAnswer::plugin_failed())
    }
}

/// Envoy's answers when a buffering filter holds more than the limit: 413 for a request,
/// 500 for a response.
pub(crate) fn too_large(direction: Direction) -> LocalAnswer {
    match direction {
        Direction::Request => {
            LocalAnswer::text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
        }
        Direction::Response => {
            LocalAnswer::text(StatusCode::INTERNAL_SERVER_ERROR, "response body too large")
        }
    }
}
