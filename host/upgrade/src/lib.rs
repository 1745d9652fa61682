//! Zero-downtime binary upgrade.
//!
//! The serving process listens on a unix socket (`upgrade.socket`). Asked to upgrade (by
//! `rustng upgrade`, SIGUSR2 or the admin API) it starts the new binary with the socket's
//! path and a one-time token in its environment. The new process connects, proves itself
//! with the token, and receives the running config version and every listening socket by
//! `SCM_RIGHTS` — the same sockets, so connections queued on them while the processes change
//! hands are accepted, never refused. Once it accepts on all of them it says so; the old
//! process then stops accepting, drains its connections and exits. If the new process exits,
//! fails or stays silent past `upgrade.ready_timeout`, the old one carries on as before and
//! the upgrade is reported as failed with the reason.
//!
//! On a first start, systemd's socket activation (`LISTEN_FDS`) provides the sockets the
//! same way ([`systemd`]).

mod client;
mod pid_file;
mod supervisor;
pub mod systemd;
mod takeover;
mod wire;

use std::path::PathBuf;

pub use client::request_upgrade;
pub use pid_file::PidFile;
pub use supervisor::{RunningProcess, Supervisor, UpgradeRequests};
pub use takeover::{Handed, Takeover};

/// The environment variable that tells a new process where to take over from.
pub const SOCKET_ENV: &str = "RUSTNG_UPGRADE_SOCKET";
/// The environment variable with the token the new process proves itself with.
pub const TOKEN_ENV: &str = "RUSTNG_UPGRADE_TOKEN";

/// A finished upgrade, as the old process reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upgraded {
    /// The process that served before (now draining).
    pub old_pid: u32,
    /// The process serving now.
    pub new_pid: u32,
    /// The config version it runs (the one the old process ran).
    pub version: u64,
    /// From the request to the new process accepting on every listener, in milliseconds.
    pub handover_ms: u64,
}

/// Why an upgrade did not happen (the old process still serves) or a takeover failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// No upgrade socket: neither `upgrade.socket` nor `state_dir` is configured.
    #[error("binary upgrades are off: set upgrade.socket (or state_dir) in the config")]
    Disabled,
    /// Another process serves on the upgrade socket already.
    #[error(
        "another rustng (pid {pid}) serves on the upgrade socket {path}; use `rustng upgrade` to replace it"
    )]
    AlreadyServing {
        /// The socket.
        path: PathBuf,
        /// The pid from the pid file, or "unknown".
        pid: String,
    },
    /// The upgrade socket cannot be used.
    #[error("upgrade socket {path}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The serving process refused or the new one failed; the old one still serves.
    #[error("upgrade failed: {0}")]
    Refused(String),
    /// Talking over the upgrade socket failed.
    #[error("upgrade protocol: {0}")]
    Protocol(#[from] std::io::Error),
}
