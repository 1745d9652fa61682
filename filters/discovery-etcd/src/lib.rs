//! The `etcd` discovery adapter: a cluster's endpoints are the values under an etcd key
//! prefix, one endpoint per key, as JSON (`{"address": "10.0.0.7:8080", "weight": 2}`) or
//! bare `ip:port`. The adapter reads the prefix once (`KV/Range`), then watches it
//! (`Watch/Watch`, a gRPC stream through `proxy_grpc_stream`) from the revision after that
//! read. After a disconnect it watches again from the revision after the last one it saw, so
//! changes made meanwhile still arrive; only a compaction of those revisions makes it read the
//! prefix again.
//!
//! ```yaml
//! plugins:
//!   - name: etcd-sd
//!     vm_config: { code: { local: { filename: discovery_etcd.wasm } } }
//!     configuration:
//!       grpc_service: { envoy_grpc: { cluster_name: etcd }, timeout: 5s }
//!       retry_interval: 1s
//! clusters:
//!   - name: etcd
//!     protocol: http2
//!     endpoints: [{ address: 10.0.0.2:2379 }]
//!   - name: backend
//!     discovery: { plugin: etcd-sd, prefix: /services/backend/ }
//! ```

mod config;
mod proto;
mod watched;

use std::collections::HashMap;
use std::time::Duration;

use prost::Message as _;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;
use rustng_sdk::discovery::{Clock, log};

use config::Config;
use proto::{RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest, WatchResponse};
use watched::{Phase, Step, WatchOutcome, Watched};

/// How often due reads and watches are looked for.
const TICK: Duration = Duration::from_millis(100);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<EtcdDiscovery>::default());
}}

#[derive(Default)]
struct EtcdDiscovery {
    etcd_cluster: String,
    timeout: Duration,
    retry_interval: Duration,
    clusters: Vec<Watched>,
    /// Calls and streams in flight: token → cluster.
    tokens: HashMap<u32, usize>,
    clock: Clock,
}

impl Context for EtcdDiscovery {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        let Some(cluster) = self.tokens.remove(&token) else {
            return;
        };
        let decoded = if status == 0 {
            let body = self
                .get_grpc_call_response_body(0, size)
                .unwrap_or_default();
            RangeResponse::decode(body.as_slice()).map_err(|e| format!("bad RangeResponse: {e}"))
        } else {
            let (_, message) = self.get_grpc_status();
            Err(format!(
                "gRPC status {status} {}",
                message.unwrap_or_default()
            ))
        };
        match decoded {
            Ok(response) => {
                for warning in self.clusters[cluster].read(response) {
                    self.warn(cluster, &warning);
                }
                self.publish_if_changed(cluster);
                // Watch from the revision after the read, at once.
                self.clusters[cluster].phase = Phase::Waiting {
                    until: Duration::ZERO,
                };
                self.start(cluster);
            }
            Err(reason) => {
                self.warn(cluster, &format!("reading the prefix failed: {reason}"));
                self.retry_later(cluster);
            }
        }
    }

    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        let Some(&cluster) = self.tokens.get(&token) else {
            return;
        };
        let body = self.get_grpc_stream_message(0, size).unwrap_or_default();
        let outcome = match WatchResponse::decode(body.as_slice()) {
            Ok(response) => {
                let mut warnings = Vec::new();
                let outcome = self.clusters[cluster].watched(response, &mut warnings);
                for warning in warnings {
                    self.warn(cluster, &warning);
                }
                outcome
            }
            Err(e) => WatchOutcome::Restart {
                reason: format!("bad WatchResponse: {e}"),
                reread: false,
            },
        };
        match outcome {
            WatchOutcome::Continue => self.publish_if_changed(cluster),
            WatchOutcome::Restart { reason, .. } => {
                self.warn(cluster, &reason);
                self.tokens.remove(&token);
                self.cancel_grpc_stream(token);
                self.retry_later(cluster);
            }
        }
    }

    fn on_grpc_stream_close(&mut self, token: u32, status: u32) {
        let Some(cluster) = self.tokens.remove(&token) else {
            return;
        };
        let (_, message) = self.get_grpc_status();
        let reason = format!(
            "watch closed (gRPC status {status} {}); watching again",
            message.unwrap_or_default()
        );
        self.warn(cluster, &reason);
        self.retry_later(cluster);
    }
}

impl RootContext for EtcdDiscovery {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(error) => {
                log(LogLevel::Error, &format!("etcd discovery: {error}"));
                return false;
            }
        };
        self.etcd_cluster = config.etcd_cluster;
        self.timeout = config.timeout;
        self.retry_interval = config.retry_interval;
        self.clusters = config
            .clusters
            .into_iter()
            .map(|(cluster, prefix)| Watched::new(cluster, prefix))
            .collect();
        // Reads start on the first tick, never in the canary RustNg configures a new
        // generation on.
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        for cluster in 0..self.clusters.len() {
            self.start(cluster);
        }
    }
}

impl EtcdDiscovery {
    fn warn(&self, cluster: usize, message: &str) {
        let message = format!(
            "etcd discovery: cluster {}: {message}",
            self.clusters[cluster].cluster
        );
        log(LogLevel::Warn, &message);
    }

    fn retry_later(&mut self, cluster: usize) {
        let until = self.clock.now() + self.retry_interval;
        self.clusters[cluster].phase = Phase::Waiting { until };
    }

    /// Starts the cluster's read or watch if it is due.
    fn start(&mut self, cluster: usize) {
        let now = self.clock.now();
        let Some(step) = self.clusters[cluster].due(now) else {
            return;
        };
        let watched = &self.clusters[cluster];
        let range_end = proto::prefix_end(&watched.prefix);
        let started = match step {
            Step::Read => {
                let request = RangeRequest {
                    key: watched.prefix.clone(),
                    range_end,
                }
                .encode_to_vec();
                self.dispatch_grpc_call(
                    &self.etcd_cluster,
                    "etcdserverpb.KV",
                    "Range",
                    vec![],
                    Some(&request),
                    self.timeout,
                )
                .map(|token| Phase::Reading { token })
            }
            Step::Watch { start_revision } => {
                let request = WatchRequest {
                    create_request: Some(WatchCreateRequest {
                        key: watched.prefix.clone(),
                        range_end,
                        start_revision,
                        progress_notify: false,
                    }),
                }
                .encode_to_vec();
                self.open_grpc_stream(&self.etcd_cluster, "etcdserverpb.Watch", "Watch", vec![])
                    .map(|token| {
                        self.send_grpc_stream_message(token, Some(&request), false);
                        Phase::Watching { token }
                    })
            }
        };
        match started {
            Ok(phase) => {
                let (Phase::Reading { token } | Phase::Watching { token }) = phase else {
                    return;
                };
                self.tokens.insert(token, cluster);
                self.clusters[cluster].phase = phase;
            }
            Err(status) => {
                self.warn(
                    cluster,
                    &format!(
                        "cannot reach etcd through cluster {}: {status:?}",
                        self.etcd_cluster
                    ),
                );
                self.retry_later(cluster);
            }
        }
    }

    fn publish_if_changed(&mut self, cluster: usize) {
        let watched = &mut self.clusters[cluster];
        let Some(set) = watched.set() else { return };
        watched
            .publisher
            .publish_if_changed("etcd", &watched.cluster, set, "");
    }
}
