//! The `rustng` binary: command line, logging, signals; the proxy itself lives in `rustng-core`.

mod logging;
mod reload;

use std::path::PathBuf;
use std::process::ExitCode;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Run { config, no_watch } => match run(&config, !no_watch) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rustng: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
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
    let document = rustng_core::ConfigDocument::read(
        path,
        rustng_core::Origin::Start {
            path: Some(path.to_path_buf()),
        },
    )
    .with_context(|| format!("cannot read {}", path.display()))?;
    let config = rustng_runtime_config::from_yaml_at(&document.text, document.base_dir.as_deref())
        .with_context(|| format!("invalid config {}", path.display()))?;
    let (_log_guard, log_level) = logging::init(&config.log)?;
    // Handlers are installed before any socket is bound: a SIGHUP sent as soon as the proxy
    // accepts must reload it, not kill it (the default action).
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    let handlers = {
        let _entered = signals.enter();
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).context("SIGTERM handler")?,
            signal(SignalKind::interrupt()).context("SIGINT handler")?,
            signal(SignalKind::hangup()).context("SIGHUP handler")?,
        )
    };
    let admin = config.admin.clone();
    let control_plane = config.control_plane.clone();
    let state_dir = config.state_dir.clone();
    let workers = config.workers;
    let server = rustng_core::Server::bind_document(config, document)?;
    // Kept for the process's life: the admin thread serves until exit.
    let _admin = admin
        .map(|admin| {
            rustng_admin::AdminServer::start(rustng_admin::AdminOptions {
                admin,
                telemetry: server.telemetry(),
                controller: server.controller(),
                shutdown: server.shutdown_handle(),
                log_level: Some(log_level),
                state_dir,
                workers,
            })
        })
        .transpose()
        .context("starting the admin server")?;
    if let Some(control_plane) = control_plane {
        rustng_admin::remote::start_subscriber(control_plane, server.controller())
            .context("starting the control plane subscriber")?;
    }
    let shutdown = server.shutdown_handle();
    let controller = server.controller();
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("rustng-signals".into())
        .spawn(move || wait_for_signals(signals, handlers, shutdown, controller, &path, watch))
        .context("starting the signal thread")?;
    server.run()?;
    tracing::info!("rustng stopped");
    Ok(())
}

/// SIGTERM and SIGINT start a graceful shutdown (a second one is not needed, drain is
/// bounded); SIGHUP and changes to the config file reload it.
type Handlers = (
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
    tokio::signal::unix::Signal,
);

fn wait_for_signals(
    runtime: tokio::runtime::Runtime,
    (mut term, mut int, mut hup): Handlers,
    shutdown: rustng_core::ShutdownHandle,
    controller: rustng_core::Controller,
    path: &std::path::Path,
    watch: bool,
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
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config file");
                    reload::reload(&controller, path).await;
                }
                Some(()) = changed.recv() => {
                    reload::settle(&mut changed).await;
                    reload::reload(&controller, path).await;
                }
            }
        }
        shutdown.shutdown();
    });
}
