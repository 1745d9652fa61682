//! One worker thread: a current-thread runtime that accepts on its own sockets and proxies
//! every request it accepts, start to end.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use rustng_runtime_config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::LocalSet;
use tokio_rustls::TlsAcceptor;

use crate::connection;
use crate::filters::{Filter, FilterChain, LoadedPlugin};
use crate::listener::{ConnectionLimit, ListenerRt};
use crate::registry::Registry;
use crate::sniff::{self, Protocol};
use crate::tcp_proxy;
use crate::upstream::ClusterRt;
use rustng_runtime_config::ListenerProtocol;

/// How often idle upstream connections past their timeout are closed.
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Time open connections get to finish after shutdown is asked for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error such as EMFILE, so a full fd table does not spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// What a worker is handed by the server: everything `Send`, turned into `Rc` state inside.
pub(crate) struct WorkerSetup {
    pub(crate) index: usize,
    pub(crate) config: Arc<Config>,
    /// One bound socket per listener, in config order.
    pub(crate) sockets: Vec<std::net::TcpListener>,
    pub(crate) tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    pub(crate) limits: Vec<Arc<ConnectionLimit>>,
    /// Compiled plugins by name.
    pub(crate) plugins: Arc<HashMap<String, Arc<LoadedPlugin>>>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Runs a worker until shutdown has been asked for and its connections have drained.
pub(crate) fn run(setup: WorkerSetup) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    local.block_on(&runtime, serve(setup))
}

async fn serve(setup: WorkerSetup) -> std::io::Result<()> {
    let WorkerSetup {
        index,
        config,
        sockets,
        tls,
        limits,
        plugins,
        shutdown,
    } = setup;
    let clusters: Rc<HashMap<String, Rc<ClusterRt>>> = Rc::new(
        config
            .clusters
            .iter()
            .map(|c| (c.name.clone(), Rc::new(ClusterRt::new(c.clone()))))
            .collect(),
    );
    // This worker's instance of every plugin, shared by the listeners that use it.
    let filters: HashMap<&str, Rc<Filter>> = plugins
        .iter()
        .map(|(name, plugin)| {
            (
                name.as_str(),
                Filter::start(Arc::clone(plugin), Rc::clone(&clusters)),
            )
        })
        .collect();
    let open = Rc::new(Cell::new(0usize));
    let registry = Rc::new(Registry::default());

    for ((socket, tls), (listener, limit)) in sockets
        .into_iter()
        .zip(tls)
        .zip(config.listeners.iter().zip(limits))
    {
        let rt = Rc::new(ListenerRt {
            name: Rc::from(listener.name.as_str()),
            default_cluster: listener
                .default_cluster
                .as_deref()
                .and_then(|name| clusters.get(name).cloned()),
            clusters: Rc::clone(&clusters),
            tls: tls.map(TlsAcceptor::from),
            codecs: connection::Codecs::new(&listener.http),
            filters: FilterChain::new(
                listener
                    .http_filters
                    .iter()
                    .filter_map(|name| filters.get(name.as_str()).cloned())
                    .collect(),
            ),
            network_filters: listener
                .network_filters
                .iter()
                .filter_map(|name| filters.get(name.as_str()).cloned())
                .collect(),
            limit,
            config: listener.clone(),
        });
        let socket = TcpListener::from_std(socket)?;
        tokio::task::spawn_local(accept_loop(
            socket,
            rt,
            shutdown.clone(),
            Rc::clone(&open),
            Rc::clone(&registry),
        ));
    }

    let smallest_idle_timeout = config
        .listeners
        .iter()
        .map(|l| l.http.idle_timeout)
        .min()
        .unwrap_or(Duration::from_secs(60));
    tokio::task::spawn_local(Rc::clone(&registry).sweep_forever(smallest_idle_timeout));

    let sweeper_clusters: Vec<Rc<ClusterRt>> = clusters.values().cloned().collect();
    tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(POOL_SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            for cluster in &sweeper_clusters {
                cluster.sweep();
            }
        }
    });
    tracing::debug!(worker = index, "worker started");

    let mut shutdown = shutdown;
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    registry.drain();
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while open.get() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::debug!(worker = index, remaining = open.get(), "worker stopped");
    Ok(())
}

async fn accept_loop(
    socket: TcpListener,
    listener: Rc<ListenerRt>,
    mut shutdown: watch::Receiver<bool>,
    open: Rc<Cell<usize>>,
    registry: Rc<Registry>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = socket.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::error!(listener = &*listener.name, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = listener.limit.acquire() else {
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
        let listener = Rc::clone(&listener);
        let registry = Rc::clone(&registry);
        let open = Rc::clone(&open);
        open.set(open.get() + 1);
        if listener.config.protocol == ListenerProtocol::Tcp {
            tokio::task::spawn_local(async move {
                tcp_proxy::serve(stream, listener, peer).await;
                drop(slot);
                open.set(open.get() - 1);
            });
            continue;
        }
        // Two task shapes, so a cleartext connection's task is not sized for TLS state.
        match listener.tls.clone() {
            None => tokio::task::spawn_local(async move {
                serve_plain(stream, listener, peer, &registry).await;
                drop(slot);
                open.set(open.get() - 1);
            }),
            Some(acceptor) => tokio::task::spawn_local(async move {
                serve_tls(acceptor, stream, listener, peer, &registry).await;
                drop(slot);
                open.set(open.get() - 1);
            }),
        };
    }
    // Dropping the socket here stops this worker's accepting; the others keep theirs.
}

async fn serve_plain(
    stream: TcpStream,
    listener: Rc<ListenerRt>,
    peer: SocketAddr,
    registry: &Rc<Registry>,
) {
    let http = &listener.config.http;
    // A client that sends nothing is idle; one that starts is timed as a head.
    match sniff::sniff(&stream, http.idle_timeout, http.request_headers_timeout).await {
        Ok(Some(protocol)) => {
            connection::serve(
                stream,
                protocol,
                Rc::clone(&listener),
                peer,
                false,
                registry,
            )
            .await;
        }
        Ok(None) => tracing::debug!(%peer, "closed before a request"),
        Err(e) => tracing::debug!(%peer, error = %e, "read failed before a request"),
    }
}

async fn serve_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    listener: Rc<ListenerRt>,
    peer: SocketAddr,
    registry: &Rc<Registry>,
) {
    let handshake = acceptor.accept(stream);
    match tokio::time::timeout(listener.config.http.request_headers_timeout, handshake).await {
        Ok(Ok(tls)) => {
            let protocol = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            connection::serve(tls, protocol, Rc::clone(&listener), peer, true, registry).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}
