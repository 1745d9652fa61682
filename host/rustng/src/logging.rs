//! Process logging: JSON (or text) lines on stdout through a non-blocking writer, so a slow
//! log consumer never stalls a worker; the level comes from the config.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustng_admin::LogLevelControl;
use rustng_runtime_config::{LogConfig, LogFormat};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload;

/// Checks `log.level` without installing anything.
pub(crate) fn check_level(level: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("log.level: invalid filter \"{level}\": {e}"))
}

/// Installs the global subscriber, with its filter reloadable at runtime (the admin API's
/// `/v1/log_level`). Keep the guard alive: dropping it flushes the log.
pub(crate) fn init(config: &LogConfig) -> anyhow::Result<(WorkerGuard, Arc<dyn LogLevelControl>)> {
    let filter = check_level(&config.level)?;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        // Dropping lines beats blocking a worker when stdout cannot keep up.
        .lossy(true)
        .finish(std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_thread_names(false);
    let current = Arc::new(ArcSwap::from_pointee(config.level.clone()));
    let control: Arc<dyn LogLevelControl> = match config.format {
        LogFormat::Json => {
            let builder = builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map_err(cannot_install)?;
            Arc::new(ReloadableLevel { handle, current })
        }
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.try_init().map_err(cannot_install)?;
            Arc::new(ReloadableLevel { handle, current })
        }
    };
    Ok((guard, control))
}

fn cannot_install(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot install logger: {e}")
}

/// The installed filter and the text it was made from.
struct ReloadableLevel<S> {
    handle: reload::Handle<EnvFilter, S>,
    current: Arc<ArcSwap<String>>,
}

impl<S: 'static> LogLevelControl for ReloadableLevel<S> {
    fn current(&self) -> String {
        self.current.load().as_str().to_owned()
    }

    fn set(&self, filter: &str) -> Result<(), String> {
        let parsed = check_level(filter).map_err(|e| e.to_string())?;
        self.handle
            .reload(parsed)
            .map_err(|e| format!("cannot change the log level: {e}"))?;
        self.current.store(Arc::new(filter.to_owned()));
        tracing::info!(level = filter, "log level changed");
        Ok(())
    }
}
