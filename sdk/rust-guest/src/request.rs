//! The request a filter's callback works on: its headers, its properties, and a local answer.

use std::marker::PhantomData;
use std::ptr::null_mut;

use rustng_abi::{MapType, Status};

use crate::abi;
use crate::headers::Headers;

/// The current request, for the length of one callback. Values read from it borrow from the
/// callback's scratch memory (`'a`), so reading costs no allocation in the module, and no
/// value can outlive the callback that read it.
pub struct Request<'a> {
    callback: PhantomData<&'a ()>,
}

impl<'a> Request<'a> {
    /// Only the entry points make one, once per callback.
    pub(crate) fn new() -> Request<'a> {
        Request {
            callback: PhantomData,
        }
    }

    /// The request's headers (`:authority`, `:path`, `:method` and `:scheme` included).
    pub fn headers(&self) -> Headers<'a> {
        Headers::new(MapType::HttpRequestHeaders)
    }

    /// A property by its path (`["source", "address"]`), as the host encodes it.
    pub fn property(&self, path: &[&str]) -> Option<&'a [u8]> {
        property(path)
    }

    /// Answers the request here instead of sending it on; the callback should then return
    /// [`rustng_abi::Action::Pause`].
    pub fn send_response(
        &mut self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), Status> {
        let mut serialized = Vec::new();
        rustng_abi::encode_pairs(
            headers
                .iter()
                .map(|(name, value)| (name.as_bytes(), value.as_bytes())),
            &mut serialized,
        );
        // SAFETY: every slice is readable for its length.
        abi::checked(unsafe {
            abi::proxy_send_local_response(
                u32::from(status),
                std::ptr::null(),
                0,
                body.as_ptr(),
                body.len(),
                serialized.as_ptr(),
                serialized.len(),
                -1,
            )
        })
    }
}

/// The current response's head, for the length of one callback (see [`Request`]).
pub struct Response<'a> {
    callback: PhantomData<&'a ()>,
}

impl<'a> Response<'a> {
    pub(crate) fn new() -> Response<'a> {
        Response {
            callback: PhantomData,
        }
    }

    /// The response's headers (`:status` included).
    pub fn headers(&self) -> Headers<'a> {
        Headers::new(MapType::HttpResponseHeaders)
    }

    /// A property by its path, as [`Request::property`].
    pub fn property(&self, path: &[&str]) -> Option<&'a [u8]> {
        property(path)
    }
}

/// A property of the current stream; the value lives as long as the callback (`'a`).
fn property<'a>(path: &[&str]) -> Option<&'a [u8]> {
    let path = path.join("\0");
    let mut data = null_mut();
    let mut size = 0;
    // SAFETY: `path` is readable for its length; the host writes the return pair.
    let status =
        unsafe { abi::proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    abi::checked(status).ok()?;
    // SAFETY: returned by the host for this call, in this callback.
    Some(unsafe { abi::returned(data, size) })
}

/// Sets a property of the current request: a path of one segment (`rustng.route.cluster`).
pub fn set_property(name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: both slices are readable for their lengths.
    abi::checked(unsafe {
        abi::proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len())
    })
}

/// Logs `message` through the host at `level`.
pub fn log(level: rustng_abi::LogLevel, message: &str) {
    // SAFETY: `message` is readable for its length. A refused log line has nowhere to go.
    let _ = unsafe { abi::proxy_log(level.into(), message.as_ptr(), message.len()) };
}
