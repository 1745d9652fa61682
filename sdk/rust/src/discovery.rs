//! Publishing endpoints from a discovery adapter (`rustng.set_endpoints`, docs/EXTENSIONS.md).
//!
//! An adapter is a proxy-wasm plugin a cluster names in `discovery.plugin`. RustNg runs it
//! once per process and hands it, as its plugin configuration,
//! `{"settings": <the plugin's own configuration>, "clusters": {"<name>": {<the cluster's
//! discovery section>}}}`; [`AdapterConfig`] reads that.
//!
//! An adapter whose registry answers long-polls or watches over HTTP (Consul, Kubernetes)
//! can be a [`Follower`] and write only its [`Protocol`].

mod follow;
mod follow_settings;

use std::collections::BTreeMap;

use proxy_wasm::types::Status;
use serde::{Deserialize, Serialize};

pub use follow::{Answer, Configured, Follower, Protocol, Published};
pub use follow_settings::{FollowSettings, Window};
pub use rustng_abi::extensions::SET_ENDPOINTS;

/// What RustNg gives an adapter as its plugin configuration.
#[derive(Debug, Deserialize)]
pub struct AdapterConfig<S = serde_json::Value, C = serde_json::Value> {
    /// The plugin's own `configuration`.
    #[serde(default = "Option::default")]
    pub settings: Option<S>,
    /// Each cluster's `discovery` section (without `plugin`), by cluster name.
    pub clusters: BTreeMap<String, C>,
}

impl<S: for<'de> Deserialize<'de>, C: for<'de> Deserialize<'de>> AdapterConfig<S, C> {
    /// Parses the plugin configuration bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("adapter configuration: {e}"))
    }
}

/// One endpoint of a published set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `ip:port`.
    pub address: String,
    /// Share of traffic (≥ 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Locality, as the registry names it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Anything else the registry says about it.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// The registry's health; an unhealthy endpoint stays listed but out of rotation.
    #[serde(default = "yes")]
    pub healthy: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Serialize)]
struct Set<'a> {
    cluster: &'a str,
    endpoints: &'a [Endpoint],
}

/// Publishes `cluster`'s whole endpoint set. `BadArgument` when RustNg refuses it (the reason
/// is in RustNg's log); the cluster then keeps its last good set.
pub fn set_endpoints(cluster: &str, endpoints: &[Endpoint]) -> Result<(), Status> {
    let json = serde_json::to_vec(&Set { cluster, endpoints }).map_err(|_| Status::BadArgument)?;
    proxy_wasm::hostcalls::call_foreign_function(SET_ENDPOINTS, Some(&json)).map(|_| ())
}

/// Reads a file the adapter's configuration names (`rustng.read_file`), such as a token the
/// platform rotates; read it each time it is needed. `BadArgument` for a path the
/// configuration does not name, `NotFound` for a file that cannot be read.
pub fn read_file(path: &str) -> Result<Vec<u8>, Status> {
    proxy_wasm::hostcalls::call_foreign_function(
        rustng_abi::extensions::READ_FILE,
        Some(path.as_bytes()),
    )
    .map(Option::unwrap_or_default)
}

/// An adapter's clock for its schedule: time since it first asked, from the host's clock
/// (`proxy_get_current_time_nanoseconds`), never going back even if the wall clock does.
#[derive(Debug, Default)]
pub struct Clock {
    started: Option<std::time::SystemTime>,
    last: std::time::Duration,
}

impl Clock {
    /// Time since the first call.
    pub fn now(&mut self) -> std::time::Duration {
        let wall = proxy_wasm::hostcalls::get_current_time().unwrap_or(std::time::UNIX_EPOCH);
        let started = *self.started.get_or_insert(wall);
        self.last = self
            .last
            .max(wall.duration_since(started).unwrap_or_default());
        self.last
    }
}

/// Publishes a cluster's set only when it differs from the last one published, logging what
/// happened (`<adapter> discovery: cluster <name>: N endpoints <detail>`). A refused set is
/// not sent again until the set changes: the same set would be refused again.
#[derive(Debug, Default)]
pub struct Publisher {
    published: Option<Vec<Endpoint>>,
}

impl Publisher {
    /// Publishes `set` for `cluster` if it changed; whether it was sent.
    pub fn publish_if_changed(
        &mut self,
        adapter: &str,
        cluster: &str,
        set: Vec<Endpoint>,
        detail: &str,
    ) -> bool {
        if self.published.as_ref() == Some(&set) {
            return false;
        }
        match set_endpoints(cluster, &set) {
            Ok(()) => log(
                proxy_wasm::types::LogLevel::Info,
                &format!(
                    "{adapter} discovery: cluster {cluster}: {} endpoints{detail}",
                    set.len()
                ),
            ),
            Err(status) => log(
                proxy_wasm::types::LogLevel::Warn,
                &format!(
                    "{adapter} discovery: cluster {cluster}: endpoint set refused ({status:?})"
                ),
            ),
        }
        self.published = Some(set);
        true
    }
}

/// Logs through the host (an adapter has no other output).
pub fn log(level: proxy_wasm::types::LogLevel, message: &str) {
    proxy_wasm::hostcalls::log(level, message).ok();
}

/// Percent-encodes what is not unreserved in a URL (RFC 3986), for names put into a path or
/// a query string.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_percent_encoded() {
        assert_eq!(percent_encode("web api/v1=x"), "web%20api%2Fv1%3Dx");
        assert_eq!(percent_encode("a-b.c_d~"), "a-b.c_d~");
    }
}
