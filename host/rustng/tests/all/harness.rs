//! Starts the real `rustng` binary on 127.0.0.1 with a generated config, and stops it.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Where [`free_port`] looks: below Linux's ephemeral range (32768–60999 by default), so no
/// `bind(0)` or outgoing connection of any test takes a port between its handing out and
/// the child process binding it.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// The next candidate in [`PORTS`], shared by the tests of this process.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A free port on 127.0.0.1 for a child process (or a test server) to bind; never the same
/// one twice in a run, since tests run in parallel.
pub(crate) fn free_port() -> u16 {
    let span = PORTS.end - PORTS.start;
    // A different start per run, so concurrent test runs on one machine rarely meet.
    let _ = NEXT_PORT.compare_exchange(
        0,
        (std::process::id() % u32::from(span)) as u16 + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT_PORT.fetch_add(1, Ordering::SeqCst) % span;
        let port = PORTS.start + offset;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORTS:?}");
}

/// A running rustng process; killed when dropped.
pub(crate) struct Rustng {
    child: Option<Child>,
    pub(crate) addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Rustng {
    /// Starts rustng with `config` (YAML with `{listen}` replaced by a free address) and waits
    /// until it accepts connections.
    pub(crate) fn start(config: &str) -> Rustng {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::start_at(config, addr)
    }

    pub(crate) fn start_at(config: &str, addr: SocketAddr) -> Rustng {
        Self::start_with_args(config, addr, &[])
    }

    /// [`Rustng::start_at`] with more `rustng run` arguments.
    pub(crate) fn start_with_args(config: &str, addr: SocketAddr, args: &[&str]) -> Rustng {
        Self::start_with(config, addr, |config_path| {
            let mut command = Command::new(binary());
            command.arg("run").arg("-c").arg(config_path).args(args);
            command
        })
    }

    /// Starts what `command` builds from the config file's path (`{listen}` and `{dir}`, the
    /// process's own temporary directory, replaced in `config`).
    pub(crate) fn start_with(
        config: &str,
        addr: SocketAddr,
        command: impl FnOnce(&std::path::Path) -> Command,
    ) -> Rustng {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = config
            .replace("{listen}", &addr.to_string())
            .replace("{dir}", &dir.path().display().to_string());
        let config_path = dir.path().join("rustng.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("rustng.log")).expect("log file");
        let child = command(&config_path)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn rustng");
        let mut rustng = Rustng {
            child: Some(child),
            addr,
            dir,
        };
        rustng.wait_ready();
        rustng
    }

    fn wait_ready(&mut self) {
        // Generous: a debug build compiles a large module (the Go SDK's 2.8 MB) with Cranelift
        // before it binds, and CI machines are busy; a healthy start returns long before this.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("rustng exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "rustng did not start listening on {}:\n{}",
            self.addr,
            self.log()
        );
    }

    /// Replaces the config file (`{listen}` as at start); a watching rustng picks it up.
    /// Written to a temporary name and renamed, as editors and config tools do, so a reader
    /// never sees half a file.
    pub(crate) fn write_config(&self, config: &str) {
        let config = config
            .replace("{listen}", &self.addr.to_string())
            .replace("{dir}", &self.dir.path().display().to_string());
        let temporary = self.dir.path().join(".rustng.yaml.tmp");
        std::fs::write(&temporary, config).expect("write config");
        std::fs::rename(&temporary, self.dir.path().join("rustng.yaml")).expect("rename config");
    }

    /// Sends SIGHUP: re-read the config file.
    pub(crate) fn sighup(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(pid.to_string())
            .status()
            .expect("kill -HUP");
        assert!(status.success());
    }

    /// How many times `needle` occurs in the log so far.
    pub(crate) fn log_count(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Everything rustng wrote to stdout and stderr so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rustng.log")).unwrap_or_default()
    }

    /// Whether `needle` shows up in the log within a few seconds (logs are written by a
    /// background thread, so a line can trail the response it belongs to).
    pub(crate) fn log_eventually_contains(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.log().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Log lines parsed as JSON (non-JSON lines are skipped).
    pub(crate) fn log_json(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The process's temporary directory (config, log, and whatever the config puts there).
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The pid of the process this harness started.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Resident memory of the process in KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("rustng did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Rustng {
    /// Waits up to `timeout` for the process to exit on its own (a drain through the API);
    /// its status, or `None` if it is still running (it is killed on drop).
    pub(crate) fn wait_exit(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rustng {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(crate) fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rustng"))
}

/// A minimal config: one listener at `{listen}` in front of `cluster` with the given endpoints.
pub(crate) fn simple_config(
    endpoints: &[SocketAddr],
    extra_listener: &str,
    extra_cluster: &str,
) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|e| format!("      - address: {e}\n"))
        .collect();
    format!(
        "workers: 1
log: {{ level: info }}
listeners:
  - name: main
    address: {{listen}}
    default_cluster: backend
{extra_listener}
clusters:
  - name: backend
{extra_cluster}
    endpoints:
{endpoints}"
    )
}

/// `config` with a `plugins:` section (`plugins`: its items, YAML indented by two) before its
/// `listeners:`.
pub(crate) fn with_plugins(config: &str, plugins: &str) -> String {
    config.replacen(
        "listeners:\n",
        &format!("plugins:\n{plugins}listeners:\n"),
        1,
    )
}

/// One plugin item for [`with_plugins`]: `name` running the module at `wasm` with
/// `configuration` (YAML, indented by four for a mapping).
pub(crate) fn plugin(name: &str, wasm: &std::path::Path, configuration: &str) -> String {
    format!(
        "  - name: {name}\n    vm_config: {{ code: {{ local: {{ filename: {} }} }} }}\n    configuration:{configuration}\n",
        wasm.display()
    )
}

/// What a one-shot `rustng` command printed and how it ended.
pub(crate) struct CliRun {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `rustng SUBCOMMAND -c FILE` with `yaml` written to a temporary file; `run` must fail
/// before it starts serving, or this waits forever (the tests only use it that way).
pub(crate) fn cli_with_config(subcommand: &str, yaml: &str) -> CliRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).expect("write config");
    cli(&[subcommand, "-c", path.to_str().expect("utf-8 path")])
}

/// Runs `rustng ARGS…` to completion.
pub(crate) fn cli(args: &[&str]) -> CliRun {
    let out = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rustng");
    CliRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
