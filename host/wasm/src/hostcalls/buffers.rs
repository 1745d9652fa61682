//! `proxy_get_buffer_bytes`, `proxy_get_buffer_status`, `proxy_set_buffer_bytes`, for the
//! buffers the current callback may use: the VM and plugin configuration (read-only), the
//! request or response body in body callbacks, an HTTP call's response body.

use bytes::Bytes;
use rustng_abi::table::Module;
use rustng_abi::{BufferType, Status};
use wasmtime::{Caller, Linker};

use super::status;
use crate::limits::MAX_BODY_BYTES;
use crate::memory::{read_guest, return_bytes, write_u32};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_get_buffer_bytes"),
    (Module::Env, "proxy_get_buffer_status"),
    (Module::Env, "proxy_set_buffer_bytes"),
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
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut caller: Caller<'_, HostState>,
         buffer: i32,
         start: i32,
         size: i32,
         data: i32,
         data_size: i32|
         -> i32 {
            status((|| {
                let buffer =
                    BufferType::try_from(buffer as u32).map_err(|_| Status::BadArgument)?;
                let data = read_guest(&caller, data, data_size)?;
                let body = match &mut caller.data_mut().http.body {
                    Some((kind, body)) if *kind == buffer => body,
                    // Configurations and a call's response are read-only.
                    _ => return Err(Status::NotFound),
                };
                // Its own bytes from here on: a copy only if they are still shared.
                let mut owned = Vec::from(std::mem::take(body));
                let changed = splice(
                    &mut owned,
                    start as u32 as usize,
                    size as u32 as usize,
                    &data,
                );
                *body = Bytes::from(owned);
                changed
            })())
        },
    )?;
    Ok(())
}

/// Envoy's rules for changing a body: at offset 0, `size` bytes are replaced by `data` (so
/// size 0 prepends, the whole length replaces everything); at or past the end, `data` is
/// appended; anything else is `BAD_ARGUMENT`.
fn splice(body: &mut Vec<u8>, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
    if body.len().saturating_add(data.len()) > MAX_BODY_BYTES {
        return Err(Status::InternalFailure);
    }
    if start == 0 {
        let drained = size.min(body.len());
        body.splice(..drained, data.iter().copied());
        Ok(())
    } else if start >= body.len() {
        body.extend_from_slice(data);
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
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
    // Taken out of the store first: returning bytes calls the guest's allocator, which needs
    // it. A body is shared bytes (a reference count); the other buffers are copied.
    let chunk = match &caller.data().http.body {
        Some((kind, body)) if *kind == buffer => body.slice(start..end),
        _ => Bytes::copy_from_slice(&bytes[start..end]),
    };
    return_bytes(caller, &chunk, return_data, return_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_change_the_way_envoy_changes_them() {
        let mut body = b"hello world".to_vec();
        splice(&mut body, 0, 0, b">> ").expect("prepend");
        assert_eq!(body, b">> hello world");
        let end = body.len();
        splice(&mut body, end, 0, b"!").expect("append");
        assert_eq!(body, b">> hello world!");
        splice(&mut body, 0, 3, b"").expect("drain the front");
        assert_eq!(body, b"hello world!");
        splice(&mut body, 0, usize::MAX, b"replaced").expect("replace all");
        assert_eq!(body, b"replaced");
        assert_eq!(splice(&mut body, 3, 1, b"x"), Err(Status::BadArgument));
    }
}
