//! Running a request's filters, phase by phase, in Envoy's order: request phases first to
//! last, response phases last to first. Each phase says whether the exchange goes on, waits
//! (a filter paused or is buffering), or is answered locally.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use rustng_wasm::{
    BodyOutcome, Direction, HeadersOutcome, HttpContextId, LocalResponse, PluginInstance,
    RequestHead, ResponseHead, StreamInfo, WasmError,
};
use smallvec::SmallVec;

use super::{Filter, LocalAnswer};

/// The filters of a listener on one worker, in config order.
#[derive(Default)]
pub(crate) struct FilterChain {
    filters: Vec<Rc<Filter>>,
}

/// What a phase decided.
#[derive(Debug)]
pub(crate) enum Step {
    /// Every filter let it through.
    Continue,
    /// The filter at this position paused (headers) or holds the data (body); the phase goes
    /// on from the next position once it lets go.
    Pause(usize),
    /// Answer the client with this instead.
    Answer(LocalAnswer),
}

/// Stream contexts a request keeps without allocating.
const INLINE_CONTEXTS: usize = 2;

/// The stream contexts a request opened; ends them (done, log, delete) when dropped.
pub(crate) struct ActiveFilters {
    /// In place up to [`INLINE_CONTEXTS`]: a chain is a router and a filter or two, and a
    /// vector of its own was an allocation and a free per request.
    contexts: SmallVec<[(Rc<Filter>, HttpContextId); INLINE_CONTEXTS]>,
    /// The stream's addresses and the properties its filters set, seen by all of them.
    pub(crate) stream: StreamInfo,
    /// An answer a body filter gave after the request had left: the forwarding code sends it
    /// instead of the upstream's error.
    pub(crate) answer: Option<LocalAnswer>,
    /// Time in each plugin's callbacks, by plugin name: kept for sampled requests only (their
    /// spans report it), since timing costs two clock reads per callback.
    plugin_time: Option<Vec<(String, Duration)>>,
    /// The request's and the response's heads as they left, for `proxy_on_log` (Envoy shows
    /// them there). Kept only when a filter of the exchange has that callback: the heads
    /// themselves go with the request and the response, so these are copies.
    logged_request: Option<RequestHead>,
    logged_response: Option<ResponseHead>,
    /// The callbacks the exchange's filters have, noted as their contexts open: asked a few
    /// times per request, and each filter's instance is behind a `RefCell`.
    callbacks: Callbacks,
}

/// Which of the callbacks that cost the host work (keeping heads, filtering bodies) some
/// filter of the exchange has.
#[derive(Debug, Default, Clone, Copy)]
struct Callbacks {
    log: bool,
    request_body: bool,
    response_body: bool,
}

impl Callbacks {
    fn add(&mut self, instance: &PluginInstance) {
        self.log |= instance.has_log_callback();
        self.request_body |= instance.has_body_callback(Direction::Request);
        self.response_body |= instance.has_body_callback(Direction::Response);
    }
}

/// Shared by the request body, the response body and the exchange (whichever ends last ends
/// the contexts). Only one of them runs at a time on the worker, so borrows never overlap.
pub(crate) type SharedFilters = Rc<RefCell<ActiveFilters>>;

impl FilterChain {
    pub(crate) fn new(filters: Vec<Rc<Filter>>) -> FilterChain {
        FilterChain { filters }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// A request's run through the chain, shared by its phases. Built where it lives: made
    /// on the stack and moved into its `Rc`, its ~600 bytes were copied twice per request.
    /// `timed` times each plugin's callbacks (sampled requests: their spans report it).
    pub(crate) fn begin(&self, stream: StreamInfo, timed: bool) -> SharedFilters {
        Rc::new(RefCell::new(ActiveFilters {
            contexts: SmallVec::new(),
            stream,
            answer: None,
            plugin_time: timed.then(Vec::new),
            logged_request: None,
            logged_response: None,
            callbacks: Callbacks::default(),
        }))
    }

    /// Runs `proxy_on_request_headers` from filter `from` on (creating each filter's
    /// context as it goes). `Pause(i)` means filter `i` paused; resume with `from = i + 1`.
    pub(crate) fn request_headers(
        &self,
        active: &mut ActiveFilters,
        head: &mut RequestHead,
        from: usize,
        end_of_stream: bool,
    ) -> Step {
        for (index, filter) in self.filters.iter().enumerate().skip(from) {
            if !filter.ready() {
                if filter.fails_open() {
                    continue;
                }
                return Step::Answer(LocalAnswer::plugin_failed());
            }
            let started = active.plugin_time.is_some().then(Instant::now);
            let stream = &mut active.stream;
            let contexts = &mut active.contexts;
            let callbacks = &mut active.callbacks;
            let outcome = filter.with_instance(|instance| {
                let (context, outcome) = instance.start_http_stream(head, stream, end_of_stream);
                contexts.push((Rc::clone(filter), context));
                callbacks.add(instance);
                outcome
            });
            active.add_plugin_time(filter, started);
            match outcome {
                None | Some(Ok(HeadersOutcome::Continue)) => {}
                Some(Ok(HeadersOutcome::Pause)) => return Step::Pause(index),
                Some(Ok(HeadersOutcome::LocalResponse(local))) => {
                    return Step::Answer(LocalAnswer::from_plugin(*local));
                }
                Some(Err(error)) => {
                    // The context died with the instance: nothing to end.
                    active.drop_contexts_of(filter);
                    if !filter.fail(&error) {
                        return Step::Answer(LocalAnswer::plugin_failed());
                    }
                }
            }
        }
        Step::Continue
    }
}

impl ActiveFilters {
    /// Time spent in each plugin's callbacks so far (empty unless timed).
    pub(crate) fn plugin_time(&self) -> &[(String, Duration)] {
        self.plugin_time.as_deref().unwrap_or_default()
    }

    #[inline]
    fn add_plugin_time(&mut self, filter: &Filter, started: Option<Instant>) {
        let (Some(times), Some(started)) = (&mut self.plugin_time, started) else {
            return;
        };
        let elapsed = started.elapsed();
        match times.iter_mut().find(|(name, _)| name == filter.name()) {
            Some((_, total)) => *total += elapsed,
            None => times.push((filter.name().to_owned(), elapsed)),
        }
    }

    /// The filter and context at `position` in `direction`'s order (for a paused phase: the
    /// one it waits on).
    pub(crate) fn context_at(
        &self,
        direction: Direction,
        position: usize,
    ) -> Option<(Rc<Filter>, HttpContextId)> {
        let index = match direction {
            Direction::Request => position,
            Direction::Response => self.contexts.len().checked_sub(position + 1)?,
        };
        self.contexts
            .get(index)
            .map(|(filter, context)| (Rc::clone(filter), *context))
    }

    /// Position of the newest context in request order (the filter that just paused).
    pub(crate) fn last_position(&self) -> usize {
        self.contexts.len().saturating_sub(1)
    }

    /// Keeps the request's head for `proxy_on_log` when a filter has that callback and no
    /// head is kept yet; `head` makes it (a move or a copy) only then.
    pub(crate) fn keep_request_head(&mut self, head: impl FnOnce(&'static str) -> RequestHead) {
        if let Some(scheme) = self.request_head_wanted() {
            self.logged_request = Some(head(scheme));
        }
    }

    /// The same for a request's head as it left (a move, field by field: moved whole, the
    /// head was copied twice more on its way into the slot).
    pub(crate) fn keep_sent_request(&mut self, parts: http::request::Parts) {
        if let Some(scheme) = self.request_head_wanted() {
            self.logged_request = Some(RequestHead {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                scheme,
            });
        }
    }

    /// The scheme to keep the request's head with, when a filter logs and none is kept yet.
    fn request_head_wanted(&self) -> Option<&'static str> {
        (self.logged_request.is_none() && self.wants_heads_logged()).then_some(if self.stream.tls {
            "https"
        } else {
            "http"
        })
    }

    /// The same for the response's head.
    pub(crate) fn keep_response_head(&mut self, head: impl FnOnce() -> ResponseHead) {
        if self.logged_response.is_none() && self.wants_heads_logged() {
            self.logged_response = Some(head());
        }
    }

    /// Whether any filter of the exchange has `proxy_on_log`, which reads the heads.
    fn wants_heads_logged(&self) -> bool {
        self.callbacks.log
    }

    /// Whether any filter of the exchange has a body callback for `direction`.
    pub(crate) fn wants_body(&self, direction: Direction) -> bool {
        match direction {
            Direction::Request => self.callbacks.request_body,
            Direction::Response => self.callbacks.response_body,
        }
    }

    /// A failed context: applies the policy and drops the context.
    fn failed(&mut self, filter: &Rc<Filter>, error: &rustng_wasm::WasmError) -> Option<Step> {
        self.drop_contexts_of(filter);
        (!filter.fail(error)).then(|| Step::Answer(LocalAnswer::plugin_failed()))
    }

    /// Forgets the contexts of a filter whose instance died (there is nothing to end), and
    /// what its callbacks would have needed.
    pub(crate) fn drop_contexts_of(&mut self, filter: &Rc<Filter>) {
        self.contexts.retain(|(f, _)| !Rc::ptr_eq(f, filter));
        let mut callbacks = Callbacks::default();
        for (filter, _) in &self.contexts {
            if let Some(instance) = filter.instance.borrow().as_ref() {
                callbacks.add(instance);
            }
        }
        self.callbacks = callbacks;
    }

    /// Runs `proxy_on_response_headers` from `from` (response order: last filter first).
    pub(crate) fn response_headers(
        &mut self,
        head: &mut ResponseHead,
        from: usize,
        end_of_stream: bool,
    ) -> Step {
        self.run(Direction::Response, from, |instance, context, stream| {
            Ok(
                match instance.on_response_headers(context, head, stream, end_of_stream)? {
                    HeadersOutcome::Continue => Verdict::Next,
                    HeadersOutcome::Pause => Verdict::Hold,
                    HeadersOutcome::LocalResponse(local) => Verdict::Answer(local),
                },
            )
        })
    }

    /// The response phases for a response whose whole body is in hand, on an exchange with a
    /// single filter: its headers callback and, if that lets the response go on, its body
    /// callback (with the end of the stream), in one entry into the guest. The flag says
    /// whether the body callback ran; when not, the step is the headers callback's (a pause or
    /// an answer), or the filter is gone and the body phase is still to run.
    pub(crate) fn whole_response(
        &mut self,
        head: &mut ResponseHead,
        data: &mut Bytes,
    ) -> (Step, bool) {
        let Some((filter, context)) = self.context_at(Direction::Response, 0) else {
            return (Step::Continue, false);
        };
        let started = self.plugin_time.is_some().then(Instant::now);
        let stream = &mut self.stream;
        let outcome = filter
            .with_instance(|instance| instance.on_whole_response(context, head, data, stream));
        self.add_plugin_time(&filter, started);
        match outcome {
            None => (Step::Continue, false),
            Some(Ok((HeadersOutcome::Continue, Some(BodyOutcome::LocalResponse(local))))) => {
                (Step::Answer(LocalAnswer::from_plugin(*local)), true)
            }
            // At the end of the stream there is nothing more to hold for.
            Some(Ok((HeadersOutcome::Continue, body))) => (Step::Continue, body.is_some()),
            Some(Ok((HeadersOutcome::Pause, _))) => (Step::Pause(0), false),
            Some(Ok((HeadersOutcome::LocalResponse(local), _))) => {
                (Step::Answer(LocalAnswer::from_plugin(*local)), false)
            }
            Some(Err(error)) => (
                self.failed(&filter, &error).unwrap_or(Step::Continue),
                false,
            ),
        }
    }

    /// Whether the exchange runs a single filter (its phases can fuse).
    pub(crate) fn single_context(&self) -> bool {
        self.contexts.len() == 1
    }

    /// Runs the body callbacks of `direction` on `data` (everything held so far) from
    /// `from`. `Pause(i)`: filter `i` holds the data; call again from `i` when more arrives.
    pub(crate) fn body(
        &mut self,
        direction: Direction,
        data: &mut Bytes,
        end_of_stream: bool,
        from: usize,
    ) -> Step {
        self.run(direction, from, |instance, context, stream| {
            Ok(
                match instance.on_body(direction, context, data, stream, end_of_stream)? {
                    BodyOutcome::Buffer if !end_of_stream => Verdict::Hold,
                    // At the end of the stream there is nothing more to wait for: Envoy
                    // passes the data on then too.
                    BodyOutcome::Continue | BodyOutcome::Buffer => Verdict::Next,
                    BodyOutcome::LocalResponse(local) => Verdict::Answer(local),
                },
            )
        })
    }

    /// Runs the trailers callbacks of `direction`.
    pub(crate) fn trailers(&mut self, direction: Direction, trailers: &mut HeaderMap) -> Step {
        self.run(direction, 0, |instance, context, stream| {
            Ok(
                match instance.on_trailers(direction, context, trailers, stream)? {
                    BodyOutcome::LocalResponse(local) => Verdict::Answer(local),
                    // Trailers end the stream: holding them back would hold it forever.
                    BodyOutcome::Continue | BodyOutcome::Buffer => Verdict::Next,
                },
            )
        })
    }

    /// Calls `callback` for each filter of the phase from `from` in `direction`'s order,
    /// applying the failure policy to a filter that fails.
    fn run(
        &mut self,
        direction: Direction,
        from: usize,
        mut callback: impl FnMut(
            &mut PluginInstance,
            HttpContextId,
            &mut StreamInfo,
        ) -> Result<Verdict, WasmError>,
    ) -> Step {
        let mut position = from;
        while let Some((filter, context)) = self.context_at(direction, position) {
            let started = self.plugin_time.is_some().then(Instant::now);
            let stream = &mut self.stream;
            let outcome = filter.with_instance(|instance| callback(instance, context, stream));
            self.add_plugin_time(&filter, started);
            match outcome {
                None | Some(Ok(Verdict::Next)) => {}
                Some(Ok(Verdict::Hold)) => return Step::Pause(position),
                Some(Ok(Verdict::Answer(local))) => {
                    return Step::Answer(LocalAnswer::from_plugin(*local));
                }
                Some(Err(error)) => {
                    if let Some(step) = self.failed(&filter, &error) {
                        return step;
                    }
                    // The failed context is gone: the same position is the next filter.
                    continue;
                }
            }
            position += 1;
        }
        Step::Continue
    }
}

/// What one filter's callback decided, in the terms every phase shares.
enum Verdict {
    /// On to the next filter.
    Next,
    /// This filter holds the phase (a paused head, buffered data).
    Hold,
    /// This filter answered.
    Answer(Box<LocalResponse>),
}

impl Drop for ActiveFilters {
    fn drop(&mut self) {
        let (request, response) = (&mut self.logged_request, &mut self.logged_response);
        for (filter, context) in self.contexts.drain(..) {
            filter.context_ended(context.id());
            let finished = filter
                .with_instance(|instance| instance.finish_http_context(context, request, response));
            if let Some(Err(error)) = finished {
                filter.fail(&error);
            }
        }
    }
}
