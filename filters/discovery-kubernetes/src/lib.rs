//! The `kubernetes` discovery adapter: a cluster's endpoints are a Service's EndpointSlices,
//! listed and then watched through the API server, as client-go's reflector does; each
//! endpoint's `ready` condition is its health.
//!
//! ```yaml
//! plugins:
//!   - name: k8s-sd
//!     vm_config: { code: { local: { filename: discovery_kubernetes.wasm } } }
//!     configuration:
//!       cluster: kube-api
//!       token_file: /var/run/secrets/kubernetes.io/serviceaccount/token
//! clusters:
//!   - name: kube-api
//!     endpoints: [{ address: 10.96.0.1:443 }]
//!     tls: { sni: kubernetes.default.svc, trusted_ca: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt }
//!   - name: backend
//!     discovery: { plugin: k8s-sd, namespace: shop, service: web, port: http }
//! ```
//!
//! proxy-wasm's HTTP call hands a module a whole response, never a stream, so each watch asks
//! for a short window (`timeoutSeconds`, `watch_window`) and the next one resumes from the
//! last `resourceVersion`: no event is lost, and each arrives within one window.

mod config;
mod followed;

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;
use rustng_sdk::discovery::{Clock, log, read_file};

use config::Config;
use followed::{Followed, Phase};

/// How often due requests are looked for; also the least time between two requests of a
/// cluster.
const TICK: Duration = Duration::from_millis(100);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<KubernetesDiscovery>::default());
}}

#[derive(Default)]
struct KubernetesDiscovery {
    api_cluster: String,
    token_file: String,
    watch_window: Duration,
    retry_interval: Duration,
    clusters: Vec<Followed>,
    tokens: HashMap<u32, usize>,
    clock: Clock,
}

impl Context for KubernetesDiscovery {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        size: usize,
        _trailers: usize,
    ) {
        let Some(cluster) = self.tokens.remove(&token) else {
            return;
        };
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = self
            .get_http_call_response_body(0, size)
            .unwrap_or_default();
        let now = self.clock.now();
        let followed = &mut self.clusters[cluster];
        match followed.answered(status, &body) {
            Ok(_) => {
                followed.phase = Phase::Waiting { until: now };
                self.publish_if_changed(cluster);
            }
            Err(reason) => self.failed(cluster, &reason, now),
        }
    }
}

impl RootContext for KubernetesDiscovery {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(error) => {
                log(LogLevel::Error, &format!("kubernetes discovery: {error}"));
                return false;
            }
        };
        self.api_cluster = config.api_cluster;
        self.token_file = config.token_file;
        self.watch_window = config.watch_window;
        self.retry_interval = config.retry_interval;
        self.clusters = config
            .clusters
            .into_iter()
            .map(|(cluster, service)| Followed::new(cluster, service))
            .collect();
        // Requests start on the first tick, never in the canary.
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let now = self.clock.now();
        for cluster in 0..self.clusters.len() {
            if self.clusters[cluster].is_due(now) {
                self.ask(cluster, now);
            }
        }
    }
}

impl KubernetesDiscovery {
    fn ask(&mut self, cluster: usize, now: Duration) {
        // Read for every request: the kubelet rotates service-account tokens.
        let authorization = if self.token_file.is_empty() {
            None
        } else {
            match read_file(&self.token_file) {
                Ok(token) => Some(format!("Bearer {}", String::from_utf8_lossy(&token).trim())),
                Err(status) => {
                    let reason = format!("cannot read token_file {}: {status:?}", self.token_file);
                    self.failed(cluster, &reason, now);
                    return;
                }
            }
        };
        let path = self.clusters[cluster].path(self.watch_window);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.api_cluster.as_str()),
            ("accept", "application/json"),
        ];
        if let Some(value) = &authorization {
            headers.push(("authorization", value.as_str()));
        }
        let timeout = self.watch_window + Duration::from_secs(10);
        match self.dispatch_http_call(&self.api_cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.tokens.insert(token, cluster);
                self.clusters[cluster].phase = Phase::Asking { token };
            }
            Err(status) => {
                let reason = format!(
                    "cannot reach the API server through cluster {}: {status:?}",
                    self.api_cluster
                );
                self.failed(cluster, &reason, now);
            }
        }
    }

    fn failed(&mut self, cluster: usize, reason: &str, now: Duration) {
        let followed = &mut self.clusters[cluster];
        followed.phase = Phase::Waiting {
            until: now + self.retry_interval,
        };
        let message = format!(
            "kubernetes discovery: cluster {}: {reason}; keeping the last set",
            followed.cluster
        );
        log(LogLevel::Warn, &message);
    }

    fn publish_if_changed(&mut self, cluster: usize) {
        let followed = &mut self.clusters[cluster];
        let Some((set, warnings)) = followed.set() else {
            return;
        };
        let detail = format!(
            " (service {}/{})",
            followed.service.namespace, followed.service.name
        );
        if followed
            .publisher
            .publish_if_changed("kubernetes", &followed.cluster, set, &detail)
        {
            for warning in warnings {
                let message = format!(
                    "kubernetes discovery: cluster {}: {warning}",
                    followed.cluster
                );
                log(LogLevel::Warn, &message);
            }
        }
    }
}
