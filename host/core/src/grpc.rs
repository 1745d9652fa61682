//! gRPC-aware behaviour for gRPC requests (`content-type: application/grpc...`), as Envoy
//! has it: RustNg's own answers (no route, upstream unreachable, timeout, a filter's local
//! response) go out as gRPC "trailers-only" responses, HTTP 200 with `grpc-status` and
//! `grpc-message`, which gRPC clients understand (an HTTP 503 would reach the application as
//! an opaque transport error); and `grpc-timeout` bounds the request like a route timeout.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, header};

/// `DEADLINE_EXCEEDED`.
pub(crate) const DEADLINE_EXCEEDED: u32 = 4;

/// Whether a request is gRPC (gRPC-Web is not: its clients read HTTP statuses).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("application/grpc")
                && !v.starts_with("application/grpc-web")
                && matches!(v.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// The `grpc-timeout` header: 1 to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub(crate) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// The response-head timeout of a request: the route's (or the cluster's `default`), bounded
/// by the client's `grpc-timeout` when it sent one.
pub(crate) fn bounded(
    route: Option<Duration>,
    default: Duration,
    grpc: Option<Duration>,
) -> Option<Duration> {
    match grpc {
        None => route,
        Some(grpc) => Some(route.unwrap_or(default).min(grpc)),
    }
}

/// The gRPC status for an HTTP status RustNg answers with (gRPC's HTTP-to-gRPC status table,
/// as Envoy applies it).
pub(crate) fn status_for(http: StatusCode) -> u32 {
    match http.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// Makes a local answer a trailers-only gRPC response: HTTP 200, `content-type:
/// application/grpc`, `grpc-status`, and `message` as `grpc-message` (percent-encoded as the
/// gRPC spec asks). The body goes: a gRPC client would read it as a message.
pub(crate) fn trailers_only(headers: &mut HeaderMap, grpc_status: u32, message: &str) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.remove(header::CONTENT_LENGTH);
    headers.insert("grpc-status", HeaderValue::from(grpc_status));
    if let Ok(value) = HeaderValue::from_str(&encode_message(message.trim())) {
        headers.insert("grpc-message", value);
    }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn grpc_requests_are_recognised() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=x",
        ] {
            assert!(is_grpc(&headers(&[("content-type", grpc)])), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grpcx",
        ] {
            assert!(!is_grpc(&headers(&[("content-type", other)])), "{other}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts_parse() {
        let t = |v: &'static str| timeout(&headers(&[("grpc-timeout", v)]));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2S"), Some(Duration::from_secs(2)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("100u"), Some(Duration::from_micros(100)));
        for bad in ["", "m", "123456789m", "1x", "-1S", "1.5S"] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    #[test]
    fn local_answers_become_trailers_only() {
        assert_eq!(status_for(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(status_for(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(status_for(StatusCode::IM_A_TEAPOT), 2);
        let mut h = headers(&[("content-type", "text/plain"), ("content-length", "5")]);
        trailers_only(&mut h, 14, "no healthy upstream\n");
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "no healthy upstream");
        assert!(h.get("content-length").is_none());
        assert_eq!(encode_message("100% é"), "100%25 %C3%A9");
    }
}
