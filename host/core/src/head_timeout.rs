//! The request-head timeout with the answer nginx gives: `408 Request Timeout`, then close.
//!
//! A wrapper around the socket, under the HTTP/1.1 connection loop, so that the loop itself
//! needs no timer. The clock starts with the first byte of a request head and stops when the
//! request reaches the proxy service; while it runs and the head is still incomplete, every
//! pending read also waits on the deadline. On the fast path (a whole head in
//! one read) it costs two relaxed atomic stores, and neither a clock read nor a timer.

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::connection::ConnState;

const RESPONSE_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

enum Phase {
    /// Heads are timed.
    Timing,
    /// Deadline passed: writing the 408, `usize` bytes of it done.
    Answering(usize),
    /// The 408 is out; reads see end of stream so the connection loop closes.
    Closed,
}

/// A downstream stream with the request-head deadline.
pub(crate) struct HeadTimeout<I> {
    inner: I,
    state: Rc<ConnState>,
    timeout: Duration,
    phase: Phase,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<I> HeadTimeout<I> {
    pub(crate) fn new(inner: I, state: Rc<ConnState>, timeout: Duration) -> Self {
        HeadTimeout {
            inner,
            state,
            timeout,
            phase: Phase::Timing,
            sleep: None,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match this.phase {
                Phase::Closed => return Poll::Ready(Ok(())),
                Phase::Answering(done) => {
                    let n =
                        ready!(Pin::new(&mut this.inner).poll_write(cx, &RESPONSE_408[done..]))?;
                    if n == 0 || done + n == RESPONSE_408.len() {
                        let _ = Pin::new(&mut this.inner).poll_flush(cx);
                        this.phase = Phase::Closed;
                    } else {
                        this.phase = Phase::Answering(done + n);
                    }
                }
                Phase::Timing => break,
            }
        }

        let filled_before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > filled_before {
            this.state.head_bytes_arrived();
        }
        if polled.is_pending()
            && let Some(started) = this.state.pending_head_started()
        {
            let deadline = started + this.timeout;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_ready() || Instant::now() >= deadline {
                tracing::debug!("request head timeout, answering 408");
                this.phase = Phase::Answering(0);
                return Pin::new(this).poll_read(cx, buf);
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for HeadTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
