//! What every plugin instance in the process shares, and what the embedding host lends each
//! instance: the shared-data space, the queues, the metric registry, and the hooks through
//! which a plugin reaches the worker that runs it.

use std::sync::Arc;

use crate::foreign::ForeignFunctions;
use crate::metrics::MetricRegistry;
use crate::shared::{QueueNotifier, SharedData, SharedQueues};
use crate::state::LogSink;

/// Process-wide plugin state. One per process; every instance holds an `Arc` to it.
#[derive(Default)]
pub struct PluginHost {
    pub(crate) data: SharedData,
    pub(crate) queues: SharedQueues,
    metrics: MetricRegistry,
    pub(crate) foreign: ForeignFunctions,
}

impl PluginHost {
    /// A host whose plugins can call `foreign` (`proxy_call_foreign_function`).
    pub fn new(foreign: ForeignFunctions) -> Self {
        PluginHost {
            foreign,
            ..PluginHost::default()
        }
    }

    /// The metrics plugins defined, for `/metrics`.
    pub fn metrics(&self) -> &MetricRegistry {
        &self.metrics
    }
}

/// Says whether a cluster of that name exists (for `proxy_http_call`).
pub type UpstreamCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What one instance gets from its host besides its module and configuration.
#[derive(Clone, Default)]
pub struct InstanceEnv {
    /// The process-wide state; a fresh one when left empty (tests).
    pub host: Arc<PluginHost>,
    /// Where guest log lines go (default: `tracing`, target `wasm`).
    pub log: Option<LogSink>,
    /// Called when a queue this instance registered receives a message; without it the
    /// instance never hears of its queues (it can still dequeue).
    pub queue_ready: Option<QueueNotifier>,
    /// Which clusters HTTP calls may go to; without it every `proxy_http_call` is refused.
    pub upstreams: Option<UpstreamCheck>,
    /// Where the instance reports its callbacks, guest time and memory (`/metrics`).
    pub usage: Option<Arc<crate::InstanceUsage>>,
}
