//! A lean proxy-wasm guest runtime for filters that decide on request headers alone (RustNg's
//! router, for one).
//!
//! The upstream Rust SDK exports every callback of the ABI and routes each through its
//! dispatcher (a context map, a boxed context per request), so a host enters such a module
//! seven times per request: context create, request headers, response headers, response body,
//! done, log, delete. Hosts skip the callbacks a module does not export (Envoy and RustNg
//! alike), so a filter built with [`request_filter!`] costs one entry per request:
//! `proxy_on_request_headers`. The values it reads live in a scratch arena (see [`scratch`])
//! instead of the module's heap.
//!
//! ```ignore
//! struct Tagger { tag: String }
//!
//! impl rustng_guest::RequestFilter for Tagger {
//!     fn configure(configuration: &[u8]) -> Result<Self, String> {
//!         let tag = String::from_utf8(configuration.to_vec()).map_err(|e| e.to_string())?;
//!         Ok(Tagger { tag })
//!     }
//!
//!     fn on_request_headers(&self, request: &mut Request<'_>, _end_of_stream: bool) -> Action {
//!         let _ = request.headers().set("x-tag", &self.tag);
//!         Action::Continue
//!     }
//! }
//!
//! rustng_guest::request_filter!(Tagger);
//! ```
//!
//! [`http_filter!`] exports `proxy_on_response_headers` too, for a [`ResponseFilter`]. What it
//! does not offer: per-request state, bodies, HTTP calls, timers, shared data. A filter that
//! needs them is written with the upstream SDK (and `rustng-sdk`).

mod abi;
pub mod duration;
#[doc(hidden)]
pub mod entry;
mod headers;
mod request;
pub mod route;
pub mod scratch;

pub use headers::Headers;
pub use request::{Request, Response, log, set_property};
pub use rustng_abi::{Action, LogLevel, Status};

/// A filter that runs on request headers only.
pub trait RequestFilter: Sized + 'static {
    /// Builds the filter from its plugin configuration (`proxy_on_configure`); an error
    /// refuses the plugin and is logged.
    fn configure(configuration: &[u8]) -> Result<Self, String>;

    /// Decides on a request (`proxy_on_request_headers`): [`Action::Continue`] lets it go on,
    /// [`Action::Pause`] after [`Request::send_response`] answers it.
    fn on_request_headers(&self, request: &mut Request<'_>, end_of_stream: bool) -> Action;
}

/// A filter that also works on response headers (still no bodies): exported by
/// [`http_filter!`], two guest entries per request.
pub trait ResponseFilter: RequestFilter {
    /// Works on the response head (`proxy_on_response_headers`). Nothing carries over from
    /// the request phase: a filter that needs per-request state is written with the upstream
    /// SDK.
    fn on_response_headers(&self, response: &mut Response<'_>, end_of_stream: bool) -> Action;
}

/// Makes `$filter` the module's filter: exports the ABI version marker, the allocator, and the
/// start, configure and request-headers callbacks, nothing else.
///
/// Only for wasm32 targets, so the crate's unit tests still build natively.
#[macro_export]
macro_rules! request_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            $crate::__exports!($filter);
        };
    };
}

/// [`request_filter!`] for a [`ResponseFilter`]: `proxy_on_response_headers` is exported too.
#[macro_export]
macro_rules! http_filter {
    ($filter:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            $crate::__exports!($filter);

            #[unsafe(no_mangle)]
            pub extern "C" fn proxy_on_response_headers(
                _context: u32,
                _headers: usize,
                end_of_stream: u32,
            ) -> u32 {
                $crate::entry::response_headers(&FILTER, end_of_stream != 0)
            }
        };
    };
}

/// The exports every filter of this runtime has; `FILTER` holds the configured filter.
#[doc(hidden)]
#[macro_export]
macro_rules! __exports {
    ($filter:ty) => {
        ::std::thread_local! {
            static FILTER: ::std::cell::RefCell<Option<$filter>> =
                const { ::std::cell::RefCell::new(None) };
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn proxy_abi_version_0_2_1() {}

        #[unsafe(no_mangle)]
        pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
            $crate::entry::allocate(size)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn proxy_on_vm_start(_root_context: u32, _size: usize) -> u32 {
            1
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn proxy_on_configure(_root_context: u32, size: usize) -> u32 {
            $crate::entry::configure(&FILTER, size)
        }

        #[unsafe(no_mangle)]
        pub extern "C" fn proxy_on_request_headers(
            _context: u32,
            _headers: usize,
            end_of_stream: u32,
        ) -> u32 {
            $crate::entry::request_headers(&FILTER, end_of_stream != 0)
        }
    };
}
