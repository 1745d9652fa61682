//! The current request's trace context (`rustng.trace.*` properties, docs/EXTENSIONS.md):
//! for a filter that logs with the trace id, or calls out and wants the callee in the trace.

pub use rustng_abi::extensions::{
    TRACE_PARENT_SPAN_ID, TRACE_SAMPLED, TRACE_SPAN_ID, TRACE_TRACE_ID, TRACE_TRACEPARENT,
};

/// Where the current request sits in its trace, as the core decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// RustNg's span for this request (16 hex digits): the parent of whatever the upstream,
    /// or a call the filter makes, records.
    pub span_id: String,
    /// The caller's span, absent when RustNg started the trace.
    pub parent_span_id: Option<String>,
    /// Whether the trace is recorded.
    pub sampled: bool,
    /// The W3C `traceparent` the upstream receives; put it on an HTTP call to continue the
    /// trace there.
    pub traceparent: String,
}

/// The current request's trace context; `None` outside a request, in Envoy, or with tracing
/// off in RustNg.
pub fn context() -> Option<TraceContext> {
    let text = |name: &str| {
        proxy_wasm::hostcalls::get_property(vec![name])
            .ok()
            .flatten()
            .and_then(|bytes| String::from_utf8(bytes).ok())
    };
    Some(TraceContext {
        trace_id: text(TRACE_TRACE_ID)?,
        span_id: text(TRACE_SPAN_ID)?,
        parent_span_id: text(TRACE_PARENT_SPAN_ID),
        sampled: proxy_wasm::hostcalls::get_property(vec![TRACE_SAMPLED])
            .ok()
            .flatten()
            .is_some_and(|flag| flag.first() == Some(&1)),
        traceparent: text(TRACE_TRACEPARENT)?,
    })
}
