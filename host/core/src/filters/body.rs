//! A body streamed through the filters' body and trailers callbacks.
//!
//! Each data frame goes to the filters in the direction's order; a filter that asks to buffer
//! (Envoy's `StopIterationAndBuffer`) holds the data, and the next frame calls it again with
//! everything held so far. When every filter lets go, the held data leaves as one frame. A
//! filter's local answer aborts the body (the exchange then answers with it if the response
//! has not started); holding more than the limit is an error too.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use rustng_wasm::Direction;

use super::{SharedFilters, Step, pause};
use crate::upstream::BoxError;

/// A body on its way through the filters.
pub(crate) struct FilteredBody<S> {
    direction: Direction,
    /// The rest of the body; `None` once it ended.
    source: Option<S>,
    filters: SharedFilters,
    /// The data the filters have not let go yet: the frame as it came (shared, not copied)
    /// unless a filter buffers over several frames.
    held: Bytes,
    /// Where the filters are called from for the held data.
    from: usize,
    trailers: Option<HeaderMap>,
    /// Whether the filters have seen the end of the stream.
    ended_for_filters: bool,
    limit: usize,
    /// Bytes the announced `content-length` still allows, if there is one: filters that
    /// change a body's size must also fix its length, or the message would be corrupt.
    remaining: Option<u64>,
}

/// Why a filtered body stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilteredBodyError {
    /// A filter answered locally; the answer waits in the filters for the exchange.
    #[error("a filter answered the stream locally")]
    Answered,
    /// A buffering filter held more than the limit.
    #[error("a filter held more than {0} bytes of body")]
    TooLarge(usize),
    /// A filter changed the body's size without fixing `content-length`.
    #[error("a filter changed the body size but not content-length")]
    LengthMismatch,
}

impl<S> FilteredBody<S> {
    /// `content_length`: the length the head announces, if any.
    pub(crate) fn new(
        direction: Direction,
        source: S,
        filters: SharedFilters,
        content_length: Option<u64>,
        limit: usize,
    ) -> Self {
        FilteredBody {
            direction,
            source: Some(source),
            filters,
            held: Bytes::new(),
            from: 0,
            trailers: None,
            ended_for_filters: false,
            limit,
            remaining: content_length,
        }
    }

    /// Runs the filters on the held data; returns what may leave now.
    fn run(&mut self, end_of_stream: bool) -> Result<Option<Bytes>, BoxError> {
        if end_of_stream {
            self.ended_for_filters = true;
        }
        let step = self.filters.borrow_mut().body(
            self.direction,
            &mut self.held,
            end_of_stream,
            self.from,
        );
        match step {
            Step::Continue => {
                self.from = 0;
                if self.held.is_empty() {
                    return Ok(None);
                }
                self.emit().map(Some)
            }
            Step::Pause(position) => {
                self.from = position;
                if self.held.len() > self.limit {
                    self.filters.borrow_mut().answer = Some(pause::too_large(self.direction));
                    return Err(FilteredBodyError::TooLarge(self.limit).into());
                }
                Ok(None)
            }
            Step::Answer(answer) => {
                self.filters.borrow_mut().answer = Some(answer);
                Err(FilteredBodyError::Answered.into())
            }
        }
    }

    /// Adds a frame to the held data: the frame itself when nothing is held (the common
    /// case: no copy), else appended. The held bytes are unshared again once the filters
    /// gave them back, so the `Vec` they become keeps its capacity and appending over many
    /// frames stays linear; only the first append copies the first frame.
    fn hold(&mut self, data: Bytes) {
        if self.held.is_empty() {
            self.held = data;
        } else if !data.is_empty() {
            let mut joined = Vec::from(std::mem::take(&mut self.held));
            joined.extend_from_slice(&data);
            self.held = Bytes::from(joined);
        }
    }

    /// The held data, leaving now, counted against the announced length.
    fn emit(&mut self) -> Result<Bytes, BoxError> {
        let data = std::mem::take(&mut self.held);
        if let Some(remaining) = &mut self.remaining {
            *remaining = remaining
                .checked_sub(data.len() as u64)
                .ok_or(FilteredBodyError::LengthMismatch)?;
        }
        Ok(data)
    }

    /// The body is over: the length must add up.
    fn finish(&mut self) -> Result<(), BoxError> {
        match self.remaining {
            Some(0) | None => Ok(()),
            Some(_) => Err(FilteredBodyError::LengthMismatch.into()),
        }
    }
}

impl<S> Body for FilteredBody<S>
where
    S: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(source) = &mut this.source else {
                if !this.ended_for_filters {
                    if let Some(data) = this.run(true)? {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    continue;
                }
                this.finish()?;
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            match ready!(Pin::new(source).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.hold(data);
                        let end_of_stream = this.source.as_ref().is_none_or(|s| s.is_end_stream());
                        if end_of_stream {
                            this.source = None;
                        }
                        if let Some(data) = this.run(end_of_stream)? {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    Err(frame) => {
                        this.source = None;
                        if let Ok(mut trailers) = frame.into_trailers() {
                            let step = this
                                .filters
                                .borrow_mut()
                                .trailers(this.direction, &mut trailers);
                            if let Step::Answer(answer) = step {
                                this.filters.borrow_mut().answer = Some(answer);
                                return Poll::Ready(Some(Err(FilteredBodyError::Answered.into())));
                            }
                            this.trailers = Some(trailers);
                        }
                        // Data still held goes out before the trailers; the filters saw
                        // the trailers, so the data's callbacks are not told "end".
                        this.ended_for_filters = true;
                        this.from = 0;
                        if !this.held.is_empty() {
                            return Poll::Ready(Some(this.emit().map(Frame::data)));
                        }
                    }
                },
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.source = None,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_none()
            && self.ended_for_filters
            && self.held.is_empty()
            && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Filters may change the size; an exact hint would let hyper frame the message
        // with a length the filters then break.
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters::FilterChain;

    fn body() -> FilteredBody<()> {
        let filters = FilterChain::default().begin(rustng_wasm::StreamInfo::default(), false);
        FilteredBody::new(Direction::Response, (), filters, None, 1 << 20)
    }

    #[test]
    fn a_single_frame_is_held_as_it_came() {
        let mut body = body();
        let frame = Bytes::from_static(b"one frame");
        body.hold(frame.clone());
        // The same bytes, not a copy.
        assert_eq!(body.held.as_ptr(), frame.as_ptr());
        assert_eq!(body.emit().expect("no length to check"), frame);
        assert!(body.held.is_empty());
    }

    #[test]
    fn frames_held_over_several_polls_are_joined_in_order() {
        let mut body = body();
        for part in ["a", "", "bc", "def"] {
            body.hold(Bytes::from(part));
        }
        assert_eq!(&body.held[..], b"abcdef");
        let many: Vec<u8> = (0..1000u32).flat_map(|i| i.to_le_bytes()).collect();
        for chunk in many.chunks(100) {
            body.hold(Bytes::copy_from_slice(chunk));
        }
        assert_eq!(body.held.len(), 6 + many.len());
        assert_eq!(&body.held[6..], &many[..]);
    }
}
