//! RustNg's proxy-wasm host on wasmtime.
//!
//! One [`WasmEngine`] per process compiles modules; a [`PluginModule`] is a compiled module
//! whose ABI version is known and whose imports are all satisfied from the ABI table in
//! `rustng-abi`; a [`PluginInstance`] is one running copy with its own store, memory limit and
//! call deadline. Every guest entry has an epoch deadline, and a guest can fail only itself:
//! traps, deadlines and memory exhaustion come back as [`WasmError`], never as a crash.
//!
//! State that crosses instances (shared data, queues, metrics) lives in one [`PluginHost`]
//! per process; what an instance borrows from its worker comes in an [`InstanceEnv`].

mod engine;
mod error;
mod foreign;
mod fused;
mod header_names;
mod host;
mod hostcalls;
mod http;
mod instance;
mod lent;
mod limits;
mod memory;
mod metrics;
mod module;
mod shared;
mod state;
mod usage;

pub use engine::{CacheStats, EngineLimits, WasmEngine};
pub use error::WasmError;
pub use foreign::{ForeignFunction, ForeignFunctions};
pub use host::{InstanceEnv, PluginHost, UpstreamCheck};
pub use http::{
    BodyOutcome, GrpcAction, GrpcCall, GrpcEvent, HeadersOutcome, HttpCallRequest,
    HttpCallResponse, LocalResponse, PausedHead, RequestHead, ResponseHead, StreamAction,
    StreamInfo,
};
pub use instance::{Direction, HttpContextId, PeerSide, PluginInstance};
pub use limits::Limits;
pub use metrics::MetricRegistry;
pub use module::PluginModule;
pub use rustng_abi::PeerType;
pub use shared::{QueueNotifier, QueueReady};
pub use state::{LogSink, PluginConfig};
pub use usage::{InstanceUsage, PluginUsage, SAMPLE_EVERY, UsageTotals};
