//! The socket of a downstream HTTP/1.1 connection and its read buffer, shared between the
//! connection loop (heads, responses) and the body of the request in flight.
//!
//! Everything runs on the connection's task, so the two never poll at the same time: a
//! `RefCell` borrowed for the span of one poll is all the sharing needs. The request body reads
//! the socket itself when the upstream side asks for more, as the upstream response body does
//! (see `upstream::h1`): no channel and no copy between a reader and the request.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::decode::{self, BodyDecoder, RequestError, RequestHead};
use crate::upstream::BoxError;

/// Read buffer growth step; one read holds a typical head and more.
const READ_CHUNK: usize = 8 * 1024;
/// Below this much free space the buffer grows before the next read.
const MIN_READ_SPACE: usize = 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What a downstream connection's socket must be.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Io for T {}

/// Why no request head came.
pub(crate) enum HeadError {
    /// The head is refused with a status (400, 431).
    Refused(RequestError),
    Io(io::Error),
}

/// The socket, the bytes read from it, and the framing of the request body being read.
pub(crate) struct Wire<I> {
    /// `None` once handed to a protocol switch.
    io: Option<I>,
    read_buf: BytesMut,
    /// Numbers the requests of the connection, so a body outliving its request reads nothing.
    request: u64,
    body: BodyDecoder,
    /// The body broke (bad framing, early close): the connection cannot carry another request.
    body_failed: bool,
    /// Bytes of a `100 Continue` still owed, sent when the body is first asked for (so a
    /// request answered without its body never makes the client send it).
    continue_owed: usize,
}

impl<I: Io> Wire<I> {
    pub(crate) fn new(io: I) -> Self {
        Wire {
            io: Some(io),
            read_buf: BytesMut::new(),
            request: 0,
            body: BodyDecoder::Done,
            body_failed: false,
            continue_owed: 0,
        }
    }

    fn io(&mut self) -> io::Result<&mut I> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Reads until a whole request head is buffered. `Ok(None)`: the client closed (a partial
    /// head dropped with it), or `closing` while no request has begun.
    pub(crate) fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        max_bytes: usize,
        closing: bool,
    ) -> Poll<Result<Option<RequestHead>, HeadError>> {
        loop {
            if !self.read_buf.is_empty() {
                match decode::parse_request_head(&mut self.read_buf, max_bytes) {
                    Ok(Some(head)) => return Poll::Ready(Ok(Some(head))),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Err(HeadError::Refused(e))),
                }
            } else if closing {
                return Poll::Ready(Ok(None));
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Ok(None)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(HeadError::Io(e))),
            }
        }
    }

    /// One read into the buffer's free space.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        fill(self.io.as_mut(), &mut self.read_buf, cx)
    }

    /// A request head was taken: its body (if any) is read next. Returns the request's number.
    pub(crate) fn begin_request(&mut self, body: BodyDecoder, expect_continue: bool) -> u64 {
        self.request += 1;
        let has_body = !body.is_done();
        self.body = body;
        self.body_failed = false;
        self.continue_owed = if expect_continue && has_body {
            CONTINUE.len()
        } else {
            0
        };
        self.request
    }

    /// Whether the request body was read to its end, so the next bytes are the next head.
    pub(crate) fn body_finished(&self) -> bool {
        !self.body_failed && self.body.is_done()
    }

    /// Writes some of `buf`.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_flush(cx)
    }

    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.io()?).poll_shutdown(cx)
    }

    /// Reads and drops what the client still sends; `Ok(0)` at its end of stream.
    pub(crate) fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.read_buf.clear();
        self.poll_fill(cx)
    }

    /// Hands the socket and the bytes read past the head over to a protocol switch.
    pub(crate) fn take_for_upgrade(&mut self) -> Option<(I, Bytes)> {
        let io = self.io.take()?;
        Some((io, self.read_buf.split().freeze()))
    }

    fn poll_body(
        &mut self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if request != self.request {
            return Poll::Ready(None);
        }
        while self.continue_owed > 0 {
            let from = CONTINUE.len() - self.continue_owed;
            match ready!(self.poll_write(cx, &CONTINUE[from..])) {
                Ok(0) => return self.fail(Box::new(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => self.continue_owed -= n,
                Err(e) => return self.fail(Box::new(e)),
            }
        }
        let io = &mut self.io;
        let polled = ready!(self.body.poll_frame(&mut self.read_buf, cx, |buf, cx| fill(
            io.as_mut(),
            buf,
            cx
        )));
        if matches!(polled, Some(Err(_))) {
            self.body_failed = true;
        }
        Poll::Ready(polled)
    }

    fn fail(&mut self, error: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.body_failed = true;
        Poll::Ready(Some(Err(error)))
    }
}

/// One read from `io` into `buf`'s free space (grown first when short); `Ok(0)` at end of
/// stream, or when the socket was handed to a protocol switch.
fn fill<I: Io>(
    io: Option<&mut I>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_READ_SPACE {
        buf.reserve(READ_CHUNK);
    }
    let Some(io) = io else {
        return Poll::Ready(Ok(0));
    };
    // tokio's `read_buf` fills the spare capacity without zeroing it first; the future holds
    // only the two borrows, so making one per poll costs nothing.
    pin!(io.read_buf(buf)).poll(cx)
}

/// What a request body needs from its connection, without naming the socket type.
trait BodySource {
    fn poll_body(
        &self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    fn body_state(&self, request: u64) -> (bool, Option<u64>);
}

impl<I: Io> BodySource for RefCell<Wire<I>> {
    fn poll_body(
        &self,
        request: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.borrow_mut().poll_body(request, cx)
    }

    /// Whether the body has ended, and how many bytes are known to remain.
    fn body_state(&self, request: u64) -> (bool, Option<u64>) {
        let wire = self.borrow();
        if request != wire.request {
            return (true, Some(0));
        }
        (wire.body.is_done(), wire.body.remaining())
    }
}

/// The body of a request on a downstream HTTP/1.1 connection, read as the upstream takes it.
pub(crate) struct H1RequestBody {
    source: std::rc::Rc<dyn BodySource>,
    request: u64,
}

impl H1RequestBody {
    pub(crate) fn new<I: Io>(wire: &std::rc::Rc<RefCell<Wire<I>>>, request: u64) -> Self {
        H1RequestBody {
            source: wire.clone(),
            request,
        }
    }
}

impl Body for H1RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.source.poll_body(self.request, cx)
    }

    fn is_end_stream(&self) -> bool {
        self.source.body_state(self.request).0
    }

    fn size_hint(&self) -> SizeHint {
        match self.source.body_state(self.request).1 {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
