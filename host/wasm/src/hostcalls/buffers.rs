//! `proxy_get_buffer_bytes`, `proxy_get_buffer_status`, for the buffers the current callback
//! may read (so far the VM and plugin configuration).

use rustng_abi::table::Module;
use rustng_abi::{BufferType, Status};
use wasmtime::{Caller, Linker};

use super::status;
use crate::memory::{return_bytes, write_u32};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_get_buffer_bytes"),
    (Module::Env, "proxy_get_buffer_status"),
];

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         buffer: i32,
         start: i32,
         max_size: i32,
         return_data: i32,
         return_size: i32|
         -> i32 {
            status(get_bytes(
                &mut caller,
                buffer,
                start,
                max_size,
                return_data,
                return_size,
            ))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut caller: Caller<'_, HostState>,
         buffer: i32,
         return_size: i32,
         return_flags: i32|
         -> i32 {
            let result = (|| {
                let buffer =
                    BufferType::try_from(buffer as u32).map_err(|_| Status::BadArgument)?;
                let size = caller.data().buffer(buffer).ok_or(Status::NotFound)?.len();
                let size = u32::try_from(size).map_err(|_| Status::InternalFailure)?;
                write_u32(&mut caller, return_size, size)?;
                write_u32(&mut caller, return_flags, 0)
            })();
            status(result)
        },
    )?;
    Ok(())
}

fn get_bytes(
    caller: &mut Caller<'_, HostState>,
    buffer: i32,
    start: i32,
    max_size: i32,
    return_data: i32,
    return_size: i32,
) -> Result<(), Status> {
    let buffer = BufferType::try_from(buffer as u32).map_err(|_| Status::BadArgument)?;
    let start = start as u32 as usize;
    let max_size = max_size as u32 as usize;
    let bytes = caller.data().buffer(buffer).ok_or(Status::NotFound)?;
    if start > bytes.len() || start.checked_add(max_size).is_none() {
        return Err(Status::BadArgument);
    }
    let end = (start + max_size).min(bytes.len());
    if end == start {
        // Nothing to copy: as Envoy, success with the return pointers left untouched.
        return Ok(());
    }
    // Copied out first: returning bytes calls the guest's allocator, which needs the store.
    let chunk = bytes[start..end].to_vec();
    return_bytes(caller, &chunk, return_data, return_size)
}
