//! Writing HTTP/1.1: request and response heads, chunk framing, the `date` field.

use http::header::{self, HeaderMap};
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode, Uri};

/// How the request body is framed on the upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body.
    Empty,
    /// `content-length` as the client sent it; bytes pass through as they are.
    Length,
    /// Length unknown (the client used chunked, or HTTP/2 without `content-length`): chunked.
    Chunked,
}

/// Methods whose empty body is still announced, as clients do (`content-length: 0`).
fn announces_empty_body(method: &Method) -> bool {
    method == Method::POST || method == Method::PUT || method == Method::PATCH
}

/// Appends the request head to `out` and returns the body framing it announced.
/// `headers` are already free of hop-by-hop fields (`transfer-encoding` included).
pub(crate) fn request_head(
    out: &mut Vec<u8>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body_empty: bool,
) -> RequestFraming {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    fields(out, headers);
    let has_length = headers.contains_key(header::CONTENT_LENGTH);
    let framing = if body_empty {
        if !has_length && announces_empty_body(method) {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        RequestFraming::Empty
    } else if has_length {
        RequestFraming::Length
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// The line before a chunk of `len` bytes.
pub(crate) fn chunk_header(out: &mut Vec<u8>, len: usize) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// The last chunk, trailers and the end of the message.
pub(crate) fn chunked_end(out: &mut Vec<u8>, trailers: Option<&HeaderMap>) {
    out.extend_from_slice(b"0\r\n");
    if let Some(trailers) = trailers {
        fields(out, trailers);
    }
    out.extend_from_slice(b"\r\n");
}

/// Header fields, one line each, names as stored (lowercase).
pub(crate) fn fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// `HTTP/1.1 200 OK` and its CRLF. Responses always say 1.1, HTTP/1.0 clients included, as
/// nginx and hyper do (RFC 9110 §6.2: the highest minor version the server supports).
pub(crate) fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `date` value of the current second: formatting a date costs more than the rest
    /// of a small response head, and it changes once a second.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [b' '; 29])) };
}

/// The `date` field (RFC 9110 §6.6.1: an origin with a clock must send it; a proxy adds it
/// when the upstream did not).
pub(crate) fn date_field(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *cached = second;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(
        method: Method,
        uri: &str,
        headers: &[(&'static str, &'static str)],
        empty: bool,
    ) -> (String, RequestFraming) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(*k, HeaderValue::from_static(v));
        }
        let mut out = Vec::new();
        let framing = request_head(&mut out, &method, &uri.parse().expect("uri"), &map, empty);
        (String::from_utf8(out).expect("ascii"), framing)
    }

    #[test]
    fn get_without_body() {
        let (text, framing) = head(
            Method::GET,
            "/a?b=1",
            &[("host", "x"), ("x-a", "1"), ("x-a", "2")],
            true,
        );
        assert_eq!(
            text,
            "GET /a?b=1 HTTP/1.1\r\nhost: x\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
        assert_eq!(framing, RequestFraming::Empty);
    }

    #[test]
    fn bodies_keep_their_length_or_get_chunked() {
        let (text, framing) = head(Method::POST, "/", &[("content-length", "5")], false);
        assert_eq!(text, "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
        assert_eq!(framing, RequestFraming::Length);
        let (text, framing) = head(Method::PUT, "/", &[], false);
        assert_eq!(text, "PUT / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(framing, RequestFraming::Chunked);
        let (text, _) = head(Method::POST, "/", &[], true);
        assert_eq!(text, "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn chunk_framing() {
        let mut out = Vec::new();
        chunk_header(&mut out, 300);
        out.extend_from_slice(b"...\r\n");
        let mut trailers = HeaderMap::new();
        trailers.insert("x-t", HeaderValue::from_static("1"));
        chunked_end(&mut out, Some(&trailers));
        assert_eq!(out, b"12c\r\n...\r\n0\r\nx-t: 1\r\n\r\n");
    }

    #[test]
    fn status_lines_and_date() {
        let mut out = Vec::new();
        status_line(&mut out, StatusCode::NOT_FOUND);
        status_line(&mut out, StatusCode::from_u16(599).expect("status"));
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\nHTTP/1.1 599 \r\n");
        let mut out = Vec::new();
        date_field(&mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(
            text.starts_with("date: ") && text.ends_with(" GMT\r\n"),
            "{text}"
        );
        assert!(
            httpdate::parse_http_date(&text[6..text.len() - 2]).is_ok(),
            "{text}"
        );
    }
}
