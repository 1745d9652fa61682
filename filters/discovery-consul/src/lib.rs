//! The `consul` discovery adapter: a cluster's endpoints are a Consul service's instances,
//! from the health endpoint (`/v1/health/service/<name>`, passing instances only by default)
//! followed with blocking queries: each query waits at Consul until the result changes or
//! `wait` passes, so a change arrives at once and an idle service costs one request per
//! `wait`. Queries are `proxy_http_call`s through a RustNg cluster that reaches Consul.
//!
//! ```yaml
//! plugins:
//!   - name: consul-sd
//!     vm_config: { code: { local: { filename: discovery_consul.wasm } } }
//!     configuration: { cluster: consul, token: "...", wait: 30s }
//! clusters:
//!   - name: consul
//!     endpoints: [{ address: 127.0.0.1:8500 }]
//!   - name: backend
//!     discovery: { plugin: consul-sd, service: web, tag: v2 }
//! ```

mod config;
mod followed;

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;
use rustng_sdk::discovery::{Clock, log};

use config::Config;
use followed::{Followed, Phase};

/// How often due queries are looked for; also the least time between two queries of a
/// cluster, should Consul answer a blocking query at once again and again.
const TICK: Duration = Duration::from_millis(100);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<ConsulDiscovery>::default());
}}

#[derive(Default)]
struct ConsulDiscovery {
    consul_cluster: String,
    token: String,
    wait: Duration,
    retry_interval: Duration,
    clusters: Vec<Followed>,
    /// Queries in flight: token → cluster.
    tokens: HashMap<u32, usize>,
    clock: Clock,
}

impl Context for ConsulDiscovery {
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
        let index = self.get_http_call_response_header("x-consul-index");
        let body = self
            .get_http_call_response_body(0, size)
            .unwrap_or_default();
        let now = self.clock.now();
        let followed = &mut self.clusters[cluster];
        match followed.answered(status, index.as_deref(), &body) {
            Ok(()) => {
                // The next blocking query goes out on the next tick.
                followed.phase = Phase::Waiting { until: now };
                self.publish_if_changed(cluster);
            }
            Err(reason) => self.failed(cluster, &reason, now),
        }
    }
}

impl RootContext for ConsulDiscovery {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(error) => {
                log(LogLevel::Error, &format!("consul discovery: {error}"));
                return false;
            }
        };
        self.consul_cluster = config.consul_cluster;
        self.token = config.token;
        self.wait = config.wait;
        self.retry_interval = config.retry_interval;
        self.clusters = config
            .clusters
            .into_iter()
            .map(|(cluster, service)| Followed::new(cluster, service))
            .collect();
        // Queries start on the first tick, never in the canary.
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let now = self.clock.now();
        for cluster in 0..self.clusters.len() {
            if self.clusters[cluster].is_due(now) {
                self.query(cluster, now);
            }
        }
    }
}

impl ConsulDiscovery {
    fn query(&mut self, cluster: usize, now: Duration) {
        let path = self.clusters[cluster].path(self.wait);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.consul_cluster.as_str()),
            ("accept", "application/json"),
        ];
        if !self.token.is_empty() {
            headers.push(("x-consul-token", self.token.as_str()));
        }
        // Consul adds up to wait/16 of jitter to a blocking query.
        let timeout = self.wait + self.wait / 16 + Duration::from_secs(5);
        match self.dispatch_http_call(&self.consul_cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.tokens.insert(token, cluster);
                self.clusters[cluster].phase = Phase::Querying { token };
            }
            Err(status) => {
                let reason = format!(
                    "cannot reach Consul through cluster {}: {status:?}",
                    self.consul_cluster
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
            "consul discovery: cluster {}: query failed, keeping the last set: {reason}",
            followed.cluster
        );
        log(LogLevel::Warn, &message);
    }

    fn publish_if_changed(&mut self, cluster: usize) {
        let followed = &mut self.clusters[cluster];
        let Some(set) = followed.set() else { return };
        let detail = format!(" (service {})", followed.service.name);
        followed
            .publisher
            .publish_if_changed("consul", &followed.cluster, set.clone(), &detail);
    }
}
