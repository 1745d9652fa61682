//! Routing decisions for the core (`rustng.route.*` properties, docs/EXTENSIONS.md). They are
//! plain hostcalls, so filters built on the upstream SDK (through `rustng_sdk::route`) and on
//! this runtime use the same functions.

use std::time::Duration;

use rustng_abi::Status;

use crate::set_property;

pub use rustng_abi::extensions::{
    ROUTE_CLUSTER, ROUTE_HASH_KEY, ROUTE_NAME, ROUTE_NUM_RETRIES, ROUTE_PER_TRY_TIMEOUT_MS,
    ROUTE_RETRIABLE_STATUS_CODES, ROUTE_RETRY_BASE_INTERVAL_MS, ROUTE_RETRY_MAX_INTERVAL_MS,
    ROUTE_RETRY_ON, ROUTE_TIMEOUT_MS,
};

/// Sends the current request to `cluster` instead of the listener's default. Call it from
/// `on_http_request_headers` (or before the request leaves).
pub fn set_cluster(cluster: &str) -> Result<(), Status> {
    set_property(ROUTE_CLUSTER, cluster.as_bytes())
}

/// Names the route the request took (Envoy's route `name`): traces report it.
pub fn set_route_name(name: &str) -> Result<(), Status> {
    set_property(ROUTE_NAME, name.as_bytes())
}

/// Gives the upstream `timeout` to start its response, for the current request only (with
/// retries, for all attempts together).
pub fn set_timeout(timeout: Duration) -> Result<(), Status> {
    let ms = millis(timeout);
    set_property(ROUTE_TIMEOUT_MS, ms.as_bytes())
}

/// Sets the current request's key for consistent hashing (`RING_HASH`, `MAGLEV` clusters):
/// requests with the same key go to the same endpoint while it is in rotation.
pub fn set_hash_key(key: &str) -> Result<(), Status> {
    set_property(ROUTE_HASH_KEY, key.as_bytes())
}

/// Envoy's `RetryPolicy` for the current request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryPolicy {
    /// `5xx`, `gateway-error`, `reset`, `connect-failure`, `refused-stream`, `retriable-4xx`,
    /// `retriable-status-codes`, comma-separated.
    pub retry_on: String,
    /// Default 1.
    pub num_retries: Option<u32>,
    pub per_try_timeout: Option<Duration>,
    pub retriable_status_codes: Vec<u16>,
    /// Default 25 ms.
    pub base_interval: Option<Duration>,
    /// Default ten times the base interval.
    pub max_interval: Option<Duration>,
}

impl RetryPolicy {
    /// The properties that carry the policy, rendered once (a router keeps them with its
    /// route and sets them per request with [`set_properties`]).
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut properties = vec![(ROUTE_RETRY_ON, self.retry_on.clone())];
        if let Some(n) = self.num_retries {
            properties.push((ROUTE_NUM_RETRIES, n.to_string()));
        }
        if let Some(timeout) = self.per_try_timeout {
            properties.push((ROUTE_PER_TRY_TIMEOUT_MS, millis(timeout)));
        }
        if !self.retriable_status_codes.is_empty() {
            let codes: Vec<String> = self
                .retriable_status_codes
                .iter()
                .map(u16::to_string)
                .collect();
            properties.push((ROUTE_RETRIABLE_STATUS_CODES, codes.join(",")));
        }
        if let Some(base) = self.base_interval {
            properties.push((ROUTE_RETRY_BASE_INTERVAL_MS, millis(base)));
        }
        if let Some(max) = self.max_interval {
            properties.push((ROUTE_RETRY_MAX_INTERVAL_MS, millis(max)));
        }
        properties
    }
}

/// Retries the current request as `policy` says.
pub fn set_retry_policy(policy: &RetryPolicy) -> Result<(), Status> {
    set_properties(&policy.properties())
}

/// Sets `rustng.*` properties rendered earlier (see [`RetryPolicy::properties`]).
pub fn set_properties(properties: &[(&'static str, String)]) -> Result<(), Status> {
    properties
        .iter()
        .try_for_each(|(name, value)| set_property(name, value.as_bytes()))
}

/// Whole milliseconds, at least 1 (zero would mean "not set").
fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}
