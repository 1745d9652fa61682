//! A request body arriving on an HTTP/3 stream, as an `http_body::Body`.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes};
use h3::server::RequestStream;
use http_body::{Body, Frame};

use crate::upstream::BoxError;

type RecvStream = RequestStream<h3_quinn::RecvStream, Bytes>;

/// Data frames, then the trailers if the client sent any.
pub(crate) struct H3RequestBody {
    stream: RecvStream,
    /// Data read ahead while finding out whether the request has a body at all.
    first: Option<Bytes>,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Done,
}

/// The request's body: `None` when the stream ended with its head, so the upstream gets a
/// request without a body instead of an empty chunked one.
///
/// Clients often send the stream's end in a packet after the head, so the end may not have
/// arrived yet. For methods that carry no body (a GET) without a `content-length`, RustNg
/// waits for the first data or the end (`within`); for the others the body is taken to be
/// there and streamed as it comes.
pub(crate) async fn open(
    mut stream: RecvStream,
    expect_body: bool,
    within: std::time::Duration,
) -> Result<Option<H3RequestBody>, BoxError> {
    let first = std::future::poll_fn(|cx| match stream.poll_recv_data(cx) {
        Poll::Pending if expect_body => Poll::Ready(Ok(Some(None))),
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(Some(mut data))) => {
            Poll::Ready(Ok(Some(Some(data.copy_to_bytes(data.remaining())))))
        }
        Poll::Ready(Ok(None)) => Poll::Ready(Ok(None)),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
    });
    let first = tokio::time::timeout(within, first)
        .await
        .map_err(|_| "the request stream did not end")??;
    // `None`: the stream ended (trailers after no data are left unread: no client sends
    // them on a request worth a body).
    let Some(first) = first else {
        return Ok(None);
    };
    Ok(Some(H3RequestBody {
        stream,
        first,
        state: State::Data,
    }))
}

impl Drop for H3RequestBody {
    fn drop(&mut self) {
        // Done with a body the client still sends (the upstream answered without reading it
        // all): RFC 9114 4.1 asks for STOP_SENDING with H3_NO_ERROR, where quinn would send
        // its own code 0.
        if self.state != State::Done {
            self.stream.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}

impl Body for H3RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            match this.state {
                State::Done => return Poll::Ready(None),
                State::Data => match ready!(this.stream.poll_recv_data(cx)) {
                    Ok(Some(mut data)) => {
                        let bytes = data.copy_to_bytes(data.remaining());
                        if !bytes.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(bytes))));
                        }
                    }
                    Ok(None) => this.state = State::Trailers,
                    Err(e) => {
                        this.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                State::Trailers => {
                    let polled = ready!(this.stream.poll_recv_trailers(cx));
                    this.state = State::Done;
                    return Poll::Ready(match polled {
                        Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                        Ok(None) => None,
                        Err(e) => Some(Err(Box::new(e))),
                    });
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done && self.first.is_none()
    }
}
