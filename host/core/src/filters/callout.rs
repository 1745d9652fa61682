//! HTTP calls plugins make (`proxy_http_call`): sent through the worker's own cluster (its
//! pool, balancing and retries), answered with `proxy_on_http_call_response`. A call that
//! fails or times out is answered with no response, which SDKs read as a failed call.

use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderValue, Request, header};
use rustng_wasm::{HttpCallRequest, HttpCallResponse};

use super::{Filter, StreamEvent};
use crate::upstream::{BoxError, ClusterRt};

/// The most of a call's response body RustNg holds for the plugin.
const MAX_RESPONSE_BODY: usize = 16 * 1024 * 1024;

/// Sends `call` and delivers its answer: to the stream that waits for it, if one does (the
/// stream runs the callback with its head in reach), else straight to the instance.
pub(super) async fn run(filter: Rc<Filter>, call: HttpCallRequest) {
    let response = match filter.clusters.get(&call.upstream) {
        Some(cluster) => match tokio::time::timeout(call.timeout, send(&cluster, &call)).await {
            Ok(Ok(response)) => Some(response),
            Ok(Err(error)) => {
                tracing::debug!(plugin = %filter.name(), upstream = %call.upstream, %error, "plugin http call failed");
                None
            }
            Err(_) => {
                tracing::debug!(plugin = %filter.name(), upstream = %call.upstream, "plugin http call timed out");
                None
            }
        },
        None => None,
    };
    let wanted = {
        let mut calling = filter.calling.borrow_mut();
        match calling.get_mut(&call.context_id) {
            Some(count) => {
                *count -= 1;
                if *count == 0 {
                    calling.remove(&call.context_id);
                }
                true
            }
            // The context ended (or the instance died) while the call was out.
            None => false,
        }
    };
    if !wanted {
        return;
    }
    let waiting = filter.waiting.borrow().get(&call.context_id).cloned();
    match waiting {
        Some(stream) => {
            let _ = stream.send(StreamEvent::CallResponse(Box::new((call, response))));
        }
        None => {
            filter.root_call(|instance| instance.on_http_call_response(&call, response, None, None))
        }
    }
}

async fn send(
    cluster: &Rc<ClusterRt>,
    call: &HttpCallRequest,
) -> Result<HttpCallResponse, BoxError> {
    let (mut head, ()) = Request::builder()
        .method(call.method.clone())
        .uri(call.path.as_str())
        .body(())?
        .into_parts();
    head.headers = call.headers.clone();
    head.headers
        .insert(header::HOST, HeaderValue::from_str(&call.authority)?);
    let answer = crate::upstream::call::call(
        cluster,
        head,
        Bytes::from(call.body.clone()),
        MAX_RESPONSE_BODY,
    )
    .await?;
    Ok(HttpCallResponse {
        status: answer.head.status,
        headers: answer.head.headers,
        body: answer.body.to_vec(),
        trailers: answer.trailers,
    })
}
