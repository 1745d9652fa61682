//! `proxy_get_current_time_nanoseconds`, `proxy_set_tick_period_milliseconds`.

use std::time::{SystemTime, UNIX_EPOCH};

use rustng_abi::table::Module;
use wasmtime::{Caller, Linker};

use super::status;
use crate::memory::write_bytes;
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_get_current_time_nanoseconds"),
    (Module::Env, "proxy_set_tick_period_milliseconds"),
];

pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut caller: Caller<'_, HostState>, return_time: i32| -> i32 {
            status(write_bytes(
                &mut caller,
                return_time,
                &unix_nanos().to_le_bytes(),
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut caller: Caller<'_, HostState>, period: i32| -> i32 {
            caller.data_mut().tick_period_ms = period as u32;
            status(Ok(()))
        },
    )?;
    Ok(())
}
