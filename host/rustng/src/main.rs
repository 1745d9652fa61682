//! The `rustng` binary: command line, logging, signals; the proxy itself lives in `rustng-core`.

mod logging;
mod reload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// RustNg: a reverse proxy with a small native core and WebAssembly logic.
#[derive(Parser)]
#[command(name = "rustng", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with a config file; a change to the file (or SIGHUP) applies it as the
    /// next config version, without a restart.
    Run {
        /// Path of the config file.
        #[arg(short, long, default_value = "rustng.yaml")]
        config: PathBuf,
        /// Do not watch the config file (SIGHUP still reloads it).
        #[arg(long)]
        no_watch: bool,
    },
    /// Check a config file and print every error with its path.
    Validate {
        /// Path of the config file.
        #[arg(short, long, default_value = "rustng.yaml")]
        config: PathBuf,
    },
    /// Replace the running process with a new binary without refusing a connection: the new
    /// one takes the listening sockets over, the old one drains and exits.
    Upgrade {
        /// The running process's config file (where `upgrade.socket` is found).
        #[arg(short, long, default_value = "rustng.yaml")]
        config: PathBuf,
        /// The upgrade socket, instead of the one the config names.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// The new binary. Default: the running process's own executable path.
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Upgrade {
            config,
            socket,
            binary,
        } => match upgrade(&config, socket, binary) {
            Ok(upgraded) => {
                println!(
                    "upgraded: pid {} -> {} (config version {}), handover {} ms; pid {} drains",
                    upgraded.old_pid,
                    upgraded.new_pid,
                    upgraded.version,
                    upgraded.handover_ms,
                    upgraded.old_pid
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rustng upgrade: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, no_watch } => match run(&config, !no_watch) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rustng: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Asks the running process to upgrade, over the upgrade socket the config names.
fn upgrade(
    config: &std::path::Path,
    socket: Option<PathBuf>,
    binary: Option<PathBuf>,
) -> anyhow::Result<rustng_upgrade::Upgraded> {
    let (socket, ready_timeout) = match socket {
        Some(socket) => (socket, None),
        None => {
            let config = rustng_runtime_config::load(config)
                .with_context(|| format!("cannot read {}", config.display()))?;
            let socket = config
                .upgrade
                .socket
                .ok_or(rustng_upgrade::UpgradeError::Disabled)?;
            (socket, Some(config.upgrade.ready_timeout))
        }
    };
    // The running process answers within its own ready timeout; wait a little longer.
    let timeout = ready_timeout.unwrap_or(std::time::Duration::from_secs(60))
        + std::time::Duration::from_secs(15);
    // Relative to where the command runs, as the running process sees it too.
    let binary = binary.map(|b| std::path::absolute(&b).unwrap_or(b));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(rustng_upgrade::request_upgrade(&socket, binary, timeout))?)
}

fn validate(path: &std::path::Path) -> ExitCode {
    match rustng_runtime_config::load(path) {
        Ok(config) => {
            // The filter syntax belongs to tracing-subscriber, which only the binary links.
            if let Err(e) = logging::check_level(&config.log.level) {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let errors = e.field_errors();
            if errors.is_empty() {
                eprintln!("{e}");
            } else {
                for error in errors {
                    eprintln!("{error}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path, watch: bool) -> anyhow::Result<()> {
    // Started by an upgrade: take the running version and the sockets over first; anything
    // that fails from here on is told to the old process, which then keeps serving.
    let (takeover, handed) = match rustng_upgrade::Takeover::from_env() {
        Some((socket, token)) => {
            let (takeover, handed) = rustng_upgrade::Takeover::connect(&socket, &token)
                .context("taking over from the running process")?;
            (Some(takeover), Some(handed))
        }
        None => (None, None),
    };
    match start(path, watch, handed) {
        Ok(started) => started.serve(takeover),
        Err(error) => {
            if let Some(takeover) = takeover {
                takeover.failed(&format!("{error:#}"));
            }
            Err(error)
        }
    }
}

/// How long the admin server's open connections get to finish at exit.
const ADMIN_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A process bound and ready to serve.
struct Started {
    server: rustng_core::Server,
    admin: Option<rustng_admin::AdminServer>,
    config: rustng_runtime_config::Config,
    /// The upgrade socket, bound or inherited, served once the process is ready.
    supervisor: Option<rustng_upgrade::Supervisor>,
    upgrades: Arc<OnceLock<rustng_upgrade::UpgradeRequests>>,
    _log_guard: tracing_appender::non_blocking::WorkerGuard,
}

fn start(
    path: &std::path::Path,
    watch: bool,
    handed: Option<rustng_upgrade::Handed>,
) -> anyhow::Result<Started> {
    let (document, mut handed) = match handed {
        Some(mut handed) => match handed.document.take() {
            Some(document) => (document, Some(handed)),
            None => (read_document(path)?, Some(handed)),
        },
        None => (read_document(path)?, None),
    };
    let config = rustng_runtime_config::from_yaml_at(&document.text, document.base_dir.as_deref())
        .with_context(|| format!("invalid config {}", path.display()))?;
    let (log_guard, log_level) = logging::init(&config.log)?;
    // Handlers are installed before any socket is bound: a SIGHUP sent as soon as the proxy
    // accepts must reload it, not kill it (the default action).
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    let handlers = {
        let _entered = signals.enter();
        use tokio::signal::unix::{SignalKind, signal};
        Handlers {
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
            usr2: signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?,
        }
    };
    // A first start binds the upgrade socket before anything else, so a second `rustng run`
    // on the same config fails here instead of fighting over the listeners.
    let supervisor = match (&config.upgrade.socket, handed.as_mut()) {
        (_, Some(handed)) => handed
            .upgrade
            .take()
            .map(|socket| rustng_upgrade::Supervisor::inherit(&handed.upgrade_path, socket)),
        (Some(socket), None) => Some(rustng_upgrade::Supervisor::bind(
            socket,
            config.upgrade.pid_file.as_deref(),
        )?),
        (None, None) => None,
    };
    let (inherited, version, inherited_admin) = match handed {
        Some(handed) => (handed.sockets, Some(handed.version), handed.admin),
        None => (rustng_upgrade::systemd::listen_fds(), None, None),
    };
    // The admin port is bound before the listeners, so once traffic is accepted the admin
    // server's port accepts too (its connections wait in the backlog until it serves).
    let admin_socket = match (inherited_admin, &config.admin) {
        (Some(socket), _) => Some(socket),
        (None, Some(admin)) => Some(
            std::net::TcpListener::bind(admin.address)
                .with_context(|| format!("admin address {}", admin.address))?,
        ),
        (None, None) => None,
    };
    let server = rustng_core::Server::bind_inherited(config.clone(), document, inherited, version)?;
    let admin = config
        .admin
        .clone()
        .map(|admin| {
            rustng_admin::AdminServer::start(rustng_admin::AdminOptions {
                admin,
                telemetry: server.telemetry(),
                controller: server.controller(),
                shutdown: server.shutdown_handle(),
                log_level: Some(log_level),
                state_dir: config.state_dir.clone(),
                workers: config.workers,
                inherited: admin_socket,
                upgrade: config.upgrade.socket.clone().map(|socket| {
                    rustng_admin::UpgradeSettings {
                        socket,
                        ready_timeout: config.upgrade.ready_timeout,
                    }
                }),
            })
        })
        .transpose()
        .context("starting the admin server")?;
    if let Some(control_plane) = config.control_plane.clone() {
        rustng_admin::remote::start_subscriber(control_plane, server.controller())
            .context("starting the control plane subscriber")?;
    }
    let upgrades = Arc::new(OnceLock::new());
    let shutdown = server.shutdown_handle();
    let controller = server.controller();
    let path = path.to_path_buf();
    let signal_upgrades = Arc::clone(&upgrades);
    std::thread::Builder::new()
        .name("rustng-signals".into())
        .spawn(move || {
            wait_for_signals(
                signals,
                handlers,
                shutdown,
                controller,
                &path,
                watch,
                &signal_upgrades,
            )
        })
        .context("starting the signal thread")?;
    Ok(Started {
        server,
        admin,
        config,
        supervisor,
        upgrades,
        _log_guard: log_guard,
    })
}

fn read_document(path: &std::path::Path) -> anyhow::Result<rustng_core::ConfigDocument> {
    rustng_core::ConfigDocument::read(
        path,
        rustng_core::Origin::Start {
            path: Some(path.to_path_buf()),
        },
    )
    .with_context(|| format!("cannot read {}", path.display()))
}

impl Started {
    /// Runs until shutdown. Once every worker accepts: tells the replaced process (if any),
    /// writes the pid file and opens the upgrade socket for the next upgrade.
    fn serve(self, takeover: Option<rustng_upgrade::Takeover>) -> anyhow::Result<()> {
        let Started {
            server,
            admin,
            config,
            supervisor,
            upgrades,
            _log_guard,
        } = self;
        let shutdown = server.shutdown_handle();
        let running = rustng_upgrade::RunningProcess {
            controller: server.controller(),
            shutdown: server.shutdown_handle(),
            admin: admin.as_ref().and_then(|admin| {
                let stop: Box<dyn Fn() + Send> = Box::new(admin.stopper());
                admin.socket().ok().map(|socket| (socket, stop))
            }),
            args: std::env::args_os().skip(1).collect(),
            ready_timeout: config.upgrade.ready_timeout,
            pid_file: config.upgrade.pid_file.clone(),
        };
        let mut pid_file = None;
        let upgraded = takeover.is_some();
        server.run_with(|| {
            if let Some(takeover) = takeover {
                if let Err(error) = takeover.ready() {
                    tracing::error!(%error, "the replaced process did not step down; stopping");
                    shutdown.shutdown();
                    return;
                }
                tracing::info!("took over from the replaced process");
            }
            if let Some(path) = &config.upgrade.pid_file {
                match rustng_upgrade::PidFile::write(path) {
                    Ok(file) => pid_file = Some(file),
                    Err(error) => {
                        tracing::warn!(%error, file = %path.display(), "cannot write the pid file")
                    }
                }
            }
            if !upgraded {
                rustng_upgrade::systemd::notify("READY=1");
            }
            if let Some(supervisor) = supervisor {
                match supervisor.start(running) {
                    Ok(requests) => {
                        let _ = upgrades.set(requests);
                    }
                    Err(error) => tracing::error!(%error, "binary upgrades are off"),
                }
            }
        })?;
        if let Some(upgrades) = upgrades.get() {
            upgrades.remove_socket();
        }
        drop(pid_file);
        if let Some(admin) = admin {
            admin.stop_and_wait(ADMIN_STOP_TIMEOUT);
        }
        tracing::info!("rustng stopped");
        Ok(())
    }
}

/// SIGTERM and SIGINT start a graceful shutdown (a second one is not needed, drain is
/// bounded); SIGHUP and changes to the config file reload it; SIGUSR2 upgrades the binary.
struct Handlers {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

fn wait_for_signals(
    runtime: tokio::runtime::Runtime,
    mut handlers: Handlers,
    shutdown: rustng_core::ShutdownHandle,
    controller: rustng_core::Controller,
    path: &std::path::Path,
    watch: bool,
    upgrades: &OnceLock<rustng_upgrade::UpgradeRequests>,
) {
    runtime.block_on(async {
        let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel();
        // Kept until shutdown: dropping it ends the watch.
        let _watcher = if watch {
            match reload::watch(path, changed_tx) {
                Ok(watcher) => Some(watcher),
                Err(error) => {
                    tracing::warn!(%error, file = %path.display(), "cannot watch the config file; SIGHUP still reloads it");
                    None
                }
            }
        } else {
            None
        };
        loop {
            tokio::select! {
                _ = handlers.term.recv() => {
                    tracing::info!("SIGTERM: shutting down");
                    rustng_upgrade::systemd::notify("STOPPING=1");
                    break;
                }
                _ = handlers.int.recv() => {
                    tracing::info!("SIGINT: shutting down");
                    rustng_upgrade::systemd::notify("STOPPING=1");
                    break;
                }
                // Draining (an upgrade handed over, or the admin API): the file is no longer
                // this process's to apply.
                () = shutdown.draining() => break,
                _ = handlers.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config file");
                    reload::reload(&controller, path).await;
                }
                _ = handlers.usr2.recv() => match upgrades.get() {
                    // The supervisor logs the outcome; nobody here waits for it.
                    Some(upgrades) => {
                        tracing::info!("SIGUSR2: upgrading the binary");
                        drop(upgrades.request(None));
                    }
                    None => tracing::warn!("SIGUSR2: binary upgrades are off (set upgrade.socket or state_dir)"),
                },
                Some(()) = changed.recv() => {
                    reload::settle(&mut changed).await;
                    reload::reload(&controller, path).await;
                }
            }
        }
        shutdown.shutdown();
    });
}
