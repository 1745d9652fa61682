//! The body of an upstream HTTP/1.1 response, read from the socket as the client takes it.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{H1Connection, READ_CHUNK};
use crate::h1::decode::BodyDecoder;
use crate::upstream::cluster::InFlight;

/// Streams a response body and returns the connection to its pool once the body has been read
/// to the end (if the exchange left it reusable).
pub(crate) struct H1Body {
    conn: Option<H1Connection>,
    decoder: BodyDecoder,
    /// The request's place in flight, held until the body is dropped.
    home: InFlight,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl H1Body {
    pub(crate) fn new(conn: H1Connection, decoder: BodyDecoder, home: InFlight) -> Self {
        let mut body = H1Body {
            conn: Some(conn),
            decoder,
            home,
        };
        if body.decoder.is_done() {
            body.release();
        }
        body
    }

    /// The whole body, when the read buffer already holds all of it (a small response comes
    /// in the same read as its head): taken at once, and the connection goes home.
    pub(crate) fn take_buffered(&mut self) -> Option<Bytes> {
        let BodyDecoder::Length(length) = self.decoder else {
            return None;
        };
        let length = usize::try_from(length).ok()?;
        let conn = self.conn.as_mut()?;
        if conn.read_buf.len() < length {
            return None;
        }
        let data = conn.read_buf.split_to(length).freeze();
        self.decoder = BodyDecoder::Done;
        self.release();
        Some(data)
    }

    /// The body ended: the connection goes back to the pool, or is closed.
    fn release(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.reusable
            && conn.read_buf.is_empty()
        {
            conn.forget_read_readiness();
            self.home.cluster().checkin_http1(
                self.home.endpoint(),
                conn,
                tokio::time::Instant::now(),
            );
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let io = &mut conn.io;
        let polled = ready!(this.decoder.poll_frame(&mut conn.read_buf, cx, |buf, cx| {
            buf.reserve(READ_CHUNK);
            io.poll_read_into(cx, buf)
        }));
        match &polled {
            // A broken body leaves the connection mid-message: it is closed, never pooled.
            Some(Err(_)) => this.conn = None,
            Some(Ok(frame)) if frame.is_data() && !this.decoder.is_done() => {}
            _ => this.release(),
        }
        Poll::Ready(polled)
    }

    /// Only a body decoded to its end has ended; one cut short by an error has not, so that
    /// the exchange is logged as incomplete.
    fn is_end_stream(&self) -> bool {
        self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
