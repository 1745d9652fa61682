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
use super::otlp::{self, KeyValue};
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
        let mut attributes = Vec::with_capacity(16 + outcome.plugin_time.len());
        attributes.push(KeyValue::string(
            "http.request.method",
            record.method.as_str(),
        ));
        if let Some(target) = &record.path {
            attributes.push(KeyValue::string("url.path", target.path()));
            if let Some(query) = target.query() {
                attributes.push(KeyValue::string("url.query", query));
            }
        }
        attributes.push(KeyValue::string("url.scheme", self.scheme));
        if let Some(host) = self.authority.as_ref().and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::string("server.address", host));
        }
        attributes.push(KeyValue::string(
            "network.protocol.version",
            protocol_version(record.version),
        ));
        attributes.push(KeyValue::string(
            "client.address",
            record.client.ip().to_string(),
        ));
        attributes.push(KeyValue::int(
            "client.port",
            i64::from(record.client.port()),
        ));
        if let Some(agent) = self.user_agent.as_ref().and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::string("user_agent.original", agent));
        }
        if record.status != 0 {
            attributes.push(KeyValue::int(
                "http.response.status_code",
                i64::from(record.status),
            ));
        }
        attributes.push(KeyValue::int(
            "http.response.body.size",
            i64::try_from(outcome.bytes).unwrap_or(i64::MAX),
        ));
        if let Some(status) = outcome.grpc_status {
            attributes.push(KeyValue::int("rpc.grpc.status_code", i64::from(status)));
        }
        attributes.push(KeyValue::string("rustng.listener", &*record.listener));
        if let Some(id) = record.request_id.as_ref().and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::string("guid:x-request-id", id));
        }
        if let Some(route) = outcome.route_name {
            attributes.push(KeyValue::string("route_name", route));
        }
        if let Some(cluster) = self.cluster {
            attributes.push(KeyValue::string("upstream_cluster", cluster));
        }
        if let Some(address) = record.upstream {
            attributes.push(KeyValue::string("upstream_address", address.to_string()));
        }
        if let Some(flags) = record.error {
            attributes.push(KeyValue::string("response_flags", flags));
        }
        for (plugin, time) in outcome.plugin_time {
            attributes.push(KeyValue::int(
                format!("rustng.plugin.{plugin}.duration_us"),
                i64::try_from(time.as_micros()).unwrap_or(i64::MAX),
            ));
        }
        // A server span is an error for 5xx and for a request that got no answer; 4xx is
        // the client's doing (OpenTelemetry's HTTP conventions).
        let failed = record.status == 0 || record.status >= 500;
        let status = failed.then(|| otlp::Status {
            message: record.error.unwrap_or_default().to_owned(),
            code: otlp::STATUS_CODE_ERROR,
        });
        let start = unix_nanos(self.start);
        let span = otlp::Span {
            trace_id: self.ids.trace_id.to_vec(),
            span_id: self.ids.span_id.to_vec(),
            trace_state: self
                .trace_state
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            parent_span_id: self
                .ids
                .parent_span_id
                .map_or_else(Vec::new, |p| p.to_vec()),
            // OpenTelemetry's HTTP server span name when no route template is known.
            name: record.method.as_str().to_owned(),
            kind: otlp::SPAN_KIND_SERVER,
            start_time_unix_nano: start,
            end_time_unix_nano: start
                .saturating_add(u64::try_from(outcome.elapsed.as_nanos()).unwrap_or(u64::MAX)),
            attributes,
            status,
            flags: u32::from(self.ids.sampled),
        };
        self.tracer.submit(span);
    }
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
