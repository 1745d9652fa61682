//! dnsmasq (Debian `dnsmasq-base`), a real DNS server on 127.0.0.1, authoritative for `.test`:
//! A records from a hosts file the test rewrites (dnsmasq watches its hosts directory), SRV
//! records from its command line. Stopped when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::free_port;

pub(crate) struct Dnsmasq {
    child: Option<Child>,
    pub(crate) port: u16,
    hosts_dir: tempfile::TempDir,
    log: PathBuf,
}

/// A SRV record: service name, target, port, priority, weight.
pub(crate) type Srv<'a> = (&'a str, &'a str, u16, u16, u16);

fn binary() -> PathBuf {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("dnsmasq not found (Debian dnsmasq-base; run `make test` or scripts/setup.sh)")
}

impl Dnsmasq {
    /// Serves `hosts` (name, address) and `srv`, with a one-second TTL.
    pub(crate) fn start(hosts: &[(&str, &str)], srv: &[Srv<'_>]) -> Dnsmasq {
        let hosts_dir = tempfile::tempdir().expect("tempdir");
        let log = hosts_dir.path().join("dnsmasq.log");
        let port = free_port();
        let mut dns = Dnsmasq {
            child: None,
            port,
            hosts_dir,
            log,
        };
        dns.set_hosts(hosts);
        let user = std::env::var("USER").unwrap_or_else(|_| "root".to_owned());
        let mut command = Command::new(binary());
        command.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--local=/test/",
            "--local-ttl=1",
            "--pid-file=",
            "--log-queries",
        ]);
        command.arg(format!("--port={port}"));
        command.arg(format!(
            "--hostsdir={}",
            dns.hosts_dir.path().join("hosts").display()
        ));
        // As root, dnsmasq would otherwise switch to `nobody`, who cannot read the tempdir.
        command.arg(format!("--user={user}"));
        command.arg(format!("--log-facility={}", dns.log.display()));
        for (name, target, port, priority, weight) in srv {
            command.arg(format!(
                "--srv-host={name},{target},{port},{priority},{weight}"
            ));
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq starts");
        dns.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dns.log().contains("read ") {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start: {}",
                dns.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        dns
    }

    /// `ip:port` for the resolvers setting.
    pub(crate) fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Replaces the served A records; dnsmasq rereads the file when it changes.
    pub(crate) fn set_hosts(&self, hosts: &[(&str, &str)]) {
        let dir = self.hosts_dir.path().join("hosts");
        std::fs::create_dir_all(&dir).expect("hosts dir");
        let text: String = hosts
            .iter()
            .map(|(name, address)| format!("{address} {name}\n"))
            .collect();
        // Written beside and renamed, so dnsmasq never reads half a file.
        let staging = self.hosts_dir.path().join("hosts.new");
        std::fs::write(&staging, text).expect("hosts written");
        std::fs::rename(&staging, dir.join("hosts")).expect("hosts renamed");
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server: lookups fail from now on.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
