//! A compiled proxy-wasm module, checked against the ABI and ready to instantiate.

use rustng_abi::AbiVersion;
use rustng_abi::table::{self, Module as ImportModule};
use wasmtime::{ExternType, InstancePre};

use crate::engine::WasmEngine;
use crate::error::WasmError;
use crate::hostcalls;
use crate::state::HostState;

/// A module that compiled, speaks a known ABI version and imports only what the host has.
pub struct PluginModule {
    pub(crate) engine: WasmEngine,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) allocator: &'static str,
    abi: AbiVersion,
}

impl PluginModule {
    /// Compiles and checks `bytes`; the error says what is wrong with the module.
    pub fn compile(engine: &WasmEngine, bytes: &[u8]) -> Result<PluginModule, WasmError> {
        let module = engine.module(bytes)?;
        let abi = AbiVersion::detect(module.exports().map(|e| e.name()))
            .map_err(|e| WasmError::Abi(e.to_string()))?;
        if !module
            .exports()
            .any(|e| e.name() == "memory" && matches!(e.ty(), ExternType::Memory(_)))
        {
            return Err(WasmError::Abi("exports no memory named \"memory\"".into()));
        }
        let has = |name: &str| module.exports().any(|e| e.name() == name);
        let allocator = if has("proxy_on_memory_allocate") {
            "proxy_on_memory_allocate"
        } else if has("malloc") {
            "malloc"
        } else {
            return Err(WasmError::Abi(
                "exports neither proxy_on_memory_allocate nor malloc".into(),
            ));
        };
        let hostcalls = table::hostcalls(abi);
        for import in module.imports() {
            let known = hostcalls.iter().any(|h| {
                h.module.name() == import.module() && h.name == import.name()
                    || (import.module() == "wasi_unstable"
                        && h.module == ImportModule::WasiPreview1
                        && h.name == import.name())
            });
            if !known {
                return Err(WasmError::UnknownImport {
                    module: import.module().to_owned(),
                    name: import.name().to_owned(),
                });
            }
        }
        let linker = hostcalls::linker(engine.inner(), abi)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| WasmError::Abi(format!("imports do not match the ABI: {e:#}")))?;
        Ok(PluginModule {
            engine: engine.clone(),
            pre,
            allocator,
            abi,
        })
    }

    /// The ABI version the module declares.
    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }
}
