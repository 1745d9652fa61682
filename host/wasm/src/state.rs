//! What a plugin instance's store carries: the host's side of one running module.

use std::sync::Arc;

use rustng_abi::{BufferType, LogLevel};
use wasmtime::{Memory, StoreLimits, TypedFunc};

use crate::host::PluginHost;
use crate::http::{GrpcAction, HttpCallRequest, HttpCallState, StreamAction};
use crate::metrics::Metric;
use crate::shared::QueueNotifier;

/// A plugin's configuration, Envoy's `PluginConfig`/`VmConfig` reduced to what the guest sees.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginConfig {
    /// Plugin name, for logs and the `plugin_name` property.
    pub name: String,
    /// Root id: selects the root context in modules that hold several.
    pub root_id: String,
    /// VM id: plugins with the same one share data and queues.
    pub vm_id: String,
    /// `vm_config.configuration`, given to `proxy_on_vm_start`.
    pub vm_configuration: Vec<u8>,
    /// `configuration`, given to `proxy_on_configure`.
    pub plugin_configuration: Vec<u8>,
    /// `vm_config.environment_variables.key_values`, the guest's WASI environment.
    pub environment: Vec<(String, String)>,
}

/// Where guest log lines go. The default writes them through `tracing` under the target
/// `wasm`, with the plugin name; tests capture them.
pub type LogSink = Arc<dyn Fn(&str, LogLevel, &str) + Send + Sync>;

pub(crate) fn tracing_sink() -> LogSink {
    Arc::new(|plugin: &str, level: LogLevel, message: &str| match level {
        LogLevel::Trace => tracing::trace!(target: "wasm", plugin, "{message}"),
        LogLevel::Debug => tracing::debug!(target: "wasm", plugin, "{message}"),
        LogLevel::Info => tracing::info!(target: "wasm", plugin, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "wasm", plugin, "{message}"),
        LogLevel::Error | LogLevel::Critical => {
            tracing::error!(target: "wasm", plugin, "{message}")
        }
    })
}

/// Whether the subscriber records guest lines at `level`.
fn tracing_enabled(level: LogLevel) -> bool {
    use tracing::Level;
    match level {
        LogLevel::Trace => tracing::enabled!(target: "wasm", Level::TRACE),
        LogLevel::Debug => tracing::enabled!(target: "wasm", Level::DEBUG),
        LogLevel::Info => tracing::enabled!(target: "wasm", Level::INFO),
        LogLevel::Warn => tracing::enabled!(target: "wasm", Level::WARN),
        LogLevel::Error | LogLevel::Critical => tracing::enabled!(target: "wasm", Level::ERROR),
    }
}

/// The most verbose level the subscriber records for the `wasm` target: what
/// `proxy_get_log_level` answers, as Envoy answers its `wasm` component's level.
fn tracing_level() -> LogLevel {
    use tracing::Level;
    if tracing::enabled!(target: "wasm", Level::TRACE) {
        LogLevel::Trace
    } else if tracing::enabled!(target: "wasm", Level::DEBUG) {
        LogLevel::Debug
    } else if tracing::enabled!(target: "wasm", Level::INFO) {
        LogLevel::Info
    } else if tracing::enabled!(target: "wasm", Level::WARN) {
        LogLevel::Warn
    } else if tracing::enabled!(target: "wasm", Level::ERROR) {
        LogLevel::Error
    } else {
        LogLevel::Critical
    }
}

impl HostState {
    /// The least severe level that reaches the log.
    pub(crate) fn log_level(&self) -> LogLevel {
        self.log_level.unwrap_or_else(tracing_level)
    }

    /// Whether a guest line at `level` is written. Asked before the message is read: filters
    /// log on every request at levels the proxy usually drops (the tracing sink's subscriber
    /// answers in one load for a disabled level).
    pub(crate) fn logs(&self, level: LogLevel) -> bool {
        match self.log_level {
            Some(least) => level >= least,
            None => tracing_enabled(level),
        }
    }
}

/// The guest's exports a hostcall needs: its memory and its allocator.
pub(crate) struct GuestExports {
    pub(crate) memory: Memory,
    pub(crate) allocate: TypedFunc<i32, i32>,
}

/// The store data of a plugin instance.
pub(crate) struct HostState {
    pub(crate) config: Arc<PluginConfig>,
    /// Reported usage (see `usage.rs`), and the callbacks run so far.
    pub(crate) usage: Option<Arc<crate::InstanceUsage>>,
    pub(crate) calls: u64,
    pub(crate) limits: StoreLimits,
    pub(crate) log: LogSink,
    /// The least severe level `log` takes; `None` for the tracing sink, whose subscriber
    /// decides (see [`HostState::log_level`]).
    pub(crate) log_level: Option<LogLevel>,
    /// Filled in once the instance exists; hostcalls made during instantiation (start
    /// functions) find it empty and answer as if memory were out of reach.
    pub(crate) exports: Option<GuestExports>,
    /// The buffer the current callback may read (VM or plugin configuration, …).
    pub(crate) readable_buffer: Option<BufferType>,
    /// Set by `proxy_set_tick_period_milliseconds`.
    pub(crate) tick_period_ms: u32,
    /// The HTTP head the current callback works on.
    pub(crate) http: HttpCallState,
    /// Shared data, queues and metrics of the whole process.
    pub(crate) host: Arc<PluginHost>,
    /// How this instance's worker hears of messages on the queues it registered.
    pub(crate) queue_ready: Option<QueueNotifier>,
    /// Metrics this instance used, by id: recording through a kept handle takes no lock.
    pub(crate) metrics: Vec<Option<Arc<Metric>>>,
    /// The context the current callback was called for.
    pub(crate) callback_context: i32,
    /// The context hostcalls act on: the callback's, unless `proxy_set_effective_context`
    /// switched it (a root context resuming a stream from `proxy_on_tick`, say).
    pub(crate) effective_context: i32,
    /// Continue / close / local response for contexts other than the callback's own.
    pub(crate) stream_actions: Vec<(i32, StreamAction)>,
    /// HTTP calls made during the callback, for the host to send after it.
    pub(crate) pending_calls: Vec<HttpCallRequest>,
    pub(crate) last_call_token: u32,
    /// gRPC calls opened, messages sent, calls closed or cancelled during the callback.
    pub(crate) grpc_actions: Vec<GrpcAction>,
    /// Whether a cluster exists (`proxy_http_call` refuses unknown ones at once, as Envoy).
    pub(crate) upstreams: Option<crate::host::UpstreamCheck>,
    /// The header names the module sets, parsed once.
    pub(crate) header_names: crate::header_names::HeaderNames,
    /// The fused callbacks' stop flag ([`crate::fused`]), raised by a local response.
    pub(crate) fused_stop: Option<wasmtime::Global>,
}

impl HostState {
    /// The metric with `id`, kept for the next call.
    pub(crate) fn metric(&mut self, id: u32) -> Result<Arc<Metric>, rustng_abi::Status> {
        let index = id as usize;
        if let Some(Some(metric)) = self.metrics.get(index) {
            return Ok(Arc::clone(metric));
        }
        let metric = self.host.metrics().handle(id)?;
        if self.metrics.len() <= index {
            self.metrics.resize(index + 1, None);
        }
        self.metrics[index] = Some(Arc::clone(&metric));
        Ok(metric)
    }

    /// The bytes of `buffer` if the current callback may read it: the configurations during
    /// the callback that receives them, bodies during body callbacks, a call's response body
    /// during `proxy_on_http_call_response`.
    pub(crate) fn buffer(&self, buffer: BufferType) -> Option<&[u8]> {
        match buffer {
            BufferType::VmConfiguration | BufferType::PluginConfiguration
                if self.readable_buffer != Some(buffer) =>
            {
                None
            }
            BufferType::VmConfiguration => Some(&self.config.vm_configuration),
            BufferType::PluginConfiguration => Some(&self.config.plugin_configuration),
            BufferType::HttpRequestBody
            | BufferType::HttpResponseBody
            | BufferType::DownstreamData
            | BufferType::UpstreamData => self
                .http
                .body
                .as_ref()
                .filter(|(kind, _)| *kind == buffer)
                .map(|(_, bytes)| &bytes[..]),
            BufferType::HttpCallResponseBody => {
                self.http.call_response.as_ref().map(|r| r.body.as_slice())
            }
            BufferType::CallData => self.http.foreign_arguments.as_deref(),
            BufferType::GrpcReceiveBuffer => self.http.grpc_message.as_deref(),
        }
    }
}
