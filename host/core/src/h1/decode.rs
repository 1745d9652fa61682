//! Reading HTTP/1.1 messages: request and response heads, then the body framing each implies
//! (RFC 9112 §6.3).
//!
//! Pure functions over a `BytesMut`, so every edge case is a unit test without sockets.
//! Header values are slices of the received head (`Bytes`), never copied.

use std::io;
use std::mem::MaybeUninit;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version, request};
use http_body::Frame;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Most header fields in a response head; more is a protocol error, as in hyper (100).
const MAX_HEADERS: usize = 128;
/// Header fields whose offsets are kept on the stack while a head is parsed.
const INLINE_HEADERS: usize = 24;
/// Largest response head; upstreams are trusted more than clients but not unboundedly.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line (size, extensions, CRLF).
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest trailer section.
const MAX_TRAILER_BYTES: usize = 64 * 1024;

/// Why an upstream response could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum DecodeError {
    #[error("invalid response head: {0}")]
    Head(String),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("protocol switch (101) outside an upgrade request")]
    UnexpectedSwitch,
    #[error("invalid content-length")]
    ContentLength,
    #[error("invalid chunk: {0}")]
    Chunk(&'static str),
    #[error("connection closed before the body ended")]
    Truncated,
}

/// A parsed response head and what it says about the body and the connection.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: BodyDecoder,
    /// The connection may carry another request after this response.
    pub(crate) keep_alive: bool,
}

/// Parses a response head at the start of `buf`, skipping interim (1xx) responses.
/// `Ok(None)`: the head is not complete yet.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, DecodeError> {
    loop {
        // Uninitialised slots: initialising 128 of them would cost a 4 KiB memset per response.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(DecodeError::HeadTooLarge);
                }
                return Ok(None);
            }
            Err(e) => return Err(DecodeError::Head(e.to_string())),
        };
        let code = response.code.unwrap_or(0);
        let status =
            StatusCode::from_u16(code).map_err(|_| DecodeError::Head(format!("status {code}")))?;
        let version = if response.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(DecodeError::UnexpectedSwitch);
        }
        if status.is_informational() {
            // 100 Continue, 103 Early Hints: not forwarded (hyper answers 100 downstream itself).
            buf.advance(len);
            continue;
        }

        let fields = FieldOffsets::new(buf, response.headers);
        let (_, headers) = freeze_head(buf, len, &fields, RESPONSE_HEADROOM)
            .map_err(|field| DecodeError::Head(format!("header {field}")))?;
        let keep_alive = keep_alive(version, &headers);
        let body = framing(method, status, &headers)?;
        let keep_alive = keep_alive && !matches!(body, BodyDecoder::UntilClose);
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            body,
            keep_alive,
        }));
    }
}

/// Where each header field's name and value sit in a parsed head, by offset, so the head can
/// be split off its buffer (ending `httparse`'s borrow) before the map is built. Typical heads
/// keep their offsets on the stack.
struct FieldOffsets {
    inline: [(usize, usize, usize, usize); INLINE_HEADERS],
    spilled: Vec<(usize, usize, usize, usize)>,
    count: usize,
}

impl FieldOffsets {
    fn new(buf: &[u8], fields: &[httparse::Header<'_>]) -> Self {
        let base = buf.as_ptr() as usize;
        let offset = |h: &httparse::Header<'_>| {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            (name, name + h.name.len(), value, value + h.value.len())
        };
        let mut table = FieldOffsets {
            inline: [(0, 0, 0, 0); INLINE_HEADERS],
            spilled: Vec::new(),
            count: fields.len(),
        };
        if fields.len() <= INLINE_HEADERS {
            for (slot, h) in table.inline.iter_mut().zip(fields) {
                *slot = offset(h);
            }
        } else {
            table.spilled = fields.iter().map(offset).collect();
        }
        table
    }

    fn as_slice(&self) -> &[(usize, usize, usize, usize)] {
        if self.count <= INLINE_HEADERS {
            &self.inline[..self.count]
        } else {
            &self.spilled
        }
    }
}

/// Room for the fields a request gains on its way (`x-forwarded-for`, `x-request-id`, a
/// filter's headers) and a response gains (a filter's): a map built to the exact count grows,
/// reallocating and rehashing, as soon as one is added.
const REQUEST_HEADROOM: usize = 6;
const RESPONSE_HEADROOM: usize = 3;

/// Splits the first `len` bytes (a parsed head) off `buf` and builds its header map, values as
/// zero-copy slices of the frozen head, with room for `headroom` more fields. On an invalid
/// name or value, the error is that field's name, for the message.
fn freeze_head(
    buf: &mut BytesMut,
    len: usize,
    fields: &FieldOffsets,
    headroom: usize,
) -> Result<(Bytes, HeaderMap), String> {
    let head: Bytes = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.count + headroom);
    for &(name_start, name_end, value_start, value_end) in fields.as_slice() {
        let raw_name = &head[name_start..name_end];
        let name = HeaderName::from_bytes(raw_name)
            .map_err(|_| String::from_utf8_lossy(raw_name).into_owned())?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| name.as_str().to_owned())?;
        headers.append(name, value);
    }
    Ok((head, headers))
}

/// Why a request head is refused; the status the client gets before the connection closes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// 400: not HTTP, or framing that cannot be trusted (request smuggling shapes included).
    #[error("bad request: {0}")]
    Invalid(String),
    /// 431: the head outgrew the listener's limit, or has too many fields.
    #[error("request head too large")]
    TooLarge,
}

impl RequestError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            RequestError::Invalid(_) => StatusCode::BAD_REQUEST,
            RequestError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
}

/// A parsed request head and what it says about the body and the connection.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) parts: request::Parts,
    pub(crate) body: BodyDecoder,
    /// The client allows another request on this connection after this one.
    pub(crate) keep_alive: bool,
    /// `expect: 100-continue`: the client waits for a `100` before sending the body.
    pub(crate) expect_continue: bool,
    /// `te: trailers`: the client takes trailers in a chunked response.
    pub(crate) accepts_trailers: bool,
    /// `connection: upgrade` with an `upgrade` field: a protocol switch may follow.
    pub(crate) upgrade: bool,
}

/// Parses a request head at the start of `buf` (after any empty lines, which RFC 9112 §2.2
/// lets a server skip). `Ok(None)`: incomplete, and still under `max_bytes`.
pub(crate) fn parse_request_head(
    buf: &mut BytesMut,
    max_bytes: usize,
) -> Result<Option<RequestHead>, RequestError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len > max_bytes => {
            return Err(RequestError::TooLarge);
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => {
            return Err(RequestError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooLarge),
        Err(e) => return Err(RequestError::Invalid(e.to_string())),
    };
    let invalid = |what: String| RequestError::Invalid(what);
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| invalid("method".into()))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // The target's offsets, so the URI can be a slice of the frozen head like the values.
    let base = buf.as_ptr() as usize;
    let target = parsed.path.unwrap_or_default();
    let target_start = target.as_ptr() as usize - base;
    let target_end = target_start + target.len();
    let fields = FieldOffsets::new(buf, parsed.headers);
    let (head, headers) = freeze_head(buf, len, &fields, REQUEST_HEADROOM)
        .map_err(|field| invalid(format!("header {field}")))?;
    let uri = Uri::from_maybe_shared(head.slice(target_start..target_end))
        .map_err(|e| invalid(format!("request target: {e}")))?;

    let body = request_framing(version, &headers)?;
    let keep_alive = keep_alive(version, &headers);
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let accepts_trailers = has_token(&headers, header::TE, "trailers");
    let upgrade =
        headers.contains_key(header::UPGRADE) && has_token(&headers, header::CONNECTION, "upgrade");
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        body,
        keep_alive,
        expect_continue,
        accepts_trailers,
        upgrade,
    }))
}

/// RFC 9112 §6.3, for requests: chunked or a length, never "until close". What a proxy cannot
/// frame exactly is refused, since the upstream might frame it differently (request
/// smuggling): `transfer-encoding` with `content-length`, a coding other than a final
/// `chunked`, `transfer-encoding` in HTTP/1.0, and disagreeing lengths.
fn request_framing(version: Version, headers: &HeaderMap) -> Result<BodyDecoder, RequestError> {
    let invalid = |what: &str| RequestError::Invalid(what.to_owned());
    if headers.contains_key(header::TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(invalid("transfer-encoding in HTTP/1.0"));
        }
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(invalid("both transfer-encoding and content-length"));
        }
        return if last_coding_is_chunked(headers) {
            Ok(BodyDecoder::Chunked(Chunked::Size))
        } else {
            Err(invalid("transfer-encoding without a final chunked"))
        };
    }
    match content_length(headers).map_err(|_| invalid("content-length"))? {
        Some(n) => Ok(BodyDecoder::Length(n)),
        None => Ok(BodyDecoder::Length(0)),
    }
}

/// Whether the last transfer coding applied is `chunked`, the only one that frames a message.
fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
}

/// The message's `content-length`: every field and list element must be the same number.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, DecodeError> {
    let values = headers.get_all(header::CONTENT_LENGTH);
    let mut each = values.iter();
    let Some(first) = each.next() else {
        return Ok(None);
    };
    // The common case, one field with a plain number, without splitting and trimming: every
    // message through the proxy is read this way, some twice.
    let digits = first.as_bytes();
    if each.next().is_none()
        && (1..=19).contains(&digits.len())
        && digits.iter().all(u8::is_ascii_digit)
    {
        return Ok(Some(
            digits
                .iter()
                .fold(0, |n, digit| n * 10 + u64::from(digit - b'0')),
        ));
    }
    let mut length = None;
    for value in values {
        let text = value.to_str().map_err(|_| DecodeError::ContentLength)?;
        for element in text.split(',') {
            let element = element.trim();
            if element.is_empty()
                || element.len() > 19
                || !element.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(DecodeError::ContentLength);
            }
            let parsed: u64 = element.parse().map_err(|_| DecodeError::ContentLength)?;
            if length.is_some_and(|l| l != parsed) {
                return Err(DecodeError::ContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    if version == Version::HTTP_10 {
        has_token(headers, header::CONNECTION, "keep-alive")
    } else {
        !has_token(headers, header::CONNECTION, "close")
    }
}

/// RFC 9112 §6.3, for responses.
fn framing(
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<BodyDecoder, DecodeError> {
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyDecoder::Length(0));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(if last_coding_is_chunked(headers) {
            BodyDecoder::Chunked(Chunked::Size)
        } else {
            BodyDecoder::UntilClose
        });
    }
    let length = content_length(headers)?;
    Ok(match length {
        Some(n) => BodyDecoder::Length(n),
        None => BodyDecoder::UntilClose,
    })
}

/// Where the body decoder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyDecoder {
    /// `content-length` bytes left.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunked),
    /// No length: the body ends when the upstream closes (and the connection with it).
    UntilClose,
    /// Everything read.
    Done,
}

/// Chunked decoder states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailers or the final CRLF.
    Trailers,
}

/// One step of body decoding.
#[derive(Debug, PartialEq)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More input is needed.
    NeedMore,
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

impl BodyDecoder {
    /// Bytes of body known to remain, for the size hint.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(n) => Some(*n),
            BodyDecoder::Done => Some(0),
            _ => None,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, BodyDecoder::Done | BodyDecoder::Length(0))
    }

    /// Decodes the next piece of body from `buf`. Data comes out as slices of `buf`'s
    /// allocation (`split_to().freeze()`), so body bytes are never copied here.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            match self {
                BodyDecoder::Done | BodyDecoder::Length(0) => {
                    *self = BodyDecoder::Done;
                    return Ok(Decoded::End);
                }
                BodyDecoder::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = (*left).min(buf.len() as u64) as usize;
                    *left -= take as u64;
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                BodyDecoder::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                BodyDecoder::Chunked(state) => match *state {
                    Chunked::Size => {
                        let Some(end) = find_crlf(buf) else {
                            if buf.len() > MAX_CHUNK_LINE {
                                return Err(DecodeError::Chunk("size line too long"));
                            }
                            return Ok(Decoded::NeedMore);
                        };
                        let size = parse_chunk_size(&buf[..end])?;
                        buf.advance(end + 2);
                        *state = if size == 0 {
                            Chunked::Trailers
                        } else {
                            Chunked::Data(size)
                        };
                    }
                    Chunked::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Decoded::NeedMore);
                        }
                        let take = left.min(buf.len() as u64) as usize;
                        let left = left - take as u64;
                        *state = if left == 0 {
                            Chunked::DataEnd
                        } else {
                            Chunked::Data(left)
                        };
                        return Ok(Decoded::Data(buf.split_to(take).freeze()));
                    }
                    Chunked::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(DecodeError::Chunk("missing CRLF after data"));
                        }
                        buf.advance(2);
                        *state = Chunked::Size;
                    }
                    Chunked::Trailers => {
                        if buf.len() < 2 {
                            return Ok(Decoded::NeedMore);
                        }
                        if &buf[..2] == b"\r\n" {
                            buf.advance(2);
                            *self = BodyDecoder::Done;
                            return Ok(Decoded::End);
                        }
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            if buf.len() > MAX_TRAILER_BYTES {
                                return Err(DecodeError::Chunk("trailers too large"));
                            }
                            return Ok(Decoded::NeedMore);
                        };
                        let section = buf.split_to(end + 4).freeze();
                        *self = BodyDecoder::Done;
                        return Ok(Decoded::Trailers(parse_trailers(&section)?));
                    }
                },
            }
        }
    }

    /// The next body frame from `buf`, calling `fill` for one more read into it whenever the
    /// decoder needs more input (`Ok(0)`: the peer's end of stream). `None` once the body ended.
    /// Shared by the two sides' bodies, which differ only in how they read their socket.
    pub(crate) fn poll_frame(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
        mut fill: impl FnMut(&mut BytesMut, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let decoded = match self.decode(buf) {
                Ok(Decoded::NeedMore) => match ready!(fill(buf, cx)) {
                    Ok(0) => self.eof(),
                    Ok(_) => continue,
                    Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                },
                other => other,
            };
            return Poll::Ready(match decoded {
                Ok(Decoded::Data(data)) => Some(Ok(Frame::data(data))),
                Ok(Decoded::Trailers(trailers)) => Some(Ok(Frame::trailers(trailers))),
                Ok(Decoded::End) => None,
                Ok(Decoded::NeedMore) => continue,
                Err(e) => Some(Err(Box::new(e))),
            });
        }
    }

    /// The upstream closed the connection: fine only for a close-delimited body.
    pub(crate) fn eof(&mut self) -> Result<Decoded, DecodeError> {
        match self {
            BodyDecoder::UntilClose | BodyDecoder::Done | BodyDecoder::Length(0) => {
                *self = BodyDecoder::Done;
                Ok(Decoded::End)
            }
            _ => Err(DecodeError::Truncated),
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    // Extensions (`;name=value`) are allowed and ignored; whitespace before them too.
    let digits_end = line
        .iter()
        .position(|&b| b == b';' || b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let digits = &line[..digits_end];
    if digits.is_empty() || digits.len() > 16 {
        return Err(DecodeError::Chunk("bad size"));
    }
    let mut size: u64 = 0;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(DecodeError::Chunk("bad size")),
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(DecodeError::Chunk("size overflow"))?;
    }
    Ok(size)
}

fn parse_trailers(section: &Bytes) -> Result<HeaderMap, DecodeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| DecodeError::Chunk("bad trailer name"))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| DecodeError::Chunk("bad trailer value"))?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err(DecodeError::Chunk("bad trailers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: Method) -> Result<Option<ResponseHead>, DecodeError> {
        parse_head(&mut BytesMut::from(text), &method)
    }

    fn decode_all(
        decoder: &mut BodyDecoder,
        input: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), DecodeError> {
        // Feed `step` bytes at a time to exercise every partial state.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut trailers = None;
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => out.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((out, trailers, buf.is_empty())),
                Decoded::NeedMore => {
                    if fed >= input.len() {
                        decoder.eof()?;
                        return Ok((out, trailers, buf.is_empty()));
                    }
                    let next = (fed + step).min(input.len());
                    buf.extend_from_slice(&input[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn head_with_length_keeps_values_and_leftover() {
        let mut buf =
            BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello");
        let h = parse_head(&mut buf, &Method::GET)
            .expect("ok")
            .expect("complete");
        assert_eq!(h.status, 200);
        assert_eq!(
            h.headers.get_all("x-a").iter().collect::<Vec<_>>(),
            vec!["1", "2"]
        );
        assert_eq!(h.body, BodyDecoder::Length(5));
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"hello");
    }

    #[test]
    fn heads_with_more_fields_than_the_inline_array() {
        let mut text = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..60 {
            text.push_str(&format!("X-F{i}: v{i}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        let h = head(&text, Method::GET).expect("ok").expect("complete");
        assert_eq!(h.headers.len(), 61);
        assert_eq!(h.headers["x-f59"], "v59");
        let too_many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: 1\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(
            head(&too_many, Method::GET),
            Err(DecodeError::Head(_))
        ));
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_fail() {
        assert!(
            head("HTTP/1.1 200 OK\r\nContent-Le", Method::GET)
                .expect("ok")
                .is_none()
        );
        let big = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            head(&big, Method::GET).err(),
            Some(DecodeError::HeadTooLarge)
        );
        assert!(matches!(
            head("HTTP/1.1 abc\r\n\r\n", Method::GET),
            Err(DecodeError::Head(_))
        ));
    }

    #[test]
    fn interim_responses_are_skipped_and_101_refused() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        );
        let h = parse_head(&mut buf, &Method::POST)
            .expect("ok")
            .expect("complete");
        assert_eq!(h.status, 204);
        assert!(h.body.is_done());
        assert_eq!(
            head("HTTP/1.1 101 Switching\r\n\r\n", Method::GET).err(),
            Some(DecodeError::UnexpectedSwitch)
        );
    }

    #[test]
    fn framing_rules() {
        let f = |t: &str, m: Method| head(t, m).expect("ok").expect("complete");
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", Method::HEAD).body,
            BodyDecoder::Length(0)
        );
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                Method::GET
            )
            .body,
            BodyDecoder::Length(0)
        );
        // Transfer-Encoding wins over Content-Length.
        let chunked = f(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            Method::GET,
        );
        assert_eq!(chunked.body, BodyDecoder::Chunked(Chunked::Size));
        let close = f(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            Method::GET,
        );
        assert_eq!(close.body, BodyDecoder::UntilClose);
        assert!(!close.keep_alive);
        let no_length = f("HTTP/1.1 200 OK\r\n\r\n", Method::GET);
        assert_eq!(no_length.body, BodyDecoder::UntilClose);
        assert!(!no_length.keep_alive);
        assert!(
            !f(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                Method::GET
            )
            .keep_alive
        );
        assert!(!f("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Method::GET).keep_alive);
        assert!(
            f(
                "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
                Method::GET
            )
            .keep_alive
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
                Method::GET
            )
            .body,
            BodyDecoder::Length(3)
        );
        for bad in [
            "Content-Length: 3\r\nContent-Length: 4",
            "Content-Length: -1",
            "Content-Length: 1e3",
            "Content-Length: ",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\n{bad}\r\n\r\n");
            assert_eq!(
                head(&text, Method::GET).err(),
                Some(DecodeError::ContentLength),
                "{bad}"
            );
        }
    }

    #[test]
    fn content_length_takes_one_number_however_it_is_spelled() {
        let length = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(
                    header::CONTENT_LENGTH,
                    HeaderValue::from_str(value).expect("value"),
                );
            }
            content_length(&headers).ok()
        };
        assert_eq!(length(&[]), Some(None));
        assert_eq!(length(&["12"]), Some(Some(12)));
        assert_eq!(length(&["0"]), Some(Some(0)));
        assert_eq!(
            length(&["9999999999999999999"]),
            Some(Some(9_999_999_999_999_999_999))
        );
        assert_eq!(length(&[" 12 "]), Some(Some(12)));
        assert_eq!(length(&["5, 5"]), Some(Some(5)));
        assert_eq!(length(&["5", "5"]), Some(Some(5)));
        for bad in [
            &["5, 6"][..],
            &["5", "6"],
            &[""],
            &["+5"],
            &["-1"],
            &["12a"],
            &["18446744073709551616"],
        ] {
            assert_eq!(length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn length_body_in_any_split() {
        for step in [1, 2, 7, 100] {
            let mut d = BodyDecoder::Length(11);
            let (out, _, clean) = decode_all(&mut d, b"hello world", step).expect("ok");
            assert_eq!(out, b"hello world");
            assert!(clean);
        }
        let mut d = BodyDecoder::Length(11);
        assert_eq!(
            decode_all(&mut d, b"hello", 3).err(),
            Some(DecodeError::Truncated)
        );
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers_in_any_split() {
        let wire = b"5;name=v\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\n0\r\nX-Sum: 42\r\nX-B: b\r\n\r\n";
        for step in [1, 2, 3, 5, 64] {
            let mut d = BodyDecoder::Chunked(Chunked::Size);
            let (out, trailers, clean) = decode_all(&mut d, wire, step).expect("ok");
            assert_eq!(out, b"hello world0123456789");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["x-sum"], "42");
            assert_eq!(trailers["x-b"], "b");
            assert!(clean);
            assert_eq!(d, BodyDecoder::Done);
        }
        let mut d = BodyDecoder::Chunked(Chunked::Size);
        let (out, trailers, _) = decode_all(&mut d, b"3\r\nabc\r\n0\r\n\r\n", 4).expect("ok");
        assert_eq!(out, b"abc");
        assert!(trailers.is_none());
    }

    #[test]
    fn bad_chunks_are_errors() {
        for (wire, why) in [
            (&b"zz\r\n"[..], "bad size"),
            (b"\r\n", "bad size"),
            (b"11111111111111111\r\n", "bad size"),
            (b"3\r\nabcX\r\n", "missing CRLF after data"),
        ] {
            let mut d = BodyDecoder::Chunked(Chunked::Size);
            let err = decode_all(&mut d, wire, 64).expect_err("must fail");
            assert_eq!(err, DecodeError::Chunk(why), "{wire:?}");
        }
        let mut d = BodyDecoder::Chunked(Chunked::Size);
        assert_eq!(
            decode_all(&mut d, b"5\r\nhel", 64).err(),
            Some(DecodeError::Truncated)
        );
        let mut d = BodyDecoder::Chunked(Chunked::Size);
        let long = vec![b'1'; MAX_CHUNK_LINE + 10];
        assert!(decode_all(&mut d, &long, 8192).is_err());
    }

    #[test]
    fn junk_never_panics() {
        // Deterministic xorshift junk, some of it starting like a real head.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let len = (next() % 300) as usize;
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                b"HTTP/1.1 200 OK\r\n".to_vec()
            } else {
                Vec::new()
            };
            bytes.extend((0..len).map(|_| {
                // Bias towards the bytes that matter to the parsers.
                match next() % 8 {
                    0 => b'\r',
                    1 => b'\n',
                    2 => b':',
                    3 => b'0' + (next() % 10) as u8,
                    _ => next() as u8,
                }
            }));
            let _ = parse_head(&mut BytesMut::from(&bytes[..]), &Method::GET);
            let mut chunked = BodyDecoder::Chunked(Chunked::Size);
            let _ = decode_all(&mut chunked, &bytes, 1 + (next() % 16) as usize);
        }
    }

    #[test]
    fn until_close_ends_at_eof() {
        let mut d = BodyDecoder::UntilClose;
        let (out, _, _) = decode_all(&mut d, b"stream until close", 4).expect("ok");
        assert_eq!(out, b"stream until close");
        assert_eq!(d, BodyDecoder::Done);
    }

    fn request(text: &str) -> Result<Option<RequestHead>, RequestError> {
        parse_request_head(&mut BytesMut::from(text), 16 * 1024)
    }

    #[test]
    fn request_heads_with_their_framing_and_flags() {
        let mut buf = BytesMut::from(
            "\r\nPOST /up?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
             Expect: 100-continue\r\nTE: trailers\r\n\r\nhelloGET",
        );
        let head = parse_request_head(&mut buf, 1024)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.parts.method, Method::POST);
        assert_eq!(head.parts.uri, "/up?x=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "a");
        assert_eq!(head.body, BodyDecoder::Length(5));
        assert!(head.keep_alive && head.expect_continue && head.accepts_trailers);
        assert!(!head.upgrade);
        assert_eq!(
            &buf[..],
            b"helloGET",
            "the body and what follows stay in the buffer"
        );

        let head = request("GET / HTTP/1.0\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!head.keep_alive && head.body.is_done());
        let head = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(head.keep_alive);
        let head = request(
            "GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .expect("valid")
        .expect("complete");
        assert!(head.upgrade && head.keep_alive);
        let head = request("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(head.body, BodyDecoder::Chunked(Chunked::Size));
        let head = request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert!(!head.keep_alive);
    }

    #[test]
    fn requests_that_cannot_be_framed_exactly_are_400() {
        for bad in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "NOT A REQUEST\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
        ] {
            let result = request(bad);
            assert!(
                matches!(result, Err(RequestError::Invalid(_))),
                "{bad:?}: {result:?}"
            );
        }
        let head = request("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n")
            .expect("repeated equal lengths are one length")
            .expect("complete");
        assert_eq!(head.body, BodyDecoder::Length(3));
    }

    #[test]
    fn request_heads_over_the_limit_are_431_and_partial_ones_wait() {
        assert!(matches!(request("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None)));
        let mut big = BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000)).as_str());
        assert_eq!(
            parse_request_head(&mut big, 1024).err(),
            Some(RequestError::TooLarge)
        );
        let whole = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(
            parse_request_head(&mut BytesMut::from(whole.as_str()), 1024).err(),
            Some(RequestError::TooLarge)
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("x-{i}: 1\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(request(&many).err(), Some(RequestError::TooLarge));
        assert_eq!(RequestError::TooLarge.status(), 431);
    }
}
