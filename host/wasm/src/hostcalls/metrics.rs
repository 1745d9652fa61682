//! `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric`: process-wide series (see `crate::metrics`).

use rustng_abi::table::Module;
use rustng_abi::{MetricType, Status};
use wasmtime::{Caller, Linker};

use super::status;
use crate::memory::{read_guest_str, write_bytes, write_u32};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_define_metric"),
    (Module::Env, "proxy_increment_metric"),
    (Module::Env, "proxy_record_metric"),
    (Module::Env, "proxy_get_metric"),
];

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Caller<'_, HostState>,
         kind: i32,
         name: i32,
         name_size: i32,
         return_id: i32|
         -> i32 {
            status((|| {
                let kind = MetricType::try_from(kind as u32).map_err(|_| Status::BadArgument)?;
                let name = read_guest_str(&caller, name, name_size)?;
                let id = caller.data().host.metrics().define(kind, &name)?;
                write_u32(&mut caller, return_id, id)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut caller: Caller<'_, HostState>, id: i32, offset: i64| -> i32 {
            status(
                caller
                    .data_mut()
                    .metric(id as u32)
                    .and_then(|m| m.increment(offset)),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut caller: Caller<'_, HostState>, id: i32, value: i64| -> i32 {
            status(
                caller
                    .data_mut()
                    .metric(id as u32)
                    .and_then(|m| m.record(value as u64)),
            )
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut caller: Caller<'_, HostState>, id: i32, return_value: i32| -> i32 {
            status((|| {
                let value = caller.data_mut().metric(id as u32)?.get()?;
                write_bytes(&mut caller, return_value, &value.to_le_bytes())
            })())
        },
    )?;
    Ok(())
}
