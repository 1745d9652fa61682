//! Guest memory access. Every pointer and length comes from the guest: each access is bounds
//! checked and a bad one becomes `INVALID_MEMORY_ACCESS`, never a host fault or a trap.

use rustng_abi::Status;
use wasmtime::{Caller, Memory};

use crate::state::HostState;

/// The guest's memory as a byte slice, or `None` before the instance exists.
pub(crate) fn guest_memory<'a>(caller: &'a Caller<'_, HostState>) -> Option<&'a [u8]> {
    Some(exported_memory(caller).ok()?.data(caller))
}

/// The guest's range of `len` bytes at `ptr` (both as the guest passed them, unsigned).
fn range(ptr: i32, len: usize) -> Result<std::ops::Range<usize>, Status> {
    let start = usize::try_from(ptr as u32).map_err(|_| Status::InvalidMemoryAccess)?;
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    Ok(start..end)
}

/// `len` bytes at `ptr`.
pub(crate) fn slice(memory: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let len = usize::try_from(len as u32).map_err(|_| Status::InvalidMemoryAccess)?;
    memory
        .get(range(ptr, len)?)
        .ok_or(Status::InvalidMemoryAccess)
}

/// The instance's memory export (a handle: it is looked up in the store on each use).
fn exported_memory(caller: &Caller<'_, HostState>) -> Result<Memory, Status> {
    caller
        .data()
        .exports
        .as_ref()
        .map(|e| e.memory)
        .ok_or(Status::InvalidMemoryAccess)
}

/// The guest's memory and the host state at once, so a hostcall can read guest bytes while
/// it changes the state, without copying them first.
pub(crate) fn memory_and_state<'a>(
    caller: &'a mut Caller<'_, HostState>,
) -> Result<(&'a [u8], &'a mut HostState), Status> {
    let memory = exported_memory(caller)?;
    let (data, state) = memory.data_and_store_mut(caller);
    Ok((data, state))
}

/// A copy of `len` bytes at `ptr`.
pub(crate) fn read_guest(
    caller: &Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<Vec<u8>, Status> {
    let memory = guest_memory(caller).ok_or(Status::InvalidMemoryAccess)?;
    Ok(slice(memory, ptr, len)?.to_vec())
}

/// A guest string (names, keys, paths): not valid UTF-8 is a bad argument.
pub(crate) fn read_guest_str(
    caller: &Caller<'_, HostState>,
    ptr: i32,
    len: i32,
) -> Result<String, Status> {
    String::from_utf8(read_guest(caller, ptr, len)?).map_err(|_| Status::BadArgument)
}

/// Writes a little-endian `u32` at `ptr`.
pub(crate) fn write_u32(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    value: u32,
) -> Result<(), Status> {
    write_bytes(caller, ptr, &value.to_le_bytes())
}

/// Writes `bytes` at `ptr`.
pub(crate) fn write_bytes(
    caller: &mut Caller<'_, HostState>,
    ptr: i32,
    bytes: &[u8],
) -> Result<(), Status> {
    let memory = exported_memory(caller)?;
    place(memory.data_mut(caller), ptr, bytes)
}

/// Copies `bytes` into a fresh guest allocation (the guest's own allocator) and stores its
/// address and length at `return_ptr` and `return_len`, the ABI's way to return data. Empty
/// data is returned as a null pointer without calling the allocator, as Envoy does (SDKs read
/// that as "no value").
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    bytes: &[u8],
    return_ptr: i32,
    return_len: i32,
) -> Result<(), Status> {
    if bytes.is_empty() {
        write_u32(caller, return_ptr, 0)?;
        return write_u32(caller, return_len, 0);
    }
    let len = i32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    // Taken out for the call instead of cloned: a `TypedFunc` clone takes a reference on its
    // registered type, a measurable cost on every returned value. The allocator runs no
    // hostcall that needs the exports meanwhile.
    let exports = caller
        .data_mut()
        .exports
        .take()
        .ok_or(Status::InvalidMemoryAccess)?;
    // A trap inside the guest's allocator is the guest's failure; report it as an
    // allocation failure rather than unwinding through the hostcall.
    let allocated = exports.allocate.call(&mut *caller, len);
    caller.data_mut().exports = Some(exports);
    let address = allocated.map_err(|_| Status::InternalFailure)?;
    if address == 0 && len != 0 {
        return Err(Status::InternalFailure);
    }
    // One lookup of the memory for the three writes: it is a measurable share of a header
    // read.
    let memory = exported_memory(caller)?;
    let data = memory.data_mut(caller);
    place(data, address, bytes)?;
    place(data, return_ptr, &(address as u32).to_le_bytes())?;
    place(data, return_len, &(len as u32).to_le_bytes())
}

/// Copies `bytes` to `ptr` in `data`, bounds checked.
fn place(data: &mut [u8], ptr: i32, bytes: &[u8]) -> Result<(), Status> {
    data.get_mut(range(ptr, bytes.len())?)
        .ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_bounds_checked() {
        let memory = [0u8; 16];
        assert_eq!(slice(&memory, 0, 16).map(<[u8]>::len), Ok(16));
        assert_eq!(slice(&memory, 16, 0).map(<[u8]>::len), Ok(0));
        assert_eq!(slice(&memory, 10, 7), Err(Status::InvalidMemoryAccess));
        assert_eq!(slice(&memory, -1, 1), Err(Status::InvalidMemoryAccess));
        assert_eq!(slice(&memory, 1, -1), Err(Status::InvalidMemoryAccess));
        assert_eq!(
            slice(&memory, i32::MAX, i32::MAX),
            Err(Status::InvalidMemoryAccess)
        );
    }
}
