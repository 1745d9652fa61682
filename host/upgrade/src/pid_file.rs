//! The pid file: the pid of the process serving now, for scripts and init systems.

use std::io;
use std::path::{Path, PathBuf};

/// A pid file this process wrote. Dropping it removes the file, unless a newer process (the
/// one an upgrade started) has written its own pid there since.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    pid: u32,
}

impl PidFile {
    /// Writes this process's pid to `path`, replacing the file in one rename so a reader
    /// never sees it half written.
    pub fn write(path: &Path) -> io::Result<PidFile> {
        let pid = std::process::id();
        PidFile::write_pid(path, pid)?;
        Ok(PidFile {
            path: path.to_path_buf(),
            pid,
        })
    }

    /// Writes `pid` (a successor's) to `path`.
    pub(crate) fn write_pid(path: &Path, pid: u32) -> io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{pid}.tmp"));
        std::fs::write(&temporary, format!("{pid}\n"))?;
        std::fs::rename(&temporary, path)
    }

    /// The pid in the file at `path`, if it holds one.
    pub fn read(path: &Path) -> Option<u32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if PidFile::read(&self.path) == Some(self.pid) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_on_drop_unless_taken_over() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("run/rustng.pid");
        let file = PidFile::write(&path).expect("write");
        assert_eq!(PidFile::read(&path), Some(std::process::id()));
        drop(file);
        assert!(!path.exists());

        let file = PidFile::write(&path).expect("write");
        std::fs::write(&path, "4242\n").expect("successor");
        drop(file);
        assert_eq!(
            PidFile::read(&path),
            Some(4242),
            "the successor's file stays"
        );
    }
}
