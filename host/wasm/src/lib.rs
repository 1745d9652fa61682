//! RustNg's proxy-wasm host on wasmtime.
//!
//! One [`WasmEngine`] per process compiles modules; a [`PluginModule`] is a compiled module
//! whose ABI version is known and whose imports are all satisfied from the ABI table in
//! `rustng-abi`; a [`PluginInstance`] is one running copy with its own store, memory limit and
//! call deadline. Every guest entry has an epoch deadline, and a guest can fail only itself:
//! traps, deadlines and memory exhaustion come back as [`WasmError`], never as a crash.
//!
//! This is the first slice of issue 3: engine, loading, linking, the VM/plugin start
//! sequence, logging, configuration buffers and WASI basics. HTTP contexts follow.

mod engine;
mod error;
mod hostcalls;
mod http;
mod instance;
mod limits;
mod memory;
mod module;
mod state;

pub use engine::WasmEngine;
pub use error::WasmError;
pub use http::{HeadersOutcome, LocalResponse, RequestHead, ResponseHead};
pub use instance::{HttpContextId, PluginInstance};
pub use limits::Limits;
pub use module::PluginModule;
pub use state::{LogSink, PluginConfig};
