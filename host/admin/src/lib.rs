//! RustNg's admin server: health, readiness and metrics for probes and scrapers, and the
//! authenticated `/v1` API operators and `rustng-ctl` drive a running process with.
//!
//! It runs on a thread of its own with its own small runtime, so a slow scrape or a burst of
//! admin calls never takes time from a worker, and a worker under load never delays
//! `/health`. It binds loopback unless configured otherwise (`admin.address`).
//!
//! - Open: `GET /health` (the process is up), `GET /ready` (a config version runs and the
//!   process is not draining), `GET /metrics` (Prometheus text).
//! - `read` role: `/debug/vars` and the `/v1` reads; `admin` role: the `/v1` mutations, each
//!   one audited ([`audit`]). The routes are in [`api`]; docs/ADMIN.md lists them.

pub mod api;
pub mod audit;
pub mod auth;
mod grpc;
pub mod remote;
mod tls;

/// The generated `rustng.control.v1` messages, client and server (proto/rustng/control/v1/).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("rustng.control.v1");
}

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustng_core::{Controller, ShutdownHandle, Telemetry};
use rustng_runtime_config::Admin;
use tonic::codegen::Service as _;

use api::{NoRoute, Outcome, Route};
use audit::{AuditEntry, AuditLog};
use auth::{AuthError, Authenticator, Role};

/// Changes the process's log filter at runtime (the binary owns the subscriber).
pub trait LogLevelControl: Send + Sync {
    /// The filter now, in `EnvFilter` syntax.
    fn current(&self) -> String;
    /// Installs `filter`; the error says why it does not parse.
    fn set(&self, filter: &str) -> Result<(), String>;
}

/// What the admin server serves.
pub struct AdminOptions {
    /// `admin` from the config.
    pub admin: Admin,
    /// Metrics.
    pub telemetry: Telemetry,
    /// Config versions and plugin generations.
    pub controller: Controller,
    /// Drain, and the draining state for `/ready`.
    pub shutdown: ShutdownHandle,
    /// The runtime log level, if the process has one to change.
    pub log_level: Option<Arc<dyn LogLevelControl>>,
    /// Where pushed modules are kept.
    pub state_dir: Option<PathBuf>,
    /// Worker threads, for `/v1/status`.
    pub workers: usize,
    /// A socket to serve on instead of binding `admin.address` (a binary upgrade hands the
    /// old process's over).
    pub inherited: Option<std::net::TcpListener>,
    /// The upgrade socket, for `POST /v1/upgrade`; `None`: upgrades are off.
    pub upgrade: Option<UpgradeSettings>,
}

/// Where `POST /v1/upgrade` asks for a binary upgrade.
#[derive(Debug, Clone)]
pub struct UpgradeSettings {
    /// The upgrade socket.
    pub socket: PathBuf,
    /// How long the upgrade may take, on top of which the request waits a little.
    pub ready_timeout: std::time::Duration,
}

/// Why the admin server did not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("admin address {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The tokens file or JWT key is unusable.
    #[error("admin.auth: {0}")]
    Auth(#[from] auth::AuthSetupError),
    /// The audit log cannot be written.
    #[error("admin.audit_log: {0}")]
    Audit(io::Error),
    /// The TLS files are unusable.
    #[error("admin.tls: {0}")]
    Tls(String),
    /// The thread or its runtime could not start.
    #[error("admin server: {0}")]
    Start(io::Error),
}

/// Everything a request handler reads. Shared with the gRPC service, whose generated code
/// wants `Send + Sync` state: the audit log sits behind tokio's (async) mutex, taken only by
/// admin calls, never by traffic.
pub(crate) struct AdminState {
    pub(crate) telemetry: Telemetry,
    pub(crate) controller: Controller,
    pub(crate) shutdown: ShutdownHandle,
    pub(crate) log_level: Option<Arc<dyn LogLevelControl>>,
    pub(crate) auth: Authenticator,
    pub(crate) audit: tokio::sync::Mutex<AuditLog>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) started: Instant,
    pub(crate) workers: usize,
    pub(crate) upgrade: Option<UpgradeSettings>,
}

/// Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running admin server.
pub struct AdminServer {
    address: SocketAddr,
    /// A duplicate of the listening socket, for a binary upgrade to hand over.
    socket: std::net::TcpListener,
    stop: Arc<tokio::sync::Notify>,
    /// Told once the server has stopped and its last connection ended.
    stopped: std::sync::mpsc::Receiver<()>,
}

impl AdminServer {
    /// Reads the auth files, opens the audit log and binds the address (so a taken port or
    /// a bad tokens file fails the start, with the reason), then serves on a thread of its
    /// own until the process exits.
    pub fn start(options: AdminOptions) -> Result<AdminServer, AdminError> {
        let address = options.admin.address;
        let auth = Authenticator::load(options.admin.auth.as_ref())?;
        let audit =
            AuditLog::open(options.admin.audit_log.as_deref()).map_err(AdminError::Audit)?;
        let tls = options
            .admin
            .tls
            .as_ref()
            .map(tls::server_config)
            .transpose()
            .map_err(AdminError::Tls)?;
        let listener = match options.inherited {
            Some(socket) => socket,
            None => std::net::TcpListener::bind(address)
                .map_err(|source| AdminError::Bind { address, source })?,
        };
        let socket = listener.try_clone().map_err(AdminError::Start)?;
        let stop = Arc::new(tokio::sync::Notify::new());
        listener.set_nonblocking(true).map_err(AdminError::Start)?;
        let address = listener.local_addr().map_err(AdminError::Start)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AdminError::Start)?;
        let AdminOptions {
            telemetry,
            controller,
            shutdown,
            log_level,
            state_dir,
            workers,
            upgrade,
            ..
        } = options;
        let stop_asked = Arc::clone(&stop);
        let (done, stopped) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("rustng-admin".into())
            .spawn(move || {
                let state = Arc::new(AdminState {
                    telemetry,
                    controller,
                    shutdown,
                    log_level,
                    auth,
                    audit: tokio::sync::Mutex::new(audit),
                    state_dir,
                    started: Instant::now(),
                    workers,
                    upgrade,
                });
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, serve(listener, state, tls, stop_asked));
                let _ = done.send(());
            })
            .map_err(AdminError::Start)?;
        tracing::info!(%address, "admin server listening");
        Ok(AdminServer {
            address,
            socket,
            stop,
            stopped,
        })
    }

    /// Stops accepting, lets the open connections finish what they are answering, and
    /// waits for that at most `timeout`: the process must not exit under a client that is
    /// waiting for an answer (`rustng-ctl upgrade` asks the process that then exits).
    pub fn stop_and_wait(&self, timeout: std::time::Duration) {
        self.stop.notify_one();
        let _ = self.stopped.recv_timeout(timeout);
    }

    /// A duplicate of the listening socket.
    pub fn socket(&self) -> std::io::Result<std::net::TcpListener> {
        self.socket.try_clone()
    }

    /// Something that stops accepting on the admin socket (connections already open are
    /// served to their end): for the old process once a binary upgrade's new one serves.
    pub fn stopper(&self) -> impl Fn() + Send + 'static {
        let stop = Arc::clone(&self.stop);
        move || stop.notify_one()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

/// The body of an admin answer: JSON or text from the REST side, or tonic's.
type AdminBody = Either<Full<Bytes>, tonic::body::Body>;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// After accepting stops, how long connections still get to send a first request before
/// idle ones are closed: a client whose connection was accepted in the last instant (during
/// a binary upgrade's handover, say) has sent its request by then, and gets an answer
/// instead of a closed connection.
const FIRST_REQUEST_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<AdminState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: Arc<tokio::sync::Notify>,
) {
    // Stopping closes idle connections and lets busy ones finish their answer.
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "admin server cannot listen");
            return;
        }
    };
    let grpc = proto::control_plane_server::ControlPlaneServer::new(grpc::ControlPlaneService {
        state: Arc::clone(&state),
    });
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.notified() => {
                tracing::info!("admin server stopped accepting");
                break;
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "admin accept failed");
                continue;
            }
        };
        let state = Arc::clone(&state);
        let grpc = grpc.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let state = Arc::clone(&state);
            let mut grpc = grpc.clone();
            async move {
                // One port, both APIs: gRPC by its content type (HTTP/2), REST otherwise.
                let is_grpc = req
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                let response: Response<AdminBody> = if is_grpc {
                    match grpc.call(req).await {
                        Ok(response) => response.map(Either::Right),
                        Err(never) => match never {},
                    }
                } else {
                    answer(&state, req).await.map(Either::Left)
                };
                Ok::<_, Infallible>(response)
            }
        });
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let connection = OpenConnection::new(&open);
        // Connections run as tasks of the admin thread's runtime (never a worker's).
        tokio::task::spawn_local(async move {
            let _connection = connection;
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let served = match acceptor {
                None => {
                    watcher
                        .watch(builder.serve_connection(TokioIo::new(stream), service))
                        .await
                }
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            watcher
                                .watch(builder.serve_connection(TokioIo::new(stream), service))
                                .await
                        }
                        Ok(Err(error)) => {
                            tracing::info!(%peer, %error, "admin TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "admin TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "admin connection error");
            }
        });
    }
    if open.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        tokio::time::sleep(FIRST_REQUEST_GRACE).await;
    }
    graceful.shutdown().await;
}

/// Counts an admin connection as open for as long as it lives.
struct OpenConnection(Arc<std::sync::atomic::AtomicUsize>);

impl OpenConnection {
    fn new(open: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenConnection(Arc::clone(open))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The answer to one admin request.
async fn answer(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let read = method == Method::GET || method == Method::HEAD;
    match path.as_str() {
        "/health" | "/ready" | "/metrics" if !read => {
            return method_not_allowed("GET, HEAD");
        }
        "/health" => return text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/ready" => return ready(state),
        "/metrics" => {
            return text(
                StatusCode::OK,
                PROMETHEUS_TEXT,
                state.telemetry.render_prometheus(),
            );
        }
        _ => {}
    }
    let route = match Route::parse(&method, &path) {
        Ok(route) => route,
        Err(NoRoute::NotFound) => {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": "not found" }),
            );
        }
        Err(NoRoute::Method(allowed)) => return method_not_allowed(allowed),
    };
    let before = state.controller.version();
    let audit = async |principal: &str, outcome: &Outcome| {
        if route.is_mutation() {
            state.audit.lock().await.record(AuditEntry {
                time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                principal: principal.to_owned(),
                action: format!("{method} {path}"),
                target: outcome.target.clone().or_else(|| route.target()),
                version_before: before,
                version_after: state.controller.version(),
                result: outcome.result.to_owned(),
                status: outcome.status.as_u16(),
                detail: outcome.detail(),
            });
        }
    };
    let principal = match state.auth.authenticate(req.headers()) {
        Ok(principal) => principal,
        Err(error) => {
            let outcome =
                Outcome::error(StatusCode::UNAUTHORIZED, "unauthorized", &error.to_string());
            audit("anonymous", &outcome).await;
            let mut response = json(outcome.status, &outcome.body);
            let challenge = match error {
                AuthError::Invalid(_) => "Bearer realm=\"rustng-admin\", error=\"invalid_token\"",
                _ => "Bearer realm=\"rustng-admin\"",
            };
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(challenge),
            );
            return response;
        }
    };
    if principal.role < route.needs() {
        let outcome = Outcome::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("{} has the read role; this needs admin", principal.name),
        );
        audit(&principal.name, &outcome).await;
        return json(outcome.status, &outcome.body);
    }
    debug_assert!(principal.role >= Role::Read);
    let outcome = api::run(state, route.clone(), &principal, req).await;
    audit(&principal.name, &outcome).await;
    json(outcome.status, &outcome.body)
}

/// Ready: a version runs and the process is not draining.
fn ready(state: &AdminState) -> Response<Full<Bytes>> {
    let version = state.controller.version();
    if state.shutdown.is_draining() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".into(),
        );
    }
    if version == 0 {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "starting\n".into(),
        );
    }
    text(
        StatusCode::OK,
        "text/plain",
        format!("ready (version {version})\n"),
    )
}

fn method_not_allowed(allowed: &'static str) -> Response<Full<Bytes>> {
    let mut response = json(
        StatusCode::METHOD_NOT_ALLOWED,
        &serde_json::json!({ "error": "method not allowed" }),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    response
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text_body = serde_json::to_string_pretty(body).unwrap_or_default();
    text_body.push('\n');
    text(status, "application/json", text_body)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
