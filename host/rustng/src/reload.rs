//! Config reloads: the config file is watched, and SIGHUP re-reads it, as nginx users expect.
//!
//! Both end in [`reload`], which hands the file to the server's controller: an invalid file is
//! refused with every error logged, and the running version keeps serving.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use rustng_core::{ApplyError, ConfigDocument, Controller, Origin};
use tokio::sync::mpsc;

/// Editors save in bursts (truncate, write, rename); the file is read once it has been quiet
/// this long.
const SETTLE: Duration = Duration::from_millis(100);

/// Watches `path` and sends a nudge whenever it may have changed. The directory is watched,
/// not the file: an editor or `mv` that replaces the file would end a watch on the file
/// itself. The returned watcher stops watching when dropped.
pub(crate) fn watch(
    path: &Path,
    changed: mpsc::UnboundedSender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let file_name = path.file_name().map(ToOwned::to_owned);
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        if event
            .paths
            .iter()
            .any(|p| p.file_name() == file_name.as_deref())
        {
            let _ = changed.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Waits for a burst of change nudges to settle.
pub(crate) async fn settle(changed: &mut mpsc::UnboundedReceiver<()>) {
    loop {
        match tokio::time::timeout(SETTLE, changed.recv()).await {
            Ok(Some(())) => continue,
            Ok(None) | Err(_) => return,
        }
    }
}

/// Reads the config file and applies it as the next version; logs the outcome.
pub(crate) async fn reload(controller: &Controller, path: &Path) {
    let document = match ConfigDocument::read(
        path,
        Origin::File {
            path: path.to_path_buf(),
        },
    ) {
        Ok(document) => document,
        Err(error) => {
            tracing::error!(file = %path.display(), %error, "cannot read the config file; the running version stays");
            return;
        }
    };
    match controller.apply(document).await {
        Ok(applied) if !applied.changed => {
            tracing::debug!(version = applied.version, "config file unchanged");
        }
        Ok(applied) => {
            tracing::info!(version = applied.version, file = %path.display(), "config reloaded");
        }
        Err(ApplyError::Refused(errors)) => {
            for error in &errors {
                tracing::error!(path = %error.path, message = %error.message, "config error");
            }
            tracing::error!(
                file = %path.display(),
                errors = errors.len(),
                version = controller.version(),
                "config refused; the running version stays"
            );
        }
        Err(error) => tracing::error!(%error, "config reload failed"),
    }
}
