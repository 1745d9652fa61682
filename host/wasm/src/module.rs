//! A compiled proxy-wasm module, checked against the ABI and ready to instantiate.

use rustng_abi::AbiVersion;
use rustng_abi::table::{self, Module as ImportModule};
use wasmtime::{ExternType, FuncType, InstancePre, Module};

use crate::engine::WasmEngine;
use crate::error::WasmError;
use crate::fused::FusedShape;
use crate::hostcalls;
use crate::state::HostState;

/// A module that compiled, speaks a known ABI version and imports only what the host has.
pub struct PluginModule {
    pub(crate) engine: WasmEngine,
    pub(crate) pre: InstancePre<HostState>,
    pub(crate) allocator: &'static str,
    /// The host's module running this one's back-to-back callbacks in one entry, if any
    /// fuse ([`crate::fused`]).
    pub(crate) fused: Option<(FusedShape, Module)>,
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
        let shape = fused_shape(&module);
        let fused = engine.fused(shape)?.map(|fused| (shape, fused));
        Ok(PluginModule {
            engine: engine.clone(),
            pre,
            allocator,
            fused,
            abi,
        })
    }

    /// The ABI version the module declares.
    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }
}

/// Which fusable callbacks `module` exports with the ABI's signatures. One with another
/// signature is left out (it is refused, or called on its own, as without fusing).
fn fused_shape(module: &Module) -> FusedShape {
    let func = |name: &str| match module.get_export(name) {
        Some(ExternType::Func(ty)) => Some(ty),
        _ => None,
    };
    let is = |ty: &FuncType, params: usize, results: usize| {
        ty.params().len() == params
            && ty.results().len() == results
            && ty.params().chain(ty.results()).all(|t| t.is_i32())
    };
    let has = |name: &str, params: usize, results: usize| {
        func(name).is_some_and(|ty| is(&ty, params, results))
    };
    // A headers callback, and whether it takes `end_of_stream` (0.2.x) or not (0.1.0).
    let headers = |name: &str| {
        func(name).and_then(|ty| {
            if is(&ty, 3, 1) {
                Some(true)
            } else if is(&ty, 2, 1) {
                Some(false)
            } else {
                None
            }
        })
    };
    FusedShape {
        context_create: has("proxy_on_context_create", 2, 0),
        request_headers: headers("proxy_on_request_headers"),
        response_headers: headers("proxy_on_response_headers"),
        response_body: has("proxy_on_response_body", 3, 1),
        done: has("proxy_on_done", 1, 1),
        log: has("proxy_on_log", 1, 0),
        delete: has("proxy_on_delete", 1, 0),
    }
}
