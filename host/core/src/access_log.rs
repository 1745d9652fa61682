//! One JSON line per request, written through `tracing` under the `access` target so that the
//! process log setup (format, destination, filtering) applies to it as well.

use std::net::SocketAddr;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Version};

/// Target of access log events; `log.level` filters such as `access=off` silence them.
pub(crate) const TARGET: &str = "access";

/// What the access log line says about one request. Cheap clones only (`Bytes`-backed).
pub(crate) struct AccessRecord {
    pub(crate) listener: std::rc::Rc<str>,
    pub(crate) client: SocketAddr,
    pub(crate) method: Method,
    pub(crate) path: Option<PathAndQuery>,
    pub(crate) version: Version,
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) status: u16,
    pub(crate) upstream: Option<SocketAddr>,
    pub(crate) error: Option<&'static str>,
    /// The request's trace, while tracing is on.
    pub(crate) trace_id: Option<[u8; 16]>,
    /// Whether the line is written: the record also exists for a sampled request's span.
    pub(crate) logged: bool,
    /// The span, for a sampled request.
    pub(crate) span: Option<crate::trace::SpanRecord>,
}

impl AccessRecord {
    pub(crate) fn emit(&self, duration: Duration, bytes: u64, completed: bool) {
        tracing::info!(
            target: TARGET,
            listener = &*self.listener,
            client = %self.client,
            method = self.method.as_str(),
            path = self.path.as_ref().map_or("", |p| p.as_str()),
            protocol = ?self.version,
            status = self.status,
            upstream = self.upstream.map(tracing::field::display),
            duration_ms = duration.as_secs_f64() * 1000.0,
            bytes_sent = bytes,
            request_id = self.request_id.as_ref().and_then(|v| v.to_str().ok()),
            response_flags = self.error,
            trace_id = self
                .trace_id
                .as_ref()
                .map(|id| tracing::field::display(rustng_abi::trace::Hex(id))),
            completed,
        );
    }
}
