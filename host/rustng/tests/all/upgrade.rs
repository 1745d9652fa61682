//! Binary upgrade with the real binary: five upgrades in a row under three kinds of
//! continuous load (HTTP/1.1 keep-alive, a new connection per request, h2c) with no failed
//! request and no refused or reset connection; a slow request that spans the upgrade; new
//! binaries that exit at once or never get ready leave the old process serving; SIGUSR2 and
//! `rustng-ctl upgrade`; one instance per upgrade socket; systemd socket activation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::admin_api::{ADMIN_TOKEN, write_tokens};
use crate::harness::{Rustng, binary, free_port};
use crate::origin::Origin;
use crate::tls::{make_cert, tls_get};

/// One listener in front of `origin`, with the upgrade socket and pid file in the process's
/// directory.
fn config(origin: SocketAddr, extra: &str) -> String {
    format!(
        "workers: 2
log: {{ level: info }}
state_dir: '{{dir}}/state'
drain_timeout: 10s
upgrade:
  pid_file: '{{dir}}/rustng.pid'
{extra}listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: backend
    endpoints:
      - address: {origin}
"
    )
}

/// Kills whichever process the pid file names at the end of a test: after an upgrade the
/// serving process is no child of the test's.
pub(crate) struct Successor(pub(crate) PathBuf);

impl Drop for Successor {
    fn drop(&mut self) {
        if let Some(pid) = pid_in(&self.0) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// Starts RustNg with `config`: the process, its pid file, its config file, and the guard that
/// stops whichever process serves at the end.
fn start(config: &str) -> (Rustng, PathBuf, PathBuf, Successor) {
    let proxy = Rustng::start(config);
    let pid_file = proxy.dir().join("rustng.pid");
    let config_path = proxy.dir().join("rustng.yaml");
    let successor = Successor(pid_file.clone());
    (proxy, pid_file, config_path, successor)
}

pub(crate) fn pid_in(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Whether `pid` has exited (gone, or a zombie nobody has reaped yet).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

pub(crate) async fn wait_exited(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if exited(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exited(pid)
}

/// Waits (a few seconds at most) until `needle` is in the log `count` times: the log is
/// written by a background thread.
async fn log_reaches(proxy: &Rustng, needle: &str, count: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proxy.log_count(needle) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.log_count(needle)
}

/// Runs `rustng upgrade` with `args`; (success, stdout, stderr).
pub(crate) async fn rustng_upgrade(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(binary());
    command.arg("upgrade").arg("-c").arg(config).args(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("rustng upgrade");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The two pids of `upgraded: pid A -> B …`.
fn pids(line: &str) -> (u32, u32) {
    let rest = line.split("pid ").nth(1).expect("pid in output");
    let mut numbers = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let old = numbers
        .next()
        .and_then(|n| n.parse().ok())
        .expect("old pid");
    let new = numbers
        .next()
        .and_then(|n| n.parse().ok())
        .expect("new pid");
    (old, new)
}

/// What a load loop saw.
#[derive(Default)]
struct Seen {
    served: AtomicUsize,
    /// Requests the server provably never processed (the client's connection closed before
    /// they left, or they came after the GOAWAY's last stream), sent again on a new
    /// connection as HTTP/2 clients do (RFC 9113, section 8.7).
    resent: AtomicUsize,
    failures: tokio::sync::Mutex<Vec<String>>,
}

impl Seen {
    async fn fail(&self, what: String) {
        self.failures.lock().await.push(what);
    }
}

fn get(addr: SocketAddr, close: bool) -> Request<Empty<Bytes>> {
    let mut request = Request::get(format!("http://{addr}/echo")).header("host", addr.to_string());
    if close {
        request = request.header("connection", "close");
    }
    request.body(Empty::new()).expect("request")
}

/// Checks a response: 200 with its whole body.
async fn check(
    seen: &Seen,
    kind: &str,
    response: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> bool {
    match response {
        Ok(response) if response.status() == 200 => match response.into_body().collect().await {
            Ok(_) => {
                seen.served.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(error) => {
                seen.fail(format!("{kind}: body cut: {error}")).await;
                false
            }
        },
        Ok(response) => {
            seen.fail(format!("{kind}: status {}", response.status()))
                .await;
            false
        }
        Err(error) => {
            seen.fail(format!("{kind}: request failed: {error:?}"))
                .await;
            false
        }
    }
}

/// Opens a connection to `addr` with `handshake` (which spawns the connection's driver and
/// returns its sender); a failure is recorded as `kind`'s.
async fn open<S, F, Fut>(addr: SocketAddr, seen: &Seen, kind: &str, handshake: F) -> Option<S>
where
    F: FnOnce(TokioIo<TcpStream>) -> Fut,
    Fut: std::future::Future<Output = Result<S, hyper::Error>>,
{
    match TcpStream::connect(addr).await {
        Ok(stream) => match handshake(TokioIo::new(stream)).await {
            Ok(sender) => Some(sender),
            Err(error) => {
                seen.fail(format!("{kind}: handshake: {error}")).await;
                None
            }
        },
        Err(error) => {
            seen.fail(format!("{kind}: connect: {error}")).await;
            None
        }
    }
}

async fn http1_handshake(
    io: TokioIo<TcpStream>,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, hyper::Error> {
    let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn h2c_handshake(
    io: TokioIo<TcpStream>,
) -> Result<hyper::client::conn::http2::SendRequest<Empty<Bytes>>, hyper::Error> {
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// HTTP/1.1 keep-alive: one connection for as long as the server keeps it (it says
/// `connection: close` when it drains), then the next.
async fn keep_alive_loop(addr: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Some(current) = &mut sender else {
            sender = open(addr, &seen, "keep-alive", http1_handshake).await;
            continue;
        };
        if current.ready().await.is_err() {
            seen.fail("keep-alive: the server closed an idle connection".into())
                .await;
            sender = None;
            continue;
        }
        let response = current.send_request(get(addr, false)).await;
        let close = response.as_ref().is_ok_and(|r| {
            r.headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
        });
        if !check(&seen, "keep-alive", response).await || close {
            sender = None;
        }
    }
}

/// A new connection for every request.
async fn new_connection_loop(addr: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if let Some(mut sender) = open(addr, &seen, "per-request", http1_handshake).await {
            check(
                &seen,
                "per-request",
                sender.send_request(get(addr, true)).await,
            )
            .await;
        }
    }
}

/// Whether an HTTP/2 request failed without the server processing it: canceled in the
/// client's queue, or refused by a GOAWAY whose last stream id is below it.
fn unprocessed(error: &hyper::Error) -> bool {
    error.is_canceled()
        || std::error::Error::source(error)
            .and_then(|e| e.downcast_ref::<h2::Error>())
            .is_some_and(|e| {
                e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR)
            })
}

/// h2c: one connection until the server's GOAWAY, requests one after another.
async fn h2c_loop(addr: SocketAddr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut sender: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>> = None;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let Some(current) = &mut sender else {
            sender = open(addr, &seen, "h2c", h2c_handshake).await;
            continue;
        };
        // A connection the server said GOAWAY on takes no new stream: open the next one, as
        // every HTTP/2 client does.
        if current.ready().await.is_err() || current.is_closed() {
            sender = None;
            continue;
        }
        let mut request = get(addr, false);
        *request.version_mut() = http::Version::HTTP_2;
        request.headers_mut().remove("host");
        let response = current.send_request(request).await;
        if response.as_ref().is_err_and(unprocessed) {
            seen.resent.fetch_add(1, Ordering::Relaxed);
            sender = None;
            continue;
        }
        if !check(&seen, "h2c", response).await {
            sender = None;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_under_load_refuse_and_fail_nothing() {
    let origin = Origin::start("o").await;
    let (proxy, pid_file, config_path, successor) = start(&config(origin.addr, ""));
    let first = proxy.pid();
    assert_eq!(pid_in(&pid_file), Some(first));

    let stop = Arc::new(AtomicBool::new(false));
    let kinds = ["keep-alive", "per-request", "h2c"];
    let seen: Vec<Arc<Seen>> = kinds.iter().map(|_| Arc::default()).collect();
    let loops = vec![
        tokio::spawn(keep_alive_loop(
            proxy.addr,
            Arc::clone(&stop),
            Arc::clone(&seen[0]),
        )),
        tokio::spawn(new_connection_loop(
            proxy.addr,
            Arc::clone(&stop),
            Arc::clone(&seen[1]),
        )),
        tokio::spawn(h2c_loop(
            proxy.addr,
            Arc::clone(&stop),
            Arc::clone(&seen[2]),
        )),
    ];

    // A request the upstream answers after 2 s, sent before the first upgrade: the old
    // process finishes it while the new one serves everything else.
    let slow_addr = proxy.addr;
    let slow = tokio::spawn(async move {
        let started = Instant::now();
        let stream = TcpStream::connect(slow_addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        let request = Request::get(format!("http://{slow_addr}/slow/2000"))
            .header("host", slow_addr.to_string())
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body, started.elapsed()))
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut previous = first;
    let mut old_pids = Vec::new();
    let mut handovers = Vec::new();
    for round in 1..=5 {
        let before: Vec<usize> = seen
            .iter()
            .map(|s| s.served.load(Ordering::Relaxed))
            .collect();
        let (ok, out, err) = rustng_upgrade(&config_path, &[]).await;
        assert!(ok, "upgrade {round} failed: {out}{err}\n{}", proxy.log());
        let (old, new) = pids(&out);
        assert_eq!(old, previous, "round {round}: {out}");
        assert_ne!(new, old);
        assert_eq!(
            pid_in(&pid_file),
            Some(new),
            "the pid file names the new process"
        );
        handovers.push(out.trim().to_owned());
        old_pids.push(old);
        previous = new;
        // Every kind of client keeps being served, now by the new process.
        tokio::time::sleep(Duration::from_millis(400)).await;
        for (kind, (seen, before)) in kinds.iter().zip(seen.iter().zip(&before)) {
            assert!(
                seen.served.load(Ordering::Relaxed) > *before,
                "round {round}: no {kind} request served since the upgrade"
            );
        }
    }

    let (status, body, took) = match slow.await.expect("slow request") {
        Ok(answer) => answer,
        Err(error) => panic!("the slow request failed: {error}\n{}", proxy.log()),
    };
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"slow");
    assert!(took >= Duration::from_secs(2), "{took:?}");

    stop.store(true, Ordering::Relaxed);
    for handle in loops {
        handle.await.expect("load loop");
    }
    for (kind, seen) in kinds.iter().zip(&seen) {
        let failures = seen.failures.lock().await;
        assert!(
            failures.is_empty(),
            "{kind}: {} failed of {}: {:?}\n{}",
            failures.len(),
            seen.served.load(Ordering::Relaxed),
            &failures[..failures.len().min(10)],
            proxy.log()
        );
        assert!(
            seen.served.load(Ordering::Relaxed) > 50,
            "{kind} barely ran"
        );
        eprintln!(
            "{kind}: {} served, {} sent again before the server saw them",
            seen.served.load(Ordering::Relaxed),
            seen.resent.load(Ordering::Relaxed)
        );
    }
    // Every replaced process drained and exited (the first is the harness's child).
    for pid in &old_pids[1..] {
        assert!(
            wait_exited(*pid, Duration::from_secs(15)).await,
            "pid {pid} still runs"
        );
    }
    assert_eq!(
        log_reaches(&proxy, "upgraded: the new process serves", 5).await,
        5
    );
    // The serving process goes first: waiting consumes the harness, and with it the
    // directory the pid file is in.
    drop(successor);
    let status = proxy.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first process exits cleanly"
    );
    eprintln!("handovers: {handovers:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_exits_or_hangs_leaves_the_old_process_serving() {
    let origin = Origin::start("o").await;
    let (proxy, pid_file, config_path, successor) =
        start(&config(origin.addr, "  ready_timeout: 2s\n"));
    let client = crate::client::http1();

    let (ok, _, err) = rustng_upgrade(&config_path, &["--binary", "/bin/false"]).await;
    assert!(!ok);
    assert!(
        err.contains("exited (exit status: 1) before taking over"),
        "{err}"
    );
    assert_eq!(
        crate::client::get(&client, &proxy.url("/echo"))
            .await
            .status,
        200
    );

    let hang = proxy.dir().join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 30\n").expect("script");
    Command::new("chmod")
        .arg("+x")
        .arg(&hang)
        .status()
        .expect("chmod");
    let started = Instant::now();
    let (ok, _, err) =
        rustng_upgrade(&config_path, &["--binary", &hang.display().to_string()]).await;
    assert!(!ok);
    assert!(err.contains("did not take over within 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let missing = proxy.dir().join("no-such-binary");
    let (ok, _, err) =
        rustng_upgrade(&config_path, &["--binary", &missing.display().to_string()]).await;
    assert!(!ok);
    assert!(err.contains("cannot start"), "{err}");

    // Still the same process, serving, and still able to upgrade for real.
    assert_eq!(pid_in(&pid_file), Some(proxy.pid()));
    assert_eq!(
        crate::client::get(&client, &proxy.url("/echo"))
            .await
            .status,
        200
    );
    assert_eq!(
        log_reaches(&proxy, "upgrade failed; this process keeps serving", 3).await,
        3
    );
    let (ok, out, err) = rustng_upgrade(&config_path, &[]).await;
    assert!(ok, "{out}{err}");
    let (_, new) = pids(&out);
    assert_eq!(
        crate::client::get(&client, &proxy.url("/echo"))
            .await
            .status,
        200
    );
    assert_eq!(pid_in(&pid_file), Some(new));
    drop(successor);
    assert!(proxy.wait_exit(Duration::from_secs(15)).is_some());
}

/// Runs `rustng-ctl` with the admin token against `admin_port`; (success, stdout, stderr).
fn ctl(admin_port: u16, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_rustng-ctl")))
        .args([
            "--admin",
            &format!("http://127.0.0.1:{admin_port}"),
            "--token",
            ADMIN_TOKEN,
        ])
        .args(args)
        .output()
        .expect("rustng-ctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_and_rustng_ctl_upgrade_carry_tls_and_the_running_version() {
    let origin = Origin::start("o").await;
    let files = tempfile::tempdir().expect("tempdir");
    write_tokens(files.path());
    let admin_port = free_port();
    // A TLS listener too: its sockets travel like any other; the new process loads the
    // certificate itself.
    let cert = make_cert(files.path(), "up.test", &["up.test"]);
    let tls_port = free_port();
    let extra = format!(
        "admin:
  address: 127.0.0.1:{admin_port}
  auth: {{ tokens_file: {dir}/tokens.yaml }}
listeners:
  - name: tls
    address: 127.0.0.1:{tls_port}
    default_cluster: backend
    tls:
      certificates:
        - certificate_chain: {dir}/up.test.crt
          private_key: {dir}/up.test.key
",
        dir = files.path().display()
    );
    let config_text = config(origin.addr, "").replace("listeners:\n", &extra);
    let proxy = Rustng::start(&config_text);
    let pid_file = proxy.dir().join("rustng.pid");
    let successor = Successor(pid_file.clone());
    let first = proxy.pid();
    let tls_addr: SocketAddr = format!("127.0.0.1:{tls_port}").parse().expect("addr");
    assert_eq!(tls_get(tls_addr, "up.test", &cert, "/echo").await, 200);

    // A second `rustng run` on the same config refuses to start, and names the first.
    let second = Command::new(binary())
        .args(["run", "-c"])
        .arg(proxy.dir().join("rustng.yaml"))
        .output()
        .expect("second run");
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains(&format!(
            "another rustng (pid {first}) serves on the upgrade socket"
        )),
        "{err}"
    );

    // A version applied through the API (not in the file) is what the new process runs.
    let applied = proxy.dir().join("applied.yaml");
    std::fs::write(
        &applied,
        config_text
            .replace("{dir}", &proxy.dir().display().to_string())
            .replace("{listen}", &proxy.addr.to_string())
            .replace("drain_timeout: 10s", "drain_timeout: 9s"),
    )
    .expect("write");
    let (ok, out, err) = tokio::task::block_in_place(|| {
        ctl(
            admin_port,
            &["config", "apply", &applied.display().to_string()],
        )
    });
    assert!(ok, "{out}{err}");

    Command::new("kill")
        .arg("-USR2")
        .arg(first.to_string())
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pid_in(&pid_file) == Some(first) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second_pid = pid_in(&pid_file).expect("pid file");
    assert_ne!(second_pid, first, "SIGUSR2 upgraded\n{}", proxy.log());

    // The admin port is the new process's now, and it runs version 2 from the API.
    let (ok, out, err) = tokio::task::block_in_place(|| ctl(admin_port, &["-o", "json", "status"]));
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(status["pid"], second_pid);
    assert_eq!(status["version"], 2, "the API's version, under its number");
    let (ok, out, _) = tokio::task::block_in_place(|| ctl(admin_port, &["config", "get"]));
    assert!(ok && out.contains("drain_timeout: 9s"), "{out}");
    assert_eq!(tls_get(tls_addr, "up.test", &cert, "/echo").await, 200);

    let (ok, out, err) = tokio::task::block_in_place(|| ctl(admin_port, &["upgrade"]));
    assert!(ok, "{out}{err}\n{}", proxy.log());
    let (old, third) = pids(&out);
    assert_eq!(old, second_pid);
    assert!(out.contains("(config version 2)"), "{out}");
    assert_eq!(pid_in(&pid_file), Some(third));
    let client = crate::client::http1();
    assert_eq!(
        crate::client::get(&client, &proxy.url("/echo"))
            .await
            .status,
        200
    );
    assert_eq!(tls_get(tls_addr, "up.test", &cert, "/echo").await, 200);
    assert!(wait_exited(second_pid, Duration::from_secs(15)).await);
    drop(successor);
    assert!(proxy.wait_exit(Duration::from_secs(15)).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_at_drain_timeout() {
    let origin = Origin::start("o").await;
    let proxy =
        Rustng::start(&config(origin.addr, "").replace("drain_timeout: 10s", "drain_timeout: 1s"));
    let url = proxy.url("/slow/10000");
    let slow = tokio::spawn(async move {
        let client = crate::client::http1();
        crate::client::get(&client, &url).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let status = proxy.terminate();
    assert!(status.success(), "{status}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the drain waited for the request until drain_timeout, not for the request: {took:?}"
    );
    let _ = slow.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_takes_its_sockets_from_systemd() {
    let origin = Origin::start("o").await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    // What systemd does for a .socket unit: bind, put the socket at fd 3, set LISTEN_FDS and
    // LISTEN_PID (the pid stays the same across exec).
    let activate = format!(
        "import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', {port}))
s.listen(128)
os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
env = dict(os.environ, LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))
os.execve(sys.argv[1], sys.argv[1:], env)
",
        port = addr.port()
    );
    // systemd's notification socket (`Type=notify`): a datagram socket the unit's main
    // process writes its state to.
    let notify_dir = tempfile::tempdir().expect("tempdir");
    let notify_path = notify_dir.path().join("notify");
    let notifications =
        std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notifications
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let next_notification = || {
        let mut buffer = [0u8; 256];
        let n = notifications.recv(&mut buffer).expect("a notification");
        String::from_utf8_lossy(&buffer[..n]).into_owned()
    };
    let proxy = Rustng::start_with(&config(origin.addr, ""), addr, |config_path| {
        let mut command = Command::new("python3");
        command
            .env("NOTIFY_SOCKET", &notify_path)
            .arg("-c")
            .arg(&activate)
            .arg(binary())
            .arg("run")
            .arg("-c")
            .arg(config_path);
        command
    });
    let _successor = Successor(proxy.dir().join("rustng.pid"));
    let client = crate::client::http1();
    assert_eq!(
        crate::client::get(&client, &proxy.url("/echo"))
            .await
            .status,
        200
    );
    assert!(
        proxy.log_eventually_contains("socket from systemd"),
        "{}",
        proxy.log()
    );
    assert!(proxy.log().contains("listening on inherited sockets"));
    assert_eq!(tokio::task::block_in_place(next_notification), "READY=1");
    // And an upgrade hands that socket on like any other; systemd hears of the new main
    // process from the old one.
    let (ok, out, err) = rustng_upgrade(&proxy.dir().join("rustng.yaml"), &[]).await;
    assert!(ok, "{out}{err}");
    let (_, new) = pids(&out);
    assert_eq!(
        tokio::task::block_in_place(next_notification),
        format!("MAINPID={new}")
    );
    assert_eq!(
        crate::client::get(&client, &proxy.url("/echo"))
            .await
            .status,
        200
    );
}
