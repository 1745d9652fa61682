//! Serving one downstream connection: protocol detection (HTTP/1.1 or HTTP/2 prior knowledge),
//! the idle timeout hyper lacks, and graceful close on shutdown.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::listener::ListenerRt;
use crate::local_exec::LocalExec;
use crate::proxy::ProxyService;

/// Per-connection bookkeeping shared by the connection task and its in-flight requests.
#[derive(Debug)]
pub(crate) struct ConnState {
    in_flight: Cell<u32>,
    last_active: Cell<Instant>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            in_flight: Cell::new(0),
            last_active: Cell::new(Instant::now()),
        }
    }

    /// Marks a request as started and returns its start time.
    pub(crate) fn request_started(&self) -> Instant {
        let now = Instant::now();
        self.in_flight.set(self.in_flight.get() + 1);
        self.last_active.set(now);
        now
    }

    pub(crate) fn request_finished(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.last_active.set(Instant::now());
    }

    /// When the connection may be closed for idleness, or `None` while requests are in flight.
    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        (self.in_flight.get() == 0).then(|| self.last_active.get() + idle_timeout)
    }
}

/// Everything a request needs to know about the connection it arrived on.
pub(crate) struct ConnCtx {
    pub(crate) listener: Rc<ListenerRt>,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) state: Rc<ConnState>,
}

/// Builds the per-listener connection builder once: limits from the listener config.
pub(crate) fn builder(http: &rustng_runtime_config::HttpOptions) -> auto::Builder<LocalExec> {
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive(true)
        .max_buf_size(http.max_request_headers_bytes)
        .header_read_timeout(http.request_headers_timeout);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(http.max_concurrent_streams)
        .max_header_list_size(u32::try_from(http.max_request_headers_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(60)));
    builder
}

/// Serves `io` until the client leaves, the idle timeout fires, or shutdown drains it.
pub(crate) async fn serve<I>(
    io: I,
    listener: Rc<ListenerRt>,
    peer: SocketAddr,
    tls: bool,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Rc::new(ConnState::new());
    let idle_timeout = listener.config.http.idle_timeout;
    let ctx = Rc::new(ConnCtx {
        listener: Rc::clone(&listener),
        peer,
        tls,
        state: Rc::clone(&state),
    });
    let service = ProxyService::new(ctx);
    let conn = listener
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "downstream connection error");
                }
                return;
            }
            _ = &mut idle, if !closing => {
                match state.idle_deadline(idle_timeout) {
                    Some(deadline) if deadline <= Instant::now() => {
                        tracing::debug!(%peer, "closing idle connection");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Some(deadline) => idle.as_mut().reset(deadline),
                    // Busy: look again one timeout from now; the timer is reset, not re-created.
                    None => idle.as_mut().reset(Instant::now() + idle_timeout),
                }
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
