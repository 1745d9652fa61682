//! Shared data (`proxy_get_shared_data`, `proxy_set_shared_data`, with compare-and-swap) and
//! shared queues (`proxy_register_shared_queue`, `proxy_resolve_shared_queue`,
//! `proxy_enqueue_shared_queue`, `proxy_dequeue_shared_queue`), scoped by the plugin's VM id.

use rustng_abi::table::Module;
use wasmtime::{Caller, Linker};

use super::status;
use crate::instance::ROOT_CONTEXT_ID;
use crate::memory::{read_guest, read_guest_str, return_bytes, write_u32};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_get_shared_data"),
    (Module::Env, "proxy_set_shared_data"),
    (Module::Env, "proxy_register_shared_queue"),
    (Module::Env, "proxy_resolve_shared_queue"),
    (Module::Env, "proxy_enqueue_shared_queue"),
    (Module::Env, "proxy_dequeue_shared_queue"),
];

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut caller: Caller<'_, HostState>,
         key: i32,
         key_size: i32,
         return_data: i32,
         return_size: i32,
         return_cas: i32|
         -> i32 {
            status((|| {
                let key = read_guest(&caller, key, key_size)?;
                let state = caller.data();
                let (value, cas) = state.host.data.get(&state.config.vm_id, &key)?;
                return_bytes(&mut caller, &value, return_data, return_size)?;
                write_u32(&mut caller, return_cas, cas)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |caller: Caller<'_, HostState>,
         key: i32,
         key_size: i32,
         value: i32,
         value_size: i32,
         cas: i32|
         -> i32 {
            status((|| {
                let key = read_guest(&caller, key, key_size)?;
                let value = read_guest(&caller, value, value_size)?;
                let state = caller.data();
                state
                    .host
                    .data
                    .set(&state.config.vm_id, &key, &value, cas as u32)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut caller: Caller<'_, HostState>, name: i32, name_size: i32, return_id: i32| -> i32 {
            status((|| {
                let name = read_guest_str(&caller, name, name_size)?;
                let state = caller.data();
                // Queues belong to the root context: it is the one told of new messages.
                let token = state.host.queues.register(
                    &state.config.vm_id,
                    &name,
                    ROOT_CONTEXT_ID,
                    state.queue_ready.clone(),
                )?;
                write_u32(&mut caller, return_id, token)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut caller: Caller<'_, HostState>,
         vm_id: i32,
         vm_id_size: i32,
         name: i32,
         name_size: i32,
         return_id: i32|
         -> i32 {
            status((|| {
                let vm_id = read_guest_str(&caller, vm_id, vm_id_size)?;
                let name = read_guest_str(&caller, name, name_size)?;
                let token = caller.data().host.queues.resolve(&vm_id, &name)?;
                write_u32(&mut caller, return_id, token)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |caller: Caller<'_, HostState>, token: i32, value: i32, value_size: i32| -> i32 {
            status((|| {
                let value = read_guest(&caller, value, value_size)?;
                caller.data().host.queues.enqueue(token as u32, &value)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut caller: Caller<'_, HostState>,
         token: i32,
         return_data: i32,
         return_size: i32|
         -> i32 {
            status((|| {
                let message = caller.data().host.queues.dequeue(token as u32)?;
                return_bytes(&mut caller, &message, return_data, return_size)
            })())
        },
    )?;
    Ok(())
}
