//! Hostcalls, one file per group, each with its own `add_to_linker`. Whatever the ABI table
//! lists and no group implements is linked to a stub that answers `UNIMPLEMENTED` (WASI:
//! `NOTSUP`), so a module importing it loads, and calling it never traps.

mod buffers;
mod clock;
mod foreign;
mod grpc;
mod headers;
mod legacy;
mod log;
mod metrics;
mod properties;
mod shared;
mod stream;
mod wasi;

use rustng_abi::AbiVersion;
use rustng_abi::table::{self, Module, ValType};
use rustng_abi::{Status, WasiErrno};
use wasmtime::{Engine, FuncType, Linker, Val};

use crate::error::WasmError;
use crate::state::HostState;

/// WASI functions are also linked under the pre-snapshot module name, which modules built by
/// older toolchains (AssemblyScript's proxy runtime) import.
pub(crate) const WASI_UNSTABLE: &str = "wasi_unstable";

type Implemented = &'static [(Module, &'static str)];

const GROUPS: &[Implemented] = &[
    log::NAMES,
    buffers::NAMES,
    clock::NAMES,
    foreign::NAMES,
    grpc::NAMES,
    headers::NAMES,
    legacy::NAMES,
    metrics::NAMES,
    properties::NAMES,
    shared::NAMES,
    stream::NAMES,
    wasi::NAMES,
];

/// The linker for modules of `version`: every call of its table, implemented or stubbed.
pub(crate) fn linker(engine: &Engine, version: AbiVersion) -> Result<Linker<HostState>, WasmError> {
    let mut linker = Linker::new(engine);
    let runtime = |e: wasmtime::Error| WasmError::Runtime(format!("{e:#}"));
    log::add_to_linker(&mut linker).map_err(runtime)?;
    buffers::add_to_linker(&mut linker).map_err(runtime)?;
    clock::add_to_linker(&mut linker).map_err(runtime)?;
    foreign::add_to_linker(&mut linker).map_err(runtime)?;
    grpc::add_to_linker(&mut linker, version).map_err(runtime)?;
    headers::add_to_linker(&mut linker).map_err(runtime)?;
    legacy::add_to_linker(&mut linker, version).map_err(runtime)?;
    metrics::add_to_linker(&mut linker).map_err(runtime)?;
    properties::add_to_linker(&mut linker).map_err(runtime)?;
    shared::add_to_linker(&mut linker).map_err(runtime)?;
    stream::add_to_linker(&mut linker).map_err(runtime)?;
    wasi::add_to_linker(&mut linker).map_err(runtime)?;
    for hostcall in &table::hostcalls(version) {
        let implemented = GROUPS
            .iter()
            .any(|group| group.contains(&(hostcall.module, hostcall.name)));
        if implemented {
            continue;
        }
        let ty = FuncType::new(
            engine,
            hostcall.params.iter().map(|t| val_type(*t)),
            hostcall.results.iter().map(|t| val_type(*t)),
        );
        let answer = match hostcall.module {
            Module::Env => Status::Unimplemented as i32,
            Module::WasiPreview1 => WasiErrno::Notsup as i32,
        };
        let modules: &[&str] = match hostcall.module {
            Module::Env => &["env"],
            Module::WasiPreview1 => &["wasi_snapshot_preview1", WASI_UNSTABLE],
        };
        for module in modules {
            linker
                .func_new(module, hostcall.name, ty.clone(), move |_, _, results| {
                    if let Some(result) = results.first_mut() {
                        *result = Val::I32(answer);
                    }
                    Ok(())
                })
                .map_err(runtime)?;
        }
    }
    Ok(linker)
}

fn val_type(t: ValType) -> wasmtime::ValType {
    match t {
        ValType::I32 => wasmtime::ValType::I32,
        ValType::I64 => wasmtime::ValType::I64,
    }
}

/// A status as the `i32` a hostcall returns.
pub(crate) fn status(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok as i32,
        Err(status) => status as i32,
    }
}
