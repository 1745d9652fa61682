//! The server lifecycle: bind every socket up front (so a bad address fails the start, not a
//! worker), then run the workers until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use rustng_runtime_config::Config;
use tokio::sync::{mpsc, watch};

use crate::control::{Command, ConfigDocument, ControlState, Controller, Started};
use crate::error::CoreError;
use crate::inherited::InheritedSockets;
use crate::telemetry::Telemetry;
use crate::worker::{self, WorkerSetup};

/// A bound, not yet running, RustNg server.
pub struct Server {
    setups: Vec<WorkerSetup>,
    control: ControlState,
    commands: mpsc::UnboundedReceiver<Command>,
    controller: Controller,
    local_addrs: Vec<SocketAddr>,
    listeners: Vec<(String, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    telemetry: Telemetry,
    first_applied: Vec<tokio::sync::oneshot::Receiver<Vec<String>>>,
}

/// Asks a running server to stop accepting, drain and exit.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Starts the graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }

    /// Whether the shutdown (the drain) has started: not ready for new traffic.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the shutdown (the drain) has started.
    pub async fn draining(&self) {
        let mut receiver = self.0.subscribe();
        // An error means the server is gone, which is as good as drained.
        let _ = receiver.wait_for(|draining| *draining).await;
    }
}

impl Server {
    /// Loads TLS material, compiles and canaries the plugins and binds one socket per
    /// listener per worker: the first config version, ready to run.
    pub fn bind(config: Config) -> Result<Server, CoreError> {
        Server::bind_with(config, None, InheritedSockets::default(), None)
    }

    /// [`Server::bind`] with the document the config was read from, kept as the first
    /// version's source (so it can be rolled back to, and an unchanged file is not applied
    /// again).
    pub fn bind_document(config: Config, document: ConfigDocument) -> Result<Server, CoreError> {
        Server::bind_with(config, Some(document), InheritedSockets::default(), None)
    }

    /// [`Server::bind_document`] for a process that takes over: listeners take the
    /// `inherited` sockets that match them instead of binding, and with `version` (a binary
    /// upgrade) the first version keeps the number the replaced process gave it.
    pub fn bind_inherited(
        config: Config,
        document: ConfigDocument,
        inherited: InheritedSockets,
        version: Option<u64>,
    ) -> Result<Server, CoreError> {
        Server::bind_with(config, Some(document), inherited, version)
    }

    fn bind_with(
        config: Config,
        document: Option<ConfigDocument>,
        inherited: InheritedSockets,
        version: Option<u64>,
    ) -> Result<Server, CoreError> {
        let workers = config.workers;
        let Started {
            state: control,
            controller,
            commands,
            worker_updates: updates,
            first_applied,
        } = ControlState::start(config, document, inherited, version)?;
        let current = control.current();
        let snapshot = current.load_full();
        let listeners: Vec<(String, SocketAddr)> = snapshot
            .listeners
            .iter()
            .map(|l| (l.config.name.clone(), l.config.address))
            .collect();
        let local_addrs = control.first_addresses();
        let telemetry = Telemetry::new(current, control.plugin_host());
        let (shutdown, _) = watch::channel(false);
        let setups = updates
            .into_iter()
            .enumerate()
            .take(workers)
            .map(|(index, updates)| WorkerSetup {
                index,
                updates,
                shutdown: shutdown.subscribe(),
            })
            .collect();
        Ok(Server {
            setups,
            control,
            commands,
            controller,
            local_addrs,
            listeners,
            shutdown,
            telemetry,
            first_applied,
        })
    }

    /// The addresses actually bound, in listener order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.local_addrs.clone()
    }

    /// Applies new config versions once the server runs (file watch, SIGHUP, admin API).
    pub fn controller(&self) -> Controller {
        self.controller.clone()
    }

    /// The server's metrics, for the admin server.
    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// A handle that stops the server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::new(self.shutdown.clone()))
    }

    /// Starts the workers and blocks until all of them have stopped.
    pub fn run(self) -> Result<(), CoreError> {
        self.run_with(|| {})
    }

    /// [`Server::run`], calling `on_ready` (on this thread) once every worker accepts on the
    /// first version's listeners: the moment a binary upgrade's old process may stop.
    pub fn run_with(self, on_ready: impl FnOnce()) -> Result<(), CoreError> {
        tracing::info!(
            workers = self.setups.len(),
            version = self.controller.version(),
            listeners = ?self.listeners,
            "rustng serving"
        );
        let mut control = self.control;
        let commands = self.commands;
        // The health checker and the discovery adapters follow every snapshot the control
        // thread publishes.
        let thread_failed = |source| CoreError::Worker {
            index: usize::MAX,
            source,
        };
        crate::upstream::health_check::start(control.current(), control.published())
            .map_err(thread_failed)?;
        crate::discovery::start(control.current(), control.published()).map_err(thread_failed)?;
        if let Some((queue, spans)) = control.take_spans() {
            crate::trace::export::start(control.current(), control.published(), queue, spans)
                .map_err(thread_failed)?;
        }
        std::thread::Builder::new()
            .name("rustng-control".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(control.serve(commands)),
                    Err(error) => tracing::error!(%error, "cannot start the control thread; config changes are off"),
                }
            })
            .map_err(|source| CoreError::Worker { index: usize::MAX, source })?;
        let mut handles: Vec<(usize, JoinHandle<std::io::Result<()>>)> = Vec::new();
        for setup in self.setups {
            let index = setup.index;
            let handle = std::thread::Builder::new()
                .name(format!("rustng-worker-{index}"))
                .spawn(move || worker::run(setup))
                .map_err(|source| CoreError::Worker { index, source })?;
            handles.push((index, handle));
        }
        // A worker that failed to start drops its answer; the join below reports why.
        let mut all_running = true;
        for answer in self.first_applied {
            all_running &= answer.blocking_recv().is_ok();
        }
        if all_running {
            on_ready();
        }
        let mut first_error = None;
        for (index, handle) in handles {
            let result = match handle.join() {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::other("worker thread panicked")),
            };
            if let Err(source) = result {
                tracing::error!(worker = index, error = %source, "worker failed");
                first_error.get_or_insert(CoreError::Worker { index, source });
            }
        }
        // Keep the sender alive until every worker is done, so none sees a closed channel early.
        drop(self.shutdown);
        first_error.map_or(Ok(()), Err)
    }
}
