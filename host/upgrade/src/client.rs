//! Asking the serving process for an upgrade (`rustng upgrade`, the admin API).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::UnixStream;

use crate::wire::{Connection, Message};
use crate::{UpgradeError, Upgraded};

/// Asks the process serving on the upgrade socket at `socket` to replace itself with
/// `binary` (default: its own executable) and waits for the outcome, at most `timeout`.
pub async fn request_upgrade(
    socket: &Path,
    binary: Option<PathBuf>,
    timeout: Duration,
) -> Result<Upgraded, UpgradeError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| UpgradeError::Socket {
            path: socket.to_path_buf(),
            source,
        })?;
    let mut connection = Connection::new(stream);
    connection.send(&Message::Upgrade { binary }).await?;
    match connection.recv_within(timeout).await? {
        Message::Upgraded(upgraded) => Ok(upgraded),
        Message::Refused { reason } => Err(UpgradeError::Refused(reason)),
        other => Err(UpgradeError::Protocol(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected answer {other:?}"),
        ))),
    }
}
