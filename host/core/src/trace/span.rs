//! A sampled request's span: what is known when the request starts, completed from the
//! request's record when it ends, and turned into an OTLP span.
//!
//! Attribute names follow OpenTelemetry's HTTP semantic conventions; the proxy's own facts
//! use the names of Envoy's span tags (`upstream_cluster`, `upstream_address`,
//! `response_flags`, `guid:x-request-id`, `route_name`), which tracing dashboards for Envoy
//! already know.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Version};
use rustng_abi::trace::TraceIds;

use super::Tracer;
use super::encode::{SPAN_KIND_SERVER, SpanHead, SpanWriter};
use crate::access_log::AccessRecord;

/// The span of one sampled request, until it ends.
pub(crate) struct SpanRecord {
    pub(crate) tracer: Arc<Tracer>,
    pub(crate) ids: TraceIds,
    pub(crate) trace_state: Option<HeaderValue>,
    /// Wall-clock start (OTLP wants Unix time); the duration comes from the monotonic clock.
    pub(crate) start: SystemTime,
    pub(crate) authority: Option<HeaderValue>,
    pub(crate) user_agent: Option<HeaderValue>,
    pub(crate) scheme: &'static str,
    /// The cluster the request was sent to, once known.
    pub(crate) cluster: Option<String>,
}

/// How the request ended, for its span.
pub(crate) struct Outcome<'a> {
    pub(crate) elapsed: Duration,
    pub(crate) bytes: u64,
    pub(crate) grpc_status: Option<u32>,
    /// Time spent in each plugin's callbacks for this request.
    pub(crate) plugin_time: &'a [(String, Duration)],
    /// The route a routing filter named (`rustng.route.name`).
    pub(crate) route_name: Option<&'a str>,
}

impl SpanRecord {
    /// Completes the span with what `record` learnt along the way and hands it to the
    /// exporter.
    pub(crate) fn finish(self, record: &AccessRecord, outcome: &Outcome<'_>) {
        let start = unix_nanos(self.start);
        let trace_state = self
            .trace_state
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let mut span = SpanWriter::new(&SpanHead {
            trace_id: &self.ids.trace_id,
            span_id: &self.ids.span_id,
            parent_span_id: self.ids.parent_span_id.as_ref(),
            trace_state,
            // OpenTelemetry's HTTP server span name when no route template is known.
            name: record.method.as_str(),
            kind: SPAN_KIND_SERVER,
            start_unix_nano: start,
            end_unix_nano: start
                .saturating_add(u64::try_from(outcome.elapsed.as_nanos()).unwrap_or(u64::MAX)),
            flags: u32::from(self.ids.sampled),
        });
        span.str("http.request.method", record.method.as_str());
        if let Some(target) = &record.path {
            span.str("url.path", target.path());
            if let Some(query) = target.query() {
                span.str("url.query", query);
            }
        }
        span.str("url.scheme", self.scheme);
        if let Some(host) = self.authority.as_ref().and_then(|v| v.to_str().ok()) {
            span.str("server.address", host);
        }
        span.str("network.protocol.version", protocol_version(record.version));
        let mut ip = [0u8; 39];
        span.str("client.address", ip_text(record.client.ip(), &mut ip));
        span.int("client.port", i64::from(record.client.port()));
        if let Some(agent) = self.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
            span.str("user_agent.original", agent);
        }
        if record.status != 0 {
            span.int("http.response.status_code", i64::from(record.status));
        }
        span.int(
            "http.response.body.size",
            i64::try_from(outcome.bytes).unwrap_or(i64::MAX),
        );
        if let Some(status) = outcome.grpc_status {
            span.int("rpc.grpc.status_code", i64::from(status));
        }
        span.str("rustng.listener", &record.listener);
        if let Some(id) = record.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            span.str("guid:x-request-id", id);
        }
        if let Some(route) = outcome.route_name {
            span.str("route_name", route);
        }
        if let Some(cluster) = &self.cluster {
            span.str("upstream_cluster", cluster);
        }
        if let Some(address) = record.upstream {
            let mut text = [0u8; 47];
            span.str("upstream_address", addr_text(address, &mut text));
        }
        if let Some(flags) = record.error {
            span.str("response_flags", flags);
        }
        for (plugin, time) in outcome.plugin_time {
            span.int_parts(
                &["rustng.plugin.", plugin, ".duration_us"],
                i64::try_from(time.as_micros()).unwrap_or(i64::MAX),
            );
        }
        // A server span is an error for 5xx and for a request that got no answer; 4xx is
        // the client's doing (OpenTelemetry's HTTP conventions).
        if record.status == 0 || record.status >= 500 {
            span.error(record.error.unwrap_or_default());
        }
        self.tracer.submit(span.finish());
    }
}

/// `ip` as text in `buf`, without allocating.
fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; 39]) -> &str {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{ip}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// `address` (`ip:port`, `[ip6]:port`) as text in `buf`, without allocating.
fn addr_text(address: std::net::SocketAddr, buf: &mut [u8; 47]) -> &str {
    use std::io::Write as _;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{address}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
