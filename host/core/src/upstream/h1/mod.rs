//! HTTP/1.1 to upstreams, driven by the request that holds the connection.
//!
//! hyper's client runs every connection as a task of its own and talks to it through channels:
//! per request a channel send, a oneshot, and wake-ups across tasks. Here, as in Pingora, the
//! request future writes the head, reads the response head, and the response body reads the
//! socket directly when the downstream side asks for more. A connection is owned by exactly one
//! request at a time, or sits in the pool; no lock, no channel, no extra task.

mod body;

use crate::upstream::RequestBody;
use std::io;

use bytes::BytesMut;
use http::Method;
use http::request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::io::UpstreamIo;
pub(crate) use crate::h1::decode::{DecodeError, ResponseHead};
use crate::h1::encode::RequestFraming;
use crate::h1::{decode, encode};
pub(crate) use body::H1Body;

/// Read buffer growth step: large enough for a typical response in one read.
const READ_CHUNK: usize = 16 * 1024;

/// One HTTP/1.1 connection to an upstream.
pub(crate) struct H1Connection {
    io: UpstreamIo,
    read_buf: BytesMut,
    write_buf: Vec<u8>,
    /// Whether the exchange in progress leaves the connection fit for another request.
    reusable: bool,
    _slot: crate::upstream::breaker::ConnectionSlot,
}

/// Why [`H1Connection::send`] failed.
pub(crate) enum SendError {
    /// Nothing the upstream could act on reached it, and the request body is untouched:
    /// safe to send again on another connection.
    Retry(io::Error),
    /// The upstream broke or spoke invalid HTTP.
    Upstream(Box<dyn std::error::Error + Send + Sync>),
    /// The client's request body broke while it was being forwarded.
    Downstream(Box<dyn std::error::Error + Send + Sync>),
}

enum HeadError {
    /// Closed or reset before a single byte of response.
    Closed(io::Error),
    Invalid(Box<dyn std::error::Error + Send + Sync>),
}

impl H1Connection {
    /// A connection over `io`, holding `slot` (its place under the cluster's
    /// `max_connections`) for as long as it lives, pooled or not.
    pub(crate) fn new(io: UpstreamIo, slot: crate::upstream::breaker::ConnectionSlot) -> Self {
        H1Connection {
            io,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: Vec::with_capacity(1024),
            reusable: true,
            _slot: slot,
        }
    }

    /// Whether a pooled connection is still open (see [`UpstreamIo::is_idle_alive`]).
    pub(crate) fn is_idle_alive(&mut self) -> bool {
        self.io.is_idle_alive()
    }

    /// The response was read to the end, and the last read took everything there was, but
    /// the runtime still thinks the socket readable (it only learns otherwise from a read that
    /// would block). Clearing that here, without a syscall, lets [`H1Connection::is_idle_alive`]
    /// see only what happens while the connection is idle: a close or stray bytes arriving
    /// later raise a fresh readiness event. Saves one `recv` that would fail with `EAGAIN` per
    /// reused connection. (A close that arrived in the microseconds between the last read and
    /// this call goes unseen, as in nginx's keep-alive cache; the resend of idempotent requests
    /// on a silently closed pooled connection covers it.)
    pub(crate) fn forget_read_readiness(&self) {
        self.io.forget_read_readiness();
    }

    /// Sends a request and reads the response head. `reused` says whether the connection
    /// served a request before, which decides whether a silent close is the keep-alive race.
    /// The body is taken from `body` only when there is one to stream; a body-less request
    /// leaves it in place, so the caller can resend.
    pub(crate) async fn send(
        &mut self,
        head: &request::Parts,
        body: &mut Option<RequestBody>,
        reused: bool,
    ) -> Result<ResponseHead, SendError> {
        use http_body::Body as _;
        let body_empty = body.as_ref().is_none_or(|b| b.is_end_stream());
        self.write_buf.clear();
        self.reusable = true;
        let framing = encode::request_head(
            &mut self.write_buf,
            &head.method,
            &head.uri,
            &head.headers,
            body_empty,
        );
        if let Err(cause) = self.io.write_all(&self.write_buf).await {
            // An incomplete head is nothing an upstream can act on.
            self.reusable = false;
            return Err(SendError::Retry(cause));
        }

        let response = match body.take() {
            Some(streamed) if !body_empty => {
                // Boxed: streaming a body while watching for an early answer needs two live
                // futures; inline they would double the size of every request's future.
                Box::pin(self.send_body_and_read_head(streamed, framing, &head.method)).await?
            }
            untouched => {
                *body = untouched;
                read_head(&mut self.io, &mut self.read_buf, &head.method).await
            }
        };
        match response {
            Ok(response) => {
                self.reusable &= response.keep_alive;
                Ok(response)
            }
            Err(HeadError::Closed(cause)) => {
                self.reusable = false;
                // The keep-alive race: the upstream closed the idle connection as the request
                // went out. nginx resends idempotent requests then; so do we.
                if reused && body.is_some() && is_idempotent(&head.method) {
                    Err(SendError::Retry(cause))
                } else {
                    Err(SendError::Upstream(Box::new(cause)))
                }
            }
            Err(HeadError::Invalid(e)) => {
                self.reusable = false;
                Err(SendError::Upstream(e))
            }
        }
    }

    /// Streams the request body while watching for the response: an upstream may answer early
    /// (413, 401) and stop reading, and waiting for the body to drain would deadlock.
    async fn send_body_and_read_head(
        &mut self,
        body: RequestBody,
        framing: RequestFraming,
        method: &Method,
    ) -> Result<Result<ResponseHead, HeadError>, SendError> {
        let write_buf = &mut self.write_buf;
        let read_buf = &mut self.read_buf;
        let (head, body_sent) = match &mut self.io {
            // Borrowed halves of a TCP socket need no lock.
            UpstreamIo::Plain(tcp) => {
                let (reader, writer) = tcp.split();
                stream_body(reader, writer, write_buf, read_buf, body, framing, method).await?
            }
            UpstreamIo::Tls(tls) => {
                let (reader, writer) = tokio::io::split(&mut **tls);
                stream_body(reader, writer, write_buf, read_buf, body, framing, method).await?
            }
        };
        if !body_sent {
            // The rest of the body was never sent: the connection is mid-message.
            self.reusable = false;
        }
        Ok(head)
    }
}

/// Sends `body` on `writer` while reading the response head from `reader`; the head, and
/// whether the whole body went out before it came.
async fn stream_body(
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl tokio::io::AsyncWrite + Unpin,
    write_buf: &mut Vec<u8>,
    read_buf: &mut BytesMut,
    mut body: RequestBody,
    framing: RequestFraming,
    method: &Method,
) -> Result<(Result<ResponseHead, HeadError>, bool), SendError> {
    {
        let sending = async {
            use http_body_util::BodyExt as _;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(SendError::Downstream)?;
                write_buf.clear();
                match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        if framing == RequestFraming::Chunked {
                            encode::chunk_header(write_buf, data.len());
                            write_buf.extend_from_slice(&data);
                            write_buf.extend_from_slice(b"\r\n");
                        } else {
                            write_buf.extend_from_slice(&data);
                        }
                    }
                    Err(frame) => {
                        if framing == RequestFraming::Chunked
                            && let Ok(trailers) = frame.into_trailers()
                        {
                            encode::chunked_end(write_buf, Some(&trailers));
                            writer
                                .write_all(write_buf)
                                .await
                                .map_err(|e| SendError::Upstream(Box::new(e)))?;
                            return Ok(true);
                        }
                        continue;
                    }
                }
                writer
                    .write_all(write_buf)
                    .await
                    .map_err(|e| SendError::Upstream(Box::new(e)))?;
            }
            if framing == RequestFraming::Chunked {
                write_buf.clear();
                encode::chunked_end(write_buf, None);
                writer
                    .write_all(write_buf)
                    .await
                    .map_err(|e| SendError::Upstream(Box::new(e)))?;
            }
            Ok::<bool, SendError>(true)
        };
        let reading = read_head(&mut reader, read_buf, method);
        tokio::pin!(sending, reading);
        let mut body_sent = false;
        loop {
            tokio::select! {
                sent = &mut sending, if !body_sent => body_sent = sent?,
                head = &mut reading => return Ok((head, body_sent)),
            }
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

async fn read_head(
    reader: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    method: &Method,
) -> Result<ResponseHead, HeadError> {
    let mut received_any = !buf.is_empty();
    loop {
        if received_any {
            match decode::parse_head(buf, method) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(HeadError::Invalid(Box::new(e))),
            }
        }
        buf.reserve(READ_CHUNK);
        match reader.read_buf(buf).await {
            Ok(0) if !received_any => {
                return Err(HeadError::Closed(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(HeadError::Invalid(Box::new(DecodeError::Truncated))),
            Ok(_) => received_any = true,
            Err(e) if !received_any => return Err(HeadError::Closed(e)),
            Err(e) => return Err(HeadError::Invalid(Box::new(e))),
        }
    }
}
