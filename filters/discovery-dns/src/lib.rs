//! The `dns` discovery adapter: a cluster's endpoints are what its names resolve to, looked
//! up again when the records' TTL runs out (bounded by `dns_min_refresh_rate` and
//! `dns_max_refresh_rate`), as Envoy's `STRICT_DNS` clusters do. SRV names give each
//! record's target, port and weight.
//!
//! ```yaml
//! plugins:
//!   - name: dns-sd
//!     vm_config: { code: { local: { filename: discovery_dns.wasm } } }
//!     configuration: { resolvers: ["10.0.0.2:53"], dns_min_refresh_rate: 5s }
//! clusters:
//!   - name: backend
//!     discovery:
//!       plugin: dns-sd
//!       endpoints: [{ address: backend.internal:8080 }]
//!       srv: [_http._tcp.api.internal]
//!       dns_lookup_family: V4_ONLY
//! ```
//!
//! Lookups go through the host's asynchronous resolver (`rustng.resolve`): a module has no
//! sockets. A failed lookup (timeout, server failure) keeps the name's last good addresses
//! and is retried after `dns_failure_refresh_rate`; a name that no longer exists is an
//! answer, and its addresses leave the set.

mod config;
mod resolution;

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;
use rustng_sdk::discovery::{Clock, Publisher, log};
use rustng_sdk::resolve::{Answer, RecordType, resolve};

use config::{Config, Refresh};
use resolution::{Next, Resolution, cluster_set};

/// How often due lookups are looked for; well under any sensible refresh rate.
const TICK: Duration = Duration::from_millis(100);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<DnsDiscovery>::default());
}}

#[derive(Default)]
struct DnsDiscovery {
    resolvers: Vec<String>,
    query_timeout: Duration,
    refresh: Option<Refresh>,
    clusters: Vec<ClusterState>,
    /// Lookups in flight: token → (cluster, source).
    tokens: HashMap<u32, (usize, usize)>,
    clock: Clock,
}

struct ClusterState {
    name: String,
    resolutions: Vec<Resolution>,
    publisher: Publisher,
}

impl Context for DnsDiscovery {
    fn on_foreign_function(&mut self, token: u32, size: usize) {
        // Not ours: an answer to a lookup of the generation this one replaced.
        let Some((cluster, source)) = self.tokens.remove(&token) else {
            return;
        };
        let now = self.clock.now();
        let next = match Answer::read(size) {
            Ok(answer) => {
                let refresh = self.refresh();
                self.clusters[cluster].resolutions[source].answered(&answer, now, &refresh)
            }
            Err(reason) => self.refuse(cluster, source, reason, now),
        };
        self.follow(cluster, source, next);
    }
}

impl RootContext for DnsDiscovery {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(error) => {
                log(LogLevel::Error, &format!("dns discovery: {error}"));
                return false;
            }
        };
        self.resolvers = config.resolvers;
        self.query_timeout = config.query_timeout;
        self.refresh = Some(config.refresh);
        self.clusters = config
            .clusters
            .into_iter()
            .map(|(name, sources)| ClusterState {
                name,
                resolutions: sources.into_iter().map(Resolution::new).collect(),
                publisher: Publisher::default(),
            })
            .collect();
        self.tokens.clear();
        // Lookups start on the first tick, not here: the canary RustNg runs a new module's
        // configuration on has no resolver, and should not resolve anything anyway.
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let now = self.clock.now();
        for cluster in 0..self.clusters.len() {
            // Clusters of address literals only are published at once.
            self.publish_if_changed(cluster);
            for source in 0..self.clusters[cluster].resolutions.len() {
                let resolution = &mut self.clusters[cluster].resolutions[source];
                if resolution.is_due(now) {
                    let (name, record_type) = resolution.begin();
                    self.lookup(cluster, source, &name, record_type);
                }
            }
        }
    }
}

impl DnsDiscovery {
    fn refresh(&self) -> Refresh {
        self.refresh.unwrap_or(Refresh {
            min: Duration::from_secs(5),
            max: Duration::from_secs(300),
            failure: Duration::from_secs(5),
        })
    }

    fn lookup(&mut self, cluster: usize, source: usize, name: &str, record_type: RecordType) {
        match resolve(name, record_type, &self.resolvers, self.query_timeout) {
            Ok(token) => {
                self.tokens.insert(token, (cluster, source));
            }
            Err(status) => {
                let now = self.clock.now();
                let reason = format!("{name}: rustng.resolve refused the lookup ({status:?})");
                let next = self.refuse(cluster, source, reason, now);
                self.follow(cluster, source, next);
            }
        }
    }

    fn refuse(&mut self, cluster: usize, source: usize, reason: String, now: Duration) -> Next {
        let refresh = self.refresh();
        self.clusters[cluster].resolutions[source].refused(reason, now, &refresh)
    }

    fn follow(&mut self, cluster: usize, source: usize, next: Next) {
        match next {
            Next::Lookup(name, record_type) => self.lookup(cluster, source, &name, record_type),
            Next::Ended { failure } => {
                if let Some(reason) = failure {
                    let message = format!(
                        "dns discovery: cluster {}: lookup failed, keeping the last good addresses: {reason}",
                        self.clusters[cluster].name
                    );
                    log(LogLevel::Warn, &message);
                }
                self.publish_if_changed(cluster);
            }
        }
    }

    /// Publishes the cluster's set once every source has answered at least once (or failed
    /// trying) and one of them has addresses, and then whenever it changes.
    fn publish_if_changed(&mut self, cluster: usize) {
        let state = &mut self.clusters[cluster];
        let ready = state.resolutions.iter().all(|r| r.settled)
            && state.resolutions.iter().any(|r| r.last_good.is_some());
        if !ready {
            return;
        }
        let set = cluster_set(state.resolutions.iter());
        state
            .publisher
            .publish_if_changed("dns", &state.name, set, "");
    }
}
