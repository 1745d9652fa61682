//! The validated config: every default applied, every value typed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A validated RustNg configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Worker threads (≥ 1).
    pub workers: usize,
    /// Process log settings.
    pub log: LogConfig,
    /// Listeners, in file order.
    pub listeners: Vec<Listener>,
    /// Clusters, in file order.
    pub clusters: Vec<Cluster>,
    /// proxy-wasm plugins, in file order.
    pub plugins: Vec<Plugin>,
    /// Where compiled modules are kept across restarts, if anywhere.
    pub module_cache_dir: Option<PathBuf>,
    /// The size of the wasm instance pool, if set (`None`: sized from workers and plugins).
    pub wasm_instance_slots: Option<u32>,
    /// The admin server, if configured.
    pub admin: Option<Admin>,
    /// Where applied config versions are kept, so history survives a restart; `None`: in
    /// memory only.
    pub state_dir: Option<PathBuf>,
    /// The remote control plane to subscribe to, if any.
    pub control_plane: Option<ControlPlane>,
    /// How long connections get to finish once a drain starts.
    pub drain_timeout: Duration,
    /// Binary upgrade settings.
    pub upgrade: Upgrade,
    /// OpenTelemetry tracing, if configured.
    pub tracing: Option<Tracing>,
}

/// OpenTelemetry tracing: W3C (and B3) propagation, sampling, OTLP export.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Share (0.0–1.0) of root requests sampled.
    pub sampling_ratio: f64,
    /// The collector.
    pub otlp: Otlp,
    /// Spans waiting for export at most.
    pub max_queue_size: usize,
    /// Spans per export at most.
    pub max_export_batch_size: usize,
    /// How long a span may wait for its batch.
    pub schedule_delay: Duration,
}

/// Where spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Otlp {
    /// The collector cluster.
    pub cluster: String,
    /// OTLP over gRPC or over HTTP.
    pub protocol: OtlpProtocol,
    /// The OTLP/HTTP request path.
    pub path: String,
    /// Bound on one export.
    pub timeout: Duration,
}

/// OTLP's two transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
    Grpc,
    /// `POST` of a binary protobuf `ExportTraceServiceRequest`.
    Http,
}

/// Binary upgrade: where the serving process waits for its successor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The unix socket for `rustng upgrade` and the handover; `None`: upgrades are off.
    pub socket: Option<PathBuf>,
    /// The pid file, if any.
    pub pid_file: Option<PathBuf>,
    /// How long a new process has to take over and report ready.
    pub ready_timeout: Duration,
}

/// A remote control plane (gRPC `rustng.control.v1.ControlPlane/Subscribe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlane {
    /// `http://host:port`.
    pub address: String,
    /// This process's name to the server.
    pub node: String,
    /// The bearer token's file.
    pub token_file: Option<PathBuf>,
}

/// The admin server's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    /// Where it listens.
    pub address: std::net::SocketAddr,
    /// Who may call the API; `None`: nobody (only health, readiness and metrics answer).
    pub auth: Option<AdminAuth>,
    /// The audit log's file, when set (or derived from `state_dir`).
    pub audit_log: Option<PathBuf>,
    /// HTTPS (and mutual TLS) for the admin port.
    pub tls: Option<AdminTls>,
}

/// The admin port's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    /// PEM certificate chain.
    pub certificate_chain: PathBuf,
    /// PEM private key.
    pub private_key: PathBuf,
    /// PEM CA bundle for client certificates (mutual TLS), if required.
    pub client_ca: Option<PathBuf>,
}

/// How admin API callers prove who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAuth {
    /// The bearer tokens file.
    pub tokens_file: Option<PathBuf>,
    /// JWT verification.
    pub jwt: Option<AdminJwt>,
}

/// JWTs accepted by the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminJwt {
    /// Required `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// The verification key.
    pub key: AdminJwtKey,
    /// The claim naming the role.
    pub role_claim: String,
}

/// Where the admin JWT key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminJwtKey {
    /// HS256 with the secret in this file.
    Hs256SecretFile(PathBuf),
    /// RS256 with the PEM public key in this file.
    Rs256PublicKeyFile(PathBuf),
}

/// Where the admin server listens when its section gives no address (Envoy's usual port).
pub const DEFAULT_ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// The built-in filter a listener's `http_filters` may name beside plugins: gRPC-Web
/// translation, under Envoy's name for it.
pub const GRPC_WEB_FILTER: &str = "envoy.filters.http.grpc_web";

/// A validated proxy-wasm plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    /// Unique name.
    pub name: String,
    /// Root id.
    pub root_id: String,
    /// VM id.
    pub vm_id: String,
    /// The `.wasm` file.
    pub module: PathBuf,
    /// Bytes given to `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// Bytes given to `proxy_on_configure`.
    pub configuration: Vec<u8>,
    /// The module's WASI environment.
    pub environment: Vec<(String, String)>,
    /// What a failing plugin does to the request.
    pub failure_policy: FailurePolicy,
    /// Most linear memory per instance, in bytes.
    pub max_memory_bytes: usize,
    /// Longest a callback may run.
    pub callback_timeout: Duration,
    /// A discovery adapter: one instance per process, on RustNg's discovery thread, never in
    /// a filter chain (set when a cluster names it in `discovery.plugin`).
    pub singleton: bool,
}

/// What happens to requests when a plugin traps, runs out of time or memory (Envoy's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Answer 503; the failed instance stays failed until the plugin is reloaded (default).
    FailClosed,
    /// Skip the plugin while it is failed.
    FailOpen,
    /// Answer 503 for the request that failed and start a fresh instance for the next one.
    FailReload,
}

impl Config {
    /// The cluster called `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// Process log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `rustng_core=debug`.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (default): what log shippers expect.
    Json,
    /// Human-readable text, for a terminal.
    Text,
}

/// A validated listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// Bound address.
    pub address: SocketAddr,
    /// Cluster for requests no router sends elsewhere.
    pub default_cluster: Option<String>,
    /// TLS termination, if any.
    pub tls: Option<TlsConfig>,
    /// Most connections open at once on this listener.
    pub max_connections: usize,
    /// Whether each request writes an access log line.
    pub access_log: bool,
    /// HTTP limits.
    pub http: HttpOptions,
    /// Plugins run on each request, in order.
    pub http_filters: Vec<String>,
    /// gRPC-Web requests are translated to gRPC and back (Envoy's
    /// `envoy.filters.http.grpc_web` named in `http_filters`).
    pub grpc_web: bool,
    /// What the listener speaks.
    pub protocol: ListenerProtocol,
    /// Plugins run on each connection of a TCP listener, in order.
    pub network_filters: Vec<String>,
    /// HTTP/3 on UDP beside the TCP listener, if configured.
    pub http3: Option<Http3>,
}

/// A listener's HTTP/3 (QUIC) side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http3 {
    /// The UDP address.
    pub address: SocketAddr,
    /// Most concurrent request streams per connection.
    pub max_concurrent_streams: u32,
    /// QUIC idle timeout.
    pub idle_timeout: Duration,
    /// Whether TCP responses carry `alt-svc`.
    pub advertise: bool,
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (cleartext or TLS).
    Http,
    /// Plain TCP, proxied to the listener's cluster.
    Tcp,
}

/// HTTP limits of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Largest request head in bytes; larger gets 431.
    pub max_request_headers_bytes: usize,
    /// Most body bytes held for buffering filters; a request over it gets 413.
    pub buffer_limit_bytes: usize,
    /// Time to receive a whole request head; slower gets 408.
    pub request_headers_timeout: Duration,
    /// Close a connection with nothing in flight after this long.
    pub idle_timeout: Duration,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

/// TLS termination settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificates; the first one is served when SNI matches none.
    pub certificates: Vec<CertificateConfig>,
    /// ALPN protocol ids in preference order.
    pub alpn_protocols: Vec<String>,
}

/// One certificate and the names it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateConfig {
    /// PEM certificate chain.
    pub certificate_chain: PathBuf,
    /// PEM private key.
    pub private_key: PathBuf,
    /// Lower-cased SNI names, exact or `*.suffix`.
    pub server_names: Vec<String>,
}

/// A validated upstream cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Unique name.
    pub name: String,
    /// Endpoints with their weights.
    pub endpoints: Vec<Endpoint>,
    /// Protocol spoken to the endpoints.
    pub protocol: UpstreamProtocol,
    /// How an endpoint is picked.
    pub lb_policy: LbPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time from request sent to response head received.
    pub timeout: Duration,
    /// Idle pooled connections are closed after this long.
    pub idle_timeout: Duration,
    /// Idle connections kept per endpoint per worker.
    pub max_idle_connections: usize,
    /// Below this share of healthy endpoints (0.0–1.0), traffic goes to all of them.
    pub healthy_panic_threshold: f64,
    /// Ring size bounds for `RING_HASH`.
    pub ring_size: (u64, u64),
    /// Active health checking, if configured.
    pub health_check: Option<HealthCheck>,
    /// Passive health (ejection), if configured.
    pub outlier_detection: Option<OutlierDetection>,
    /// Limits on what the cluster takes at once.
    pub circuit_breakers: CircuitBreakers,
    /// The discovery adapter that publishes the endpoints, if any (`endpoints` then serve
    /// until it first does).
    pub discovery: Option<Discovery>,
    /// TLS to the endpoints, if configured.
    pub tls: Option<UpstreamTls>,
}

/// TLS origination to a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent and verified; `None`: the endpoint's IP address.
    pub sni: Option<String>,
    /// PEM bundle of trusted CAs.
    pub trusted_ca: PathBuf,
    /// Client certificate chain and key (PEM), for mutual TLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
}

/// A cluster's discovery adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// The adapter plugin.
    pub plugin: String,
    /// Its settings for this cluster (JSON).
    pub config: serde_json::Value,
}

/// Active health checking of a cluster's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time a check may take.
    pub timeout: Duration,
    /// Time between checks.
    pub interval: Duration,
    /// Up to this much added to each interval, at random.
    pub interval_jitter: Duration,
    /// Failed checks in a row that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that make it healthy again.
    pub healthy_threshold: u32,
    /// What a check does.
    pub kind: HealthCheckKind,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// An HTTP GET (over the cluster's protocol).
    Http {
        /// Path.
        path: String,
        /// `Host` / `:authority`.
        host: String,
        /// Healthy statuses, `[start, end)` ranges.
        expected_statuses: Vec<(u16, u16)>,
    },
    /// `grpc.health.v1.Health/Check` over HTTP/2.
    Grpc {
        /// The service asked about.
        service_name: String,
        /// `:authority`.
        authority: String,
    },
    /// A TCP connect.
    Tcp,
}

/// Passive health: endpoints that fail in a row leave rotation for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Failures in a row that eject.
    pub consecutive_5xx: u32,
    /// First ejection's length (the n-th lasts n times as long).
    pub base_ejection_time: Duration,
    /// Longest ejection.
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, percent.
    pub max_ejection_percent: u32,
}

/// A cluster's circuit breakers (Envoy's default-priority thresholds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// Upstream connections open at once.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    /// Envoy's defaults.
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// An upstream endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Socket address.
    pub address: SocketAddr,
    /// Relative share of traffic (≥ 1).
    pub weight: u32,
}

/// Protocol spoken to upstream endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive pooling.
    Http1,
    /// HTTP/2 cleartext with prior knowledge; one multiplexed connection per endpoint.
    Http2,
}

/// Load-balancing policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Smooth weighted round robin (nginx's algorithm): even spread that honours weights.
    RoundRobin,
    /// The less busy of two endpoints picked at random (weighted).
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring, on the hash key the route sets.
    RingHash,
    /// Maglev consistent hashing, on the hash key the route sets.
    Maglev,
}
