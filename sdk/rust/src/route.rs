//! Routing decisions for the core (`rustng.route.*` properties, docs/EXTENSIONS.md).

use proxy_wasm::types::Status;

pub use rustng_abi::extensions::ROUTE_CLUSTER;

/// Sends the current request to `cluster` instead of the listener's default. Call it from
/// `on_http_request_headers` (or before the request leaves).
pub fn set_cluster(cluster: &str) -> Result<(), Status> {
    proxy_wasm::hostcalls::set_property(vec![ROUTE_CLUSTER], Some(cluster.as_bytes()))
}
