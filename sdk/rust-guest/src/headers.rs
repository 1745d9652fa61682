//! A header map of the current callback's stream (the request's or the response's), read and
//! changed through the host.

use std::marker::PhantomData;
use std::ptr::null_mut;

use rustng_abi::{MapType, Status};

use crate::abi;

/// One of the stream's header maps, for the length of one callback (`'a`): values read borrow
/// from the callback's scratch memory, see [`crate::Request`].
pub struct Headers<'a> {
    map: MapType,
    callback: PhantomData<&'a ()>,
}

impl<'a> Headers<'a> {
    pub(crate) fn new(map: MapType) -> Headers<'a> {
        Headers {
            map,
            callback: PhantomData,
        }
    }

    /// A header's value; `None` when it is missing or not UTF-8.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        std::str::from_utf8(self.get_bytes(name)?).ok()
    }

    /// A header's value as bytes.
    pub fn get_bytes(&self, name: &str) -> Option<&'a [u8]> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: `name` is readable for its length; the host writes the return pair.
        let status = unsafe {
            abi::proxy_get_header_map_value(
                self.map.into(),
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            )
        };
        abi::checked(status).ok()?;
        // SAFETY: returned by the host for this call, in the current callback (which `'a`
        // spans).
        Some(unsafe { abi::returned(data, size) })
    }

    /// Sets a header, replacing every value it had.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), Status> {
        // SAFETY: both slices are readable for their lengths.
        abi::checked(unsafe {
            abi::proxy_replace_header_map_value(
                self.map.into(),
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    /// Adds a value to a header, beside any it has.
    pub fn add(&mut self, name: &str, value: &str) -> Result<(), Status> {
        // SAFETY: both slices are readable for their lengths.
        abi::checked(unsafe {
            abi::proxy_add_header_map_value(
                self.map.into(),
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        })
    }

    /// Removes a header.
    pub fn remove(&mut self, name: &str) -> Result<(), Status> {
        // SAFETY: `name` is readable for its length.
        abi::checked(unsafe {
            abi::proxy_remove_header_map_value(self.map.into(), name.as_ptr(), name.len())
        })
    }
}
