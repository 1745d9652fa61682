//! Routing decisions for the core (`rustng.route.*` properties, docs/EXTENSIONS.md).

use std::time::Duration;

use proxy_wasm::types::Status;

pub use rustng_abi::extensions::{ROUTE_CLUSTER, ROUTE_TIMEOUT_MS};

/// Sends the current request to `cluster` instead of the listener's default. Call it from
/// `on_http_request_headers` (or before the request leaves).
pub fn set_cluster(cluster: &str) -> Result<(), Status> {
    proxy_wasm::hostcalls::set_property(vec![ROUTE_CLUSTER], Some(cluster.as_bytes()))
}

/// Gives the upstream `timeout` to start its response, for the current request only.
pub fn set_timeout(timeout: Duration) -> Result<(), Status> {
    let ms = timeout.as_millis().max(1).to_string();
    proxy_wasm::hostcalls::set_property(vec![ROUTE_TIMEOUT_MS], Some(ms.as_bytes()))
}
