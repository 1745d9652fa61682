//! The server lifecycle: bind every socket up front (so a bad address fails the start, not a
//! worker), then run the workers until shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use rustng_runtime_config::Config;
use rustng_wasm::{EngineLimits, PluginHost, UpstreamCheck, WasmEngine};
use tokio::sync::watch;

use crate::error::CoreError;
use crate::filters::LoadedPlugin;
use crate::listener::{self, ConnectionLimit};
use crate::telemetry::Telemetry;
use crate::tls;
use crate::worker::{self, WorkerSetup};

/// A bound, not yet running, RustNg server.
pub struct Server {
    config: Arc<Config>,
    setups: Vec<WorkerSetup>,
    shutdown: watch::Sender<bool>,
    telemetry: Telemetry,
}

/// Asks a running server to stop accepting, drain and exit.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Starts the graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

impl Server {
    /// Loads TLS material and binds one socket per listener per worker.
    pub fn bind(config: Config) -> Result<Server, CoreError> {
        let config = Arc::new(config);
        let mut tls = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let server_config = match &l.tls {
                Some(t) => Some(tls::server_config(t).map_err(|message| CoreError::Tls {
                    listener: l.name.clone(),
                    message,
                })?),
                None => None,
            };
            tls.push(server_config);
        }
        let mut plugins = HashMap::new();
        let mut plugin_host = None;
        if !config.plugins.is_empty() {
            // Every worker's instance of every plugin, a trial instance each, and as many
            // again for reloads.
            let plugins_count = u32::try_from(config.plugins.len()).unwrap_or(u32::MAX);
            let workers = u32::try_from(config.workers).unwrap_or(u32::MAX);
            let limits = EngineLimits {
                instance_slots: plugins_count
                    .saturating_mul(workers.saturating_add(1))
                    .saturating_mul(2)
                    .max(16),
                max_memory_bytes: config
                    .plugins
                    .iter()
                    .map(|p| p.max_memory_bytes)
                    .max()
                    .unwrap_or(0),
                cache_dir: config.module_cache_dir.clone(),
            };
            let engine = WasmEngine::with_limits(limits).map_err(|e| CoreError::Plugin {
                plugin: String::new(),
                message: e.to_string(),
            })?;
            let host = Arc::new(PluginHost::default());
            let cluster_names: std::collections::HashSet<String> =
                config.clusters.iter().map(|c| c.name.clone()).collect();
            let upstreams: UpstreamCheck = Arc::new(move |name| cluster_names.contains(name));
            for plugin in &config.plugins {
                let loaded =
                    LoadedPlugin::load(&engine, &host, &upstreams, plugin).map_err(|message| {
                        CoreError::Plugin {
                            plugin: plugin.name.clone(),
                            message,
                        }
                    })?;
                plugins.insert(plugin.name.clone(), Arc::new(loaded));
            }
            plugin_host = Some(host);
        }
        let plugins = Arc::new(plugins);
        let limits: Vec<Arc<ConnectionLimit>> = config
            .listeners
            .iter()
            .map(|l| Arc::new(ConnectionLimit::new(l.max_connections)))
            .collect();
        let (shutdown, _) = watch::channel(false);
        let mut setups = Vec::with_capacity(config.workers);
        for index in 0..config.workers {
            let mut sockets = Vec::with_capacity(config.listeners.len());
            for l in &config.listeners {
                let socket = listener::bind(l.address).map_err(|source| CoreError::Bind {
                    listener: l.name.clone(),
                    address: l.address,
                    source,
                })?;
                sockets.push(socket);
            }
            setups.push(WorkerSetup {
                index,
                config: Arc::clone(&config),
                sockets,
                tls: tls.clone(),
                limits: limits.clone(),
                plugins: Arc::clone(&plugins),
                shutdown: shutdown.subscribe(),
            });
        }
        Ok(Server {
            config,
            setups,
            shutdown,
            telemetry: Telemetry::new(plugins, plugin_host),
        })
    }

    /// The addresses actually bound, in listener order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.setups
            .first()
            .map(|s| {
                s.sockets
                    .iter()
                    .filter_map(|s| s.local_addr().ok())
                    .collect()
            })
            .unwrap_or_default()
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
        tracing::info!(
            workers = self.config.workers,
            listeners = ?self.config.listeners.iter().map(|l| (&l.name, l.address)).collect::<Vec<_>>(),
            "rustng serving"
        );
        let mut handles: Vec<(usize, JoinHandle<std::io::Result<()>>)> = Vec::new();
        for setup in self.setups {
            let index = setup.index;
            let handle = std::thread::Builder::new()
                .name(format!("rustng-worker-{index}"))
                .spawn(move || worker::run(setup))
                .map_err(|source| CoreError::Worker { index, source })?;
            handles.push((index, handle));
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
