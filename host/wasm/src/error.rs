//! What can go wrong with a module or an instance, said so that an operator can act on it.

/// A module refused at load, or an instance that failed.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The bytes are not a valid WebAssembly module.
    #[error("invalid wasm module: {0}")]
    Invalid(String),
    /// The module is valid wasm but not a usable proxy-wasm module.
    #[error("not a usable proxy-wasm module: {0}")]
    Abi(String),
    /// The module imports something the host does not provide.
    #[error("unknown import {module}.{name}")]
    UnknownImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// A guest call ran past its deadline.
    #[error("{callback}: deadline exceeded ({limit_ms} ms)")]
    Deadline {
        /// The callback.
        callback: &'static str,
        /// The limit.
        limit_ms: u128,
    },
    /// A guest call trapped (including running out of memory).
    #[error("{callback}: trap: {message}")]
    Trap {
        /// The callback.
        callback: &'static str,
        /// wasmtime's description.
        message: String,
    },
    /// The plugin refused its configuration (`proxy_on_vm_start` or `proxy_on_configure`
    /// returned false).
    #[error("{0} returned false: the plugin refused its configuration")]
    Refused(&'static str),
    /// The engine or instance could not be set up.
    #[error("wasm runtime: {0}")]
    Runtime(String),
}
