//! The `rustng` binary: command line, logging, signals; the proxy itself lives in `rustng-core`.

mod logging;

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
    /// Serve traffic with a config file.
    Run {
        /// Path of the config file.
        #[arg(short, long, default_value = "rustng.yaml")]
        config: PathBuf,
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
        Command::Run { config } => match run(&config) {
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

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = rustng_runtime_config::load(path)
        .with_context(|| format!("invalid config {}", path.display()))?;
    let _log_guard = logging::init(&config.log)?;
    let admin = config.admin.clone();
    let server = rustng_core::Server::bind(config)?;
    // Kept for the process's life: the admin thread serves until exit.
    let _admin = admin
        .map(|admin| rustng_admin::AdminServer::start(admin.address, server.telemetry()))
        .transpose()
        .context("starting the admin server")?;
    let shutdown = server.shutdown_handle();
    std::thread::Builder::new()
        .name("rustng-signals".into())
        .spawn(move || wait_for_signal(shutdown))
        .context("starting the signal thread")?;
    server.run()?;
    tracing::info!("rustng stopped");
    Ok(())
}

/// SIGTERM and SIGINT start a graceful shutdown; a second one is not needed, drain is bounded.
fn wait_for_signal(shutdown: rustng_core::ShutdownHandle) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch signals");
            return;
        }
    };
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.shutdown();
    });
}
