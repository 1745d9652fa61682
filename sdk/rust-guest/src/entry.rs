//! The callbacks [`crate::request_filter!`] exports, generic over the filter.

use std::cell::RefCell;
use std::ptr::null_mut;
use std::thread::LocalKey;

use rustng_abi::{Action, BufferType, LogLevel};

use crate::{Request, RequestFilter, Response, ResponseFilter, abi, log, scratch};

/// Where the macro keeps the configured filter (one per module; wasm has one thread).
pub type Slot<F> = LocalKey<RefCell<Option<F>>>;

pub use crate::scratch::allocate;

/// `proxy_on_configure`: parses the plugin configuration into the filter. A configuration
/// that does not parse refuses the plugin, with the reason in the log.
pub fn configure<F: RequestFilter>(slot: &'static Slot<F>, size: usize) -> u32 {
    scratch::reset();
    let configuration = match plugin_configuration(size) {
        Ok(bytes) => bytes,
        Err(status) => {
            log(
                LogLevel::Error,
                &format!("cannot read the plugin configuration: {status:?}"),
            );
            return 0;
        }
    };
    match F::configure(configuration) {
        Ok(filter) => {
            slot.with(|slot| *slot.borrow_mut() = Some(filter));
            1
        }
        Err(error) => {
            log(LogLevel::Error, &error);
            0
        }
    }
}

/// `proxy_on_request_headers`: the filter's decision; an unconfigured filter lets the
/// request through (the host never runs one whose configuration failed).
pub fn request_headers<F: RequestFilter>(slot: &'static Slot<F>, end_of_stream: bool) -> u32 {
    scratch::reset();
    let action = slot.with(|slot| match slot.borrow().as_ref() {
        Some(filter) => filter.on_request_headers(&mut Request::new(), end_of_stream),
        None => Action::Continue,
    });
    action.into()
}

/// `proxy_on_response_headers`, as [`request_headers`].
pub fn response_headers<F: ResponseFilter>(slot: &'static Slot<F>, end_of_stream: bool) -> u32 {
    scratch::reset();
    let action = slot.with(|slot| match slot.borrow().as_ref() {
        Some(filter) => filter.on_response_headers(&mut Response::new(), end_of_stream),
        None => Action::Continue,
    });
    action.into()
}

fn plugin_configuration<'a>(size: usize) -> Result<&'a [u8], rustng_abi::Status> {
    if size == 0 {
        return Ok(&[]);
    }
    let mut data = null_mut();
    let mut returned = 0;
    // SAFETY: the host writes the return pair.
    let status = unsafe {
        abi::proxy_get_buffer_bytes(
            BufferType::PluginConfiguration.into(),
            0,
            size,
            &mut data,
            &mut returned,
        )
    };
    abi::checked(status)?;
    // SAFETY: returned by the host for this call, in this callback.
    Ok(unsafe { abi::returned(data, returned) })
}
