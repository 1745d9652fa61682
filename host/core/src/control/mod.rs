//! Config versions: validating a new config, preparing it, switching every worker to it, and
//! keeping the history.
//!
//! One control thread owns all of this, so applies are serialized without a lock and the slow
//! parts (reading and compiling modules, canary instances, loading TLS material, binding new
//! sockets) never run on a worker. Everything that can fail happens before any worker is
//! touched: a refused config changes nothing. Workers then switch between requests, and
//! answer once they run the new version; if one cannot start a plugin instance, the previous
//! version is published again.

mod history;
mod plugins;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustng_runtime_config::{Config, FieldError};
use rustng_wasm::{EngineLimits, PluginHost, UpstreamCheck, WasmEngine};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::CoreError;
use crate::h3::QuicLink;
use crate::inherited::{self, InheritedSockets};
use crate::listener::{self, ConnectionLimit};
use crate::snapshot::{ClusterShared, ListenerSpec, Snapshot};
use crate::stats::RequestStats;
use crate::tls;
use crate::trace::Tracer;
use crate::trace::export::SpanQueue;
use crate::worker::WorkerUpdate;

use history::VersionStore;
pub use history::{Origin, VersionRecord};
use plugins::{PluginGenerations, PreparedPlugins};

/// Smallest pool of wasm instance slots: room for every worker's instance of a few plugins,
/// with old generations still finishing streams while new ones start.
const MIN_INSTANCE_SLOTS: u32 = 128;

/// One worker's sockets for the listeners it does not accept on yet, by listener name.
#[derive(Debug, Default)]
pub(crate) struct WorkerSockets {
    pub(crate) tcp: HashMap<String, Vec<std::net::TcpListener>>,
    /// HTTP/3 (QUIC) sockets, each with its link for binary upgrades, for listeners whose
    /// HTTP/3 side is new or moved.
    pub(crate) udp: HashMap<String, Vec<(std::net::UdpSocket, Arc<QuicLink>)>>,
}

/// Duplicates of a listener's HTTP/3 sockets with their links, for a binary upgrade.
#[derive(Debug)]
struct BoundQuic {
    address: SocketAddr,
    sockets: Vec<(std::net::UdpSocket, Arc<QuicLink>)>,
}

/// Duplicates of the sockets the workers accept on, for a binary upgrade to hand over. They
/// are dropped as soon as their listener leaves the config: a duplicate kept open would keep
/// the kernel queueing connections that nobody accepts.
#[derive(Debug)]
struct BoundListener {
    address: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

/// A config document to apply.
#[derive(Debug, Clone)]
pub struct ConfigDocument {
    /// YAML text.
    pub text: String,
    /// What relative paths in it are relative to (the config file's directory).
    pub base_dir: Option<PathBuf>,
    /// Where it came from, for the history.
    pub origin: Origin,
}

impl ConfigDocument {
    /// Reads the config file at `path`.
    pub fn read(path: &std::path::Path, origin: Origin) -> std::io::Result<ConfigDocument> {
        Ok(ConfigDocument {
            text: std::fs::read_to_string(path)?,
            base_dir: path.parent().map(std::path::Path::to_path_buf),
            origin,
        })
    }
}

/// The outcome of an accepted apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The version now running.
    pub version: u64,
    /// `false` when the document was the running one: nothing was done.
    pub changed: bool,
    /// Settings that changed but only take effect after a restart.
    pub restart_required: Vec<String>,
}

/// Why an apply did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The config is invalid or could not be prepared; nothing changed.
    #[error("config refused:\n{}", rustng_runtime_config::render_errors(.0))]
    Refused(Vec<FieldError>),
    /// A worker could not run the new version; the previous one runs again.
    #[error("applying failed ({reason}); version {restored} restored")]
    Restored {
        /// What failed.
        reason: String,
        /// The version running again.
        restored: u64,
    },
    /// No kept version has that number (or it has no document to go back to).
    #[error("version {0} is not in the history")]
    UnknownVersion(u64),
    /// No configured plugin has that name.
    #[error("no plugin named {0:?} is configured")]
    UnknownPlugin(String),
    /// The plugin has no kept generation with that number.
    #[error("plugin {plugin:?} has no kept generation {generation}")]
    UnknownGeneration {
        /// The plugin.
        plugin: String,
        /// The generation asked for.
        generation: u64,
    },
    /// The server is stopping.
    #[error("the server is shutting down")]
    Stopped,
}

impl ApplyError {
    /// Every field error of a refused config.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            ApplyError::Refused(errors) => errors,
            _ => &[],
        }
    }
}

pub(crate) enum Command {
    Apply(ConfigDocument, oneshot::Sender<Result<Applied, ApplyError>>),
    Rollback(u64, oneshot::Sender<Result<Applied, ApplyError>>),
    RollbackPlugin(String, u64, oneshot::Sender<Result<Applied, ApplyError>>),
    History(oneshot::Sender<Vec<VersionRecord>>),
    Plugins(oneshot::Sender<Vec<PluginGenerationInfo>>),
    Handover(oneshot::Sender<std::io::Result<HandoverState>>),
    /// The process handed over to did not take over.
    HandoverAborted,
    /// A discovery adapter (the plugin named) published a cluster's endpoints.
    SetEndpoints(String, crate::discovery::EndpointSet),
}

/// What a process replacing this one takes over: the running version and the sockets.
#[derive(Debug)]
pub struct HandoverState {
    /// The running version's number.
    pub version: u64,
    /// Its document (none when the server was started from a parsed config).
    pub document: Option<ConfigDocument>,
    /// Every listener's sockets, duplicated.
    pub listeners: Vec<crate::inherited::InheritedListener>,
    /// Every HTTP/3 socket, duplicated, with the successor's end of its link.
    pub quic: Vec<crate::inherited::InheritedQuic>,
    /// This process's connection ID tag (the successor takes the next one).
    pub quic_tag: u16,
}

/// One kept generation of a plugin, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginGenerationInfo {
    /// The plugin's name.
    pub plugin: String,
    /// The generation's number (per plugin, from 1).
    pub generation: u64,
    /// The module's sha256, hex.
    pub sha256: String,
    /// Whether the running version uses it.
    pub active: bool,
}

/// A cluster of the running version, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterInfo {
    /// The cluster's name.
    pub name: String,
    /// Its load-balancing policy.
    pub lb_policy: String,
    /// Its endpoints, in config order.
    pub endpoints: Vec<EndpointInfo>,
    /// Requests answered, by status class (1xx … 5xx).
    pub requests_by_class: [u64; 5],
    /// Requests that got no response head.
    pub failures: u64,
}

/// One endpoint of a [`ClusterInfo`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EndpointInfo {
    /// Its address.
    pub address: std::net::SocketAddr,
    /// Its weight.
    pub weight: u32,
    /// Drained by hand: no new requests.
    pub draining: bool,
    /// In rotation, or out and why (active health check, outlier ejection).
    pub health: crate::upstream::HealthStatus,
}

/// Why an endpoint could not be drained or undrained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// The running version has no such cluster.
    #[error("no cluster named {0:?}")]
    UnknownCluster(String),
    /// The cluster has no such endpoint.
    #[error("cluster {cluster:?} has no endpoint {endpoint}")]
    UnknownEndpoint {
        /// The cluster.
        cluster: String,
        /// The address asked for.
        endpoint: std::net::SocketAddr,
    },
}

/// Applies config versions to a running server, from any thread. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    commands: mpsc::UnboundedSender<Command>,
    current: Arc<ArcSwap<Snapshot>>,
    applied: watch::Receiver<u64>,
}

impl Controller {
    /// Validates and applies `document` as the next version (or refuses it with every
    /// error's path, changing nothing).
    pub async fn apply(&self, document: ConfigDocument) -> Result<Applied, ApplyError> {
        self.ask(|reply| Command::Apply(document, reply))
            .await
            .unwrap_or(Err(ApplyError::Stopped))
    }

    /// Applies a kept version's document again, as a new version.
    pub async fn rollback(&self, version: u64) -> Result<Applied, ApplyError> {
        self.ask(|reply| Command::Rollback(version, reply))
            .await
            .unwrap_or(Err(ApplyError::Stopped))
    }

    /// Switches one plugin back to a kept generation (module and configuration), as a new
    /// version; no other plugin is touched.
    pub async fn rollback_plugin(
        &self,
        plugin: &str,
        generation: u64,
    ) -> Result<Applied, ApplyError> {
        let plugin = plugin.to_owned();
        self.ask(|reply| Command::RollbackPlugin(plugin, generation, reply))
            .await
            .unwrap_or(Err(ApplyError::Stopped))
    }

    /// The kept versions, oldest first.
    pub async fn history(&self) -> Vec<VersionRecord> {
        self.ask(Command::History).await.unwrap_or_default()
    }

    /// Duplicates of every listening socket, with the running version and its document, for
    /// a binary upgrade.
    pub async fn handover(&self) -> std::io::Result<HandoverState> {
        self.ask(Command::Handover)
            .await
            .unwrap_or_else(|| Err(std::io::Error::other("the control thread has stopped")))
    }

    /// Tells the server that the process it handed over to did not take over, so that it
    /// takes new HTTP/3 connections again.
    pub fn handover_aborted(&self) {
        let _ = self.commands.send(Command::HandoverAborted);
    }

    /// Every kept plugin generation, by plugin then generation.
    pub async fn plugins(&self) -> Vec<PluginGenerationInfo> {
        self.ask(Command::Plugins).await.unwrap_or_default()
    }

    /// The running version's clusters, their endpoints (drained or not) and request counts.
    pub fn clusters(&self) -> Vec<ClusterInfo> {
        let snapshot = self.current.load();
        snapshot
            .config
            .clusters
            .iter()
            .map(|c| {
                let shared = snapshot.cluster_state.get(&c.name);
                let drained = shared.map(|s| s.drained.load_full()).unwrap_or_default();
                let (requests_by_class, failures) =
                    shared.map_or(([0; 5], 0), |s| s.stats.totals());
                ClusterInfo {
                    name: c.name.clone(),
                    lb_policy: format!("{:?}", c.lb_policy),
                    endpoints: c
                        .endpoints
                        .iter()
                        .map(|e| EndpointInfo {
                            address: e.address,
                            weight: e.weight,
                            draining: drained.contains(&e.address),
                            health: shared
                                .and_then(|s| s.health.get(&e.address))
                                .map_or(crate::upstream::HealthStatus::Healthy, |h| h.status()),
                        })
                        .collect(),
                    requests_by_class,
                    failures,
                }
            })
            .collect()
    }

    /// Drains (`drain`) or restores one endpoint of a cluster by hand: new requests skip a
    /// drained endpoint on every worker at once (requests already on it finish). It stays
    /// drained across config versions while the cluster keeps that address. Returns whether
    /// anything changed.
    pub fn drain_endpoint(
        &self,
        cluster: &str,
        endpoint: std::net::SocketAddr,
        drain: bool,
    ) -> Result<bool, DrainError> {
        let snapshot = self.current.load();
        let config = snapshot
            .config
            .clusters
            .iter()
            .find(|c| c.name == cluster)
            .ok_or_else(|| DrainError::UnknownCluster(cluster.to_owned()))?;
        if !config.endpoints.iter().any(|e| e.address == endpoint) {
            return Err(DrainError::UnknownEndpoint {
                cluster: cluster.to_owned(),
                endpoint,
            });
        }
        let Some(shared) = snapshot.cluster_state.get(cluster) else {
            return Err(DrainError::UnknownCluster(cluster.to_owned()));
        };
        let mut changed = false;
        shared.drained.rcu(|set| {
            let mut next = (**set).clone();
            changed = if drain {
                next.insert(endpoint)
            } else {
                next.remove(&endpoint)
            };
            next
        });
        if changed {
            tracing::info!(cluster, %endpoint, drain, "endpoint drain changed by hand");
        }
        Ok(changed)
    }

    /// Changes to the running version's number: each applied version is seen (a slow watcher
    /// may see only the newest of several), after its record is in the history.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// The version running now.
    pub fn version(&self) -> u64 {
        self.current.load().version
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).ok()?;
        answer.await.ok()
    }
}

/// Everything the control thread owns.
pub(crate) struct ControlState {
    workers: usize,
    engine: Option<WasmEngine>,
    cache_dir: Option<PathBuf>,
    /// `wasm.instance_slots`, when the operator sized the pool.
    instance_slots: Option<u32>,
    host: Arc<PluginHost>,
    plugins: PluginGenerations,
    updates: Vec<mpsc::UnboundedSender<WorkerUpdate>>,
    current: Arc<ArcSwap<Snapshot>>,
    store: Option<VersionStore>,
    records: Vec<VersionRecord>,
    /// Told every applied version, for watchers (the control plane's `WatchConfig`).
    applied: watch::Sender<u64>,
    /// The running version's document, to skip re-applying an unchanged file.
    running_text: Option<String>,
    /// The addresses the first version's listeners were bound to (port 0 resolved).
    first_addresses: Vec<SocketAddr>,
    /// Sockets given at start, taken by the first version's listeners.
    inherited: InheritedSockets,
    /// Told every snapshot the workers switch to (config versions and endpoint sets), for
    /// the health checker and the discovery thread.
    published: watch::Sender<u64>,
    /// The last endpoint set each discovery adapter published, by cluster.
    discovered: HashMap<String, crate::discovery::EndpointSet>,
    bound: HashMap<String, BoundListener>,
    /// Finished spans on their way to the exporter, across versions.
    spans: Arc<SpanQueue>,
    /// This process's QUIC connection ID tag: the predecessor's plus one after an upgrade.
    quic_tag: u16,
    /// Duplicates of the HTTP/3 sockets with their links, by listener.
    bound_quic: HashMap<String, BoundQuic>,
    /// The exporter's end of `spans`, until the exporter thread takes it.
    span_receiver: Option<mpsc::UnboundedReceiver<crate::trace::EncodedSpan>>,
}

/// A version ready to publish: nothing left that can fail.
struct Prepared {
    snapshot: Snapshot,
    /// Per worker, sockets for the listeners it does not accept on yet.
    sockets: Vec<WorkerSockets>,
    plugins: PreparedPlugins,
}

/// The control side of a server that is bound but not yet running.
pub(crate) struct Started {
    pub(crate) state: ControlState,
    pub(crate) controller: Controller,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    /// One update receiver per worker, the first version already queued.
    pub(crate) worker_updates: Vec<mpsc::UnboundedReceiver<WorkerUpdate>>,
    /// Answered as each worker runs the first version.
    pub(crate) first_applied: Vec<oneshot::Receiver<Vec<String>>>,
}

impl ControlState {
    /// Prepares the first version and queues it for the workers (which do not run yet).
    /// Listeners take `inherited` sockets where they match; with `inherited_version` (a
    /// binary upgrade) the version keeps the number the replaced process gave it.
    pub(crate) fn start(
        config: Config,
        document: Option<ConfigDocument>,
        inherited: InheritedSockets,
        inherited_version: Option<u64>,
    ) -> Result<Started, CoreError> {
        let (store, records) = match &config.state_dir {
            Some(dir) => {
                let (store, records) =
                    VersionStore::open(dir).map_err(|source| CoreError::StateDir {
                        path: dir.clone(),
                        source,
                    })?;
                (Some(store), records)
            }
            None => (None, Vec::new()),
        };
        let workers = config.workers;
        // Discovery adapters publish endpoints through a foreign function that queues a
        // command for the control thread, like the admin API's calls.
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let mut foreign = rustng_wasm::ForeignFunctions::default();
        foreign.register(
            rustng_abi::extensions::SET_ENDPOINTS,
            crate::discovery::set_endpoints_function(commands_tx.clone()),
        );
        foreign.register(
            rustng_abi::extensions::RESOLVE,
            crate::resolve::resolve_function(),
        );
        foreign.register(
            rustng_abi::extensions::READ_FILE,
            crate::read_file::read_file_function(),
        );
        let mut updates = Vec::with_capacity(workers);
        let mut receivers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (sender, receiver) = mpsc::unbounded_channel();
            updates.push(sender);
            receivers.push(receiver);
        }
        let last_recorded = records.last().map_or(0, |r| r.version);
        let version = inherited_version.unwrap_or(last_recorded + 1);
        let (spans, span_receiver) = SpanQueue::new();
        // A successor's connection IDs must differ from its predecessor's, whose connections
        // drain beside its own.
        let quic_tag = inherited
            .quic_tag()
            .map_or_else(|| fastrand::u16(..), |tag| tag.wrapping_add(1));
        let empty = Snapshot {
            version: 0,
            config: Arc::new(config.clone()),
            listeners: Vec::new(),
            plugins: HashMap::new(),
            cluster_state: HashMap::new(),
            tracer: None,
        };
        let mut state = ControlState {
            workers,
            engine: None,
            cache_dir: config.module_cache_dir.clone(),
            instance_slots: config.wasm_instance_slots,
            host: Arc::new(PluginHost::new(foreign)),
            plugins: PluginGenerations::default(),
            updates,
            current: Arc::new(ArcSwap::from_pointee(empty)),
            store,
            records,
            applied: watch::Sender::new(0),
            published: watch::Sender::new(0),
            discovered: HashMap::new(),
            running_text: None,
            first_addresses: Vec::new(),
            inherited,
            bound: HashMap::new(),
            spans,
            span_receiver: Some(span_receiver),
            quic_tag,
            bound_quic: HashMap::new(),
        };
        let prepared = state.prepare(config, version).map_err(CoreError::Refused)?;
        state.inherited.close_unused();
        let origin = document
            .as_ref()
            .map_or(Origin::Start { path: None }, |d| d.origin.clone());
        if let Some(first) = prepared.sockets.first() {
            state.first_addresses = prepared
                .snapshot
                .listeners
                .iter()
                .filter_map(|l| first.tcp.get(&l.config.name)?.first()?.local_addr().ok())
                .collect();
        }
        state.track_sockets(&prepared.snapshot, &prepared.sockets);
        let snapshot = Arc::new(prepared.snapshot);
        let mut first_applied = Vec::with_capacity(workers);
        for (sender, sockets) in state.updates.iter().zip(prepared.sockets) {
            let (applied, answer) = oneshot::channel();
            first_applied.push(answer);
            let _ = sender.send(WorkerUpdate {
                snapshot: Arc::clone(&snapshot),
                sockets,
                applied,
            });
        }
        state.plugins.commit(&prepared.plugins);
        state.current.store(snapshot);
        // After an upgrade with a shared state directory the version is already on record.
        if inherited_version.is_some_and(|v| state.records.iter().any(|r| r.version == v)) {
            state.running_text = document.map(|d| d.text);
            state.applied.send_replace(version);
        } else {
            state.record(version, origin, document);
        }
        let controller = Controller {
            commands: commands_tx,
            current: Arc::clone(&state.current),
            applied: state.applied.subscribe(),
        };
        Ok(Started {
            state,
            controller,
            commands,
            worker_updates: receivers,
            first_applied,
        })
    }

    /// The snapshot workers run now (for the admin server).
    pub(crate) fn current(&self) -> Arc<ArcSwap<Snapshot>> {
        Arc::clone(&self.current)
    }

    /// Where the first version's listeners listen, in config order.
    pub(crate) fn first_addresses(&self) -> Vec<SocketAddr> {
        self.first_addresses.clone()
    }

    /// The span queue and its exporter's end (once: the exporter thread takes it).
    pub(crate) fn take_spans(
        &mut self,
    ) -> Option<(
        Arc<SpanQueue>,
        mpsc::UnboundedReceiver<crate::trace::EncodedSpan>,
    )> {
        let receiver = self.span_receiver.take()?;
        Some((Arc::clone(&self.spans), receiver))
    }

    /// The wasm host shared by every plugin generation.
    pub(crate) fn plugin_host(&self) -> Arc<PluginHost> {
        Arc::clone(&self.host)
    }

    /// Validates and prepares `config`: every failure is collected with its path.
    fn prepare(&mut self, mut config: Config, version: u64) -> Result<Prepared, Vec<FieldError>> {
        let running = self.current.load_full();
        let mut errors = Vec::new();

        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (index, l) in config.listeners.iter().enumerate() {
            let before = running.listeners.iter().find(|s| s.config.name == l.name);
            let tls = match (&l.tls, before) {
                (None, _) => None,
                (Some(t), Some(b)) if b.config.tls.as_ref() == Some(t) => b.tls.clone(),
                (Some(t), _) => match tls::server_config(t) {
                    Ok(server_config) => Some(server_config),
                    Err(message) => {
                        errors.push(FieldError::new(
                            format!("listeners[{index}].tls"),
                            format!("listener {}: {message}", l.name),
                        ));
                        None
                    }
                },
            };
            let quic = match (&l.tls, &l.http3, before) {
                (Some(t), Some(h3), Some(b))
                    if b.config.tls.as_ref() == Some(t) && b.config.http3.as_ref() == Some(h3) =>
                {
                    b.quic.clone()
                }
                (Some(t), Some(h3), _) => match crate::h3::server_config(t, h3) {
                    Ok(config) => Some(config),
                    Err(message) => {
                        errors.push(FieldError::new(
                            format!("listeners[{index}].http3"),
                            format!("listener {}: {message}", l.name),
                        ));
                        None
                    }
                },
                _ => None,
            };
            let limit = match before {
                Some(b) => {
                    b.limit.set_max(l.max_connections);
                    Arc::clone(&b.limit)
                }
                None => Arc::new(ConnectionLimit::new(l.max_connections)),
            };
            let stats =
                before.map_or_else(|| RequestStats::new(self.workers), |b| Arc::clone(&b.stats));
            let grpc = before.map_or_else(Arc::default, |b| Arc::clone(&b.grpc));
            listeners.push(ListenerSpec {
                config: l.clone(),
                tls,
                quic,
                limit,
                stats,
                grpc,
            });
        }

        let plugins = match self.engine_for(&config) {
            Ok(Some(engine)) => {
                let names: std::collections::HashSet<String> =
                    config.clusters.iter().map(|c| c.name.clone()).collect();
                let upstreams: UpstreamCheck = Arc::new(move |name| names.contains(name));
                match self
                    .plugins
                    .prepare(&engine, &self.host, &upstreams, &config)
                {
                    Ok(prepared) => Some(prepared),
                    Err(mut plugin_errors) => {
                        errors.append(&mut plugin_errors);
                        None
                    }
                }
            }
            Ok(None) => Some(PreparedPlugins {
                chosen: HashMap::new(),
            }),
            Err(error) => {
                errors.push(error);
                None
            }
        };

        // TLS to upstreams: built again only where a cluster's `tls` changed.
        let mut upstream_tls = HashMap::new();
        for (index, c) in config.clusters.iter().enumerate() {
            let Some(t) = &c.tls else { continue };
            let kept = running
                .config
                .clusters
                .iter()
                .find(|old| old.name == c.name && old.tls == c.tls && old.protocol == c.protocol)
                .and_then(|_| running.cluster_state.get(&c.name))
                .and_then(|shared| shared.tls.clone());
            match kept.map_or_else(
                || crate::upstream::UpstreamTls::new(t, c.protocol).map(Arc::new),
                Ok,
            ) {
                Ok(tls) => {
                    upstream_tls.insert(c.name.clone(), tls);
                }
                Err(message) => errors.push(FieldError::new(
                    format!("clusters[{index}].tls"),
                    format!("cluster {}: {message}", c.name),
                )),
            }
        }

        let sockets = match self.bind_new(&listeners, &running.listeners) {
            Ok(sockets) => Some(sockets),
            Err(mut bind_errors) => {
                errors.append(&mut bind_errors);
                None
            }
        };

        match (plugins, sockets) {
            (Some(plugins), Some(sockets)) if errors.is_empty() => Ok(Prepared {
                snapshot: Snapshot {
                    version,
                    cluster_state: self
                        .with_discovered(&mut config, &running.cluster_state)
                        .into_iter()
                        .map(|(name, mut shared)| {
                            shared.tls = upstream_tls.remove(&name);
                            (name, shared)
                        })
                        .collect(),
                    tracer: config
                        .tracing
                        .as_ref()
                        .map(|t| Arc::new(Tracer::new(t, Arc::clone(&self.spans)))),
                    config: Arc::new(config),
                    listeners,
                    plugins: plugins.chosen.clone(),
                },
                sockets,
                plugins,
            }),
            _ => Err(errors),
        }
    }

    /// The engine, created when the first plugin is configured. Its pool is sized once: a
    /// later plugin asking for more memory per instance than the pool's slots hold needs a
    /// restart, and says so.
    fn engine_for(&mut self, config: &Config) -> Result<Option<WasmEngine>, FieldError> {
        if config.plugins.is_empty() {
            return Ok(self.engine.clone());
        }
        let largest = config
            .plugins
            .iter()
            .map(|p| p.max_memory_bytes)
            .max()
            .unwrap_or(0);
        if self.engine.is_none() {
            let plugins = u32::try_from(config.plugins.len()).unwrap_or(u32::MAX);
            let workers = u32::try_from(self.workers).unwrap_or(u32::MAX);
            let limits = EngineLimits {
                // Every worker's instance of every plugin, a canary each, and as many again
                // for generations still finishing their streams. Each slot reserves address
                // space for a whole memory (about 4 GiB), so an operator under an address-space
                // limit (`ulimit -v`, valgrind) may size the pool down.
                instance_slots: self.instance_slots.unwrap_or_else(|| {
                    plugins
                        .saturating_mul(workers.saturating_add(1))
                        .saturating_mul(4)
                        .max(MIN_INSTANCE_SLOTS)
                }),
                max_memory_bytes: largest.max(EngineLimits::default().max_memory_bytes),
                cache_dir: self.cache_dir.clone(),
            };
            let pool_memory = limits.max_memory_bytes;
            let engine = WasmEngine::with_limits(limits)
                .map_err(|e| FieldError::new("plugins", format!("wasm engine: {e}")))?;
            self.engine = Some(engine);
            tracing::debug!(pool_memory, "wasm engine started");
        }
        let engine = self.engine.clone();
        if let Some(engine) = &engine
            && largest > engine.max_memory_bytes()
        {
            let index = config
                .plugins
                .iter()
                .position(|p| p.max_memory_bytes == largest)
                .unwrap_or(0);
            return Err(FieldError::new(
                format!("plugins[{index}].max_memory_mb"),
                format!(
                    "exceeds the {} MiB the running engine was started with; restart to raise it",
                    engine.max_memory_bytes() / (1024 * 1024)
                ),
            ));
        }
        Ok(engine)
    }

    /// Binds, for every worker, the listeners that are new or moved relative to `running`.
    fn bind_new(
        &mut self,
        next: &[ListenerSpec],
        running: &[ListenerSpec],
    ) -> Result<Vec<WorkerSockets>, Vec<FieldError>> {
        let mut per_worker = self.no_sockets();
        let mut errors = Vec::new();
        for (index, spec) in next.iter().enumerate() {
            let l = &spec.config;
            let before = running.iter().find(|r| r.config.name == l.name);
            if before.is_none_or(|r| r.config.address != l.address) {
                self.bind_tcp(index, l, &mut per_worker, &mut errors);
            }
            // A listener that moved starts afresh on both sides (its connections drain with
            // the old slot).
            if let Some(http3) = &l.http3
                && before.is_none_or(|r| {
                    r.config.address != l.address
                        || r.config
                            .http3
                            .as_ref()
                            .is_none_or(|r| r.address != http3.address)
                })
            {
                self.bind_udp(index, l, http3.address, &mut per_worker, &mut errors);
            }
        }
        if errors.is_empty() {
            Ok(per_worker)
        } else {
            Err(errors)
        }
    }

    /// A UDP socket per worker for `l`'s HTTP/3 side: inherited ones (with their links to
    /// the process that handed them over) if there are, else bound (port 0 resolved by the
    /// first bind).
    fn bind_udp(
        &mut self,
        index: usize,
        l: &rustng_runtime_config::Listener,
        mut address: SocketAddr,
        per_worker: &mut [WorkerSockets],
        errors: &mut Vec<FieldError>,
    ) {
        let tag = self.quic_tag;
        if let Some(taken) = self.inherited.take_quic(&l.name, address) {
            tracing::info!(listener = %l.name, %address, "serving HTTP/3 on inherited sockets");
            let spread = inherited::spread_udp(taken, per_worker.len());
            for (sockets, taken) in per_worker.iter_mut().zip(spread) {
                let linked = taken
                    .into_iter()
                    .map(|(socket, peer)| (socket, QuicLink::new(tag, Some(peer))))
                    .collect();
                sockets.udp.insert(l.name.clone(), linked);
            }
            return;
        }
        for sockets in per_worker.iter_mut() {
            match crate::h3::bind(address) {
                Ok(socket) => {
                    if let Ok(bound) = socket.local_addr() {
                        address = bound;
                    }
                    sockets
                        .udp
                        .insert(l.name.clone(), vec![(socket, QuicLink::new(tag, None))]);
                }
                Err(source) => {
                    errors.push(FieldError::new(
                        format!("listeners[{index}].http3.address"),
                        format!("listener {}: cannot bind UDP {address}: {source}", l.name),
                    ));
                    break;
                }
            }
        }
    }

    /// A TCP socket per worker for `l`: inherited ones if there are, else bound.
    fn bind_tcp(
        &mut self,
        index: usize,
        l: &rustng_runtime_config::Listener,
        per_worker: &mut [WorkerSockets],
        errors: &mut Vec<FieldError>,
    ) {
        if let Some(taken) = self.inherited.take(&l.name, l.address) {
            match inherited::spread(taken, self.workers) {
                Ok(spread) => {
                    tracing::info!(listener = %l.name, address = %l.address, "listening on inherited sockets");
                    for (sockets, taken) in per_worker.iter_mut().zip(spread) {
                        sockets.tcp.insert(l.name.clone(), taken);
                    }
                }
                Err(source) => errors.push(FieldError::new(
                    format!("listeners[{index}].address"),
                    format!(
                        "listener {}: cannot share an inherited socket: {source}",
                        l.name
                    ),
                )),
            }
            return;
        }
        // Port 0 is resolved by the first bind, so every worker listens on the same port.
        let mut address: SocketAddr = l.address;
        for sockets in per_worker.iter_mut() {
            match listener::bind(address) {
                Ok(socket) => {
                    if let Ok(bound) = socket.local_addr() {
                        address = bound;
                    }
                    sockets.tcp.insert(l.name.clone(), vec![socket]);
                }
                Err(source) => {
                    let error = CoreError::Bind {
                        listener: l.name.clone(),
                        address,
                        source,
                    };
                    errors.push(FieldError::new(
                        format!("listeners[{index}].address"),
                        error.to_string(),
                    ));
                    break;
                }
            }
        }
    }

    /// Settings a running process cannot change.
    fn restart_required(running: &Config, next: &Config) -> Vec<String> {
        let mut fields = Vec::new();
        if running.workers != next.workers {
            fields.push("workers".to_owned());
        }
        if running.log != next.log {
            fields.push("log".to_owned());
        }
        if running.admin != next.admin {
            fields.push("admin".to_owned());
        }
        if running.module_cache_dir != next.module_cache_dir {
            fields.push("wasm.module_cache_dir".to_owned());
        }
        if running.wasm_instance_slots != next.wasm_instance_slots {
            fields.push("wasm.instance_slots".to_owned());
        }
        if running.state_dir != next.state_dir {
            fields.push("state_dir".to_owned());
        }
        if running.control_plane != next.control_plane {
            fields.push("control_plane".to_owned());
        }
        if running.upgrade != next.upgrade {
            fields.push("upgrade".to_owned());
        }
        fields
    }

    async fn apply(&mut self, document: ConfigDocument) -> Result<Applied, ApplyError> {
        let running = self.current.load_full();
        if self.running_text.as_deref() == Some(document.text.as_str()) {
            return Ok(Applied {
                version: running.version,
                changed: false,
                restart_required: Vec::new(),
            });
        }
        let config =
            rustng_runtime_config::from_yaml_at(&document.text, document.base_dir.as_deref())
                .map_err(|e| match e {
                    rustng_runtime_config::ConfigError::Read { .. } => {
                        ApplyError::Refused(vec![FieldError::new("", e.to_string())])
                    }
                    other => ApplyError::Refused(other.field_errors().to_vec()),
                })?;
        let restart_required = Self::restart_required(&running.config, &config);
        let version = self.next_version(&running);
        let prepared = self.prepare(config, version).map_err(ApplyError::Refused)?;
        let Prepared {
            snapshot,
            sockets,
            plugins,
        } = prepared;
        let snapshot = self
            .publish_or_restore(&running, Arc::new(snapshot), sockets)
            .await?;
        self.plugins.commit(&plugins);
        self.make_current(snapshot);
        for field in &restart_required {
            tracing::warn!(version, field, "changed, takes effect after a restart");
        }
        tracing::info!(version, origin = %document.origin, "config version applied");
        self.record(version, document.origin.clone(), Some(document));
        Ok(Applied {
            version,
            changed: true,
            restart_required,
        })
    }

    /// Publishes `snapshot`; if a worker cannot start one of its plugin instances, publishes
    /// `running` again (binding anew the sockets of listeners `snapshot` moved) and says so.
    async fn publish_or_restore(
        &mut self,
        running: &Arc<Snapshot>,
        snapshot: Arc<Snapshot>,
        sockets: Vec<WorkerSockets>,
    ) -> Result<Arc<Snapshot>, ApplyError> {
        let failed = self.publish(&snapshot, sockets).await;
        if failed.is_empty() {
            return Ok(snapshot);
        }
        let reason = format!("plugin instances did not start: {}", failed.join(", "));
        tracing::error!(version = snapshot.version, %reason, "restoring the previous version");
        let sockets = self
            .bind_new(&running.listeners, &snapshot.listeners)
            .unwrap_or_else(|_| self.no_sockets());
        drop(snapshot);
        let _ = self.publish(running, sockets).await;
        Err(ApplyError::Restored {
            reason,
            restored: running.version,
        })
    }

    /// No new sockets for any worker.
    fn no_sockets(&self) -> Vec<WorkerSockets> {
        (0..self.workers)
            .map(|_| WorkerSockets::default())
            .collect()
    }

    /// Keeps duplicates of the sockets `snapshot`'s listeners accept on: the new ones from
    /// `sockets`, the kept ones as they were; listeners that left drop theirs.
    fn track_sockets(&mut self, snapshot: &Snapshot, sockets: &[WorkerSockets]) {
        let mut bound = HashMap::with_capacity(snapshot.listeners.len());
        for spec in &snapshot.listeners {
            let name = &spec.config.name;
            let fresh: Vec<std::net::TcpListener> = sockets
                .iter()
                .filter_map(|worker| worker.tcp.get(name))
                .flatten()
                .filter_map(|socket| socket.try_clone().ok())
                .collect();
            if let Some(first) = fresh.first() {
                let address = first.local_addr().unwrap_or(spec.config.address);
                bound.insert(
                    name.clone(),
                    BoundListener {
                        address,
                        sockets: fresh,
                    },
                );
            } else if let Some(kept) = self.bound.remove(name) {
                bound.insert(name.clone(), kept);
            }
        }
        self.bound = bound;
        let mut bound_quic = HashMap::new();
        for spec in &snapshot.listeners {
            let name = &spec.config.name;
            if spec.config.http3.is_none() {
                continue;
            }
            let fresh: Vec<(std::net::UdpSocket, Arc<QuicLink>)> = sockets
                .iter()
                .filter_map(|worker| worker.udp.get(name))
                .flatten()
                .filter_map(|(socket, link)| Some((socket.try_clone().ok()?, Arc::clone(link))))
                .collect();
            if let Some((first, _)) = fresh.first() {
                let address = first
                    .local_addr()
                    .ok()
                    .or_else(|| spec.config.http3.as_ref().map(|h| h.address))
                    .unwrap_or(spec.config.address);
                bound_quic.insert(
                    name.clone(),
                    BoundQuic {
                        address,
                        sockets: fresh,
                    },
                );
            } else if let Some(kept) = self.bound_quic.remove(name) {
                bound_quic.insert(name.clone(), kept);
            }
        }
        self.bound_quic = bound_quic;
    }

    /// Duplicates of every listening socket with the running version, for the process that
    /// replaces this one.
    fn handover(&self) -> std::io::Result<HandoverState> {
        let listeners = self
            .bound
            .iter()
            .map(|(name, bound)| {
                Ok(crate::inherited::InheritedListener {
                    name: Some(name.clone()),
                    address: bound.address,
                    sockets: bound
                        .sockets
                        .iter()
                        .map(std::net::TcpListener::try_clone)
                        .collect::<std::io::Result<_>>()?,
                })
            })
            .collect::<std::io::Result<_>>()?;
        let version = self.current.load().version;
        let document = self
            .records
            .iter()
            .rev()
            .find(|r| r.version == version)
            .and_then(|r| {
                Some(ConfigDocument {
                    text: r.text.clone()?,
                    base_dir: r.base_dir.clone(),
                    origin: r.origin.clone(),
                })
            });
        // Each HTTP/3 socket gets a link to the successor: from now on its connections'
        // packets, and new connections, are passed to it.
        let mut quic = Vec::with_capacity(self.bound_quic.len());
        for (name, bound) in &self.bound_quic {
            let mut sockets = Vec::with_capacity(bound.sockets.len());
            for (socket, link) in &bound.sockets {
                let (ours, theirs) = std::os::unix::net::UnixDatagram::pair()?;
                sockets.push((socket.try_clone()?, theirs));
                link.hand_over(Some(ours));
            }
            quic.push(crate::inherited::InheritedQuic {
                name: name.clone(),
                address: bound.address,
                sockets,
            });
        }
        Ok(HandoverState {
            version,
            document,
            listeners,
            quic,
            quic_tag: self.quic_tag,
        })
    }

    /// The successor did not take over: new connections and every packet are this process's
    /// again.
    fn handover_aborted(&self) {
        for bound in self.bound_quic.values() {
            for (_, link) in &bound.sockets {
                link.hand_over(None);
            }
        }
    }

    /// Makes `snapshot` the one the admin side reads, and tells the snapshot's followers.
    fn make_current(&mut self, snapshot: Arc<Snapshot>) {
        self.current.store(snapshot);
        self.published.send_modify(|n| *n += 1);
    }

    /// Follows every snapshot made current (config versions and endpoint sets).
    pub(crate) fn published(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// A discovery adapter's endpoint set: checked against the running config (the cluster
    /// must take its endpoints from that adapter), then published to the workers as the
    /// same version with the cluster's endpoints replaced. Requests in flight keep the
    /// endpoint they have.
    async fn set_endpoints(&mut self, plugin: &str, set: crate::discovery::EndpointSet) {
        let running = self.current.load_full();
        let cluster = running
            .config
            .clusters
            .iter()
            .find(|c| c.name == set.cluster);
        let Some(cluster) = cluster else {
            tracing::warn!(plugin, cluster = %set.cluster, "refused endpoint set: no such cluster");
            return;
        };
        if cluster.discovery.as_ref().map(|d| d.plugin.as_str()) != Some(plugin) {
            tracing::warn!(plugin, cluster = %set.cluster, "refused endpoint set: the cluster does not take its endpoints from this plugin");
            return;
        }
        if self.discovered.get(&set.cluster) == Some(&set) {
            return;
        }
        tracing::info!(plugin, cluster = %set.cluster, endpoints = set.endpoints.len(), unhealthy = set.unhealthy.len(), "endpoint set published");
        self.discovered.insert(set.cluster.clone(), set);
        let mut config = (*running.config).clone();
        let cluster_state = self.with_discovered(&mut config, &running.cluster_state);
        let snapshot = Arc::new(Snapshot {
            version: running.version,
            config: Arc::new(config),
            listeners: running.listeners.clone(),
            plugins: running.plugins.clone(),
            cluster_state,
            tracer: running.tracer.clone(),
        });
        let sockets = self.no_sockets();
        let _ = self.publish(&snapshot, sockets).await;
        self.make_current(snapshot);
    }

    /// Puts the published endpoint sets into `config`'s discovery clusters (the configured
    /// `endpoints` serve until an adapter publishes), and returns the cluster state for the
    /// endpoints, with the registry's health applied.
    fn with_discovered(
        &self,
        config: &mut Config,
        previous: &HashMap<String, ClusterShared>,
    ) -> HashMap<String, ClusterShared> {
        for cluster in config.clusters.iter_mut().filter(|c| c.discovery.is_some()) {
            if let Some(set) = self.discovered.get(&cluster.name) {
                cluster.endpoints.clone_from(&set.endpoints);
            }
        }
        config
            .clusters
            .iter()
            .map(|c| {
                let shared = previous
                    .get(&c.name)
                    .map_or_else(|| ClusterShared::new(self.workers), Clone::clone)
                    .for_endpoints(c.endpoints.iter().map(|e| e.address), self.workers);
                if let Some(set) = self.discovered.get(&c.name) {
                    for (address, health) in &shared.health {
                        health.set_registry_unhealthy(
                            set.unhealthy.contains(address),
                            &shared.cluster_health,
                        );
                    }
                }
                (c.name.clone(), shared)
            })
            .collect()
    }

    /// The number the next applied version gets.
    fn next_version(&self, running: &Snapshot) -> u64 {
        self.records.last().map_or(running.version, |r| r.version) + 1
    }

    /// Sends a version to every worker and waits until all run it; returns the plugins whose
    /// instance failed to start somewhere.
    async fn publish(
        &mut self,
        snapshot: &Arc<Snapshot>,
        sockets: Vec<WorkerSockets>,
    ) -> Vec<String> {
        self.track_sockets(snapshot, &sockets);
        let mut answers = Vec::with_capacity(self.updates.len());
        for (sender, sockets) in self.updates.iter().zip(sockets) {
            let (applied, answer) = oneshot::channel();
            let update = WorkerUpdate {
                snapshot: Arc::clone(snapshot),
                sockets,
                applied,
            };
            if sender.send(update).is_ok() {
                answers.push(answer);
            }
        }
        let mut failed = Vec::new();
        for answer in answers {
            // A worker that is gone (shutting down) has nothing to report.
            if let Ok(names) = answer.await {
                for name in names {
                    if !failed.contains(&name) {
                        failed.push(name);
                    }
                }
            }
        }
        failed
    }

    fn record(&mut self, version: u64, origin: Origin, document: Option<ConfigDocument>) {
        self.running_text = document.as_ref().map(|d| d.text.clone());
        let record = VersionRecord {
            version,
            origin,
            applied_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            text: document.as_ref().map(|d| d.text.clone()),
            base_dir: document.and_then(|d| d.base_dir),
        };
        self.records.push(record.clone());
        if let Some(store) = &self.store
            && let Err(error) = store.save(&record, &self.records)
        {
            tracing::warn!(version, %error, "cannot keep the config version on disk");
        }
        history::trim(&mut self.records);
        self.applied.send_replace(version);
    }

    async fn rollback(&mut self, version: u64) -> Result<Applied, ApplyError> {
        let record = self
            .records
            .iter()
            .find(|r| r.version == version)
            .ok_or(ApplyError::UnknownVersion(version))?;
        let text = record
            .text
            .clone()
            .ok_or(ApplyError::UnknownVersion(version))?;
        let document = ConfigDocument {
            text,
            base_dir: record.base_dir.clone(),
            origin: Origin::Rollback { to: version },
        };
        // Rolling back to the running document is still a new version: the operator asked.
        let running_text = self.running_text.take();
        let applied = self.apply(document).await;
        if applied.is_err() {
            self.running_text = running_text;
        }
        applied
    }

    async fn rollback_plugin(
        &mut self,
        plugin: String,
        generation: u64,
    ) -> Result<Applied, ApplyError> {
        let running = self.current.load_full();
        if !running.plugins.contains_key(&plugin) {
            return Err(ApplyError::UnknownPlugin(plugin));
        }
        let Some(target) = self.plugins.generation(&plugin, generation) else {
            return Err(ApplyError::UnknownGeneration { plugin, generation });
        };
        let version = self.next_version(&running);
        let mut plugins = running.plugins.clone();
        plugins.insert(plugin.clone(), target);
        let snapshot = Arc::new(Snapshot {
            version,
            config: Arc::clone(&running.config),
            listeners: running.listeners.clone(),
            plugins: plugins.clone(),
            cluster_state: running.cluster_state.clone(),
            tracer: running.tracer.clone(),
        });
        let snapshot = self
            .publish_or_restore(&running, snapshot, self.no_sockets())
            .await?;
        self.plugins.commit(&PreparedPlugins { chosen: plugins });
        self.make_current(snapshot);
        tracing::info!(version, plugin, generation, "plugin rolled back");
        // The document stays the running one: re-reading an unchanged file keeps the
        // rollback, a changed file makes a new generation again.
        let document = self.running_text.clone().map(|text| ConfigDocument {
            text,
            base_dir: self.records.last().and_then(|r| r.base_dir.clone()),
            origin: Origin::Api {
                principal: String::new(),
            },
        });
        self.record(
            version,
            Origin::PluginRollback { plugin, generation },
            document,
        );
        Ok(Applied {
            version,
            changed: true,
            restart_required: Vec::new(),
        })
    }

    fn plugin_generations(&self) -> Vec<PluginGenerationInfo> {
        let running = self.current.load();
        let mut list: Vec<PluginGenerationInfo> = self
            .plugins
            .kept()
            .flat_map(|(name, kept)| {
                let active = running.plugins.get(name);
                kept.iter().map(move |g| PluginGenerationInfo {
                    plugin: name.to_owned(),
                    generation: g.generation(),
                    sha256: g.digest().iter().map(|b| format!("{b:02x}")).collect(),
                    active: active.is_some_and(|a| Arc::ptr_eq(a, g)),
                })
            })
            .collect();
        list.sort_by(|a, b| (&a.plugin, a.generation).cmp(&(&b.plugin, b.generation)));
        list
    }

    /// Serves commands until every [`Controller`] is gone.
    pub(crate) async fn serve(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        while let Some(command) = commands.recv().await {
            match command {
                Command::Apply(document, reply) => {
                    let _ = reply.send(self.apply(document).await);
                }
                Command::Rollback(version, reply) => {
                    let _ = reply.send(self.rollback(version).await);
                }
                Command::RollbackPlugin(plugin, generation, reply) => {
                    let _ = reply.send(self.rollback_plugin(plugin, generation).await);
                }
                Command::History(reply) => {
                    let _ = reply.send(self.records.clone());
                }
                Command::Plugins(reply) => {
                    let _ = reply.send(self.plugin_generations());
                }
                Command::Handover(reply) => {
                    let _ = reply.send(self.handover());
                }
                Command::HandoverAborted => self.handover_aborted(),
                Command::SetEndpoints(plugin, set) => self.set_endpoints(&plugin, set).await,
            }
        }
    }
}
