//! Config versions on disk, so that history (and rollback to it) survives a restart.
//!
//! One JSON file per version under `<state_dir>/versions/`, written to a temporary name and
//! renamed, so a crash leaves either the whole record or none. Only the newest
//! [`KEPT_VERSIONS`] are kept.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Versions kept on disk.
const KEPT_VERSIONS: usize = 100;

/// Where a config version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Origin {
    /// The config file, read at start.
    Start {
        /// The file.
        path: Option<PathBuf>,
    },
    /// The config file, re-read after it changed or on SIGHUP.
    File {
        /// The file.
        path: PathBuf,
    },
    /// Pushed through the admin API.
    Api {
        /// Who pushed it (the admin API's principal).
        #[serde(default)]
        principal: String,
    },
    /// Streamed by a remote control plane (`control_plane` in the config).
    ControlPlane {
        /// The control plane's address.
        address: String,
    },
    /// A rollback to an earlier version's document.
    Rollback {
        /// The version rolled back to.
        to: u64,
    },
    /// One plugin switched back to a kept generation; everything else as before.
    PluginRollback {
        /// The plugin.
        plugin: String,
        /// The generation it runs again.
        generation: u64,
    },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Start { path: Some(p) } => write!(f, "start ({})", p.display()),
            Origin::Start { path: None } => f.write_str("start"),
            Origin::File { path } => write!(f, "file ({})", path.display()),
            Origin::Api { principal } if principal.is_empty() => f.write_str("api"),
            Origin::Api { principal } => write!(f, "api ({principal})"),
            Origin::ControlPlane { address } => write!(f, "control plane ({address})"),
            Origin::Rollback { to } => write!(f, "rollback to {to}"),
            Origin::PluginRollback { plugin, generation } => {
                write!(f, "plugin {plugin} back to generation {generation}")
            }
        }
    }
}

/// One applied version, as kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// Counts up from 1 across restarts (with a state directory).
    pub version: u64,
    /// Where it came from.
    pub origin: Origin,
    /// When it was applied, RFC 3339.
    pub applied_at: String,
    /// The YAML document, when the version came from one.
    pub text: Option<String>,
    /// The directory relative paths in `text` are resolved against.
    pub base_dir: Option<PathBuf>,
}

/// The versions directory.
pub(crate) struct VersionStore {
    dir: PathBuf,
}

impl VersionStore {
    /// Opens (creating) `<state_dir>/versions` and reads the records already there, oldest
    /// first. Unreadable records are skipped with a warning: history is for operators, and a
    /// damaged file must not stop the proxy.
    pub(crate) fn open(state_dir: &Path) -> std::io::Result<(VersionStore, Vec<VersionRecord>)> {
        let dir = state_dir.join("versions");
        std::fs::create_dir_all(&dir)?;
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    serde_json::from_slice::<VersionRecord>(&bytes).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(file = %path.display(), %error, "skipping unreadable config version record");
                }
            }
        }
        records.sort_by_key(|r| r.version);
        Ok((VersionStore { dir }, records))
    }

    /// Writes `record`, then drops the oldest beyond [`KEPT_VERSIONS`].
    pub(crate) fn save(
        &self,
        record: &VersionRecord,
        all: &[VersionRecord],
    ) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        let name = format!("{:010}.json", record.version);
        let temporary = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, bytes)?;
        std::fs::rename(&temporary, self.dir.join(&name))?;
        if all.len() > KEPT_VERSIONS {
            for old in &all[..all.len() - KEPT_VERSIONS] {
                let _ = std::fs::remove_file(self.dir.join(format!("{:010}.json", old.version)));
            }
        }
        Ok(())
    }
}

/// Versions kept in memory (the same bound as on disk).
pub(crate) fn trim(records: &mut Vec<VersionRecord>) {
    if records.len() > KEPT_VERSIONS {
        records.drain(..records.len() - KEPT_VERSIONS);
    }
}
