//! Listening sockets and what a worker knows about each listener.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rustng_runtime_config::Listener;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_rustls::TlsAcceptor;

use crate::connection::Codecs;
use crate::filters::{Filter, FilterChain};
use crate::upstream::ClusterRt;

/// Pending connections the kernel queues per socket (Linux caps it at `somaxconn`).
const BACKLOG: i32 = 4096;

/// Binds a listening socket with `SO_REUSEPORT`, so each worker owns one and the kernel spreads
/// new connections across them without a shared accept lock.
pub(crate) fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Open-connection count of one listener across all workers. It outlives config versions
/// (the connections it counts do), so a new `max_connections` is set in place.
#[derive(Debug, Default)]
pub(crate) struct ConnectionLimit {
    open: AtomicUsize,
    max: AtomicUsize,
    /// Connections taken, and refused for the limit, since the listener first appeared.
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize) -> Self {
        ConnectionLimit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Takes a slot, or `None` when the listener is full.
    pub(crate) fn acquire(self: &Arc<Self>) -> Option<ConnectionSlot> {
        // Relaxed: the count is a limit, not a synchronisation point.
        let prior = self.open.fetch_add(1, Ordering::Relaxed);
        if prior >= self.max.load(Ordering::Relaxed) {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.refused.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            self.accepted.fetch_add(1, Ordering::Relaxed);
            Some(ConnectionSlot(Arc::clone(self)))
        }
    }

    /// (open, accepted, refused) for `/metrics`.
    pub(crate) fn counts(&self) -> (usize, u64, u64) {
        (
            self.open.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// A held connection slot, released on drop.
pub(crate) struct ConnectionSlot(Arc<ConnectionLimit>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listener as one worker runs it.
pub(crate) struct ListenerRt {
    pub(crate) config: Listener,
    pub(crate) name: Rc<str>,
    pub(crate) default_cluster: Option<Rc<ClusterRt>>,
    /// The worker's clusters by name, for filters that route (`rustng.route.cluster`).
    pub(crate) clusters: crate::filters::Clusters,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) codecs: Codecs,
    pub(crate) filters: FilterChain,
    /// A TCP listener's network filters, in order.
    pub(crate) network_filters: Vec<Rc<Filter>>,
    pub(crate) limit: Arc<ConnectionLimit>,
    /// Downstream requests (this worker writes shard `worker`).
    pub(crate) stats: Arc<crate::stats::RequestStats>,
    /// Per-method gRPC counters (shared by the workers).
    pub(crate) grpc: Arc<crate::grpc_stats::GrpcStats>,
    /// `alt-svc` for HTTP/1.1 and HTTP/2 responses, when the listener announces HTTP/3.
    pub(crate) alt_svc: Option<http::HeaderValue>,
    /// The version's tracing settings, when tracing is on.
    pub(crate) tracer: Option<Arc<crate::trace::Tracer>>,
    pub(crate) worker: usize,
}

/// Where a worker's connections find their listener's current version: a new config replaces
/// the `ListenerRt` here, and each request takes the one current when it starts (an `Rc`
/// clone), so requests already running finish on the version they began with.
pub(crate) struct ListenerSlot {
    /// Tells this listener's connections apart in the worker's registry (for draining a
    /// listener that was removed or moved).
    pub(crate) id: u64,
    current: RefCell<Rc<ListenerRt>>,
}

impl ListenerSlot {
    pub(crate) fn new(id: u64, listener: Rc<ListenerRt>) -> Self {
        ListenerSlot {
            id,
            current: RefCell::new(listener),
        }
    }

    pub(crate) fn current(&self) -> Rc<ListenerRt> {
        Rc::clone(&self.current.borrow())
    }

    /// Counts a finished request (status 0: it ended without one) on the current version's
    /// counters, which every version of the listener shares.
    pub(crate) fn record_request(&self, status: u16, elapsed: std::time::Duration) {
        let current = self.current.borrow();
        if status == 0 {
            current.stats.record_failure(current.worker, elapsed);
        } else {
            current.stats.record(current.worker, status, elapsed);
        }
    }

    /// Counts a finished gRPC call on the listener's per-method counters.
    pub(crate) fn record_grpc(&self, path: &str, status: Option<u32>) {
        self.current.borrow().grpc.record(path, status);
    }

    pub(crate) fn replace(&self, listener: Rc<ListenerRt>) {
        *self.current.borrow_mut() = listener;
    }
}
