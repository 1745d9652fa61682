//! `proxy_call_foreign_function`: see `crate::foreign`.

use rustng_abi::table::Module;
use wasmtime::{Caller, Linker};

use super::status;
use crate::memory::{read_guest, read_guest_str, return_bytes};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[(Module::Env, "proxy_call_foreign_function")];

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut caller: Caller<'_, HostState>,
         name: i32,
         name_size: i32,
         argument: i32,
         argument_size: i32,
         return_data: i32,
         return_size: i32|
         -> i32 {
            status((|| {
                let name = read_guest_str(&caller, name, name_size)?;
                let argument = read_guest(&caller, argument, argument_size)?;
                let state = caller.data();
                let result = state
                    .host
                    .foreign
                    .call(&name, &state.config.name, &argument)?;
                return_bytes(&mut caller, &result, return_data, return_size)
            })())
        },
    )?;
    Ok(())
}
