//! The audit trail: one JSON line per mutation attempt (who, what, on what, the config
//! version before and after, the result), appended to a file and kept in memory for the API.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Entries the API can return without reading the file.
const KEPT_IN_MEMORY: usize = 1000;

/// One audited mutation.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditEntry {
    /// RFC 3339, seconds.
    pub time: String,
    /// The caller's name, or `anonymous` when it was not authenticated.
    pub principal: String,
    /// The method and route, e.g. `PUT /v1/config`.
    pub action: String,
    /// What it acted on (a plugin, a version), if anything in particular.
    pub target: Option<String>,
    /// The config version before.
    pub version_before: u64,
    /// The config version after.
    pub version_after: u64,
    /// `ok`, `refused`, `failed`, `unauthorized`, `forbidden`, `invalid`.
    pub result: String,
    /// The status answered.
    pub status: u16,
    /// The error, when there was one.
    pub detail: Option<String>,
}

/// The audit trail of one admin server (used from its one thread).
pub struct AuditLog {
    path: Option<PathBuf>,
    recent: VecDeque<AuditEntry>,
}

impl AuditLog {
    /// Appends to `path` (created with its directory if needed), and first reads the newest
    /// entries already there, so the API shows them across restarts.
    pub fn open(path: Option<&Path>) -> std::io::Result<AuditLog> {
        let mut recent = VecDeque::new();
        if let Some(path) = path {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            if let Ok(text) = std::fs::read_to_string(path) {
                for line in text.lines() {
                    if let Ok(entry) = serde_json::from_str::<AuditEntry>(line) {
                        if recent.len() == KEPT_IN_MEMORY {
                            recent.pop_front();
                        }
                        recent.push_back(entry);
                    }
                }
            }
            // Fails the start now rather than losing the first entry later.
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
        }
        Ok(AuditLog {
            path: path.map(Path::to_path_buf),
            recent,
        })
    }

    /// Records `entry`: appended to the file (one write of one line, so lines never
    /// interleave), kept in memory, and logged.
    pub fn record(&mut self, entry: AuditEntry) {
        tracing::info!(
            principal = %entry.principal,
            action = %entry.action,
            target = entry.target.as_deref().unwrap_or(""),
            version_before = entry.version_before,
            version_after = entry.version_after,
            result = %entry.result,
            "admin audit"
        );
        if let Some(path) = &self.path {
            let mut line = serde_json::to_string(&entry).unwrap_or_default();
            line.push('\n');
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut file| file.write_all(line.as_bytes()));
            if let Err(error) = written {
                tracing::error!(file = %path.display(), %error, "cannot write the audit log");
            }
        }
        if self.recent.len() == KEPT_IN_MEMORY {
            self.recent.pop_front();
        }
        self.recent.push_back(entry);
    }

    /// The newest `limit` entries, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<AuditEntry> {
        let skip = self.recent.len().saturating_sub(limit);
        self.recent.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64) -> AuditEntry {
        AuditEntry {
            time: "2026-11-27T00:00:00Z".into(),
            principal: "ci".into(),
            action: "PUT /v1/config".into(),
            target: None,
            version_before: n,
            version_after: n + 1,
            result: "ok".into(),
            status: 200,
            detail: None,
        }
    }

    #[test]
    fn entries_are_lines_on_disk_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/audit.jsonl");
        let mut log = AuditLog::open(Some(&path)).expect("open");
        log.record(entry(1));
        log.record(entry(2));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 2);
        let reopened = AuditLog::open(Some(&path)).expect("reopen");
        assert_eq!(reopened.recent(10), vec![entry(1), entry(2)]);
        assert_eq!(reopened.recent(1), vec![entry(2)]);
    }
}
