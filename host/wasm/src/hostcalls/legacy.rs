//! The calls ABI 0.1.0 and 0.2.0 modules import that 0.2.1 dropped: `proxy_get_configuration`
//! (0.1.0 read both configurations through it), `proxy_continue_request` and
//! `proxy_continue_response` (0.1.0's per-direction `proxy_continue_stream`), and
//! `proxy_clear_route_cache`. Linked only for modules of those versions.

use rustng_abi::AbiVersion;
use rustng_abi::table::Module;
use wasmtime::{Caller, Linker};

use super::status;
use crate::http::StreamAction;
use crate::memory::return_bytes;
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_get_configuration"),
    (Module::Env, "proxy_continue_request"),
    (Module::Env, "proxy_continue_response"),
    (Module::Env, "proxy_clear_route_cache"),
];

fn resume(caller: &mut Caller<'_, HostState>, action: StreamAction) -> i32 {
    let state = caller.data_mut();
    state.stream_actions.push((state.effective_context, action));
    status(Ok(()))
}

pub(super) fn add_to_linker(
    linker: &mut Linker<HostState>,
    version: AbiVersion,
) -> wasmtime::Result<()> {
    if version == AbiVersion::V0_2_1 {
        return Ok(());
    }
    // No route cache until routing is a module (the router will re-route on the next
    // request); clearing it is a success with nothing to do.
    linker.func_wrap(
        "env",
        "proxy_clear_route_cache",
        |_: Caller<'_, HostState>| -> i32 { status(Ok(())) },
    )?;
    if version != AbiVersion::V0_1_0 {
        return Ok(());
    }
    linker.func_wrap(
        "env",
        "proxy_get_configuration",
        |mut caller: Caller<'_, HostState>, return_data: i32, return_size: i32| -> i32 {
            // Whichever configuration the current callback receives.
            let state = caller.data();
            let bytes = state
                .readable_buffer
                .and_then(|buffer| state.buffer(buffer))
                .unwrap_or_default()
                .to_vec();
            status(return_bytes(&mut caller, &bytes, return_data, return_size))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_request",
        |mut caller: Caller<'_, HostState>| -> i32 {
            resume(&mut caller, StreamAction::ContinueRequest)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_response",
        |mut caller: Caller<'_, HostState>| -> i32 {
            resume(&mut caller, StreamAction::ContinueResponse)
        },
    )?;
    Ok(())
}
