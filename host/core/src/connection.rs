//! Serving one downstream connection: protocol detection (HTTP/1.1 or HTTP/2 prior knowledge),
//! the idle timeout, and graceful close on shutdown. HTTP/1.1 is RustNg's own
//! connection loop (`h1`), HTTP/2 is hyper's.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::h1;
use crate::head_timeout::HeadTimeout;
use crate::listener::ListenerSlot;
use crate::local_exec::LocalExec;
use crate::proxy::ProxyService;
use crate::registry::{Registry, Watched};
use crate::sniff::Protocol;
use crate::upstream::BoxError;

/// Per-connection bookkeeping shared by the connection task, its in-flight requests and the
/// socket wrapper, all on the connection's worker thread.
#[derive(Debug)]
pub(crate) struct ConnState {
    base: Instant,
    in_flight: Cell<u32>,
    /// Microseconds since `base` of the last request start or end.
    last_active_us: Cell<u64>,
    /// When the first byte of a request head not yet handed to the service arrived:
    /// [`NO_HEAD`], [`HEAD_UNTIMED`] (bytes arrived, the clock not read yet), or microseconds
    /// since `base` plus one.
    head_started_us: Cell<u64>,
}

const NO_HEAD: u64 = 0;
const HEAD_UNTIMED: u64 = u64::MAX;

impl ConnState {
    pub(crate) fn new() -> Self {
        ConnState {
            base: Instant::now(),
            in_flight: Cell::new(0),
            last_active_us: Cell::new(0),
            head_started_us: Cell::new(0),
        }
    }

    fn since_base(&self, now: Instant) -> u64 {
        u64::try_from(now.duration_since(self.base).as_micros()).unwrap_or(u64::MAX)
    }

    fn at(&self, us: u64) -> Instant {
        self.base + Duration::from_micros(us)
    }

    /// A request reached the service. No clock read: the idle clock only matters once
    /// nothing is in flight, and `request_finished` sets it then.
    pub(crate) fn request_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.head_started_us.set(NO_HEAD);
    }

    /// A request ended at `now`.
    pub(crate) fn request_finished(&self, now: Instant) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.last_active_us.set(self.since_base(now));
    }

    /// Bytes arrived: with no request in flight they belong to the next request head. The
    /// clock is read only if the head turns out to need more than this read
    /// ([`ConnState::pending_head_started`]), so whole heads in one read cost no clock read.
    pub(crate) fn head_bytes_arrived(&self) {
        if self.in_flight.get() == 0 && self.head_started_us.get() == NO_HEAD {
            self.head_started_us.set(HEAD_UNTIMED);
        }
    }

    /// When the request head still being read began, if one is.
    pub(crate) fn pending_head_started(&self) -> Option<Instant> {
        if self.in_flight.get() != 0 {
            return None;
        }
        match self.head_started_us.get() {
            NO_HEAD => None,
            HEAD_UNTIMED => {
                let now = Instant::now();
                self.head_started_us.set(self.since_base(now) + 1);
                Some(now)
            }
            us => Some(self.at(us - 1)),
        }
    }

    /// When the connection may be closed for idleness, or `None` while requests are in flight.
    pub(crate) fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        (self.in_flight.get() == 0).then(|| self.at(self.last_active_us.get()) + idle_timeout)
    }
}

/// Everything a request needs to know about the connection it arrived on.
pub(crate) struct ConnCtx {
    /// Each request takes the listener's version current when it starts.
    pub(crate) listener: Rc<ListenerSlot>,
    pub(crate) peer: SocketAddr,
    /// `peer`'s address as the `x-forwarded-for` entry.
    pub(crate) client_address: http::HeaderValue,
    pub(crate) tls: bool,
    pub(crate) state: Rc<ConnState>,
}

/// The HTTP codecs of a listener, configured once from its limits.
pub(crate) struct Codecs {
    max_request_head_bytes: usize,
    http2: http2::Builder<LocalExec>,
}

impl Codecs {
    pub(crate) fn new(http: &rustng_runtime_config::HttpOptions) -> Self {
        let mut http2 = http2::Builder::new(LocalExec);
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(http.max_concurrent_streams)
            .max_header_list_size(u32::try_from(http.max_request_headers_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(60)));
        Codecs {
            max_request_head_bytes: http.max_request_headers_bytes,
            http2,
        }
    }
}

/// Serves `io`, whose protocol is already known, until the client leaves or the worker's
/// registry closes it (idle too long, or shutdown).
pub(crate) async fn serve<I>(
    io: I,
    protocol: Protocol,
    slot: Rc<ListenerSlot>,
    peer: SocketAddr,
    tls: bool,
    registry: &Rc<Registry>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The connection's own settings (codec limits, timeouts) come from the version current
    // when it opened; its requests each take the version current when they start.
    let listener = slot.current();
    let state = Rc::new(ConnState::new());
    let ctx = Rc::new(ConnCtx {
        listener: Rc::clone(&slot),
        peer,
        client_address: crate::headers::client_address_value(peer.ip()),
        tls,
        state: Rc::clone(&state),
    });
    let service = ProxyService::new(ctx);
    let registration = registry.register(
        Rc::clone(&state),
        slot.id,
        listener.config.http.idle_timeout,
    );
    let result: Result<(), BoxError> = match protocol {
        Protocol::Http1 => {
            // Request heads are timed on HTTP/1 only; HTTP/2 has its own flow control and
            // header limits, and a stream's head is one HEADERS frame.
            let io = HeadTimeout::new(
                io,
                Rc::clone(&state),
                listener.config.http.request_headers_timeout,
            );
            let conn = h1::Connection::new(io, service, listener.codecs.max_request_head_bytes);
            Watched::new(conn, registration, |c| c.graceful_shutdown())
                .await
                .map_err(Into::into)
        }
        Protocol::Http2 => {
            let conn = listener
                .codecs
                .http2
                .serve_connection(TokioIo::new(io), service);
            Watched::new(conn, registration, |c| c.graceful_shutdown())
                .await
                .map_err(Into::into)
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "downstream connection error");
    }
}
