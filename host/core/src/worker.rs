//! One worker thread: a current-thread runtime that accepts on its own sockets and proxies
//! every request it accepts, start to end. Config versions arrive as [`WorkerUpdate`]s and are
//! applied between requests.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::LocalSet;
use tokio_rustls::TlsAcceptor;

use crate::connection;
use crate::filters::{Filter, FilterChain};
use crate::h3::QuicSide;
use crate::listener::{ListenerRt, ListenerSlot};
use crate::registry::Registry;
use crate::snapshot::Snapshot;
use crate::sniff::{self, Protocol};
use crate::tcp_proxy;
use crate::upstream::ClusterTable;
use rustng_runtime_config::ListenerProtocol;

/// How often idle upstream connections past their timeout are closed.
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after an accept error such as EMFILE, so a full fd table does not spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What a worker is handed by the server: everything `Send`, turned into `Rc` state inside.
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    /// Config versions to switch to; the first one is waiting when the worker starts.
    pub(crate) updates: mpsc::UnboundedReceiver<WorkerUpdate>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// A config version for one worker.
pub(crate) struct WorkerUpdate {
    pub(crate) snapshot: Arc<Snapshot>,
    /// Sockets, bound by the control thread (or inherited), for listeners this worker does
    /// not accept on yet (new ones, or ones whose address changed), by listener name.
    pub(crate) sockets: crate::control::WorkerSockets,
    /// Told once the worker runs the version: the plugins whose instance failed to start.
    pub(crate) applied: oneshot::Sender<Vec<String>>,
}

/// Runs a worker until shutdown has been asked for and its connections have drained.
pub(crate) fn run(setup: WorkerSetup) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    local.block_on(&runtime, serve(setup))
}

/// A listener this worker accepts on (usually on one socket; on several when it inherited
/// more sockets than it has workers).
struct Accepting {
    address: SocketAddr,
    slot: Rc<ListenerSlot>,
    stops: Vec<Rc<Notify>>,
    /// The listener's HTTP/3 side, if it has one.
    quic: Option<QuicSide>,
}

/// The worker's state for the config version it runs.
struct Worker {
    index: usize,
    clusters: Rc<ClusterTable>,
    /// The worker's instance of every plugin (of the generation the version names).
    filters: RefCell<HashMap<String, Rc<Filter>>>,
    listeners: RefCell<HashMap<String, Accepting>>,
    next_listener_id: Cell<u64>,
    registry: Rc<Registry>,
    open: Rc<Cell<usize>>,
    shutdown: watch::Receiver<bool>,
    /// The running version's `drain_timeout`.
    drain_timeout: Cell<Duration>,
}

impl Worker {
    /// Switches to `update`'s version. Nothing here waits: requests already running keep
    /// the listener, clusters and filters they hold; the next request sees the new ones.
    fn apply(&self, update: WorkerUpdate) {
        let WorkerUpdate {
            snapshot,
            mut sockets,
            applied,
        } = update;
        let config = &snapshot.config;
        self.drain_timeout.set(config.drain_timeout);
        self.clusters
            .update(&config.clusters, &snapshot.cluster_state, self.index);

        let mut failed = Vec::new();
        {
            let mut filters = self.filters.borrow_mut();
            let mut next = HashMap::with_capacity(snapshot.plugins.len());
            for (name, plugin) in snapshot.plugins.iter().filter(|(_, p)| !p.is_singleton()) {
                let filter = match filters.remove(name) {
                    Some(kept) if Arc::ptr_eq(kept.plugin(), plugin) => kept,
                    replaced => {
                        if let Some(old) = replaced {
                            old.retire();
                        }
                        let fresh = Filter::start(Arc::clone(plugin), Rc::clone(&self.clusters));
                        if !fresh.is_running() {
                            failed.push(name.clone());
                        }
                        fresh
                    }
                };
                next.insert(name.clone(), filter);
            }
            for (_, removed) in filters.drain() {
                removed.retire();
            }
            *filters = next;
        }

        let filters = self.filters.borrow();
        let mut listeners = self.listeners.borrow_mut();
        let mut kept = HashMap::with_capacity(snapshot.listeners.len());
        for spec in &snapshot.listeners {
            let l = &spec.config;
            // The port clients are told about: the socket's (port 0 resolved), else the one
            // this worker already serves HTTP/3 on.
            let alt_svc = l.http3.as_ref().filter(|h3| h3.advertise).and_then(|h3| {
                let port = sockets
                    .udp
                    .get(&l.name)
                    .and_then(|s| s.first()?.0.local_addr().ok())
                    .or_else(|| listeners.get(&l.name)?.quic.as_ref().map(|q| q.address))
                    .map_or(h3.address.port(), |a| a.port());
                http::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok()
            });
            let rt = Rc::new(ListenerRt {
                alt_svc,
                name: Rc::from(l.name.as_str()),
                default_cluster: l
                    .default_cluster
                    .as_deref()
                    .and_then(|name| self.clusters.get(name)),
                clusters: Rc::clone(&self.clusters),
                tls: spec.tls.clone().map(TlsAcceptor::from),
                codecs: connection::Codecs::new(&l.http),
                filters: FilterChain::new(
                    l.http_filters
                        .iter()
                        .filter_map(|name| filters.get(name).cloned())
                        .collect(),
                ),
                network_filters: l
                    .network_filters
                    .iter()
                    .filter_map(|name| filters.get(name).cloned())
                    .collect(),
                limit: Arc::clone(&spec.limit),
                stats: Arc::clone(&spec.stats),
                grpc: Arc::clone(&spec.grpc),
                tracer: snapshot.tracer.clone(),
                worker: self.index,
                config: l.clone(),
            });
            match listeners.remove(&l.name) {
                Some(mut accepting) if accepting.address == l.address => {
                    accepting.slot.replace(rt);
                    self.update_quic(&mut accepting, spec, &mut sockets);
                    kept.insert(l.name.clone(), accepting);
                }
                moved => {
                    if let Some(old) = moved {
                        self.stop_accepting(&l.name, old);
                    }
                    let Some(socket) = sockets.tcp.remove(&l.name).filter(|s| !s.is_empty()) else {
                        tracing::error!(worker = self.index, listener = %l.name, "no socket for a new listener");
                        continue;
                    };
                    match self.start_accepting(socket, rt) {
                        Ok(mut accepting) => {
                            self.update_quic(&mut accepting, spec, &mut sockets);
                            kept.insert(l.name.clone(), accepting);
                        }
                        Err(error) => {
                            tracing::error!(worker = self.index, listener = %l.name, %error, "cannot accept");
                        }
                    }
                }
            }
        }
        for (name, removed) in listeners.drain() {
            self.stop_accepting(&name, removed);
        }
        *listeners = kept;
        drop(listeners);

        let smallest_idle_timeout = config
            .listeners
            .iter()
            .map(|l| l.http.idle_timeout)
            .min()
            .unwrap_or(Duration::from_secs(60));
        self.registry.set_sweep_period(smallest_idle_timeout);
        tracing::debug!(
            worker = self.index,
            version = snapshot.version,
            "config version applied"
        );
        let _ = applied.send(failed);
    }

    fn start_accepting(
        &self,
        sockets: Vec<std::net::TcpListener>,
        listener: Rc<ListenerRt>,
    ) -> std::io::Result<Accepting> {
        let address = listener.config.address;
        let sockets = sockets
            .into_iter()
            .map(TcpListener::from_std)
            .collect::<std::io::Result<Vec<_>>>()?;
        let id = self.next_listener_id.get();
        self.next_listener_id.set(id + 1);
        let slot = Rc::new(ListenerSlot::new(id, listener));
        let mut stops = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let stop = Rc::new(Notify::new());
            tokio::task::spawn_local(accept_loop(
                socket,
                Rc::clone(&slot),
                self.shutdown.clone(),
                Rc::clone(&stop),
                Rc::clone(&self.open),
                Rc::clone(&self.registry),
            ));
            stops.push(stop);
        }
        Ok(Accepting {
            address,
            slot,
            stops,
            quic: None,
        })
    }

    /// Starts, restarts, updates or stops the listener's HTTP/3 side for `spec`.
    fn update_quic(
        &self,
        accepting: &mut Accepting,
        spec: &crate::snapshot::ListenerSpec,
        sockets: &mut crate::control::WorkerSockets,
    ) {
        let name = &spec.config.name;
        match (sockets.udp.remove(name), spec.quic.clone()) {
            (Some(socket), Some(config)) => {
                if let Some(old) = accepting.quic.take() {
                    old.stop();
                }
                match QuicSide::start(socket, config, &accepting.slot, &self.registry, &self.open) {
                    Ok(quic) => accepting.quic = Some(quic),
                    Err(error) => {
                        tracing::error!(worker = self.index, listener = %name, %error, "cannot serve HTTP/3");
                    }
                }
            }
            (None, Some(config)) => {
                if let Some(quic) = &mut accepting.quic {
                    quic.update(config);
                }
            }
            (_, None) => {
                if let Some(old) = accepting.quic.take() {
                    old.stop();
                }
            }
        }
    }

    /// A listener left the config or moved: close its socket and let its connections finish
    /// their requests and close, as a drain does.
    fn stop_accepting(&self, name: &str, accepting: Accepting) {
        tracing::info!(worker = self.index, listener = name, address = %accepting.address, "listener stopped");
        for stop in &accepting.stops {
            stop.notify_one();
        }
        if let Some(quic) = accepting.quic {
            quic.stop();
        }
        self.registry.drain_listener(accepting.slot.id);
    }
}

async fn serve(setup: WorkerSetup) -> std::io::Result<()> {
    let WorkerSetup {
        index,
        mut updates,
        shutdown,
    } = setup;
    let worker = Rc::new(Worker {
        index,
        clusters: Rc::new(ClusterTable::default()),
        filters: RefCell::default(),
        listeners: RefCell::default(),
        next_listener_id: Cell::new(0),
        registry: Rc::new(Registry::default()),
        open: Rc::new(Cell::new(0)),
        shutdown: shutdown.clone(),
        drain_timeout: Cell::new(Duration::from_secs(30)),
    });
    // The first version is waiting: apply it before anything else runs.
    match updates.recv().await {
        Some(update) => worker.apply(update),
        None => return Ok(()),
    }
    tokio::task::spawn_local(Rc::clone(&worker.registry).sweep_forever());

    let sweeper = Rc::clone(&worker.clusters);
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(POOL_SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            for cluster in sweeper.all().values() {
                cluster.sweep();
            }
        }
    });
    tracing::debug!(worker = index, "worker started");

    let mut shutdown = shutdown;
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = shutdown.changed() => if changed.is_err() { break },
            update = updates.recv() => match update {
                Some(update) => worker.apply(update),
                // The control thread is gone: keep serving the last version until shutdown.
                None => {
                    if shutdown.changed().await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    for accepting in worker.listeners.borrow_mut().values_mut() {
        if let Some(quic) = accepting.quic.take() {
            quic.stop();
        }
    }
    worker.registry.drain();
    let deadline = tokio::time::Instant::now() + worker.drain_timeout.get();
    while worker.open.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::debug!(
        worker = index,
        remaining = worker.open.get(),
        "worker stopped"
    );
    Ok(())
}

async fn accept_loop(
    socket: TcpListener,
    slot: Rc<ListenerSlot>,
    mut shutdown: watch::Receiver<bool>,
    stop: Rc<Notify>,
    open: Rc<Cell<usize>>,
    registry: Rc<Registry>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = shutdown.changed() => break,
            () = stop.notified() => break,
        };
        let listener = slot.current();
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::error!(listener = &*listener.name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = listener.limit.acquire() else {
            tracing::warn!(
                listener = &*listener.name,
                %peer,
                max_connections = listener.config.max_connections,
                "connection limit reached, closing new connection"
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let listener_slot = Rc::clone(&slot);
        let registry = Rc::clone(&registry);
        let open = Rc::clone(&open);
        open.set(open.get() + 1);
        if listener.config.protocol == ListenerProtocol::Tcp {
            tokio::task::spawn_local(async move {
                tcp_proxy::serve(stream, listener, peer).await;
                drop(permit);
                open.set(open.get() - 1);
            });
            continue;
        }
        // Two task shapes, so a cleartext connection's task is not sized for TLS state.
        match listener.tls.clone() {
            None => tokio::task::spawn_local(async move {
                serve_plain(stream, listener_slot, peer, &registry).await;
                drop(permit);
                open.set(open.get() - 1);
            }),
            Some(acceptor) => tokio::task::spawn_local(async move {
                serve_tls(acceptor, stream, listener_slot, peer, &registry).await;
                drop(permit);
                open.set(open.get() - 1);
            }),
        };
    }
    // Dropping the socket here stops this worker's accepting; the others keep theirs.
}

async fn serve_plain(
    stream: TcpStream,
    slot: Rc<ListenerSlot>,
    peer: SocketAddr,
    registry: &Rc<Registry>,
) {
    let (idle_timeout, head_timeout) = {
        let http = &slot.current().config.http;
        (http.idle_timeout, http.request_headers_timeout)
    };
    // A client that sends nothing is idle; one that starts is timed as a head.
    match sniff::sniff(&stream, idle_timeout, head_timeout).await {
        Ok(Some(protocol)) => {
            connection::serve(stream, protocol, slot, peer, false, registry).await;
        }
        Ok(None) => tracing::debug!(%peer, "closed before a request"),
        Err(e) => tracing::debug!(%peer, error = %e, "read failed before a request"),
    }
}

async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    slot: Rc<ListenerSlot>,
    peer: SocketAddr,
    registry: &Rc<Registry>,
) {
    let handshake = acceptor.accept(stream);
    let timeout = slot.current().config.http.request_headers_timeout;
    match tokio::time::timeout(timeout, handshake).await {
        Ok(Ok(tls)) => {
            let protocol = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            connection::serve(tls, protocol, slot, peer, true, registry).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}
