//! Raw schema → validated [`Config`], collecting every error with its path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::raw::{RawCertificate, RawCluster, RawConfig, RawListener, RawPlugin};
use crate::types::*;
use crate::{ConfigError, FieldError};

/// Per-instance memory a plugin may ask for (wasm32 cannot address more than 4 GiB).
const PLUGIN_MEMORY_MB_RANGE: std::ops::RangeInclusive<usize> = 1..=4096;

/// Defaults, each with the reason for its value.
mod defaults {
    use std::time::Duration;

    /// An order of magnitude over what SDK-built filters use (1-2 MiB), small enough that a
    /// memory bomb cannot hurt the host.
    pub(crate) const PLUGIN_MEMORY_MB: usize = 64;
    /// Filters run in microseconds; anything near 100 ms is a loop blocking a worker.
    pub(crate) const PLUGIN_CALLBACK_TIMEOUT: Duration = Duration::from_millis(100);
    /// Envoy's default `per_connection_buffer_limit_bytes` (1 MiB).
    pub(crate) const BUFFER_LIMIT_BYTES: usize = 1024 * 1024;
    /// Envoy's default for `max_request_headers_kb`.
    pub(super) const MAX_REQUEST_HEADERS_KB: usize = 60;
    /// Long enough for real clients on bad links, short enough to shed slowloris.
    pub(super) const REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
    /// nginx's `keepalive_timeout` is 75 s; browsers reuse for about a minute.
    pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Twice nginx's 128: proxies see many multiplexed clients behind one connection.
    pub(super) const MAX_CONCURRENT_STREAMS: u32 = 256;
    /// Guards file descriptors without getting in the way of a normal box.
    pub(super) const MAX_CONNECTIONS: usize = 10_000;
    /// Envoy's default cluster `connect_timeout`.
    pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// Envoy's default route timeout.
    pub(super) const TIMEOUT: Duration = Duration::from_secs(15);
    /// Shorter than most origins' own keep-alive (nginx 75 s) so we rarely reuse a closing one.
    pub(super) const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Envoy's default connection cap per cluster: a multiplexing client (h2, 10 streams on
    /// each of 32 connections) needs one upstream HTTP/1.1 connection per stream in flight, and
    /// a smaller cap closes and reopens connections on every burst. Idle ones still expire.
    pub(super) const MAX_IDLE_CONNECTIONS: usize = 1024;
    /// Envoy's `healthy_panic_threshold`: below half healthy, health says little about the
    /// endpoints and much about the checks or the network.
    pub(super) const HEALTHY_PANIC_THRESHOLD: f64 = 0.5;
    /// Envoy's ring hash bounds.
    pub(super) const MIN_RING_SIZE: u64 = 1024;
    pub(super) const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
    /// Envoy's `--drain-time-s` default is 600 s for hot restarts; 30 s lets long downloads
    /// and slow clients finish without keeping an old binary around for minutes.
    pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// Compiling a large set of modules cold can take seconds on a small box.
    pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(60);
    /// The OpenTelemetry SDKs' batch span processor defaults (`OTEL_BSP_*`).
    pub(super) const TRACE_QUEUE_SIZE: usize = 2048;
    pub(super) const TRACE_BATCH_SIZE: usize = 512;
    pub(super) const TRACE_SCHEDULE_DELAY: Duration = Duration::from_secs(1);
    /// Also the SDKs' `OTEL_EXPORTER_OTLP_TIMEOUT` (10 s) halved: a span older than that
    /// tells an operator little, and the queue behind it keeps growing.
    pub(super) const TRACE_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
}

/// `sun_path` holds 108 bytes with its terminating NUL.
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// hyper refuses header buffers under 8 KiB; 1 MiB is far past any sane client.
const HEADERS_KB_RANGE: std::ops::RangeInclusive<usize> = 8..=1024;

/// Validates a raw config, returning every problem found.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut v = Validator::default();
    let config = v.config(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(v.errors))
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<FieldError>,
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let workers = match raw.workers {
            Some(0) => {
                self.error("workers", "must be at least 1");
                1
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let log = self.log(raw.log);

        let cluster_names: Vec<&str> = raw.clusters.iter().map(|c| c.name.as_str()).collect();
        let mut seen = HashSet::new();
        for (i, name) in cluster_names.iter().enumerate() {
            if name.is_empty() {
                self.error(format!("clusters[{i}].name"), "must not be empty");
            } else if !seen.insert(*name) {
                self.error(
                    format!("clusters[{i}].name"),
                    format!("duplicate cluster name \"{name}\""),
                );
            }
        }

        let mut seen_plugins = HashSet::new();
        for (i, plugin) in raw.plugins.iter().enumerate() {
            if plugin.name.is_empty() {
                self.error(format!("plugins[{i}].name"), "must not be empty");
            } else if !seen_plugins.insert(plugin.name.as_str()) {
                self.error(
                    format!("plugins[{i}].name"),
                    format!("duplicate plugin name \"{}\"", plugin.name),
                );
            }
        }
        let plugin_names: Vec<String> = raw.plugins.iter().map(|p| p.name.clone()).collect();

        if raw.listeners.is_empty() {
            self.error("listeners", "at least one listener is required");
        }
        let mut listener_names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut udp_addresses = HashSet::new();
        let listeners: Vec<Listener> = raw
            .listeners
            .into_iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let path = format!("listeners[{i}]");
                if l.name.is_empty() {
                    self.error(format!("{path}.name"), "must not be empty");
                } else if !listener_names.insert(l.name.clone()) {
                    self.error(
                        format!("{path}.name"),
                        format!("duplicate listener name \"{}\"", l.name),
                    );
                }
                for (field, filters) in [
                    ("http_filters", &l.http_filters),
                    ("network_filters", &l.network_filters),
                ] {
                    for (j, filter) in filters.iter().enumerate() {
                        let built_in = field == "http_filters" && filter == GRPC_WEB_FILTER;
                        if !built_in && !plugin_names.contains(filter) {
                            self.error(
                                format!("{path}.{field}[{j}]"),
                                format!("unknown plugin \"{filter}\""),
                            );
                        }
                    }
                }
                let listener = self.listener(&path, l, &cluster_names)?;
                if !addresses.insert(listener.address) {
                    self.error(
                        format!("{path}.address"),
                        format!(
                            "address {} is already used by another listener",
                            listener.address
                        ),
                    );
                }
                if let Some(h3) = &listener.http3
                    && h3.address.port() != 0
                    && !udp_addresses.insert(h3.address)
                {
                    self.error(
                        format!("{path}.http3.address"),
                        format!(
                            "UDP address {} is already used by another listener",
                            h3.address
                        ),
                    );
                }
                Some(listener)
            })
            .collect();

        let clusters: Vec<Cluster> = raw
            .clusters
            .into_iter()
            .enumerate()
            .map(|(i, c)| self.cluster(&format!("clusters[{i}]"), c, &plugin_names))
            .collect();

        let mut plugins: Vec<Plugin> = raw
            .plugins
            .into_iter()
            .enumerate()
            .map(|(i, p)| self.plugin(&format!("plugins[{i}]"), p))
            .collect();
        self.discovery_adapters(&listeners, &clusters, &mut plugins);

        let module_cache_dir = raw.wasm.module_cache_dir.map(PathBuf::from);
        if let Some(dir) = &module_cache_dir
            && !dir.is_absolute()
        {
            self.error(
                "wasm.module_cache_dir",
                format!("must be an absolute path, not \"{}\"", dir.display()),
            );
        }
        let wasm_instance_slots = raw.wasm.instance_slots;
        if wasm_instance_slots == Some(0) {
            self.error("wasm.instance_slots", "must be at least 1");
        }
        let admin = raw.admin.and_then(|a| {
            let text = a.address.as_deref().unwrap_or(DEFAULT_ADMIN_ADDRESS);
            let address = self.socket_addr("admin.address", text)?;
            if addresses.contains(&address) {
                self.error(
                    "admin.address",
                    format!("address {address} is already used by a listener"),
                );
            }
            let auth = a.auth.map(|auth| self.admin_auth(auth));
            let audit_log = a.audit_log.map(PathBuf::from).or_else(|| {
                raw.state_dir
                    .as_ref()
                    .map(|dir| Path::new(dir).join("audit.jsonl"))
            });
            let tls = a.tls.map(|tls| AdminTls {
                certificate_chain: self
                    .readable_file("admin.tls.certificate_chain", &tls.certificate_chain),
                private_key: self.readable_file("admin.tls.private_key", &tls.private_key),
                client_ca: tls
                    .client_ca
                    .map(|ca| self.readable_file("admin.tls.client_ca", &ca)),
            });
            Some(Admin {
                address,
                auth,
                audit_log,
                tls,
            })
        });
        let state_dir = raw.state_dir.map(PathBuf::from);
        if let Some(dir) = &state_dir
            && dir.as_os_str().is_empty()
        {
            self.error("state_dir", "must not be empty");
        }
        let control_plane = raw.control_plane.map(|c| {
            let well_formed = c
                .address
                .strip_prefix("http://")
                .and_then(|rest| rest.split('/').next())
                .is_some_and(|authority| {
                    authority.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
                    })
                });
            if !well_formed {
                self.error(
                    "control_plane.address",
                    format!("\"{}\" is not http://host:port", c.address),
                );
            }
            let token_file = c
                .token_file
                .map(|file| self.readable_file("control_plane.token_file", &file));
            ControlPlane {
                address: c.address,
                node: c.node.unwrap_or_else(|| "rustng".to_owned()),
                token_file,
            }
        });
        let drain_timeout = self.duration(
            "drain_timeout",
            raw.drain_timeout.as_deref(),
            defaults::DRAIN_TIMEOUT,
        );
        let upgrade = self.upgrade(raw.upgrade, state_dir.as_deref());
        let tracing = raw.tracing.map(|t| self.tracing(t, &clusters));
        Config {
            tracing,
            control_plane,
            drain_timeout,
            upgrade,
            workers,
            log,
            listeners,
            clusters,
            plugins,
            module_cache_dir,
            wasm_instance_slots,
            admin,
            state_dir,
        }
    }

    /// Plugins that clusters name as discovery adapters run once per process, never in a
    /// filter chain; each gets, as its configuration, its own settings and every cluster's
    /// discovery section: `{"settings": <configuration>, "clusters": {"<name>": {...}}}`.
    fn discovery_adapters(
        &mut self,
        listeners: &[Listener],
        clusters: &[Cluster],
        plugins: &mut [Plugin],
    ) {
        for plugin in plugins.iter_mut() {
            let served: serde_json::Map<String, serde_json::Value> = clusters
                .iter()
                .filter_map(|c| {
                    let d = c.discovery.as_ref().filter(|d| d.plugin == plugin.name)?;
                    Some((c.name.clone(), d.config.clone()))
                })
                .collect();
            if served.is_empty() {
                continue;
            }
            for (i, listener) in listeners.iter().enumerate() {
                for (field, filters) in [
                    ("http_filters", &listener.http_filters),
                    ("network_filters", &listener.network_filters),
                ] {
                    if let Some(j) = filters.iter().position(|f| *f == plugin.name) {
                        self.error(
                            format!("listeners[{i}].{field}[{j}]"),
                            format!(
                                "plugin \"{}\" is a discovery adapter (a cluster's discovery.plugin): it runs once per process, not in a filter chain",
                                plugin.name
                            ),
                        );
                    }
                }
            }
            let settings = serde_json::from_slice(&plugin.configuration).unwrap_or_else(|_| {
                serde_json::Value::String(
                    String::from_utf8_lossy(&plugin.configuration).into_owned(),
                )
            });
            let wrapped = serde_json::json!({ "settings": settings, "clusters": served });
            plugin.configuration = wrapped.to_string().into_bytes();
            plugin.singleton = true;
        }
    }

    fn log(&mut self, raw: crate::raw::RawLog) -> LogConfig {
        let format = match raw.format.as_deref() {
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                self.error(
                    "log.format",
                    format!("unknown format \"{other}\" (expected json or text)"),
                );
                LogFormat::Json
            }
        };
        LogConfig {
            level: raw.level.unwrap_or_else(|| "info".to_owned()),
            format,
        }
    }

    fn listener(&mut self, path: &str, l: RawListener, clusters: &[&str]) -> Option<Listener> {
        let address = self.socket_addr(&format!("{path}.address"), &l.address);
        if let Some(name) = &l.default_cluster
            && !clusters.contains(&name.as_str())
        {
            self.error(
                format!("{path}.default_cluster"),
                format!("unknown cluster \"{name}\""),
            );
        }
        let tls = l.tls.map(|tls| {
            let tls_path = format!("{path}.tls");
            if tls.certificates.is_empty() {
                self.error(
                    format!("{tls_path}.certificates"),
                    "at least one certificate is required",
                );
            }
            let certificates = tls
                .certificates
                .into_iter()
                .enumerate()
                .map(|(i, c)| self.certificate(&format!("{tls_path}.certificates[{i}]"), c))
                .collect();
            let alpn_protocols = tls
                .alpn_protocols
                .unwrap_or_else(|| vec!["h2".to_owned(), "http/1.1".to_owned()]);
            for (i, p) in alpn_protocols.iter().enumerate() {
                if !matches!(p.as_str(), "h2" | "http/1.1") {
                    self.error(
                        format!("{tls_path}.alpn_protocols[{i}]"),
                        format!("unsupported protocol \"{p}\" (expected h2 or http/1.1)"),
                    );
                }
            }
            TlsConfig {
                certificates,
                alpn_protocols,
            }
        });
        let max_connections = l.max_connections.unwrap_or(defaults::MAX_CONNECTIONS);
        if max_connections == 0 {
            self.error(format!("{path}.max_connections"), "must be at least 1");
        }

        let h = l.http;
        let kb = h
            .max_request_headers_kb
            .unwrap_or(defaults::MAX_REQUEST_HEADERS_KB);
        if !HEADERS_KB_RANGE.contains(&kb) {
            self.error(
                format!("{path}.http.max_request_headers_kb"),
                format!(
                    "{kb} is out of range {}..={}",
                    HEADERS_KB_RANGE.start(),
                    HEADERS_KB_RANGE.end()
                ),
            );
        }
        let max_concurrent_streams = h
            .max_concurrent_streams
            .unwrap_or(defaults::MAX_CONCURRENT_STREAMS);
        if max_concurrent_streams == 0 {
            self.error(
                format!("{path}.http.max_concurrent_streams"),
                "must be at least 1",
            );
        }
        let buffer_limit_bytes = h.buffer_limit_bytes.unwrap_or(defaults::BUFFER_LIMIT_BYTES);
        if buffer_limit_bytes == 0 {
            self.error(
                format!("{path}.http.buffer_limit_bytes"),
                "must be at least 1",
            );
        }
        let http = HttpOptions {
            max_request_headers_bytes: kb * 1024,
            buffer_limit_bytes,
            request_headers_timeout: self.duration(
                &format!("{path}.http.request_headers_timeout"),
                h.request_headers_timeout.as_deref(),
                defaults::REQUEST_HEADERS_TIMEOUT,
            ),
            idle_timeout: self.duration(
                &format!("{path}.http.idle_timeout"),
                h.idle_timeout.as_deref(),
                defaults::IDLE_TIMEOUT,
            ),
            max_concurrent_streams,
        };

        let protocol = match l.protocol.as_deref() {
            None | Some("http") => ListenerProtocol::Http,
            Some("tcp") => ListenerProtocol::Tcp,
            Some(other) => {
                self.error(
                    format!("{path}.protocol"),
                    format!("unknown protocol \"{other}\" (http or tcp)"),
                );
                ListenerProtocol::Http
            }
        };
        match protocol {
            ListenerProtocol::Http if !l.network_filters.is_empty() => self.error(
                format!("{path}.network_filters"),
                "only TCP listeners (protocol: tcp) run network filters",
            ),
            ListenerProtocol::Tcp => {
                if !l.http_filters.is_empty() {
                    self.error(
                        format!("{path}.http_filters"),
                        "a TCP listener sees no HTTP: use network_filters",
                    );
                }
                if l.default_cluster.is_none() {
                    self.error(
                        format!("{path}.default_cluster"),
                        "a TCP listener needs the cluster it proxies to",
                    );
                }
                if tls.is_some() {
                    self.error(
                        format!("{path}.tls"),
                        "TLS on TCP listeners is not supported yet",
                    );
                }
            }
            ListenerProtocol::Http => {}
        }
        let http3 = l.http3.and_then(|h3| {
            let h3_path = format!("{path}.http3");
            if protocol == ListenerProtocol::Tcp {
                self.error(&h3_path, "a TCP listener cannot serve HTTP/3");
            } else if tls.is_none() {
                self.error(
                    &h3_path,
                    "HTTP/3 is always encrypted: the listener needs tls (its certificates serve both)",
                );
            }
            let udp = match &h3.address {
                Some(text) => self.socket_addr(&format!("{h3_path}.address"), text),
                None => address,
            };
            let max_concurrent_streams = h3
                .max_concurrent_streams
                .unwrap_or(http.max_concurrent_streams);
            if max_concurrent_streams == 0 {
                self.error(
                    format!("{h3_path}.max_concurrent_streams"),
                    "must be at least 1",
                );
            }
            let idle_timeout = self.duration(
                &format!("{h3_path}.idle_timeout"),
                h3.idle_timeout.as_deref(),
                http.idle_timeout,
            );
            Some(Http3 {
                address: udp?,
                max_concurrent_streams,
                idle_timeout,
                advertise: h3.advertise.unwrap_or(true),
            })
        });

        Some(Listener {
            http3,
            name: l.name,
            address: address?,
            default_cluster: l.default_cluster,
            tls,
            max_connections,
            access_log: l.access_log.unwrap_or(true),
            http,
            grpc_web: l.http_filters.iter().any(|f| f == GRPC_WEB_FILTER),
            http_filters: l
                .http_filters
                .into_iter()
                .filter(|f| f != GRPC_WEB_FILTER)
                .collect(),
            protocol,
            network_filters: l.network_filters,
        })
    }

    fn certificate(&mut self, path: &str, c: RawCertificate) -> CertificateConfig {
        let certificate_chain =
            self.readable_file(&format!("{path}.certificate_chain"), &c.certificate_chain);
        let private_key = self.readable_file(&format!("{path}.private_key"), &c.private_key);
        let server_names = c
            .server_names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let name = name.to_ascii_lowercase();
                let host = name.strip_prefix("*.").unwrap_or(&name);
                if host.is_empty() || host.contains(['*', ' ', '/', ':']) {
                    self.error(
                        format!("{path}.server_names[{i}]"),
                        format!("invalid server name \"{name}\""),
                    );
                }
                name
            })
            .collect();
        CertificateConfig {
            certificate_chain,
            private_key,
            server_names,
        }
    }

    fn cluster(&mut self, path: &str, c: RawCluster, plugins: &[String]) -> Cluster {
        let discovery = c.discovery.map(|d| {
            if !plugins.contains(&d.plugin) {
                self.error(
                    format!("{path}.discovery.plugin"),
                    format!("unknown plugin \"{}\"", d.plugin),
                );
            }
            Discovery {
                plugin: d.plugin,
                config: serde_json::Value::Object(d.config),
            }
        });
        let endpoints = c
            .endpoints
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| {
                let epath = format!("{path}.endpoints[{i}]");
                let weight = e.weight.unwrap_or(1);
                if weight == 0 {
                    self.error(format!("{epath}.weight"), "must be at least 1");
                }
                let address = self.socket_addr(&format!("{epath}.address"), &e.address)?;
                Some(Endpoint { address, weight })
            })
            .collect();
        let protocol = match c.protocol.as_deref() {
            None | Some("http1") => UpstreamProtocol::Http1,
            Some("http2") => UpstreamProtocol::Http2,
            Some(other) => {
                self.error(
                    format!("{path}.protocol"),
                    format!("unknown protocol \"{other}\" (expected http1 or http2)"),
                );
                UpstreamProtocol::Http1
            }
        };
        let lb_policy = match c.lb_policy.as_deref() {
            None | Some("ROUND_ROBIN") => LbPolicy::RoundRobin,
            Some("LEAST_REQUEST") => LbPolicy::LeastRequest,
            Some("RANDOM") => LbPolicy::Random,
            Some("RING_HASH") => LbPolicy::RingHash,
            Some("MAGLEV") => LbPolicy::Maglev,
            Some(other) => {
                self.error(
                    format!("{path}.lb_policy"),
                    format!(
                        "unknown policy \"{other}\" (expected ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH or MAGLEV)"
                    ),
                );
                LbPolicy::RoundRobin
            }
        };
        let healthy_panic_threshold = match c
            .common_lb_config
            .and_then(|l| l.healthy_panic_threshold)
            .map(|p| p.value)
        {
            None => defaults::HEALTHY_PANIC_THRESHOLD,
            Some(value) if (0.0..=100.0).contains(&value) => value / 100.0,
            Some(value) => {
                self.error(
                    format!("{path}.common_lb_config.healthy_panic_threshold.value"),
                    format!("{value} is not a percentage (0 to 100)"),
                );
                defaults::HEALTHY_PANIC_THRESHOLD
            }
        };
        let ring_size = {
            let ring = c.ring_hash_lb_config.unwrap_or_default();
            let min = ring.minimum_ring_size.unwrap_or(defaults::MIN_RING_SIZE);
            let max = ring.maximum_ring_size.unwrap_or(defaults::MAX_RING_SIZE);
            if min == 0 || min > max || max > defaults::MAX_RING_SIZE {
                self.error(
                    format!("{path}.ring_hash_lb_config"),
                    format!(
                        "ring sizes must satisfy 1 <= minimum_ring_size ({min}) <= maximum_ring_size ({max}) <= {}",
                        defaults::MAX_RING_SIZE
                    ),
                );
            }
            (min, max)
        };
        if c.health_checks.len() > 1 {
            self.error(
                format!("{path}.health_checks"),
                "one health check per cluster is supported",
            );
        }
        let health_check = c
            .health_checks
            .into_iter()
            .next()
            .and_then(|h| self.health_check(&format!("{path}.health_checks[0]"), h, &c.name));
        let outlier_detection = c
            .outlier_detection
            .map(|o| self.outlier_detection(&format!("{path}.outlier_detection"), o));
        let circuit_breakers = self.circuit_breakers(
            &format!("{path}.circuit_breakers"),
            c.circuit_breakers.unwrap_or_default(),
        );
        let tls = c.tls.map(|t| self.upstream_tls(&format!("{path}.tls"), t));
        Cluster {
            name: c.name,
            endpoints,
            protocol,
            lb_policy,
            connect_timeout: self.duration(
                &format!("{path}.connect_timeout"),
                c.connect_timeout.as_deref(),
                defaults::CONNECT_TIMEOUT,
            ),
            timeout: self.duration(
                &format!("{path}.timeout"),
                c.timeout.as_deref(),
                defaults::TIMEOUT,
            ),
            idle_timeout: self.duration(
                &format!("{path}.idle_timeout"),
                c.idle_timeout.as_deref(),
                defaults::UPSTREAM_IDLE_TIMEOUT,
            ),
            max_idle_connections: c
                .max_idle_connections
                .unwrap_or(defaults::MAX_IDLE_CONNECTIONS),
            healthy_panic_threshold,
            ring_size,
            health_check,
            outlier_detection,
            circuit_breakers,
            discovery,
            tls,
        }
    }

    fn upstream_tls(&mut self, path: &str, t: crate::raw::RawUpstreamTls) -> UpstreamTls {
        // No system trust store is read: an operator names the CAs that sign their upstreams.
        let trusted_ca = match &t.trusted_ca {
            Some(file) => self.readable_file(&format!("{path}.trusted_ca"), file),
            None => {
                self.error(format!("{path}.trusted_ca"), "is required");
                PathBuf::new()
            }
        };
        if let Some(sni) = &t.sni
            && (sni.is_empty() || sni.contains(['*', ' ', '/', ':']))
        {
            self.error(
                format!("{path}.sni"),
                format!("invalid server name \"{sni}\""),
            );
        }
        let client_certificate = match (&t.certificate_chain, &t.private_key) {
            (Some(chain), Some(key)) => Some((
                self.readable_file(&format!("{path}.certificate_chain"), chain),
                self.readable_file(&format!("{path}.private_key"), key),
            )),
            (None, None) => None,
            _ => {
                self.error(
                    path.to_owned(),
                    "certificate_chain and private_key go together",
                );
                None
            }
        };
        UpstreamTls {
            sni: t.sni,
            trusted_ca,
            client_certificate,
        }
    }

    fn health_check(
        &mut self,
        path: &str,
        h: crate::raw::RawHealthCheck,
        cluster: &str,
    ) -> Option<HealthCheck> {
        let mut required = |field: &str, present: bool| {
            if !present {
                self.error(format!("{path}.{field}"), "is required");
            }
        };
        required("timeout", h.timeout.is_some());
        required("interval", h.interval.is_some());
        required("unhealthy_threshold", h.unhealthy_threshold.is_some());
        required("healthy_threshold", h.healthy_threshold.is_some());
        let timeout = self.duration(
            &format!("{path}.timeout"),
            h.timeout.as_deref(),
            Duration::from_secs(1),
        );
        let interval = self.duration(
            &format!("{path}.interval"),
            h.interval.as_deref(),
            Duration::from_secs(5),
        );
        let interval_jitter = match h.interval_jitter.as_deref() {
            None | Some("0s") => Duration::ZERO,
            Some(text) => self.duration(
                &format!("{path}.interval_jitter"),
                Some(text),
                Duration::ZERO,
            ),
        };
        for (field, value) in [
            ("unhealthy_threshold", h.unhealthy_threshold),
            ("healthy_threshold", h.healthy_threshold),
        ] {
            if value == Some(0) {
                self.error(format!("{path}.{field}"), "must be at least 1");
            }
        }
        let kinds = usize::from(h.http_health_check.is_some())
            + usize::from(h.grpc_health_check.is_some())
            + usize::from(h.tcp_health_check.is_some());
        if kinds != 1 {
            self.error(
                path,
                "needs exactly one of http_health_check, grpc_health_check, tcp_health_check",
            );
            return None;
        }
        let kind = if let Some(http) = h.http_health_check {
            if !http.path.starts_with('/') {
                self.error(
                    format!("{path}.http_health_check.path"),
                    format!("\"{}\" does not start with /", http.path),
                );
            }
            let expected_statuses = match http.expected_statuses {
                None => vec![(200, 201)],
                Some(ranges) => ranges
                    .into_iter()
                    .enumerate()
                    .map(|(i, r)| {
                        if !(100..=600).contains(&r.start) || r.end <= r.start || r.end > 600 {
                            self.error(
                                format!("{path}.http_health_check.expected_statuses[{i}]"),
                                format!(
                                    "[{}, {}) is not a range of statuses within [100, 600)",
                                    r.start, r.end
                                ),
                            );
                        }
                        (r.start, r.end)
                    })
                    .collect(),
            };
            HealthCheckKind::Http {
                path: http.path,
                host: http.host.unwrap_or_else(|| cluster.to_owned()),
                expected_statuses,
            }
        } else if let Some(grpc) = h.grpc_health_check {
            HealthCheckKind::Grpc {
                service_name: grpc.service_name,
                authority: grpc.authority.unwrap_or_else(|| cluster.to_owned()),
            }
        } else {
            HealthCheckKind::Tcp
        };
        Some(HealthCheck {
            timeout,
            interval,
            interval_jitter,
            unhealthy_threshold: h.unhealthy_threshold.unwrap_or(1).max(1),
            healthy_threshold: h.healthy_threshold.unwrap_or(1).max(1),
            kind,
        })
    }

    fn outlier_detection(
        &mut self,
        path: &str,
        o: crate::raw::RawOutlierDetection,
    ) -> OutlierDetection {
        let consecutive_5xx = o.consecutive_5xx.unwrap_or(5);
        if consecutive_5xx == 0 {
            self.error(format!("{path}.consecutive_5xx"), "must be at least 1");
        }
        let max_ejection_percent = o.max_ejection_percent.unwrap_or(10);
        if max_ejection_percent > 100 {
            self.error(
                format!("{path}.max_ejection_percent"),
                format!("{max_ejection_percent} is more than 100"),
            );
        }
        OutlierDetection {
            consecutive_5xx: consecutive_5xx.max(1),
            base_ejection_time: self.duration(
                &format!("{path}.base_ejection_time"),
                o.base_ejection_time.as_deref(),
                Duration::from_secs(30),
            ),
            max_ejection_time: self.duration(
                &format!("{path}.max_ejection_time"),
                o.max_ejection_time.as_deref(),
                Duration::from_secs(300),
            ),
            max_ejection_percent: max_ejection_percent.min(100),
        }
    }

    fn circuit_breakers(
        &mut self,
        path: &str,
        raw: crate::raw::RawCircuitBreakers,
    ) -> CircuitBreakers {
        let defaults = CircuitBreakers::default();
        let mut thresholds = raw.thresholds.into_iter();
        let Some(t) = thresholds.next() else {
            return defaults;
        };
        if thresholds.next().is_some() || t.priority.as_deref().is_some_and(|p| p != "DEFAULT") {
            self.error(
                format!("{path}.thresholds"),
                "only the DEFAULT priority's thresholds are served",
            );
        }
        CircuitBreakers {
            max_connections: t.max_connections.unwrap_or(defaults.max_connections),
            max_pending_requests: t
                .max_pending_requests
                .unwrap_or(defaults.max_pending_requests),
            max_requests: t.max_requests.unwrap_or(defaults.max_requests),
            max_retries: t.max_retries.unwrap_or(defaults.max_retries),
        }
    }

    fn plugin(&mut self, path: &str, p: RawPlugin) -> Plugin {
        let module = self.readable_file(
            &format!("{path}.vm_config.code.local.filename"),
            &p.vm_config.code.local.filename,
        );
        let failure_policy = match (p.failure_policy.as_deref(), p.fail_open) {
            (Some("FAIL_CLOSED"), _) => FailurePolicy::FailClosed,
            (Some("FAIL_OPEN"), _) => FailurePolicy::FailOpen,
            (Some("FAIL_RELOAD"), _) => FailurePolicy::FailReload,
            (Some(other), _) => {
                self.error(
                    format!("{path}.failure_policy"),
                    format!(
                        "unknown policy \"{other}\" (expected FAIL_CLOSED, FAIL_OPEN or FAIL_RELOAD)"
                    ),
                );
                FailurePolicy::FailClosed
            }
            (None, Some(true)) => FailurePolicy::FailOpen,
            (None, _) => FailurePolicy::FailClosed,
        };
        let vm_configuration = self.configuration(
            &format!("{path}.vm_config.configuration"),
            p.vm_config.configuration,
        );
        let configuration = self.configuration(&format!("{path}.configuration"), p.configuration);
        let memory_mb = p.limits.max_memory_mb.unwrap_or(defaults::PLUGIN_MEMORY_MB);
        if !PLUGIN_MEMORY_MB_RANGE.contains(&memory_mb) {
            self.error(
                format!("{path}.limits.max_memory_mb"),
                format!(
                    "{memory_mb} is out of range {}..={}",
                    PLUGIN_MEMORY_MB_RANGE.start(),
                    PLUGIN_MEMORY_MB_RANGE.end()
                ),
            );
        }
        let callback_timeout = self.duration(
            &format!("{path}.limits.callback_timeout"),
            p.limits.callback_timeout.as_deref(),
            defaults::PLUGIN_CALLBACK_TIMEOUT,
        );
        if callback_timeout > Duration::from_secs(10) {
            self.error(
                format!("{path}.limits.callback_timeout"),
                "at most 10s: a callback blocks its whole worker while it runs",
            );
        }
        Plugin {
            name: p.name,
            root_id: p.root_id,
            vm_id: p.vm_config.vm_id,
            module,
            vm_configuration,
            configuration,
            environment: p
                .vm_config
                .environment_variables
                .map(|e| e.key_values.into_iter().collect())
                .unwrap_or_default(),
            failure_policy,
            max_memory_bytes: memory_mb * 1024 * 1024,
            callback_timeout,
            singleton: false,
        }
    }

    /// Envoy accepts a plugin configuration as a string, as structured data (handed over as
    /// JSON), or wrapped as `{"@type": "type.googleapis.com/google.protobuf.StringValue",
    /// "value": ...}`.
    fn configuration(&mut self, path: &str, value: Option<serde_yaml_ng::Value>) -> Vec<u8> {
        use serde_yaml_ng::Value;
        let value = match value {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Mapping(map)) if map.contains_key("@type") => match map.get("value") {
                Some(inner) => inner.clone(),
                None => {
                    self.error(path, "has \"@type\" but no \"value\"");
                    return Vec::new();
                }
            },
            Some(value) => value,
        };
        match value {
            Value::String(s) => s.into_bytes(),
            other => match serde_json::to_vec(&other) {
                Ok(json) => json,
                Err(e) => {
                    self.error(path, format!("cannot be passed as JSON: {e}"));
                    Vec::new()
                }
            },
        }
    }

    fn socket_addr(&mut self, path: &str, text: &str) -> Option<SocketAddr> {
        match text.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(path, format!("invalid socket address \"{text}\""));
                None
            }
        }
    }

    fn duration(&mut self, path: &str, text: Option<&str>, default: Duration) -> Duration {
        let Some(text) = text else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(path, "must be greater than zero");
                default
            }
            Err(e) => {
                self.error(
                    path,
                    format!("invalid duration \"{text}\": {e} (examples: 250ms, 5s, 1m)"),
                );
                default
            }
        }
    }

    fn tracing(&mut self, raw: crate::raw::RawTracing, clusters: &[Cluster]) -> Tracing {
        let percent = raw.random_sampling.unwrap_or(100.0);
        if !(0.0..=100.0).contains(&percent) {
            self.error(
                "tracing.random_sampling",
                format!("{percent} is not a percentage (0 to 100)"),
            );
        }
        let protocol = match raw.otlp.protocol.as_deref() {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http") => OtlpProtocol::Http,
            Some(other) => {
                self.error(
                    "tracing.otlp.protocol",
                    format!("unknown protocol \"{other}\" (grpc or http)"),
                );
                OtlpProtocol::Grpc
            }
        };
        match clusters.iter().find(|c| c.name == raw.otlp.cluster) {
            None => self.error(
                "tracing.otlp.cluster",
                format!("unknown cluster \"{}\"", raw.otlp.cluster),
            ),
            Some(cluster)
                if protocol == OtlpProtocol::Grpc
                    && cluster.protocol != UpstreamProtocol::Http2 =>
            {
                self.error(
                    "tracing.otlp.cluster",
                    format!(
                        "OTLP over gRPC needs HTTP/2: cluster \"{}\" must have protocol HTTP2",
                        cluster.name
                    ),
                );
            }
            Some(_) => {}
        }
        let path = raw.otlp.path.unwrap_or_else(|| "/v1/traces".to_owned());
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace()) {
            self.error(
                "tracing.otlp.path",
                format!("\"{path}\" is not a request path (/ first, no spaces)"),
            );
        }
        let max_queue_size = raw.max_queue_size.unwrap_or(defaults::TRACE_QUEUE_SIZE);
        let max_export_batch_size = raw
            .max_export_batch_size
            .unwrap_or(defaults::TRACE_BATCH_SIZE.min(max_queue_size));
        if max_queue_size == 0 {
            self.error("tracing.max_queue_size", "must be at least 1");
        }
        if max_export_batch_size == 0 || max_export_batch_size > max_queue_size {
            self.error(
                "tracing.max_export_batch_size",
                format!("must be 1 to max_queue_size ({max_queue_size})"),
            );
        }
        let schedule_delay = self.duration(
            "tracing.schedule_delay",
            raw.schedule_delay.as_deref(),
            defaults::TRACE_SCHEDULE_DELAY,
        );
        if schedule_delay.is_zero() {
            self.error("tracing.schedule_delay", "must be greater than zero");
        }
        let timeout = self.duration(
            "tracing.otlp.timeout",
            raw.otlp.timeout.as_deref(),
            defaults::TRACE_EXPORT_TIMEOUT,
        );
        if timeout.is_zero() {
            self.error("tracing.otlp.timeout", "must be greater than zero");
        }
        Tracing {
            service_name: raw.service_name.unwrap_or_else(|| "rustng".to_owned()),
            sampling_ratio: percent.clamp(0.0, 100.0) / 100.0,
            otlp: Otlp {
                cluster: raw.otlp.cluster,
                protocol,
                path,
                timeout,
            },
            max_queue_size,
            max_export_batch_size,
            schedule_delay,
        }
    }

    fn upgrade(&mut self, raw: crate::raw::RawUpgrade, state_dir: Option<&Path>) -> Upgrade {
        let socket = raw
            .socket
            .map(PathBuf::from)
            .or_else(|| state_dir.map(|dir| dir.join("upgrade.sock")));
        if let Some(socket) = &socket {
            // sun_path holds 108 bytes with its terminating NUL.
            let length = socket.as_os_str().len();
            if length == 0 || length > MAX_UNIX_SOCKET_PATH {
                self.error(
                    "upgrade.socket",
                    format!(
                        "\"{}\" is {length} bytes; a unix socket path must be 1 to {MAX_UNIX_SOCKET_PATH}",
                        socket.display()
                    ),
                );
            }
        }
        let pid_file = raw.pid_file.map(PathBuf::from);
        if pid_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            self.error("upgrade.pid_file", "must not be empty");
        }
        Upgrade {
            socket,
            pid_file,
            ready_timeout: self.duration(
                "upgrade.ready_timeout",
                raw.ready_timeout.as_deref(),
                defaults::READY_TIMEOUT,
            ),
        }
    }

    fn admin_auth(&mut self, raw: crate::raw::RawAdminAuth) -> AdminAuth {
        if raw.tokens_file.is_none() && raw.jwt.is_none() {
            self.error("admin.auth", "needs tokens_file, jwt, or both");
        }
        let tokens_file = raw
            .tokens_file
            .map(|file| self.readable_file("admin.auth.tokens_file", &file));
        let jwt = raw.jwt.and_then(|jwt| {
            if jwt.issuer.is_empty() {
                self.error("admin.auth.jwt.issuer", "must not be empty");
            }
            if jwt.audiences.is_empty() {
                self.error("admin.auth.jwt.audiences", "at least one audience");
            }
            let key = match (jwt.hs256_secret_file, jwt.rs256_public_key_file) {
                (Some(file), None) => AdminJwtKey::Hs256SecretFile(
                    self.readable_file("admin.auth.jwt.hs256_secret_file", &file),
                ),
                (None, Some(file)) => AdminJwtKey::Rs256PublicKeyFile(
                    self.readable_file("admin.auth.jwt.rs256_public_key_file", &file),
                ),
                _ => {
                    self.error(
                        "admin.auth.jwt",
                        "exactly one of hs256_secret_file, rs256_public_key_file",
                    );
                    return None;
                }
            };
            Some(AdminJwt {
                issuer: jwt.issuer,
                audiences: jwt.audiences,
                key,
                role_claim: jwt.role_claim.unwrap_or_else(|| "role".to_owned()),
            })
        });
        AdminAuth { tokens_file, jwt }
    }

    fn readable_file(&mut self, path: &str, file: &str) -> PathBuf {
        if let Err(e) = std::fs::File::open(Path::new(file)) {
            self.error(path, format!("cannot read \"{file}\": {e}"));
        }
        PathBuf::from(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::from_yaml;

    const MINIMAL: &str = "
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:8080
    default_cluster: backend
clusters:
  - name: backend
    endpoints:
      - address: 127.0.0.1:9000
";

    fn errors(yaml: &str) -> Vec<String> {
        match from_yaml(yaml) {
            Ok(_) => vec![],
            Err(e) => e.field_errors().iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = from_yaml(MINIMAL).expect("valid");
        assert_eq!(c.workers, 1);
        let l = &c.listeners[0];
        assert_eq!(l.address, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(l.default_cluster.as_deref(), Some("backend"));
        assert_eq!(l.http.max_request_headers_bytes, 60 * 1024);
        assert!(l.access_log);
        let b = c.cluster("backend").expect("cluster");
        assert_eq!(b.endpoints[0].weight, 1);
        assert_eq!(b.protocol, UpstreamProtocol::Http1);
        assert_eq!(b.connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn http3_needs_tls_and_defaults_to_the_listener() {
        let plain = MINIMAL.replace(
            "    default_cluster: backend\n",
            "    default_cluster: backend\n    http3: { address: 'nowhere', max_concurrent_streams: 0 }\n",
        );
        assert_eq!(
            errors(&plain),
            vec![
                "listeners[0].http3: HTTP/3 is always encrypted: the listener needs tls (its certificates serve both)",
                "listeners[0].http3.address: invalid socket address \"nowhere\"",
                "listeners[0].http3.max_concurrent_streams: must be at least 1",
            ]
        );
        let dir = std::env::temp_dir();
        let cert = dir.join(format!("rustng-h3-{}.pem", std::process::id()));
        std::fs::write(&cert, "x").expect("file");
        let with_tls = MINIMAL.replace(
            "    default_cluster: backend\n",
            &format!(
                "    default_cluster: backend\n    tls: {{ certificates: [{{ certificate_chain: {c}, private_key: {c} }}] }}\n    http: {{ idle_timeout: 7s }}\n    http3: {{}}\n",
                c = cert.display()
            ),
        );
        let config = from_yaml(&with_tls).expect("valid");
        let h3 = config.listeners[0].http3.as_ref().expect("http3");
        assert_eq!(h3.address, config.listeners[0].address);
        assert_eq!(h3.idle_timeout, Duration::from_secs(7));
        assert_eq!(h3.max_concurrent_streams, 256);
        assert!(h3.advertise);
        let _ = std::fs::remove_file(cert);
    }

    #[test]
    fn tracing_is_checked_against_its_cluster() {
        let good = format!(
            "tracing: {{ random_sampling: 1, otlp: {{ cluster: otel }} }}\n{MINIMAL}  - name: otel\n    protocol: http2\n    endpoints: [{{ address: 127.0.0.1:4317 }}]\n"
        );
        let tracing = from_yaml(&good).expect("valid").tracing.expect("tracing");
        assert_eq!(tracing.service_name, "rustng");
        assert!((tracing.sampling_ratio - 0.01).abs() < 1e-12);
        assert_eq!(tracing.otlp.protocol, OtlpProtocol::Grpc);
        assert_eq!(tracing.otlp.path, "/v1/traces");
        assert_eq!(
            (tracing.max_queue_size, tracing.max_export_batch_size),
            (2048, 512)
        );
        let bad = format!(
            "tracing: {{ random_sampling: 120, max_queue_size: 10, max_export_batch_size: 20, schedule_delay: 0s, otlp: {{ cluster: backend, path: 'v1 traces' }} }}\n{MINIMAL}"
        );
        assert_eq!(
            errors(&bad),
            vec![
                "tracing.random_sampling: 120 is not a percentage (0 to 100)",
                "tracing.otlp.cluster: OTLP over gRPC needs HTTP/2: cluster \"backend\" must have protocol HTTP2",
                "tracing.otlp.path: \"v1 traces\" is not a request path (/ first, no spaces)",
                "tracing.max_export_batch_size: must be 1 to max_queue_size (10)",
                "tracing.schedule_delay: must be greater than zero",
            ]
        );
        let unknown =
            format!("tracing: {{ otlp: {{ cluster: nope, protocol: thrift }} }}\n{MINIMAL}");
        assert_eq!(
            errors(&unknown),
            vec![
                "tracing.otlp.protocol: unknown protocol \"thrift\" (grpc or http)",
                "tracing.otlp.cluster: unknown cluster \"nope\"",
            ]
        );
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let yaml = "
workers: 0
listeners:
  - name: main
    address: nowhere
    default_cluster: missing
    http: { idle_timeout: soon, max_request_headers_kb: 2 }
clusters:
  - name: backend
    protocol: spdy
    endpoints:
      - address: 127.0.0.1:9000
      - address: x
        weight: 0
  - name: backend
";
        assert_eq!(
            errors(yaml),
            vec![
                "workers: must be at least 1",
                "clusters[1].name: duplicate cluster name \"backend\"",
                "listeners[0].address: invalid socket address \"nowhere\"",
                "listeners[0].default_cluster: unknown cluster \"missing\"",
                "listeners[0].http.max_request_headers_kb: 2 is out of range 8..=1024",
                "listeners[0].http.idle_timeout: invalid duration \"soon\": expected number at 0 (examples: 250ms, 5s, 1m)",
                "clusters[0].endpoints[1].weight: must be at least 1",
                "clusters[0].endpoints[1].address: invalid socket address \"x\"",
                "clusters[0].protocol: unknown protocol \"spdy\" (expected http1 or http2)",
            ]
        );
    }

    #[test]
    fn discovery_adapters_are_singletons_configured_with_their_clusters() {
        let dir = std::env::temp_dir().join(format!("rustng-sd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let module = dir.join("sd.wasm");
        std::fs::write(&module, b"\0asm").expect("module");
        let yaml = format!(
            "plugins:
  - name: sd
    vm_config: {{ code: {{ local: {{ filename: {m} }} }} }}
    configuration: {{ refresh: 5s }}
listeners:
  - name: main
    address: 127.0.0.1:8080
    default_cluster: a
clusters:
  - name: a
    discovery: {{ plugin: sd, endpoints: [{{ address: '10.0.0.1:80' }}] }}
  - name: b
    endpoints: [{{ address: '10.0.0.2:80' }}]
",
            m = module.display()
        );
        let c = from_yaml(&yaml).expect("valid");
        let sd = &c.plugins[0];
        assert!(sd.singleton);
        let configuration: serde_json::Value =
            serde_json::from_slice(&sd.configuration).expect("json");
        assert_eq!(
            configuration,
            serde_json::json!({
                "settings": { "refresh": "5s" },
                "clusters": { "a": { "endpoints": [{ "address": "10.0.0.1:80" }] } }
            })
        );
        assert_eq!(
            c.clusters[0].discovery.as_ref().map(|d| d.plugin.as_str()),
            Some("sd")
        );
        assert!(
            c.clusters[0].endpoints.is_empty(),
            "served once the adapter publishes"
        );

        let misused = yaml
            .replace(
                "    default_cluster: a\n",
                "    default_cluster: a\n    http_filters: [sd]\n",
            )
            .replace("plugin: sd, endpoints", "plugin: nope, endpoints");
        let errs = errors(&misused);
        assert!(
            errs.contains(&"clusters[0].discovery.plugin: unknown plugin \"nope\"".to_owned()),
            "{errs:?}"
        );
        let filtered = yaml.replace(
            "    default_cluster: a\n",
            "    default_cluster: a\n    http_filters: [sd]\n",
        );
        let errs = errors(&filtered);
        assert!(
            errs.iter().any(|e| e
                .starts_with("listeners[0].http_filters[0]: plugin \"sd\" is a discovery adapter")),
            "{errs:?}"
        );
    }

    #[test]
    fn upgrade_and_drain_settings_default_from_state_dir_and_are_checked() {
        let c = from_yaml(MINIMAL).expect("valid");
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.upgrade.socket, None, "no state_dir: upgrades off");
        assert_eq!(c.upgrade.ready_timeout, Duration::from_secs(60));
        let c = from_yaml(&format!("state_dir: /var/lib/rustng\n{MINIMAL}")).expect("valid");
        assert_eq!(
            c.upgrade.socket.as_deref(),
            Some(Path::new("/var/lib/rustng/upgrade.sock"))
        );
        let long = format!("/{}", "d".repeat(120));
        let yaml = format!(
            "drain_timeout: never\nupgrade: {{ socket: {long}, pid_file: '', ready_timeout: 0s }}\n{MINIMAL}"
        );
        assert_eq!(
            errors(&yaml),
            vec![
                "drain_timeout: invalid duration \"never\": expected number at 0 (examples: 250ms, 5s, 1m)".to_owned(),
                format!("upgrade.socket: \"{long}\" is 121 bytes; a unix socket path must be 1 to 107"),
                "upgrade.pid_file: must not be empty".to_owned(),
                "upgrade.ready_timeout: must be greater than zero".to_owned(),
            ]
        );
    }

    #[test]
    fn upstream_tls_is_checked() {
        let yaml = MINIMAL.replace(
            "      - address: 127.0.0.1:9000",
            "      - address: 127.0.0.1:9000\n    tls: { sni: 'bad name', certificate_chain: /nonexistent.pem }",
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with("clusters[0].tls.trusted_ca: is required"),
            "{errs:?}"
        );
        assert!(
            errs[1].starts_with("clusters[0].tls.sni: invalid server name"),
            "{errs:?}"
        );
        assert!(
            errs[2].starts_with("clusters[0].tls: certificate_chain and private_key go together"),
            "{errs:?}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let yaml = MINIMAL.replace("weight", "x").replace(
            "      - address: 127.0.0.1:9000",
            "      - address: 127.0.0.1:9000\n        wieght: 2",
        );
        let errs = errors(&yaml);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("clusters[0].endpoints[0]: unknown field `wieght`, expected `address` or `weight` at line 11"),
            "{errs:?}"
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let errs = errors(&MINIMAL.replace("workers: 1", "workers: many"));
        assert!(errs[0].starts_with("workers: invalid type"), "{errs:?}");
    }

    #[test]
    fn duplicate_listener_addresses_and_missing_tls_files() {
        let yaml = "
listeners:
  - name: a
    address: 127.0.0.1:8080
  - name: a
    address: 127.0.0.1:8080
    tls:
      certificates:
        - certificate_chain: /nonexistent/cert.pem
          private_key: /nonexistent/key.pem
          server_names: ['*.example.com', 'bad name']
";
        let errs = errors(yaml);
        assert_eq!(errs[0], "listeners[1].name: duplicate listener name \"a\"");
        assert!(
            errs[1].starts_with("listeners[1].tls.certificates[0].certificate_chain: cannot read")
        );
        assert!(errs[2].starts_with("listeners[1].tls.certificates[0].private_key: cannot read"));
        assert_eq!(
            errs[3],
            "listeners[1].tls.certificates[0].server_names[1]: invalid server name \"bad name\""
        );
        assert_eq!(
            errs[4],
            "listeners[1].address: address 127.0.0.1:8080 is already used by another listener"
        );
    }

    #[test]
    fn plugins_in_envoy_shape() {
        let dir = std::env::temp_dir().join(format!("rustng-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let wasm = dir.join("f.wasm");
        std::fs::write(&wasm, b"\0asm").expect("write");
        let w = wasm.display();
        let yaml = format!(
            "
plugins:
  - name: a
    vm_config:
      runtime: envoy.wasm.runtime.v8
      code: {{ local: {{ filename: {w} }} }}
      environment_variables: {{ key_values: {{ A: '1' }} }}
    configuration: 'plain text'
    fail_open: true
  - name: b
    vm_config: {{ code: {{ local: {{ filename: {w} }} }} }}
    configuration: {{ tag: abc, n: 2 }}
    failure_policy: FAIL_RELOAD
  - name: c
    vm_config: {{ code: {{ local: {{ filename: {w} }} }} }}
    configuration:
      '@type': type.googleapis.com/google.protobuf.StringValue
      value: wrapped
listeners:
  - name: main
    address: 127.0.0.1:8080
    http_filters: [a, b, c]
"
        );
        let c = from_yaml(&yaml).expect("valid");
        assert_eq!(c.listeners[0].http_filters, vec!["a", "b", "c"]);
        assert_eq!(c.plugins[0].configuration, b"plain text");
        assert_eq!(c.plugins[0].failure_policy, FailurePolicy::FailOpen);
        assert_eq!(
            c.plugins[0].environment,
            vec![("A".to_owned(), "1".to_owned())]
        );
        assert_eq!(c.plugins[1].configuration, br#"{"tag":"abc","n":2}"#);
        assert_eq!(c.plugins[1].failure_policy, FailurePolicy::FailReload);
        assert_eq!(c.plugins[2].configuration, b"wrapped");
        assert_eq!(c.plugins[2].failure_policy, FailurePolicy::FailClosed);
        assert_eq!(c.plugins[2].max_memory_bytes, 64 * 1024 * 1024);
        assert_eq!(c.plugins[2].callback_timeout, Duration::from_millis(100));

        let bad = "
plugins:
  - name: a
    vm_config: { code: { local: { filename: /nonexistent/f.wasm } } }
    failure_policy: SOMETIMES
    limits: { max_memory_mb: 0, callback_timeout: 1m }
listeners:
  - name: main
    address: 127.0.0.1:8080
    http_filters: [a, nope]
  - name: l4
    address: 127.0.0.1:8081
    protocol: udp
    network_filters: [a]
";
        let errs = errors(bad);
        assert_eq!(
            errs[0],
            "listeners[0].http_filters[1]: unknown plugin \"nope\""
        );
        let expected = [
            "plugins[0].vm_config.code.local.filename: cannot read",
            "plugins[0].failure_policy: unknown policy \"SOMETIMES\"",
            "plugins[0].limits.max_memory_mb: 0 is out of range 1..=4096",
            "plugins[0].limits.callback_timeout: at most 10s",
            "listeners[1].protocol: unknown protocol \"udp\" (http or tcp)",
            "listeners[1].network_filters: only TCP listeners (protocol: tcp) run network filters",
        ];
        for prefix in expected {
            assert!(
                errs.iter().any(|e| e.starts_with(prefix)),
                "{prefix}: {errs:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_wasm_pool_size_is_optional_and_positive() {
        assert_eq!(from_yaml(MINIMAL).expect("valid").wasm_instance_slots, None);
        let sized = format!("wasm: {{ instance_slots: 8 }}\n{MINIMAL}");
        assert_eq!(
            from_yaml(&sized).expect("valid").wasm_instance_slots,
            Some(8)
        );
        let zero = format!("wasm: {{ instance_slots: 0 }}\n{MINIMAL}");
        assert_eq!(
            errors(&zero),
            vec!["wasm.instance_slots: must be at least 1"]
        );
    }

    #[test]
    fn empty_document_needs_a_listener() {
        assert_eq!(
            errors(""),
            vec!["listeners: at least one listener is required"]
        );
    }

    #[test]
    fn the_admin_server_is_off_unless_configured_and_loopback_by_default() {
        assert_eq!(from_yaml(MINIMAL).expect("valid").admin, None);
        let c = from_yaml(&format!("{MINIMAL}admin: {{}}\n")).expect("valid");
        assert_eq!(
            c.admin.map(|a| a.address),
            Some("127.0.0.1:9901".parse().expect("addr"))
        );
        assert_eq!(
            errors(&format!("{MINIMAL}admin: {{ address: everywhere }}\n")),
            ["admin.address: invalid socket address \"everywhere\""]
        );
        assert_eq!(
            errors(&format!("{MINIMAL}admin: {{ address: 127.0.0.1:8080 }}\n")),
            ["admin.address: address 127.0.0.1:8080 is already used by a listener"]
        );
        assert_eq!(errors(&format!("{MINIMAL}admin: {{ port: 1 }}\n")).len(), 1);
    }
}
