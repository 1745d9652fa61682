//! Reading the caller's trace context from a request (W3C `traceparent`, else B3 in its
//! single- or multi-header form) and writing RustNg's span into it for the upstream.
//!
//! `tracestate` is vendor data RustNg has no entry in: it travels on untouched.

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use rustng_abi::trace::{Hex, TRACEPARENT_LEN, TraceIds};

pub(crate) const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3: HeaderName = HeaderName::from_static("b3");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// What the request said about its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Incoming {
    /// The trace and the caller's span, when it sent them.
    pub(crate) ids: Option<([u8; 16], [u8; 8])>,
    /// The caller's sampling decision, when it made one.
    pub(crate) sampled: Option<bool>,
    /// The B3 form it came in, so the upstream gets the same form back.
    pub(crate) b3: Option<B3Form>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum B3Form {
    Single,
    Multi,
}

/// The caller's trace context. A malformed `traceparent` counts as none (W3C: restart the
/// trace), and B3 is only read when there is no valid `traceparent`.
pub(crate) fn extract(headers: &HeaderMap) -> Incoming {
    if let Some((trace_id, parent, sampled)) = headers
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
    {
        return Incoming {
            ids: Some((trace_id, parent)),
            sampled: Some(sampled),
            b3: None,
        };
    }
    if let Some(value) = headers.get(B3) {
        return parse_b3_single(value.as_bytes()).unwrap_or_default();
    }
    if headers.contains_key(B3_TRACE_ID) || headers.contains_key(B3_SAMPLED) {
        return parse_b3_multi(headers);
    }
    Incoming::default()
}

/// `00-<32 hex>-<16 hex>-<2 hex>`; a later version may append fields after another `-`.
fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    if value.len() < TRACEPARENT_LEN || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version: [u8; 1] = lower_hex(&value[0..2])?;
    match version[0] {
        0xff => return None,
        0 if value.len() != TRACEPARENT_LEN => return None,
        _ if value.len() > TRACEPARENT_LEN && value[TRACEPARENT_LEN] != b'-' => return None,
        _ => {}
    }
    let trace_id: [u8; 16] = lower_hex(&value[3..35])?;
    let parent: [u8; 8] = lower_hex(&value[36..52])?;
    let flags: [u8; 1] = lower_hex(&value[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags[0] & 1 == 1))
}

/// `b3: {trace}-{span}[-{sampling}[-{parent}]]`, or the sampling decision alone.
fn parse_b3_single(value: &[u8]) -> Option<Incoming> {
    let mut fields = value.split(|b| *b == b'-');
    let first = fields.next()?;
    let Some(span) = fields.next() else {
        return Some(Incoming {
            sampled: Some(b3_sampling(first)?),
            b3: Some(B3Form::Single),
            ..Incoming::default()
        });
    };
    let sampled = match fields.next() {
        Some(flag) => Some(b3_sampling(flag)?),
        None => None,
    };
    Some(Incoming {
        ids: Some((b3_trace_id(first)?, b3_span_id(span)?)),
        sampled,
        b3: Some(B3Form::Single),
    })
}

fn parse_b3_multi(headers: &HeaderMap) -> Incoming {
    let get = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
    let ids = match (get(&B3_TRACE_ID), get(&B3_SPAN_ID)) {
        (Some(trace), Some(span)) => b3_trace_id(trace).zip(b3_span_id(span)),
        _ => None,
    };
    // `x-b3-flags: 1` is debug, which implies sampled.
    let debug = get(&B3_FLAGS) == Some(b"1");
    let sampled = if debug {
        Some(true)
    } else {
        get(&B3_SAMPLED).and_then(b3_sampling)
    };
    Incoming {
        ids,
        sampled,
        b3: Some(B3Form::Multi),
    }
}

fn b3_sampling(value: &[u8]) -> Option<bool> {
    match value {
        b"1" | b"d" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

/// A B3 trace id: 32 hex digits, or 16 (a 64-bit id, left-padded with zeros).
fn b3_trace_id(value: &[u8]) -> Option<[u8; 16]> {
    let id = match value.len() {
        32 => any_hex(value)?,
        16 => {
            let low: [u8; 8] = any_hex(value)?;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            id
        }
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

fn b3_span_id(value: &[u8]) -> Option<[u8; 8]> {
    let id: [u8; 8] = any_hex(value)?;
    (id != [0; 8]).then_some(id)
}

/// W3C allows lower-case hex only.
fn lower_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    any_hex(text)
}

fn any_hex<const N: usize>(text: &[u8]) -> Option<[u8; N]> {
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
    }
    Some(out)
}

/// Writes `ids` (RustNg's span as the parent) into the request for the upstream: always
/// `traceparent`, and B3 in the form the request came with.
pub(crate) fn inject(headers: &mut HeaderMap, ids: &TraceIds, b3: Option<B3Form>) {
    let traceparent = ids.traceparent();
    if let Ok(value) = HeaderValue::from_bytes(&traceparent) {
        headers.insert(TRACEPARENT, value);
    }
    let sampled = if ids.sampled { "1" } else { "0" };
    let trace = Hex(&ids.trace_id);
    let span = Hex(&ids.span_id);
    let value = |text: String| HeaderValue::from_str(&text).ok();
    match b3 {
        None => {}
        Some(B3Form::Single) => {
            if let Some(v) = value(format!("{trace}-{span}-{sampled}")) {
                headers.insert(B3, v);
            }
        }
        Some(B3Form::Multi) => {
            for (name, text) in [
                (B3_TRACE_ID, trace.to_string()),
                (B3_SPAN_ID, span.to_string()),
                (B3_SAMPLED, sampled.to_owned()),
            ] {
                if let Some(v) = value(text) {
                    headers.insert(name, v);
                }
            }
            match ids
                .parent_span_id
                .as_ref()
                .and_then(|p| value(Hex(p).to_string()))
            {
                Some(parent) => {
                    headers.insert(B3_PARENT_SPAN_ID, parent);
                }
                None => {
                    headers.remove(B3_PARENT_SPAN_ID);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                )
            })
            .collect()
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const TRACE_BYTES: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN_BYTES: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    #[test]
    fn traceparent_is_read_strictly() {
        let good = format!("00-{TRACE}-00f067aa0ba902b7-01");
        let incoming = extract(&headers(&[("traceparent", &good)]));
        assert_eq!(incoming.ids, Some((TRACE_BYTES, SPAN_BYTES)));
        assert_eq!(incoming.sampled, Some(true));
        let unsampled = format!("00-{TRACE}-00f067aa0ba902b7-00");
        assert_eq!(
            extract(&headers(&[("traceparent", &unsampled)])).sampled,
            Some(false)
        );
        // A future version may add fields; version 00 may not.
        let future = format!("01-{TRACE}-00f067aa0ba902b7-01-extra");
        assert!(extract(&headers(&[("traceparent", &future)])).ids.is_some());
        for bad in [
            format!("00-{TRACE}-00f067aa0ba902b7-01-extra"),
            format!("ff-{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{TRACE}-00f067aa0ba902b7"),
            format!("00_{TRACE}_00f067aa0ba902b7_01"),
            "00-xyz".to_owned(),
        ] {
            assert_eq!(
                extract(&headers(&[("traceparent", &bad)])),
                Incoming::default(),
                "{bad}"
            );
        }
    }

    #[test]
    fn b3_is_read_in_both_forms_when_there_is_no_traceparent() {
        let single = extract(&headers(&[("b3", &format!("{TRACE}-00f067aa0ba902b7-1"))]));
        assert_eq!(single.ids, Some((TRACE_BYTES, SPAN_BYTES)));
        assert_eq!(single.sampled, Some(true));
        assert_eq!(single.b3, Some(B3Form::Single));
        let deny = extract(&headers(&[("b3", "0")]));
        assert_eq!((deny.ids, deny.sampled), (None, Some(false)));
        let short = extract(&headers(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")]));
        let (trace, _) = short.ids.expect("64-bit trace id");
        assert_eq!(&trace[..8], &[0; 8]);
        assert_eq!(short.sampled, None, "no decision: RustNg's own applies");
        let multi = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-flags", "1"),
        ]));
        assert_eq!(multi.ids, Some((TRACE_BYTES, SPAN_BYTES)));
        assert_eq!(multi.sampled, Some(true), "debug implies sampled");
        assert_eq!(multi.b3, Some(B3Form::Multi));
        // traceparent wins.
        let both = extract(&headers(&[
            ("traceparent", &format!("00-{TRACE}-00f067aa0ba902b7-00")),
            ("b3", "1"),
        ]));
        assert_eq!((both.sampled, both.b3), (Some(false), None));
    }

    #[test]
    fn the_upstream_gets_rustngs_span_as_parent_in_every_form_it_came_with() {
        let ids = TraceIds {
            trace_id: TRACE_BYTES,
            span_id: [1, 2, 3, 4, 5, 6, 7, 8],
            parent_span_id: Some(SPAN_BYTES),
            sampled: true,
        };
        let mut map = headers(&[("tracestate", "vendor=x"), ("x-b3-traceid", "1")]);
        inject(&mut map, &ids, Some(B3Form::Multi));
        assert_eq!(
            map["traceparent"],
            format!("00-{TRACE}-0102030405060708-01").as_str()
        );
        assert_eq!(map["tracestate"], "vendor=x");
        assert_eq!(map["x-b3-traceid"], TRACE);
        assert_eq!(map["x-b3-spanid"], "0102030405060708");
        assert_eq!(map["x-b3-parentspanid"], "00f067aa0ba902b7");
        assert_eq!(map["x-b3-sampled"], "1");
        let mut single = HeaderMap::new();
        inject(&mut single, &ids, Some(B3Form::Single));
        assert_eq!(single["b3"], format!("{TRACE}-0102030405060708-1").as_str());
    }
}
