//! The `static` discovery adapter, and the reference for writing adapters: it publishes the
//! endpoints each cluster lists in its `discovery` section, every time the configuration
//! changes.
//!
//! ```yaml
//! plugins:
//!   - name: static-sd
//!     vm_config: { code: { local: { filename: discovery_static.wasm } } }
//! clusters:
//!   - name: backend
//!     discovery:
//!       plugin: static-sd
//!       endpoints: [{ address: 10.0.0.7:8080, weight: 2 }, { address: 10.0.0.8:8080 }]
//! ```
//!
//! An adapter is a root context only: RustNg runs it once per process, never on a request.
//! It learns its clusters from the configuration ([`rustng_sdk::discovery::AdapterConfig`]),
//! and publishes each cluster's whole set with [`rustng_sdk::discovery::set_endpoints`].

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;
use rustng_sdk::discovery::{AdapterConfig, Endpoint, set_endpoints};
use serde::Deserialize;

/// A cluster's `discovery` section, for this adapter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub endpoints: Vec<Endpoint>,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(StaticDiscovery));
}}

struct StaticDiscovery;

impl Context for StaticDiscovery {}

impl RootContext for StaticDiscovery {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match AdapterConfig::<serde_json::Value, ClusterSection>::parse(&bytes) {
            Ok(config) => config,
            Err(error) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &error).ok();
                return false;
            }
        };
        for (cluster, section) in &config.clusters {
            // A refused set is logged by RustNg with its reason; the adapter carries on with
            // the other clusters, and the refused one keeps its last good set.
            if let Err(status) = set_endpoints(cluster, &section.endpoints) {
                let message = format!("endpoints for cluster {cluster} refused: {status:?}");
                proxy_wasm::hostcalls::log(LogLevel::Warn, &message).ok();
            }
        }
        true
    }
}
