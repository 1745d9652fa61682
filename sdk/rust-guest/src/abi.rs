//! The proxy-wasm hostcalls this runtime makes, as the host exports them (ABI 0.2.1), and
//! nothing else: a module imports only what its filter can call.

use rustng_abi::Status;

// The host's functions: every pointer passed points into this module's memory, and every
// `return_*` pair is written by the host (after it called `proxy_on_memory_allocate`).
unsafe extern "C" {
    pub(crate) fn proxy_log(level: u32, message: *const u8, message_size: usize) -> u32;
    pub(crate) fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    pub(crate) fn proxy_get_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        return_value: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    pub(crate) fn proxy_replace_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    pub(crate) fn proxy_add_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    pub(crate) fn proxy_remove_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
    ) -> u32;
    pub(crate) fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        return_value: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    pub(crate) fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    pub(crate) fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
}

/// A hostcall's status as a result; a value the ABI does not know is the host's failure.
pub(crate) fn checked(status: u32) -> Result<(), Status> {
    match Status::try_from(status) {
        Ok(Status::Ok) => Ok(()),
        Ok(status) => Err(status),
        Err(_) => Err(Status::InternalFailure),
    }
}

/// Bytes the host returned through a `return_*` pair: they live in the callback's scratch
/// (see [`crate::scratch`]) until the callback ends. A null pointer is an empty value, as
/// Envoy returns empty ones.
///
/// # Safety
///
/// `data` and `size` must be what the host wrote for a call that returned `Ok`, during the
/// current callback.
pub(crate) unsafe fn returned<'a>(data: *mut u8, size: usize) -> &'a [u8] {
    if data.is_null() || size == 0 {
        return &[];
    }
    // SAFETY: the host wrote `size` bytes at `data`, an allocation of `size` bytes it asked
    // `proxy_on_memory_allocate` for; the scratch keeps it until the callback ends.
    unsafe { std::slice::from_raw_parts(data, size) }
}
