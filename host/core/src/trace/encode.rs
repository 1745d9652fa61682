//! Spans written straight into OTLP's protobuf encoding, on the worker that ends the request:
//! one buffer per span, attribute keys copied from static text, instead of a message tree of
//! owned strings (about forty allocations per span) encoded again on the exporter thread. The
//! export request is then the spans' bytes with a few headers around them.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto` and `collector/trace/v1/trace_service.proto`; the tests decode
//! what is written here with independently declared messages, and the end-to-end tests with
//! the official generated types.

/// One span, encoded as an `opentelemetry.proto.trace.v1.Span` message (without its own
/// field key and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodedSpan(Vec<u8>);

/// An attribute's value.
pub(crate) enum Value<'a> {
    Str(&'a str),
    Int(i64),
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    // Seven bits per byte; zero takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, u64::from(field << 3 | u32::from(wire)));
}

fn bytes_field(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    key(buf, field, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// A `KeyValue` (its key in `parts`, concatenated) as field `field` of the message in `buf`.
fn key_value(buf: &mut Vec<u8>, field: u32, parts: &[&str], value: &Value<'_>) {
    let key_len: usize = parts.iter().map(|p| p.len()).sum();
    let any_len = match value {
        Value::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        // int64 is a varint of the two's complement.
        Value::Int(i) => 1 + varint_len(*i as u64),
    };
    let kv_len =
        1 + varint_len(key_len as u64) + key_len + 1 + varint_len(any_len as u64) + any_len;
    key(buf, field, LEN);
    varint(buf, kv_len as u64);
    key(buf, 1, LEN);
    varint(buf, key_len as u64);
    for part in parts {
        buf.extend_from_slice(part.as_bytes());
    }
    key(buf, 2, LEN);
    varint(buf, any_len as u64);
    match value {
        Value::Str(s) => bytes_field(buf, 1, s.as_bytes()),
        Value::Int(i) => {
            key(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
    }
}

/// Writes one span.
pub(crate) struct SpanWriter {
    buf: Vec<u8>,
}

/// A span's identity and timing.
pub(crate) struct SpanHead<'a> {
    pub(crate) trace_id: &'a [u8; 16],
    pub(crate) span_id: &'a [u8; 8],
    pub(crate) parent_span_id: Option<&'a [u8; 8]>,
    pub(crate) trace_state: &'a str,
    pub(crate) name: &'a str,
    pub(crate) kind: u32,
    pub(crate) start_unix_nano: u64,
    pub(crate) end_unix_nano: u64,
    /// W3C trace flags.
    pub(crate) flags: u32,
}

/// `Span.SpanKind.SPAN_KIND_SERVER`: the span of a request RustNg received.
pub(crate) const SPAN_KIND_SERVER: u32 = 2;

/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u64 = 2;

impl SpanWriter {
    pub(crate) fn new(head: &SpanHead<'_>) -> SpanWriter {
        // Enough for a request span's usual attributes without growing.
        let mut buf = Vec::with_capacity(640);
        bytes_field(&mut buf, 1, head.trace_id);
        bytes_field(&mut buf, 2, head.span_id);
        if !head.trace_state.is_empty() {
            bytes_field(&mut buf, 3, head.trace_state.as_bytes());
        }
        if let Some(parent) = head.parent_span_id {
            bytes_field(&mut buf, 4, parent);
        }
        bytes_field(&mut buf, 5, head.name.as_bytes());
        key(&mut buf, 6, VARINT);
        varint(&mut buf, u64::from(head.kind));
        key(&mut buf, 7, FIXED64);
        buf.extend_from_slice(&head.start_unix_nano.to_le_bytes());
        key(&mut buf, 8, FIXED64);
        buf.extend_from_slice(&head.end_unix_nano.to_le_bytes());
        key(&mut buf, 16, FIXED32);
        buf.extend_from_slice(&head.flags.to_le_bytes());
        SpanWriter { buf }
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) {
        key_value(&mut self.buf, 9, &[key], &Value::Str(value));
    }

    pub(crate) fn int(&mut self, key: &str, value: i64) {
        key_value(&mut self.buf, 9, &[key], &Value::Int(value));
    }

    /// An attribute whose key is `parts` joined (no string is built for it).
    pub(crate) fn int_parts(&mut self, parts: &[&str], value: i64) {
        key_value(&mut self.buf, 9, parts, &Value::Int(value));
    }

    /// Status `ERROR` with `message`.
    pub(crate) fn error(&mut self, message: &str) {
        let len = 1 + varint_len(message.len() as u64) + message.len() + 2;
        key(&mut self.buf, 15, LEN);
        varint(&mut self.buf, len as u64);
        bytes_field(&mut self.buf, 2, message.as_bytes());
        key(&mut self.buf, 3, VARINT);
        varint(&mut self.buf, STATUS_CODE_ERROR);
    }

    pub(crate) fn finish(self) -> EncodedSpan {
        EncodedSpan(self.buf)
    }
}

/// An `ExportTraceServiceRequest`: one resource (this process, `service_name`) with one scope
/// (RustNg) holding `spans`.
pub(crate) fn export_request(spans: &[EncodedSpan], service_name: &str) -> Vec<u8> {
    let mut resource = Vec::with_capacity(64 + service_name.len());
    key_value(
        &mut resource,
        1,
        &["service.name"],
        &Value::Str(service_name),
    );
    key_value(
        &mut resource,
        1,
        &["telemetry.sdk.name"],
        &Value::Str("rustng"),
    );
    let mut scope = Vec::with_capacity(32);
    bytes_field(&mut scope, 1, b"rustng");
    bytes_field(&mut scope, 2, env!("CARGO_PKG_VERSION").as_bytes());

    let spans_len: usize = spans
        .iter()
        .map(|s| 1 + varint_len(s.0.len() as u64) + s.0.len())
        .sum();
    let scope_spans_len = 1 + varint_len(scope.len() as u64) + scope.len() + spans_len;
    let resource_spans_len = 1
        + varint_len(resource.len() as u64)
        + resource.len()
        + 1
        + varint_len(scope_spans_len as u64)
        + scope_spans_len;
    let mut out = Vec::with_capacity(resource_spans_len + 8);
    key(&mut out, 1, LEN);
    varint(&mut out, resource_spans_len as u64);
    bytes_field(&mut out, 1, &resource);
    key(&mut out, 2, LEN);
    varint(&mut out, scope_spans_len as u64);
    bytes_field(&mut out, 1, &scope);
    for span in spans {
        bytes_field(&mut out, 2, &span.0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::otlp;
    use prost::Message as _;

    #[test]
    fn varint_lengths() {
        for value in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
        }
    }

    #[test]
    fn what_is_written_decodes_as_otlp() {
        let mut span = SpanWriter::new(&SpanHead {
            trace_id: &[7; 16],
            span_id: &[8; 8],
            parent_span_id: Some(&[9; 8]),
            trace_state: "vendor=x",
            name: "GET",
            kind: SPAN_KIND_SERVER,
            start_unix_nano: 1_700_000_000_000_000_000,
            end_unix_nano: 1_700_000_000_000_500_000,
            flags: 1,
        });
        span.str("url.path", &"p".repeat(300));
        span.int("http.response.status_code", 503);
        span.int("negative", -5);
        span.int_parts(&["rustng.plugin.", "hdr", ".duration_us"], 12);
        span.error("upstream connect error");
        let plain = SpanWriter::new(&SpanHead {
            trace_id: &[1; 16],
            span_id: &[2; 8],
            parent_span_id: None,
            trace_state: "",
            name: "POST",
            kind: SPAN_KIND_SERVER,
            start_unix_nano: 1,
            end_unix_nano: 2,
            flags: 1,
        })
        .finish();
        let request = export_request(&[span.finish(), plain], "edge");
        let decoded = otlp::ExportTraceServiceRequest::decode(&request[..]).expect("decodes");
        let resource_spans = &decoded.resource_spans[0];
        let resource = resource_spans.resource.as_ref().expect("resource");
        assert_eq!(
            resource.attributes[0],
            otlp::KeyValue::string("service.name", "edge")
        );
        let scope_spans = &resource_spans.scope_spans[0];
        assert_eq!(scope_spans.scope.as_ref().expect("scope").name, "rustng");
        let first = &scope_spans.spans[0];
        assert_eq!(first.trace_id, vec![7; 16]);
        assert_eq!(first.span_id, vec![8; 8]);
        assert_eq!(first.parent_span_id, vec![9; 8]);
        assert_eq!(first.trace_state, "vendor=x");
        assert_eq!(first.name, "GET");
        assert_eq!(first.kind, 2);
        assert_eq!(first.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(first.end_time_unix_nano, 1_700_000_000_000_500_000);
        assert_eq!(first.flags, 1);
        assert_eq!(
            first.attributes,
            vec![
                otlp::KeyValue::string("url.path", "p".repeat(300)),
                otlp::KeyValue::int("http.response.status_code", 503),
                otlp::KeyValue::int("negative", -5),
                otlp::KeyValue::int("rustng.plugin.hdr.duration_us", 12),
            ]
        );
        let status = first.status.as_ref().expect("status");
        assert_eq!(
            (status.code, status.message.as_str()),
            (2, "upstream connect error")
        );
        let second = &scope_spans.spans[1];
        assert!(second.parent_span_id.is_empty() && second.trace_state.is_empty());
        assert_eq!(second.name, "POST");
    }
}
