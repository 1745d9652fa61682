//! Per-route retries, as Envoy's `RetryPolicy` does them: a routing filter names the
//! conditions (`rustng.route.retry_on` and friends) and the core sends the request again on a
//! matching response or failure, with exponential back-off and jitter, within the route's
//! timeout.
//!
//! A retry needs the request body again. The body is read into memory up to the listener's
//! `buffer_limit_bytes` before the first attempt (Envoy buffers for retries the same way); a
//! larger body, or one with trailers, is sent once as it streams, without retries.

use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use rustng_abi::extensions;

use super::cluster::{ClusterRt, Outgoing, UpstreamResponse};
use super::request_body::{BoxError, BoxLocal, RequestBody};
use crate::error::{ErrorKind, ProxyError};

/// Envoy's default `retry_back_off.base_interval`.
const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);
/// More is never what a route means; Envoy caps its runtime default similarly.
const MAX_RETRIES: u32 = 10;

/// When to try again. The names are Envoy's `retry_on` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct RetryOn {
    /// Any 5xx, and failures that never produced a response.
    any_5xx: bool,
    /// 502, 503, 504, and failures that never produced a response.
    gateway_error: bool,
    /// The upstream closed or reset before the response head.
    reset: bool,
    connect_failure: bool,
    /// 409.
    retriable_4xx: bool,
    /// The codes in `rustng.route.retriable_status_codes`.
    retriable_status_codes: bool,
}

/// A route's retry policy, read from the properties a filter set on the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    on: RetryOn,
    num_retries: u32,
    per_try_timeout: Option<Duration>,
    status_codes: Vec<u16>,
    base_interval: Duration,
    max_interval: Duration,
}

impl RetryPolicy {
    /// The policy, when a filter set `rustng.route.retry_on` to at least one condition the
    /// core knows (unknown names are skipped, as Envoy skips them).
    pub(crate) fn from_properties(properties: &[(Vec<u8>, Vec<u8>)]) -> Option<RetryPolicy> {
        let text = |name: &str| {
            properties
                .iter()
                .find(|(path, _)| extensions::property_is(path, name))
                .and_then(|(_, value)| std::str::from_utf8(value).ok())
                .map(str::trim)
        };
        let number = |name: &str| text(name).and_then(|t| t.parse::<u64>().ok());
        let mut on = RetryOn::default();
        for condition in text(extensions::ROUTE_RETRY_ON)?.split(',') {
            match condition.trim() {
                "5xx" => on.any_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "refused-stream" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "retriable-status-codes" => on.retriable_status_codes = true,
                _ => {}
            }
        }
        if on == RetryOn::default() {
            return None;
        }
        let status_codes = text(extensions::ROUTE_RETRIABLE_STATUS_CODES)
            .map(|codes| {
                codes
                    .split(',')
                    .filter_map(|c| c.trim().parse::<u16>().ok())
                    .collect()
            })
            .unwrap_or_default();
        let base_interval = number(extensions::ROUTE_RETRY_BASE_INTERVAL_MS)
            .filter(|ms| *ms > 0)
            .map_or(DEFAULT_BASE_INTERVAL, Duration::from_millis);
        let max_interval = number(extensions::ROUTE_RETRY_MAX_INTERVAL_MS)
            .filter(|ms| *ms > 0)
            .map_or(base_interval * 10, Duration::from_millis)
            .max(base_interval);
        Some(RetryPolicy {
            on,
            num_retries: number(extensions::ROUTE_NUM_RETRIES)
                .map_or(1, |n| n.min(u64::from(MAX_RETRIES)) as u32),
            per_try_timeout: number(extensions::ROUTE_PER_TRY_TIMEOUT_MS)
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis),
            status_codes,
            base_interval,
            max_interval,
        })
    }

    fn retries_status(&self, status: u16) -> bool {
        let on = &self.on;
        (on.any_5xx && (500..600).contains(&status))
            || (on.gateway_error && matches!(status, 502..=504))
            || (on.retriable_4xx && status == 409)
            || (on.retriable_status_codes && self.status_codes.contains(&status))
    }

    fn retries_error(&self, error: &ProxyError) -> bool {
        let on = &self.on;
        let no_response = on.any_5xx || on.gateway_error;
        match error.kind {
            ErrorKind::ConnectRefused | ErrorKind::ConnectTimeout => {
                no_response || on.connect_failure
            }
            ErrorKind::UpstreamProtocol => no_response || on.reset,
            // Only a per-try timeout gets here (the route's own ends the loop).
            ErrorKind::UpstreamTimeout => no_response,
            _ => false,
        }
    }

    /// Envoy's back-off: a random wait in `[0, base * 2^(n-1))`, capped at the max interval.
    fn back_off(&self, retry: u32) -> Duration {
        let ceiling = self
            .base_interval
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.max_interval);
        let ceiling_us = u64::try_from(ceiling.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Duration::from_micros(fastrand::u64(0..ceiling_us))
    }
}

/// Sends `outgoing` with the route's retries; `route_timeout` bounds all attempts together,
/// `limit` is how much body may be held for them.
pub(crate) async fn send(
    cluster: &Rc<ClusterRt>,
    mut outgoing: Outgoing,
    policy: &RetryPolicy,
    route_timeout: Duration,
    limit: usize,
) -> Result<UpstreamResponse, ProxyError> {
    let deadline = tokio::time::Instant::now() + route_timeout;
    let body = match outgoing.body.take() {
        Some(body) => hold(body, limit).await?,
        None => Held::Whole(Bytes::new()),
    };
    let whole = match body {
        Held::Whole(bytes) => bytes,
        Held::Streaming(body) => {
            // Too large to hold: one attempt, as it streams.
            outgoing.body = Some(body);
            outgoing.timeout = Some(route_timeout);
            return cluster.send(&mut outgoing).await;
        }
    };
    let pristine = outgoing.head;
    let mut retry = 0;
    // Held from a retry's decision through its back-off and attempt; dropped (given back) with
    // the attempt's end, or with this future if the client leaves.
    let mut permit = None;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            return Err(ProxyError::new(ErrorKind::UpstreamTimeout));
        }
        let mut attempt = Outgoing {
            head: copy_head(&pristine),
            body: Some(RequestBody::full(whole.clone())),
            timeout: Some(
                policy
                    .per_try_timeout
                    .map_or(remaining, |t| t.min(remaining)),
            ),
            hash: outgoing.hash,
        };
        let result = cluster.send(&mut attempt).await;
        // This attempt (a retry, if it held a place under `max_retries`) is over.
        drop(permit.take());
        let again = retry < policy.num_retries
            && match &result {
                Ok(response) => policy.retries_status(response.head.status.as_u16()),
                Err(error) => {
                    // The route's own timeout is final.
                    policy.retries_error(error)
                        && !(error.kind == ErrorKind::UpstreamTimeout
                            && tokio::time::Instant::now() >= deadline)
                }
            };
        // The cluster's `max_retries` bounds retries in flight across all requests, so a
        // failing upstream is not hit with a retry storm.
        if !again {
            return result;
        }
        permit = cluster.retry_permit();
        if permit.is_none() {
            return result;
        }
        // The failed response's body is dropped unread; its connection is not reused.
        drop(result);
        retry += 1;
        tracing::debug!(cluster = cluster.name(), retry, "retrying request");
        let wait = policy.back_off(retry);
        if tokio::time::Instant::now() + wait >= deadline {
            return Err(ProxyError::new(ErrorKind::UpstreamTimeout));
        }
        tokio::time::sleep(wait).await;
    }
}

/// A request head for another attempt: everything but the extensions, which no upstream sees.
fn copy_head(head: &request::Parts) -> request::Parts {
    let mut request = http::Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request.into_parts().0
}

/// A request body read for retries: whole, or (too large, or with trailers) still streaming
/// behind what was read.
enum Held {
    Whole(Bytes),
    Streaming(RequestBody),
}

async fn hold(mut body: RequestBody, limit: usize) -> Result<Held, ProxyError> {
    let mut read = BytesMut::new();
    let mut frames = VecDeque::new();
    loop {
        if body.is_end_stream() {
            return Ok(Held::Whole(read.freeze()));
        }
        let Some(frame) = body.frame().await else {
            return Ok(Held::Whole(read.freeze()));
        };
        let frame = frame.map_err(|e| ProxyError::new(ErrorKind::InvalidRequest).because(e))?;
        match frame.into_data() {
            Ok(data) if read.len() + data.len() <= limit => read.extend_from_slice(&data),
            Ok(data) => {
                frames.push_back(Frame::data(read.split().freeze()));
                frames.push_back(Frame::data(data));
                break;
            }
            Err(trailers) => {
                frames.push_back(Frame::data(read.split().freeze()));
                frames.push_back(trailers);
                break;
            }
        }
    }
    Ok(Held::Streaming(RequestBody::Boxed(
        Replayed { frames, rest: body }.boxed_local(),
    )))
}

/// Frames already read, then the rest of the body.
struct Replayed {
    frames: VecDeque<Frame<Bytes>>,
    rest: RequestBody,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn the_policy_is_read_from_the_route_properties() {
        assert_eq!(RetryPolicy::from_properties(&[]), None);
        assert_eq!(
            RetryPolicy::from_properties(&props(&[("rustng.route.retry_on", "nonsense")])),
            None
        );
        let policy = RetryPolicy::from_properties(&props(&[
            (
                "rustng.route.retry_on",
                "gateway-error, retriable-status-codes,bogus",
            ),
            ("rustng.route.num_retries", "3"),
            ("rustng.route.per_try_timeout_ms", "250"),
            ("rustng.route.retriable_status_codes", "429, 418"),
        ]))
        .expect("policy");
        assert_eq!(policy.num_retries, 3);
        assert_eq!(policy.per_try_timeout, Some(Duration::from_millis(250)));
        assert!(policy.retries_status(503) && policy.retries_status(429));
        assert!(!policy.retries_status(500) && !policy.retries_status(409));
        assert!(policy.retries_error(&ProxyError::new(ErrorKind::ConnectRefused)));
        assert!(!policy.retries_error(&ProxyError::new(ErrorKind::ClusterNotFound)));

        let reset_only =
            RetryPolicy::from_properties(&props(&[("rustng.route.retry_on", "reset")]))
                .expect("policy");
        assert_eq!(reset_only.num_retries, 1, "Envoy's default");
        assert!(reset_only.retries_error(&ProxyError::new(ErrorKind::UpstreamProtocol)));
        assert!(!reset_only.retries_error(&ProxyError::new(ErrorKind::ConnectRefused)));
        assert!(!reset_only.retries_status(503));
    }

    #[test]
    fn back_off_grows_and_is_capped() {
        let policy = RetryPolicy::from_properties(&props(&[
            ("rustng.route.retry_on", "5xx"),
            ("rustng.route.retry_base_interval_ms", "10"),
        ]))
        .expect("policy");
        for retry in 1..20 {
            let wait = policy.back_off(retry);
            let ceiling = Duration::from_millis(10 * (1u64 << (retry - 1)).min(10));
            assert!(wait < ceiling, "{retry}: {wait:?} < {ceiling:?}");
        }
    }
}
