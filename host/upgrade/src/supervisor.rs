//! The serving process's side: the upgrade socket, starting the new binary, handing it the
//! sockets, and stepping down once it is ready.

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustng_core::{Controller, ShutdownHandle};
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::wire::{Connection, Document, Message, SocketInfo};
use crate::{PidFile, SOCKET_ENV, TOKEN_ENV, UpgradeError, Upgraded};

/// How long a connection on the upgrade socket has to say what it wants.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a new process that failed gets to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// Pause after an accept error, so a full descriptor table does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// systemd's socket activation variables: the new process gets its sockets from us instead.
const SYSTEMD_ENV: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

/// What the supervisor needs from the process it supervises.
pub struct RunningProcess {
    /// The config versions and the listening sockets.
    pub controller: Controller,
    /// Starts this process's drain once the new one is ready.
    pub shutdown: ShutdownHandle,
    /// The admin server's socket (a duplicate) and how to stop serving on it.
    pub admin: Option<(std::net::TcpListener, Box<dyn Fn() + Send>)>,
    /// The new binary's arguments: this process's own.
    pub args: Vec<OsString>,
    /// How long the new process has to take over and report ready.
    pub ready_timeout: Duration,
    /// The pid file, rewritten with the new process's pid before the upgrade is reported
    /// done (so whoever asked finds the new pid there).
    pub pid_file: Option<PathBuf>,
}

/// The upgrade socket, bound (or inherited) but not yet served.
#[derive(Debug)]
pub struct Supervisor {
    path: PathBuf,
    listener: StdUnixListener,
}

/// Asks the supervisor for upgrades (SIGUSR2, the admin API); cheap to clone.
#[derive(Clone, Debug)]
pub struct UpgradeRequests {
    requests: mpsc::UnboundedSender<Request>,
    handed_over: Arc<AtomicBool>,
    path: PathBuf,
}

struct Request {
    binary: Option<PathBuf>,
    reply: oneshot::Sender<Result<Upgraded, String>>,
}

impl UpgradeRequests {
    /// Starts an upgrade to `binary` (default: this process's executable); the answer comes
    /// once the new process serves, or with the reason it does not.
    pub fn request(&self, binary: Option<PathBuf>) -> oneshot::Receiver<Result<Upgraded, String>> {
        let (reply, answer) = oneshot::channel();
        let _ = self.requests.send(Request { binary, reply });
        answer
    }

    /// Whether this process has handed its sockets to a successor (and drains).
    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Relaxed)
    }

    /// The upgrade socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the upgrade socket as the process exits, unless a successor serves on it.
    pub fn remove_socket(&self) {
        if !self.handed_over() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Supervisor {
    /// Binds the upgrade socket at `path` (owner-only access). A socket file left by a
    /// process that is gone is replaced; one a live process answers on is not.
    pub fn bind(path: &Path, pid_file: Option<&Path>) -> Result<Supervisor, UpgradeError> {
        let failed = |source| UpgradeError::Socket {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(UpgradeError::AlreadyServing {
                        path: path.to_path_buf(),
                        pid: pid_file
                            .and_then(PidFile::read)
                            .map_or_else(|| "unknown".to_owned(), |pid| pid.to_string()),
                    });
                }
                Err(_) => std::fs::remove_file(path).map_err(failed)?,
            }
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let listener = StdUnixListener::bind(path).map_err(failed)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
        Ok(Supervisor {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// The upgrade socket a replaced process handed over.
    pub fn inherit(path: &Path, listener: StdUnixListener) -> Supervisor {
        Supervisor {
            path: path.to_path_buf(),
            listener,
        }
    }

    /// Serves the upgrade socket on a thread of its own.
    pub fn start(self, running: RunningProcess) -> Result<UpgradeRequests, UpgradeError> {
        let failed = |source| UpgradeError::Socket {
            path: self.path.clone(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(failed)?;
        let upgrade_socket = self.listener.as_fd().try_clone_to_owned().map_err(failed)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(failed)?;
        let (requests, receiver) = mpsc::unbounded_channel();
        let handed_over = Arc::new(AtomicBool::new(false));
        let handle = UpgradeRequests {
            requests: requests.clone(),
            handed_over: Arc::clone(&handed_over),
            path: self.path.clone(),
        };
        let path = self.path.clone();
        let listener = self.listener;
        std::thread::Builder::new()
            .name("rustng-upgrade".into())
            .spawn(move || {
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let listener = match UnixListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(error) => {
                            tracing::error!(%error, "cannot serve the upgrade socket; upgrades are off");
                            return;
                        }
                    };
                    let state = Rc::new(State {
                        running,
                        path,
                        handed_over,
                        busy: Cell::new(false),
                        pending: RefCell::new(None),
                        stopped: Notify::new(),
                        requests,
                        upgrade_socket,
                    });
                    serve(listener, state, receiver).await;
                });
            })
            .map_err(failed)?;
        Ok(handle)
    }
}

/// The supervisor thread's state.
struct State {
    running: RunningProcess,
    path: PathBuf,
    handed_over: Arc<AtomicBool>,
    /// An upgrade is under way (one at a time).
    busy: Cell<bool>,
    /// The token the new process must bring, and where its connection goes.
    pending: RefCell<Option<(String, oneshot::Sender<Connection>)>>,
    /// Told once this process handed over: stop accepting on the upgrade socket.
    stopped: Notify,
    /// Upgrades asked for over the socket join the same queue as SIGUSR2's.
    requests: mpsc::UnboundedSender<Request>,
    /// A duplicate of the upgrade socket, handed over with the others.
    upgrade_socket: OwnedFd,
}

async fn serve(
    listener: UnixListener,
    state: Rc<State>,
    mut requests: mpsc::UnboundedReceiver<Request>,
) {
    tracing::info!(socket = %state.path.display(), "upgrade socket listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(answer(Connection::new(stream), Rc::clone(&state)));
                }
                Err(error) => {
                    tracing::warn!(%error, "upgrade socket accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            Some(request) = requests.recv() => {
                tokio::task::spawn_local(run_request(request, Rc::clone(&state)));
            }
            () = state.stopped.notified() => break,
        }
    }
    // Dropping the listener here leaves the socket to the new process, which holds it too.
    drop(listener);
    // Upgrades already asked for wait for nothing more.
    std::future::pending::<()>().await;
}

/// Answers one connection on the upgrade socket.
async fn answer(mut connection: Connection, state: Rc<State>) {
    let first = connection.recv_within(FIRST_MESSAGE_TIMEOUT).await;
    match first {
        Ok(Message::Upgrade { binary }) => {
            let (reply, outcome) = oneshot::channel();
            let _ = state.requests.send(Request { binary, reply });
            let message = match outcome.await {
                Ok(Ok(upgraded)) => Message::Upgraded(upgraded),
                Ok(Err(reason)) => Message::Refused { reason },
                Err(_) => Message::Refused {
                    reason: "the upgrade was abandoned".to_owned(),
                },
            };
            let _ = connection.send(&message).await;
        }
        Ok(Message::Takeover { token, pid }) => {
            let waiting = state.pending.borrow_mut().take();
            match waiting {
                Some((expected, deliver)) if expected == token => {
                    tracing::info!(pid, "the new process connected");
                    let _ = deliver.send(connection);
                }
                other => {
                    *state.pending.borrow_mut() = other;
                    tracing::warn!(pid, "a takeover with no matching upgrade, refused");
                    let _ = connection
                        .send(&Message::Refused {
                            reason: "no upgrade is waiting for this process".to_owned(),
                        })
                        .await;
                }
            }
        }
        Ok(other) => tracing::debug!(?other, "unexpected first message on the upgrade socket"),
        Err(error) => tracing::debug!(%error, "upgrade socket connection"),
    }
}

async fn run_request(request: Request, state: Rc<State>) {
    let outcome = upgrade(&state, request.binary).await;
    match &outcome {
        Ok(upgraded) => tracing::info!(
            new_pid = upgraded.new_pid,
            version = upgraded.version,
            handover_ms = upgraded.handover_ms,
            "upgraded: the new process serves, this one drains"
        ),
        Err(reason) => tracing::error!(%reason, "upgrade failed; this process keeps serving"),
    }
    let _ = request.reply.send(outcome);
}

/// The executable this process runs. After a package update replaced the file, Linux names
/// the running one `… (deleted)`; the path itself is where the new binary now is.
fn own_executable() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let text = exe.to_string_lossy();
    Ok(text
        .strip_suffix(" (deleted)")
        .map_or(exe.clone(), PathBuf::from))
}

async fn upgrade(state: &State, binary: Option<PathBuf>) -> Result<Upgraded, String> {
    if state.handed_over.load(Ordering::Relaxed) {
        return Err("this process has handed over already and is draining".to_owned());
    }
    if state.busy.replace(true) {
        return Err("an upgrade is already in progress".to_owned());
    }
    let outcome = upgrade_once(state, binary).await;
    state.pending.borrow_mut().take();
    state.busy.set(false);
    outcome
}

async fn upgrade_once(state: &State, binary: Option<PathBuf>) -> Result<Upgraded, String> {
    let started = Instant::now();
    let running = &state.running;
    let deadline = tokio::time::Instant::now() + running.ready_timeout;
    let binary = match binary {
        Some(binary) => binary,
        None => own_executable()?,
    };
    let token = format!("{:032x}{:032x}", fastrand::u128(..), fastrand::u128(..));
    let (deliver, delivered) = oneshot::channel();
    *state.pending.borrow_mut() = Some((token.clone(), deliver));

    let mut command = Command::new(&binary);
    command
        .args(&running.args)
        .env(SOCKET_ENV, &state.path)
        .env(TOKEN_ENV, &token)
        .stdin(std::process::Stdio::null());
    for name in SYSTEMD_ENV {
        command.env_remove(name);
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    tracing::info!(binary = %binary.display(), pid = child.id(), "upgrade: new process started");

    let mut connection = tokio::select! {
        connection = delivered => connection.map_err(|_| "the upgrade was abandoned".to_owned())?,
        status = child.wait() => {
            return Err(format!("the new process exited ({}) before taking over", describe(status)));
        }
        () = tokio::time::sleep_until(deadline) => {
            return Err(stop_child(&mut child, format!(
                "the new process did not take over within {:?}", running.ready_timeout
            )).await);
        }
    };

    let new_pid = match take_over(&mut connection, &mut child, state, deadline).await {
        Ok(pid) => pid,
        Err(reason) => {
            // The old process takes its HTTP/3 sockets' packets and new connections back.
            running.controller.handover_aborted();
            return Err(reason);
        }
    };

    // The new process accepts on every socket: stop accepting here and drain.
    let handover_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    state.handed_over.store(true, Ordering::Relaxed);
    // The admin port stops accepting here first: whoever reads the new pid from the pid file
    // then reaches the new process's admin server, not one about to close.
    if let Some((_, stop_admin)) = &running.admin {
        stop_admin();
    }
    if let Some(path) = &running.pid_file
        && let Err(error) = PidFile::write_pid(path, new_pid)
    {
        tracing::warn!(%error, file = %path.display(), "cannot write the new pid to the pid file");
    }
    crate::systemd::notify(&format!("MAINPID={new_pid}"));
    running.shutdown.shutdown();
    state.stopped.notify_one();
    if let Err(error) = connection.send(&Message::Stopped).await {
        tracing::warn!(%error, "could not tell the new process this one stopped");
    }
    // The child is not waited for: it outlives this process.
    drop(child);
    Ok(Upgraded {
        old_pid: std::process::id(),
        new_pid,
        version: running.controller.version(),
        handover_ms,
    })
}

/// Hands the sockets over and waits for the new process to say it serves: its pid.
async fn take_over(
    connection: &mut Connection,
    child: &mut Child,
    state: &State,
    deadline: tokio::time::Instant,
) -> Result<u32, String> {
    let running = &state.running;
    if let Err(error) = hand_over(connection, state).await {
        return Err(stop_child(child, format!("handing over the sockets failed: {error}")).await);
    }

    let answer = tokio::select! {
        answer = connection.recv() => answer,
        status = child.wait() => {
            return Err(format!("the new process exited ({}) before it was ready", describe(status)));
        }
        () = tokio::time::sleep_until(deadline) => {
            return Err(stop_child(child, format!(
                "the new process was not ready within {:?}", running.ready_timeout
            )).await);
        }
    };
    match answer {
        Ok(Message::Ready { pid }) => Ok(pid),
        Ok(Message::Failed { reason }) => {
            Err(stop_child(child, format!("the new process failed to start: {reason}")).await)
        }
        Ok(other) => Err(stop_child(child, format!("unexpected message {other:?}")).await),
        Err(error) => Err(stop_child(child, format!("the new process went away: {error}")).await),
    }
}

/// Sends the running version and every listening socket.
async fn hand_over(connection: &Connection, state: &State) -> std::io::Result<()> {
    let running = &state.running;
    let handover = running.controller.handover().await?;
    let mut sockets = Vec::new();
    let mut owned: Vec<OwnedFd> = Vec::new();
    for listener in handover.listeners {
        let name = listener.name.unwrap_or_default();
        for socket in listener.sockets {
            sockets.push(SocketInfo::Listener {
                name: name.clone(),
                address: listener.address,
            });
            owned.push(socket.into());
        }
    }
    // Each HTTP/3 socket is followed by the new process's end of its link.
    for quic in handover.quic {
        for (socket, link) in quic.sockets {
            sockets.push(SocketInfo::QuicSocket {
                name: quic.name.clone(),
                address: quic.address,
            });
            owned.push(socket.into());
            sockets.push(SocketInfo::QuicLink);
            owned.push(link.into());
        }
    }
    if let Some((admin, _)) = &running.admin {
        sockets.push(SocketInfo::Admin {
            address: admin.local_addr()?,
        });
        owned.push(admin.as_fd().try_clone_to_owned()?);
    }
    sockets.push(SocketInfo::Upgrade);
    owned.push(state.upgrade_socket.try_clone()?);
    let document = handover.document.map(|d| Document {
        text: d.text,
        base_dir: d.base_dir,
        origin: d.origin,
    });
    connection
        .send(&Message::Handover {
            version: handover.version,
            document,
            sockets,
            quic_tag: Some(handover.quic_tag),
        })
        .await?;
    let borrowed: Vec<BorrowedFd<'_>> = owned.iter().map(AsFd::as_fd).collect();
    connection.send_descriptors(&borrowed).await
}

/// Ends a new process that will not serve: asked to exit, then killed if it lingers.
async fn stop_child(child: &mut Child, reason: String) -> String {
    let _ = child.start_kill();
    if tokio::time::timeout(EXIT_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(pid = child.id(), "the failed new process did not exit");
    }
    reason
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(error) => error.to_string(),
    }
}
