//! etcd (Debian `etcd-server`), a real single-member cluster on 127.0.0.1 with its data in a
//! tempdir, written to with `etcdctl` (Debian `etcd-client`). Stopped when dropped; `restart`
//! brings it back on the same ports and data, as after a crash.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::free_port;

pub(crate) struct Etcd {
    child: Option<Child>,
    pub(crate) client_port: u16,
    peer_port: u16,
    data: tempfile::TempDir,
}

impl Etcd {
    pub(crate) fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            data: tempfile::tempdir().expect("tempdir"),
        };
        etcd.run();
        etcd
    }

    fn run(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.data.path().join("etcd.log")).expect("log file");
        let child = Command::new("etcd")
            .args(["--name", "test"])
            .arg("--data-dir")
            .arg(self.data.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}")])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd starts (Debian etcd-server; run `make test` or scripts/setup.sh)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.ctl(&["endpoint", "health"]).0 {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ip:port` of the client API (gRPC, HTTP/2 cleartext).
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.address(), "--dial-timeout", "2s"])
            .args(args)
            .output()
            .expect("etcdctl runs (Debian etcd-client)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    pub(crate) fn put(&self, key: &str, value: &str) {
        let (ok, output) = self.ctl(&["put", key, value]);
        assert!(ok, "etcdctl put {key}: {output}");
    }

    pub(crate) fn delete(&self, key: &str) {
        let (ok, output) = self.ctl(&["del", key]);
        assert!(ok, "etcdctl del {key}: {output}");
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default()
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills etcd and starts it again on the same ports and data.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
