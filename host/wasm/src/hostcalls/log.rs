//! `proxy_log`, `proxy_get_log_level`.

use rustng_abi::table::Module;
use rustng_abi::{LogLevel, Status};
use wasmtime::{Caller, Linker};

use super::status;
use crate::limits::MAX_LOG_MESSAGE;
use crate::memory::{guest_memory, slice, write_u32};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_log"),
    (Module::Env, "proxy_get_log_level"),
];

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |caller: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> i32 {
            status(log(&caller, level, ptr, len))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut caller: Caller<'_, HostState>, return_level: i32| -> i32 {
            let level = caller.data().log_level() as u32;
            status(write_u32(&mut caller, return_level, level))
        },
    )?;
    Ok(())
}

fn log(caller: &Caller<'_, HostState>, level: i32, ptr: i32, len: i32) -> Result<(), Status> {
    let level = LogLevel::try_from(level as u32).map_err(|_| Status::BadArgument)?;
    let memory = guest_memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    let message = slice(memory, ptr, len)?;
    if caller.data().logs(level) {
        let message = &message[..message.len().min(MAX_LOG_MESSAGE)];
        let state = caller.data();
        (state.log)(&state.config.name, level, &String::from_utf8_lossy(message));
    }
    Ok(())
}
