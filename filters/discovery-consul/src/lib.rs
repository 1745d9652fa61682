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

use std::time::Duration;

use proxy_wasm::types::LogLevel;
use rustng_sdk::discovery::{Answer, Configured, Follower, Protocol, Published};

use config::Config;
use followed::Followed;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Follower<Consul>>::default());
}}

/// Consul's blocking queries, for a [`Follower`] that does the scheduling.
struct Consul {
    /// ACL token, sent as `X-Consul-Token` when not empty.
    token: String,
}

impl Protocol for Consul {
    type Cluster = Followed;

    const ADAPTER: &'static str = "consul";
    const UPSTREAM: &'static str = "Consul";
    const HEADERS: &'static [&'static str] = &["x-consul-index"];

    fn configure(bytes: &[u8]) -> Result<Configured<Self>, String> {
        let config = Config::parse(bytes)?;
        Ok(Configured {
            settings: config.follow,
            protocol: Consul {
                token: config.token,
            },
            clusters: config
                .clusters
                .into_iter()
                .map(|(cluster, service)| (cluster, Followed::new(service)))
                .collect(),
        })
    }

    fn credentials(&self) -> Result<Option<(&'static str, String)>, String> {
        Ok((!self.token.is_empty()).then(|| ("x-consul-token", self.token.clone())))
    }

    fn path(followed: &Followed, wait: Duration) -> String {
        followed.path(wait)
    }

    fn timeout(wait: Duration) -> Duration {
        // Consul adds up to wait/16 of jitter to a blocking query.
        wait + wait / 16 + Duration::from_secs(5)
    }

    fn answered(followed: &mut Followed, answer: &Answer) -> Result<(), String> {
        followed.answered(answer.status, answer.header("x-consul-index"), &answer.body)
    }

    fn published(followed: &Followed) -> Option<Published> {
        Some(Published {
            endpoints: followed.set()?.clone(),
            detail: format!(" (service {})", followed.service.name),
            warnings: Vec::new(),
        })
    }

    fn failure(reason: &str) -> String {
        format!("query failed, keeping the last set: {reason}")
    }
}
