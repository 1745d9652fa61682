//! Asking the serving process for an upgrade (`rustng upgrade`, the admin API).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::wire::{Connection, Message, unexpected};
use crate::{UpgradeError, Upgraded};

/// Asks the process serving on the upgrade socket at `socket` to replace itself with
/// `binary` (default: its own executable) and waits for the outcome, at most `timeout`.
pub async fn request_upgrade(
    socket: &Path,
    binary: Option<PathBuf>,
    timeout: Duration,
) -> Result<Upgraded, UpgradeError> {
    let mut connection = Connection::connect(socket).await?;
    connection.send(&Message::Upgrade { binary }).await?;
    match connection.recv_within(timeout).await? {
        Message::Upgraded(upgraded) => Ok(upgraded),
        Message::Refused { reason } => Err(UpgradeError::Refused(reason)),
        other => Err(unexpected(&other)),
    }
}
