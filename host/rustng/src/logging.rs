//! Process logging: JSON (or text) lines on stdout through a non-blocking writer, so a slow
//! log consumer never stalls a worker; the level comes from the config.

use rustng_runtime_config::{LogConfig, LogFormat};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Checks `log.level` without installing anything.
pub(crate) fn check_level(level: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("log.level: invalid filter \"{level}\": {e}"))
}

/// Installs the global subscriber. Keep the guard alive: dropping it flushes the log.
pub(crate) fn init(config: &LogConfig) -> anyhow::Result<WorkerGuard> {
    let filter = check_level(&config.level)?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Dropping lines beats blocking a worker when stdout cannot keep up.
        .lossy(true)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_thread_names(false);
    match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install logger: {e}"))?;
    Ok(guard)
}
