//! A downstream HTTP/1.1 connection: read a head, run the request, write the response, repeat.
//!
//! RustNg's own loop rather than hyper's server: hyper runs the request body through a channel
//! and its dispatcher through a general state machine; here the body reads the socket itself
//! ([`super::wire`]), a small response (head and body) leaves in one `send`, and the heads are
//! parsed and written with the same code as the upstream side's. The fast path of a request
//! allocates nothing here beyond the head's own buffer slice.

use std::cell::{Cell, RefCell};
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Version, header};
use http_body::Body;
use tokio::sync::oneshot;

use super::decode::{self, RequestError};
use super::encode;
use super::upgrade::{OnUpgrade, Upgraded};
use super::wire::{H1RequestBody, HeadError, Io, Wire};
use crate::body::ProxyBody;
use crate::downstream_body::DownstreamBody;
use crate::proxy::{ProxyService, Routed};
use futures_util::future::Either;

/// Body data at least this large is written from its own buffer rather than copied behind
/// the head or chunk line: a copy is cheaper than a second `send` only for small pieces.
const COPY_LIMIT: usize = 16 * 1024;
/// Buffered response bytes are written once they reach this much.
const WRITE_AT: usize = 64 * 1024;
/// How long, and how much, a refused client is read after the answer so that closing does not
/// reset the connection before it has read the answer (nginx's lingering close).
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;
/// How long a connection found idle by a drain may still bring one more request, answered
/// with `connection: close`. Closing it at once would race a keep-alive client that is
/// sending its next request right then (the request is lost with the connection); waiting
/// leaves that race only to clients idle for the whole grace.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);

/// One downstream HTTP/1.1 connection, served until the client leaves, a message cannot be
/// framed, or a graceful shutdown finds it between requests.
pub(crate) struct Connection {
    run: Pin<Box<dyn Future<Output = io::Result<()>>>>,
    closing: Rc<Cell<bool>>,
}

impl Connection {
    pub(crate) fn new<I: Io>(io: I, service: ProxyService, max_head_bytes: usize) -> Self {
        let closing = Rc::new(Cell::new(false));
        Connection {
            run: Box::pin(serve(io, service, max_head_bytes, Rc::clone(&closing))),
            closing,
        }
    }

    /// Closes the connection once no request is in flight: after the current response (which
    /// says `connection: close`), or, if idle, after one more request or a short grace.
    pub(crate) fn graceful_shutdown(self: Pin<&mut Self>) {
        self.closing.set(true);
    }
}

impl Future for Connection {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.run.as_mut().poll(cx)
    }
}

/// What the response must say and do given the request it answers.
struct Answering {
    version: Version,
    head_request: bool,
    accepts_trailers: bool,
    keep_alive: bool,
}

async fn serve<I: Io>(
    io: I,
    service: ProxyService,
    max_head_bytes: usize,
    closing: Rc<Cell<bool>>,
) -> io::Result<()> {
    let wire = Rc::new(RefCell::new(Wire::new(io)));
    let mut out = Vec::with_capacity(1024);
    let mut drain_grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        let head = match poll_fn(|cx| {
            let close_idle = closing.get() && {
                let grace = drain_grace
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(DRAIN_IDLE_GRACE)));
                grace.as_mut().poll(cx).is_ready()
            };
            wire.borrow_mut().poll_head(cx, max_head_bytes, close_idle)
        })
        .await
        {
            Ok(Some(head)) => head,
            Ok(None) => return close(&wire).await,
            Err(HeadError::Refused(error)) => return refuse(&wire, &mut out, &error).await,
            Err(HeadError::Io(error)) => return Err(error),
        };
        let request = wire
            .borrow_mut()
            .begin_request(head.body.clone(), head.expect_continue);
        let answering = Answering {
            version: head.parts.version,
            head_request: head.parts.method == Method::HEAD,
            accepts_trailers: head.accepts_trailers,
            keep_alive: head.keep_alive,
        };
        let body = (!head.body.is_done()).then(|| H1RequestBody::new(&wire, request));
        let (switched, on_upgrade) = if head.upgrade {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(OnUpgrade(rx)))
        } else {
            (None, None)
        };
        let req = Request::from_parts(head.parts, DownstreamBody::http1(body, on_upgrade));
        // The future first, awaited in a statement of its own: awaited inside the match, the
        // matched `Routed` would stay in this connection's future for the whole request.
        let responding = match service.route(req) {
            Routed::Forward(forwarding) => Either::Left(forwarding.run()),
            Routed::Other(future) => Either::Right(future),
        };
        let responded = responding.await;
        let response = match responded {
            Ok(response) => response,
            Err(never) => match never {},
        };

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(switched) = switched
        {
            return switch_protocols(&wire, &mut out, response, switched).await;
        }
        // A shutdown asked for while the request ran makes this its last response. One asked
        // for after the head promised keep-alive lets the client send one more request,
        // whose response says `connection: close`.
        let keep_alive =
            write_response(&wire, &mut out, response, &answering, closing.get()).await?;
        if !keep_alive || !wire.borrow().body_finished() {
            return close(&wire).await;
        }
    }
}

/// Writes the response head and streams the body with the framing the client can read.
/// Returns whether the connection can carry another request (never once `closing`).
async fn write_response<I: Io>(
    wire: &RefCell<Wire<I>>,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    answering: &Answering,
    closing: bool,
) -> io::Result<bool> {
    let mut keep_alive = answering.keep_alive && !closing;
    let (parts, mut body) = response.into_parts();
    out.clear();
    encode::status_line(out, parts.status);
    encode::fields(out, &parts.headers);
    if !parts.headers.contains_key(header::DATE) {
        encode::date_field(out);
    }
    let announced = decode::content_length(&parts.headers);
    let bodiless = answering.head_request
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if let Ok(Some(n)) = announced {
        Framing::Length(n)
    } else if announced.is_err() {
        // A filter's unreadable length: the end of the connection ends the body.
        Framing::UntilClose
    } else if let Some(n) = body.size_hint().exact() {
        length_field(out, n);
        Framing::Length(n)
    } else if answering.version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        Framing::UntilClose
    };
    keep_alive &= framing != Framing::UntilClose;
    // A request body not read to its end by now (an answer given before the body was
    // needed) leaves the connection mid-message, so it is closed after this response: say so
    // in the head, or the client may send its next request on a closing connection.
    keep_alive &= wire.borrow().body_finished();
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if answering.version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // The head is written: the filters' `proxy_on_log` may have it now, without a copy.
    body.head_sent(parts);
    if framing == Framing::None {
        drop(body);
        write_all(wire, out).await?;
        return Ok(keep_alive);
    }

    let mut sent: u64 = 0;
    let mut trailers = None;
    loop {
        // A frame that is ready joins the bytes already buffered (the head, usually), so a
        // small response leaves in one write; only when the body makes us wait do they go.
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        let frame = match next {
            None => {
                write_all(wire, out).await?;
                out.clear();
                continue;
            }
            Some(None) => break,
            Some(Some(Ok(frame))) => frame,
            Some(Some(Err(error))) => {
                // The message cannot be completed: what there is goes out, then the close tells
                // the client the body is cut short.
                tracing::debug!(%error, "response body failed");
                drop(body);
                write_all(wire, out).await?;
                return Ok(false);
            }
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                break;
            }
        };
        if let Framing::Length(n) = framing {
            let left = n - sent;
            if data.len() as u64 > left {
                // More than announced: the announced part goes, and the connection ends.
                data.truncate(left as usize);
                keep_alive = false;
            }
        }
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        write_data(wire, out, data, framing == Framing::Chunked).await?;
        if !keep_alive && matches!(framing, Framing::Length(n) if n == sent) {
            break;
        }
    }
    // The exchange ends (access log, idle clock) with its body.
    drop(body);
    match framing {
        Framing::Chunked => {
            let trailers = trailers.as_ref().filter(|_| answering.accepts_trailers);
            encode::chunked_end(out, trailers);
        }
        // Fewer bytes than announced: only closing tells the client.
        Framing::Length(n) if n != sent => keep_alive = false,
        _ => {}
    }
    write_all(wire, out).await?;
    Ok(keep_alive)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client and no length: the close ends the body.
    UntilClose,
}

fn length_field(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    // Writing to a Vec cannot fail.
    let _ = write!(out, "content-length: {n}\r\n");
}

/// Adds one piece of body to the buffered bytes, or writes them and it when it is large.
async fn write_data<I: Io>(
    wire: &RefCell<Wire<I>>,
    out: &mut Vec<u8>,
    data: Bytes,
    chunked: bool,
) -> io::Result<()> {
    if chunked {
        encode::chunk_header(out, data.len());
    }
    if data.len() >= COPY_LIMIT {
        write_all(wire, out).await?;
        out.clear();
        write_all(wire, &data).await?;
    } else {
        out.extend_from_slice(&data);
    }
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
    if out.len() >= WRITE_AT {
        write_all(wire, out).await?;
        out.clear();
    }
    Ok(())
}

/// Writes the `101`, then hands the socket to the tunnel waiting for it.
async fn switch_protocols<I: Io>(
    wire: &RefCell<Wire<I>>,
    out: &mut Vec<u8>,
    response: Response<ProxyBody>,
    switched: oneshot::Sender<Upgraded>,
) -> io::Result<()> {
    let (parts, body) = response.into_parts();
    drop(body);
    out.clear();
    encode::status_line(out, parts.status);
    encode::fields(out, &parts.headers);
    out.extend_from_slice(b"\r\n");
    write_all(wire, out).await?;
    if let Some((io, read_ahead)) = wire.borrow_mut().take_for_upgrade() {
        // The tunnel may have given up meanwhile; the socket then just closes.
        let _ = switched.send(Upgraded::new(Box::new(io), read_ahead));
    }
    Ok(())
}

/// Answers a head that cannot be served (400, 431) and closes, reading what the client still
/// sends for a moment so that it sees the answer rather than a reset.
async fn refuse<I: Io>(
    wire: &RefCell<Wire<I>>,
    out: &mut Vec<u8>,
    error: &RequestError,
) -> io::Result<()> {
    tracing::debug!(%error, "request refused");
    let status = error.status();
    out.clear();
    encode::status_line(out, status);
    encode::date_field(out);
    out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\n\r\n");
    write_all(wire, out).await?;
    poll_fn(|cx| wire.borrow_mut().poll_shutdown(cx)).await?;
    let linger = async {
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            match poll_fn(|cx| wire.borrow_mut().poll_discard(cx)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, linger).await;
    Ok(())
}

async fn close<I: Io>(wire: &RefCell<Wire<I>>) -> io::Result<()> {
    poll_fn(|cx| wire.borrow_mut().poll_shutdown(cx)).await
}

async fn write_all<I: Io>(wire: &RefCell<Wire<I>>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = poll_fn(|cx| wire.borrow_mut().poll_write(cx, buf)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    poll_fn(|cx| wire.borrow_mut().poll_flush(cx)).await
}
