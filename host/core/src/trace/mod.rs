//! OpenTelemetry tracing: every HTTP request gets a trace context (the caller's, continued, or
//! a new one), the upstream gets RustNg's span as its parent, and sampled requests become
//! OTLP server spans, exported in batches from a thread of their own.
//!
//! The request path pays for tracing only when it is configured: a header parse, two random
//! ids and one header written; spans are built only for sampled requests and handed over
//! without waiting ([`export::SpanQueue`]).

mod encode;
pub(crate) use encode::EncodedSpan;
pub(crate) mod export;
pub(crate) mod otlp;
mod propagation;
pub(crate) mod span;

use std::sync::Arc;

use http::HeaderMap;
use rustng_abi::trace::TraceIds;
use rustng_runtime_config::Tracing;

pub(crate) use span::SpanRecord;

/// A config version's tracing settings, as workers use them.
pub(crate) struct Tracer {
    /// Root requests whose trace id's low 63 bits fall below this are sampled.
    threshold: u64,
    queue: Arc<export::SpanQueue>,
}

/// A request's trace, as [`Tracer::start`] decided it.
pub(crate) struct Started {
    pub(crate) ids: TraceIds,
    /// The caller's `tracestate`, for the span.
    pub(crate) trace_state: Option<http::HeaderValue>,
}

impl Tracer {
    pub(crate) fn new(settings: &Tracing, queue: Arc<export::SpanQueue>) -> Tracer {
        // 2^63 * ratio: ratio 1.0 takes every 63-bit value, 0.0 none.
        let threshold = (settings.sampling_ratio * (1u64 << 63) as f64) as u64;
        Tracer { threshold, queue }
    }

    /// [`Tracer::start`] for a request, with its span when it is sampled.
    pub(crate) fn begin<B>(
        self: &Arc<Self>,
        request: &mut http::Request<B>,
        tls: bool,
    ) -> (TraceIds, Option<SpanRecord>) {
        let started = self.start(request.headers_mut());
        if !started.ids.sampled {
            return (started.ids, None);
        }
        let headers = request.headers();
        let span = SpanRecord {
            tracer: Arc::clone(self),
            ids: started.ids,
            trace_state: started.trace_state,
            start: std::time::SystemTime::now(),
            // HTTP/2 and HTTP/3 carry the host in the URI.
            authority: headers.get(http::header::HOST).cloned().or_else(|| {
                request
                    .uri()
                    .authority()
                    .and_then(|a| a.as_str().parse().ok())
            }),
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            scheme: if tls { "https" } else { "http" },
            cluster: None,
        };
        (started.ids, Some(span))
    }

    /// Reads the caller's context from `headers`, decides sampling (the caller's decision
    /// when it made one, else the ratio) and writes RustNg's span into `headers` for the
    /// upstream.
    pub(crate) fn start(&self, headers: &mut HeaderMap) -> Started {
        let incoming = propagation::extract(headers);
        let (trace_id, parent_span_id) = match incoming.ids {
            Some((trace, parent)) => (trace, Some(parent)),
            None => (random_trace_id(), None),
        };
        let sampled = incoming.sampled.unwrap_or_else(|| self.samples(&trace_id));
        let ids = TraceIds {
            trace_id,
            span_id: random_span_id(),
            parent_span_id,
            sampled,
        };
        propagation::inject(headers, &ids, incoming.b3);
        let trace_state = if sampled {
            headers.get(propagation::TRACESTATE).cloned()
        } else {
            None
        };
        Started { ids, trace_state }
    }

    /// OpenTelemetry's `TraceIdRatioBased`: the decision is a function of the trace id, so
    /// every hop with the same ratio agrees on it.
    fn samples(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0; 8];
        low.copy_from_slice(&trace_id[8..]);
        (u64::from_be_bytes(low) >> 1) < self.threshold
    }

    /// What became of the spans so far (all versions share the queue).
    pub(crate) fn queue_counts(&self) -> export::QueueCounts {
        self.queue.counts()
    }

    /// Hands a finished span to the exporter; never waits.
    pub(crate) fn submit(&self, span: encode::EncodedSpan) {
        self.queue.submit(span);
    }
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let id = fastrand::u128(..).to_be_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

fn random_span_id() -> [u8; 8] {
    fastrand::u64(1..).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustng_runtime_config::{Otlp, OtlpProtocol};
    use std::time::Duration;

    fn tracer(ratio: f64) -> Tracer {
        let settings = Tracing {
            service_name: "t".into(),
            sampling_ratio: ratio,
            otlp: Otlp {
                cluster: "otel".into(),
                protocol: OtlpProtocol::Grpc,
                path: "/v1/traces".into(),
                timeout: Duration::from_secs(1),
            },
            max_queue_size: 1,
            max_export_batch_size: 1,
            schedule_delay: Duration::from_secs(1),
        };
        Tracer::new(&settings, export::SpanQueue::new().0)
    }

    #[test]
    fn the_ratio_decides_for_roots_and_the_parent_for_the_rest() {
        let sampled = |t: &Tracer| {
            (0..2000)
                .filter(|_| t.start(&mut HeaderMap::new()).ids.sampled)
                .count()
        };
        assert_eq!(sampled(&tracer(0.0)), 0);
        assert_eq!(sampled(&tracer(1.0)), 2000);
        let quarter = sampled(&tracer(0.25));
        assert!((400..600).contains(&quarter), "{quarter} of 2000 at 25 %");

        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let started = tracer(0.0).start(&mut headers);
        assert!(started.ids.sampled, "a sampled parent wins over 0 %");
        assert_eq!(
            rustng_abi::trace::Hex(&started.ids.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            started.ids.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_ne!(started.ids.span_id, [0; 8]);
        assert_eq!(
            headers["traceparent"].as_bytes(),
            &started.ids.traceparent()[..]
        );
    }
}
