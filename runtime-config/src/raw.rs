//! The config file as written: every field optional where the schema has a default, unknown
//! fields rejected, values kept as text where validation wants to report them with a path.

use serde::Deserialize;
use std::path::Path;

use crate::{ConfigError, FieldError};

/// The whole `rustng.yaml` document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Worker threads, each with its own runtime, sockets and pools. Default: number of cores.
    pub workers: Option<usize>,
    /// Process log settings.
    #[serde(default)]
    pub log: RawLog,
    /// Where traffic comes in.
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    /// Where traffic goes.
    #[serde(default)]
    pub clusters: Vec<RawCluster>,
    /// proxy-wasm plugins, in Envoy's `PluginConfig` shape.
    #[serde(default)]
    pub plugins: Vec<RawPlugin>,
    /// Settings of the wasm runtime shared by all plugins.
    #[serde(default)]
    pub wasm: RawWasm,
    /// The admin server; none unless the section is present (as in Envoy).
    pub admin: Option<RawAdmin>,
    /// Where config versions are kept across restarts (relative: to the config file).
    pub state_dir: Option<String>,
    /// A remote control plane RustNg subscribes to for config versions.
    pub control_plane: Option<RawControlPlane>,
    /// How long connections get to finish once a drain starts (shutdown, binary upgrade).
    /// Default `30s`.
    pub drain_timeout: Option<String>,
    /// Binary upgrade: the socket a new process takes the listeners over, the pid file.
    #[serde(default)]
    pub upgrade: RawUpgrade,
    /// OpenTelemetry tracing: propagation, sampling and OTLP export. Off unless present.
    pub tracing: Option<RawTracing>,
}

/// `tracing` — a span per HTTP request, exported over OTLP to a collector cluster.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// The `service.name` resource attribute of every span. Default `rustng`.
    pub service_name: Option<String>,
    /// Percent (0–100) of requests without a sampled parent that start a sampled trace
    /// (Envoy's `random_sampling`). A parent's decision is always followed. Default 100.
    pub random_sampling: Option<f64>,
    /// Where spans go.
    pub otlp: RawOtlp,
    /// Spans waiting for export at most; beyond it new ones are dropped (and counted), so a
    /// slow collector never holds traffic. Default 2048.
    pub max_queue_size: Option<usize>,
    /// Spans per export request at most. Default 512.
    pub max_export_batch_size: Option<usize>,
    /// How long a span may wait for a batch to fill. Default `1s`.
    pub schedule_delay: Option<String>,
}

/// `tracing.otlp` — the collector.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The cluster of collectors (OTLP/gRPC needs an `HTTP2` cluster).
    pub cluster: String,
    /// `grpc` (default) or `http` (OTLP/HTTP, binary protobuf).
    pub protocol: Option<String>,
    /// The request path for OTLP/HTTP. Default `/v1/traces`.
    pub path: Option<String>,
    /// How long one export may take. Default `5s`.
    pub timeout: Option<String>,
}

/// `upgrade` — zero-downtime binary upgrade by socket handover.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpgrade {
    /// The unix socket `rustng upgrade` and the new process talk to (relative: to the config
    /// file). Default: `<state_dir>/upgrade.sock`; without either, upgrades are off.
    pub socket: Option<String>,
    /// A file the serving process keeps its pid in (relative: to the config file).
    pub pid_file: Option<String>,
    /// How long a new process has to take over and report ready. Default `60s`.
    pub ready_timeout: Option<String>,
}

/// `control_plane` — a gRPC `rustng.control.v1.ControlPlane` server that streams configs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControlPlane {
    /// `http://host:port` (h2c).
    pub address: String,
    /// How this process names itself to the server. Default `rustng`.
    pub node: Option<String>,
    /// A file holding the bearer token sent to the server (relative: to the config file).
    pub token_file: Option<String>,
}

/// `admin` — the operators' HTTP endpoint (`/metrics`, `/health`, the `/v1` API).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Where it listens. Default: `127.0.0.1:9901` (loopback: it is not for clients).
    pub address: Option<String>,
    /// Who may call the `/v1` API; without it, only `/health`, `/ready` and `/metrics` answer.
    pub auth: Option<RawAdminAuth>,
    /// Where every mutation is recorded as a JSON line (relative: to the config file).
    /// Default: `<state_dir>/audit.jsonl`, or in memory only without a state directory.
    pub audit_log: Option<String>,
    /// HTTPS for the admin port, and with `client_ca` mutual TLS.
    pub tls: Option<RawAdminTls>,
}

/// `admin.tls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminTls {
    /// PEM certificate chain, leaf first.
    pub certificate_chain: String,
    /// PEM private key.
    pub private_key: String,
    /// PEM CA certificates; set, every client must present a certificate they issued.
    pub client_ca: Option<String>,
}

/// `admin.auth` — bearer tokens from a file, and/or JWTs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminAuth {
    /// YAML file: `tokens: [{ name, role: read|admin, token | token_sha256 }]`.
    pub tokens_file: Option<String>,
    /// JWTs signed by an identity provider.
    pub jwt: Option<RawAdminJwt>,
}

/// `admin.auth.jwt`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminJwt {
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// One of these must be in `aud`.
    pub audiences: Vec<String>,
    /// HS256: a file holding the shared secret (its bytes, trailing newline ignored).
    pub hs256_secret_file: Option<String>,
    /// RS256: a PEM file with the public key.
    pub rs256_public_key_file: Option<String>,
    /// The claim holding the role (`read` or `admin`). Default `role`.
    pub role_claim: Option<String>,
}

/// `wasm` — the runtime all plugins share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWasm {
    /// Directory where compiled modules are kept across restarts (absolute path). Default:
    /// none (modules are compiled once per process).
    pub module_cache_dir: Option<String>,
    /// Instance slots in the pool every plugin instance comes from. Default: room for every
    /// worker's instance of every plugin, four times over, and at least 128.
    pub instance_slots: Option<u32>,
}

/// `plugins[]` — Envoy's `envoy.extensions.wasm.v3.PluginConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    /// Unique name; listeners refer to it in `http_filters`.
    pub name: String,
    /// Selects the root context in modules that hold several. Default empty.
    #[serde(default)]
    pub root_id: String,
    /// The VM: module, runtime, environment.
    pub vm_config: RawVmConfig,
    /// Plugin configuration given to `proxy_on_configure`: a string, a mapping (passed as
    /// JSON) or Envoy's `{"@type": ".../google.protobuf.StringValue", "value": ...}`.
    pub configuration: Option<serde_yaml_ng::Value>,
    /// `FAIL_CLOSED` (default), `FAIL_OPEN` or `FAIL_RELOAD`.
    pub failure_policy: Option<String>,
    /// Envoy's older spelling of `failure_policy: FAIL_OPEN`.
    pub fail_open: Option<bool>,
    /// What each instance may use (RustNg's own; Envoy's V8 has process-wide flags instead).
    #[serde(default)]
    pub limits: RawPluginLimits,
}

/// `plugins[].limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginLimits {
    /// Most linear memory one instance may grow to, in MiB. Default 64.
    pub max_memory_mb: Option<usize>,
    /// Longest one callback may run (`100ms`, …); past it the call traps. Default 100ms.
    pub callback_timeout: Option<String>,
}

/// `plugins[].vm_config` — Envoy's `VmConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVmConfig {
    /// Plugins with the same VM id share data and queues. Default empty.
    #[serde(default)]
    pub vm_id: String,
    /// Any runtime name is accepted (`envoy.wasm.runtime.v8`, …); wasmtime runs it.
    pub runtime: Option<String>,
    /// Where the module comes from.
    pub code: RawCode,
    /// Configuration given to `proxy_on_vm_start`, same forms as the plugin configuration.
    pub configuration: Option<serde_yaml_ng::Value>,
    /// The module's WASI environment.
    pub environment_variables: Option<RawEnvironment>,
}

/// `vm_config.code`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCode {
    /// A module on local disk.
    pub local: RawLocal,
}

/// `vm_config.code.local`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLocal {
    /// Path of the `.wasm` file.
    pub filename: String,
}

/// `vm_config.environment_variables`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEnvironment {
    /// Variables set for the module.
    #[serde(default)]
    pub key_values: std::collections::BTreeMap<String, String>,
}

/// `log:` — level and format of the process log.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a `tracing` filter directive. Default `info`.
    pub level: Option<String>,
    /// `json` (default) or `text`.
    pub format: Option<String>,
}

/// `listeners[]` — one address that accepts HTTP (or HTTPS with `tls`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Unique name, used in logs and metrics.
    pub name: String,
    /// `ip:port` to bind.
    pub address: String,
    /// Cluster for requests that no router sends elsewhere.
    pub default_cluster: Option<String>,
    /// Terminate TLS on this listener.
    pub tls: Option<RawTls>,
    /// Most connections open at once on this listener (all workers). Default 10000.
    pub max_connections: Option<usize>,
    /// Write one JSON access log line per request. Default true.
    pub access_log: Option<bool>,
    /// HTTP protocol limits.
    #[serde(default)]
    pub http: RawHttpOptions,
    /// Plugins run on every request, in order (names from `plugins`).
    #[serde(default)]
    pub http_filters: Vec<String>,
    /// `http` (default) or `tcp`: a TCP listener proxies connections to `default_cluster`
    /// byte for byte (Envoy's `tcp_proxy`), through its `network_filters`.
    pub protocol: Option<String>,
    /// Plugins run on every connection of a `tcp` listener, in order.
    #[serde(default)]
    pub network_filters: Vec<String>,
    /// Serve HTTP/3 (QUIC, on UDP) too, with the listener's `tls` certificates.
    pub http3: Option<RawHttp3>,
}

/// `listeners[].http3` — HTTP/3 beside HTTP/1.1 and HTTP/2.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp3 {
    /// `ip:port` of the UDP socket. Default: the listener's address.
    pub address: Option<String>,
    /// Most concurrent request streams one connection may open. Default: the listener's
    /// `http.max_concurrent_streams`.
    pub max_concurrent_streams: Option<u32>,
    /// A connection with nothing received for this long is closed (QUIC's idle timeout).
    /// Default: the listener's `http.idle_timeout`.
    pub idle_timeout: Option<String>,
    /// Announce HTTP/3 in an `alt-svc` header on the listener's HTTP/1.1 and HTTP/2
    /// responses, as browsers need to find it. Default true.
    pub advertise: Option<bool>,
}

/// `listeners[].http` — limits against slow, large or greedy clients.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpOptions {
    /// Largest request head (request line + headers) in KiB; larger gets 431. Default 60.
    pub max_request_headers_kb: Option<usize>,
    /// Time a client has to send the whole request head; slower gets 408. Default 10s.
    pub request_headers_timeout: Option<String>,
    /// A connection with no request in flight for this long is closed. Default 60s.
    pub idle_timeout: Option<String>,
    /// Most concurrent streams on one HTTP/2 connection. Default 256.
    pub max_concurrent_streams: Option<u32>,
    /// Most body bytes held for filters that buffer a request or response (Envoy's
    /// `per_connection_buffer_limit_bytes`); a request over it gets 413. Default 1 MiB.
    pub buffer_limit_bytes: Option<usize>,
}

/// `listeners[].tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// Certificates; the first is the default when SNI matches none.
    pub certificates: Vec<RawCertificate>,
    /// ALPN protocols offered, in preference order. Default `[h2, http/1.1]`.
    pub alpn_protocols: Option<Vec<String>>,
}

/// `listeners[].tls.certificates[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file with the certificate chain, leaf first.
    pub certificate_chain: String,
    /// PEM file with the private key.
    pub private_key: String,
    /// SNI names this certificate serves (`example.com`, `*.example.com`). Default: none, so
    /// it only serves as the default certificate.
    #[serde(default)]
    pub server_names: Vec<String>,
}

/// `clusters[]` — a named set of upstream endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Unique name that listeners and routes refer to.
    pub name: String,
    /// Upstream endpoints.
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    /// `http1` (default) or `http2` (prior knowledge, cleartext) to the upstream.
    pub protocol: Option<String>,
    /// `ROUND_ROBIN` (default; weighted by endpoint weight), `LEAST_REQUEST`, `RANDOM`,
    /// `RING_HASH` or `MAGLEV`.
    pub lb_policy: Option<String>,
    /// Envoy's `common_lb_config`: the panic threshold.
    pub common_lb_config: Option<RawCommonLbConfig>,
    /// Envoy's `ring_hash_lb_config`.
    pub ring_hash_lb_config: Option<RawRingHashLbConfig>,
    /// Active health checks (Envoy's `health_checks`; one entry).
    #[serde(default)]
    pub health_checks: Vec<RawHealthCheck>,
    /// Passive health: ejecting endpoints that fail in a row.
    pub outlier_detection: Option<RawOutlierDetection>,
    /// Limits on what the cluster takes at once.
    pub circuit_breakers: Option<RawCircuitBreakers>,
    /// Where the endpoints come from at runtime: a discovery adapter plugin, and its settings
    /// for this cluster.
    pub discovery: Option<RawDiscovery>,
    /// Time allowed to open a TCP connection to an endpoint. Default 5s.
    pub connect_timeout: Option<String>,
    /// Time allowed from sending the request until the response head arrives; 504 after. Default 15s.
    pub timeout: Option<String>,
    /// Pooled idle connections are closed after this long. Default 60s.
    pub idle_timeout: Option<String>,
    /// Idle connections kept per endpoint per worker. Default 1024.
    pub max_idle_connections: Option<usize>,
    /// TLS to the endpoints (Envoy's `UpstreamTlsContext`, flattened).
    pub tls: Option<RawUpstreamTls>,
}

/// `clusters[].tls`: TLS origination to the cluster's endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Server name sent (SNI) and verified in the certificate; default the endpoint's IP.
    pub sni: Option<String>,
    /// PEM bundle of the CAs that may sign the endpoints' certificates.
    pub trusted_ca: Option<String>,
    /// PEM client certificate chain, for endpoints that require mutual TLS.
    pub certificate_chain: Option<String>,
    /// Its PEM private key.
    pub private_key: Option<String>,
}

/// `clusters[].discovery`: `plugin` names the adapter; every other field is the adapter's own
/// configuration for this cluster.
#[derive(Debug, Deserialize)]
pub struct RawDiscovery {
    /// The adapter plugin (from `plugins`).
    pub plugin: String,
    /// The rest, for the adapter.
    #[serde(flatten)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

/// `clusters[].common_lb_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommonLbConfig {
    /// Below this share of healthy endpoints (percent), traffic goes to all of them. Default 50.
    pub healthy_panic_threshold: Option<RawPercent>,
}

/// Envoy's `type.v3.Percent`: `{ value: 50.0 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPercent {
    /// 0 to 100.
    pub value: f64,
}

/// `clusters[].ring_hash_lb_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRingHashLbConfig {
    /// Points on the ring, at least. Default 1024.
    pub minimum_ring_size: Option<u64>,
    /// Points on the ring, at most. Default 8M.
    pub maximum_ring_size: Option<u64>,
}

/// `clusters[].health_checks[]`, in Envoy's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Time a check may take. Required.
    pub timeout: Option<String>,
    /// Time between checks. Required.
    pub interval: Option<String>,
    /// Up to this much added to each interval, at random. Default 0.
    pub interval_jitter: Option<String>,
    /// Failed checks in a row that make an endpoint unhealthy. Required.
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks in a row that make it healthy again. Required.
    pub healthy_threshold: Option<u32>,
    /// An HTTP request.
    pub http_health_check: Option<RawHttpHealthCheck>,
    /// `grpc.health.v1.Health/Check`.
    pub grpc_health_check: Option<RawGrpcHealthCheck>,
    /// A TCP connect.
    pub tcp_health_check: Option<serde_yaml_ng::Value>,
}

/// `http_health_check`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttpHealthCheck {
    /// Request path. Required.
    pub path: String,
    /// `Host` header. Default: the cluster's name.
    pub host: Option<String>,
    /// Healthy statuses as `[start, end)` ranges. Default `[{start: 200, end: 201}]`.
    pub expected_statuses: Option<Vec<RawStatusRange>>,
}

/// A `[start, end)` range of status codes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStatusRange {
    /// First status in the range.
    pub start: u16,
    /// First status after it.
    pub end: u16,
}

/// `grpc_health_check`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrpcHealthCheck {
    /// The service asked about; empty: the server as a whole.
    #[serde(default)]
    pub service_name: String,
    /// `:authority`. Default: the cluster's name.
    pub authority: Option<String>,
}

/// `clusters[].outlier_detection`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlierDetection {
    /// 5xx answers (and connect failures, timeouts, resets) in a row that eject. Default 5.
    pub consecutive_5xx: Option<u32>,
    /// First ejection's length; each further one is longer by as much. Default 30s.
    pub base_ejection_time: Option<String>,
    /// Longest ejection. Default 300s.
    pub max_ejection_time: Option<String>,
    /// Most endpoints ejected at once, percent (at least one is always allowed). Default 10.
    pub max_ejection_percent: Option<u32>,
}

/// `clusters[].circuit_breakers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreakers {
    /// Envoy's per-priority thresholds; the first (default priority) applies.
    #[serde(default)]
    pub thresholds: Vec<RawThresholds>,
}

/// One priority's limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThresholds {
    /// Only `DEFAULT` is served.
    pub priority: Option<String>,
    /// Upstream connections open at once. Default 1024.
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection. Default 1024.
    pub max_pending_requests: Option<u32>,
    /// Requests in flight. Default 1024.
    pub max_requests: Option<u32>,
    /// Retries in flight. Default 3.
    pub max_retries: Option<u32>,
}

/// `clusters[].endpoints[]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// `ip:port`.
    pub address: String,
    /// Share of traffic relative to the other endpoints. Default 1.
    pub weight: Option<u32>,
}

/// Parses YAML into the raw schema; the error names the field where parsing stopped.
pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    serde_yaml_ng::from_str(text).map_err(|err| ConfigError::Schema(split_path(err.to_string())))
}

/// serde_yaml_ng prefixes a message with the path of the field when it has one
/// (`clusters[0].endpoints[0]: unknown field ...`); split it off so the error's path is data.
fn split_path(message: String) -> FieldError {
    match message.split_once(": ") {
        Some((path, rest)) if !path.is_empty() && !path.contains(char::is_whitespace) => {
            FieldError::new(path, rest)
        }
        _ => FieldError::new("", message),
    }
}

impl RawConfig {
    /// Makes relative file paths relative to `dir` (the config file's directory).
    pub fn resolve_relative_paths(&mut self, dir: &Path) {
        let resolve = |p: &mut String| {
            if !p.is_empty() && Path::new(p.as_str()).is_relative() {
                *p = dir.join(p.as_str()).to_string_lossy().into_owned();
            }
        };
        if let Some(state_dir) = &mut self.state_dir {
            resolve(state_dir);
        }
        if let Some(socket) = &mut self.upgrade.socket {
            resolve(socket);
        }
        if let Some(pid_file) = &mut self.upgrade.pid_file {
            resolve(pid_file);
        }
        if let Some(token) = self
            .control_plane
            .as_mut()
            .and_then(|c| c.token_file.as_mut())
        {
            resolve(token);
        }
        if let Some(admin) = &mut self.admin {
            if let Some(audit) = &mut admin.audit_log {
                resolve(audit);
            }
            if let Some(tls) = &mut admin.tls {
                resolve(&mut tls.certificate_chain);
                resolve(&mut tls.private_key);
                if let Some(ca) = &mut tls.client_ca {
                    resolve(ca);
                }
            }
            if let Some(auth) = &mut admin.auth {
                if let Some(tokens) = &mut auth.tokens_file {
                    resolve(tokens);
                }
                if let Some(jwt) = &mut auth.jwt {
                    for file in [&mut jwt.hs256_secret_file, &mut jwt.rs256_public_key_file]
                        .into_iter()
                        .flatten()
                    {
                        resolve(file);
                    }
                }
            }
        }
        for plugin in &mut self.plugins {
            resolve(&mut plugin.vm_config.code.local.filename);
        }
        for listener in &mut self.listeners {
            if let Some(tls) = &mut listener.tls {
                for cert in &mut tls.certificates {
                    resolve(&mut cert.certificate_chain);
                    resolve(&mut cert.private_key);
                }
            }
        }
    }
}
