//! Helpers for proxy-wasm filters written with the upstream Rust SDK (`proxy-wasm`), for
//! RustNg's extension points. A filter using them still runs in Envoy; only the `rustng.*`
//! properties mean nothing there.
//!
//! - [`route::set_cluster`]: tell the core which cluster a request goes to.
//! - [`trace::context`]: the request's trace context (with tracing configured).
//! - [`discovery::Follower`]: the root context of a discovery adapter that follows its registry
//!   with long-polls or watches over HTTP; the adapter writes only a [`discovery::Protocol`].
//! - [`ConfiguredRoot`]: the root context most filters need: parse the plugin configuration
//!   once (refusing the plugin with the reason when it does not parse), then hand every HTTP
//!   context a shared reference to it. [`configured_http_filter!`] makes it the module's root.

pub mod discovery;
pub mod resolve;
pub mod trace;

/// Envoy-style durations in configurations (`250ms`, `2s`).
pub use rustng_guest::duration;
/// Routing decisions for the core; the same functions as `rustng_guest::route`.
pub use rustng_guest::route;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

/// Parses the plugin configuration into the filter's settings; the error is logged and the
/// plugin refused (`proxy_on_configure` answers false).
pub type Parse<C> = fn(&[u8]) -> Result<C, String>;

/// Makes the HTTP context of one request from the parsed settings.
pub type MakeContext<C> = fn(Rc<C>) -> Box<dyn HttpContext>;

/// A root context that parses its configuration once and shares it with every request.
pub struct ConfiguredRoot<C> {
    parse: Parse<C>,
    make: MakeContext<C>,
    config: Option<Rc<C>>,
}

impl<C: 'static> ConfiguredRoot<C> {
    pub fn new(parse: Parse<C>, make: MakeContext<C>) -> Self {
        ConfiguredRoot {
            parse,
            make,
            config: None,
        }
    }
}

impl<C> Context for ConfiguredRoot<C> {}

impl<C: 'static> RootContext for ConfiguredRoot<C> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match (self.parse)(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(error) => {
                let _ = proxy_wasm::hostcalls::log(LogLevel::Error, &error);
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        self.config
            .as_ref()
            .map(|config| (self.make)(Rc::clone(config)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The module's entry point with a [`ConfiguredRoot`] as its root context:
/// `configured_http_filter!(Settings::parse, |settings| Box::new(Filter { settings }));`
///
/// Only for wasm32 targets, so the crate's unit tests still build natively.
#[macro_export]
macro_rules! configured_http_filter {
    ($parse:expr, $make:expr $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        proxy_wasm::main! {{
            proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
            proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
                Box::new($crate::ConfiguredRoot::new($parse, $make))
            });
        }}
    };
}
