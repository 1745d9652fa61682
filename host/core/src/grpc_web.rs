//! gRPC-Web translation (Envoy's `envoy.filters.http.grpc_web`), for listeners that name it
//! in `http_filters`: a browser's gRPC-Web request (`application/grpc-web[+proto]`, or
//! `application/grpc-web-text[+proto]` with a base64 body) goes upstream as gRPC, and the
//! gRPC response comes back as gRPC-Web: the trailers become a trailer frame at the end of
//! the body (flag 0x80, then `name:value\r\n` lines), since browsers cannot read HTTP
//! trailers; for `-text`, the whole body is base64.
//!
//! The translation is at the edges, around the filter chain: filters see gRPC.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, header};
use http_body::{Body, Frame};

use crate::body::ProxyBody;
use crate::upstream::{BoxError, BoxLocal as _};

/// How the client encodes the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Binary,
    /// Base64 (`application/grpc-web-text`).
    Text,
}

/// Rewrites a gRPC-Web request's head to gRPC; `None` (head untouched) for other requests.
pub(crate) fn translate_request(headers: &mut HeaderMap) -> Option<Encoding> {
    let content_type = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let (encoding, suffix) =
        if let Some(rest) = content_type.strip_prefix("application/grpc-web-text") {
            (Encoding::Text, rest)
        } else if let Some(rest) = content_type.strip_prefix("application/grpc-web") {
            (Encoding::Binary, rest)
        } else {
            return None;
        };
    if !(suffix.is_empty() || suffix.starts_with('+') || suffix.starts_with(';')) {
        return None;
    }
    let grpc = HeaderValue::from_str(&format!("application/grpc{suffix}")).ok()?;
    headers.insert(header::CONTENT_TYPE, grpc);
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    if encoding == Encoding::Text {
        // Decoded, the body is shorter.
        headers.remove(header::CONTENT_LENGTH);
    }
    Some(encoding)
}

/// The request body, decoded from base64 for `-text`.
pub(crate) struct DecodeText<B> {
    inner: B,
    /// Base64 characters not yet decoded (fewer than a group of four, at chunk ends).
    pending: BytesMut,
}

impl<B> DecodeText<B> {
    pub(crate) fn new(inner: B) -> Self {
        DecodeText {
            inner,
            pending: BytesMut::new(),
        }
    }
}

/// Decodes whole groups of four; a group with padding ends a segment (clients may send
/// several padded segments one after the other).
fn decode_groups(text: &[u8]) -> Result<Vec<u8>, BoxError> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut start = 0;
    for (i, group) in text.chunks(4).enumerate() {
        if group.contains(&b'=') {
            let end = (i + 1) * 4;
            out.extend_from_slice(&STANDARD.decode(&text[start..end])?);
            start = end;
        }
    }
    if start < text.len() {
        out.extend_from_slice(&STANDARD.decode(&text[start..])?);
    }
    Ok(out)
}

impl<B> Body for DecodeText<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.pending
                            .extend(data.iter().copied().filter(|b| !b.is_ascii_whitespace()));
                        let whole = this.pending.len() / 4 * 4;
                        if whole == 0 {
                            continue;
                        }
                        let text = this.pending.split_to(whole);
                        return Poll::Ready(Some(
                            decode_groups(&text).map(|bytes| Frame::data(Bytes::from(bytes))),
                        ));
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None if this.pending.is_empty() => return Poll::Ready(None),
                None => {
                    this.pending.clear();
                    return Poll::Ready(Some(Err("grpc-web-text body: base64 cut short".into())));
                }
            }
        }
    }
}

/// Rewrites a gRPC response as gRPC-Web for the client.
pub(crate) fn translate_response(
    response: Response<ProxyBody>,
    encoding: Encoding,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .map(|suffix| match encoding {
            Encoding::Binary => format!("application/grpc-web{suffix}"),
            Encoding::Text => format!("application/grpc-web-text{suffix}"),
        });
    if let Some(value) = content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
        parts.headers.insert(header::CONTENT_TYPE, value);
    }
    // The trailer frame (and base64) change the length.
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = EncodeWeb {
        inner: body,
        encoding,
        carry: BytesMut::new(),
        finished: false,
    };
    Response::from_parts(parts, ProxyBody::wrapping(body.boxed_local()))
}

/// The response body as gRPC-Web.
struct EncodeWeb {
    inner: ProxyBody,
    encoding: Encoding,
    /// `-text`: bytes not yet encoded (base64 goes three bytes at a time until the end).
    carry: BytesMut,
    finished: bool,
}

/// The gRPC-Web trailer frame for `trailers`.
fn trailer_frame(trailers: &HeaderMap) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in trailers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.push(b':');
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    let mut frame = Vec::with_capacity(5 + block.len());
    frame.push(0x80);
    frame.extend_from_slice(&u32::try_from(block.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&block);
    frame
}

impl EncodeWeb {
    /// Bytes for the client: as they are, or base64 of what makes whole groups (`last`:
    /// everything, padded).
    fn encode(&mut self, bytes: &[u8], last: bool) -> Option<Bytes> {
        match self.encoding {
            Encoding::Binary => (!bytes.is_empty()).then(|| Bytes::copy_from_slice(bytes)),
            Encoding::Text => {
                self.carry.extend_from_slice(bytes);
                let whole = if last {
                    self.carry.len()
                } else {
                    self.carry.len() / 3 * 3
                };
                if whole == 0 {
                    return None;
                }
                let chunk = self.carry.split_to(whole);
                Some(Bytes::from(STANDARD.encode(&chunk)))
            }
        }
    }
}

impl Body for EncodeWeb {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let encoded = match frame.into_data() {
                        Ok(data) => this.encode(&data, false),
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => {
                                this.finished = true;
                                let trailer = trailer_frame(&trailers);
                                this.encode(&trailer, true)
                            }
                            Err(_) => None,
                        },
                    };
                    if let Some(bytes) = encoded {
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.finished = true;
                    return Poll::Ready(this.encode(&[], true).map(|b| Ok(Frame::data(b))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        headers
    }

    #[test]
    fn requests_are_recognised_and_rewritten() {
        let mut h = content_type("application/grpc-web+proto");
        assert_eq!(translate_request(&mut h), Some(Encoding::Binary));
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc+proto");
        assert_eq!(h[header::TE], "trailers");
        assert!(h.contains_key(header::CONTENT_LENGTH));
        let mut h = content_type("application/grpc-web-text");
        assert_eq!(translate_request(&mut h), Some(Encoding::Text));
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert!(!h.contains_key(header::CONTENT_LENGTH));
        for other in [
            "application/grpc",
            "application/json",
            "application/grpc-webby",
        ] {
            let mut h = content_type(other);
            assert_eq!(translate_request(&mut h), None, "{other}");
        }
    }

    #[test]
    fn text_decodes_across_chunks_and_padded_segments() {
        assert_eq!(
            decode_groups(b"aGVsbG8=d29ybGQ=").expect("decodes"),
            b"helloworld"
        );
        assert!(decode_groups(b"a#==").is_err());
    }

    #[test]
    fn trailers_become_a_trailer_frame() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let frame = trailer_frame(&trailers);
        assert_eq!(frame[0], 0x80);
        assert_eq!(&frame[1..5], &32u32.to_be_bytes());
        assert_eq!(&frame[5..], b"grpc-status:0\r\ngrpc-message:ok\r\n");
    }
}
