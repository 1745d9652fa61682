//! Helpers for proxy-wasm filters written with the upstream Rust SDK (`proxy-wasm`), for
//! RustNg's extension points. A filter using them still runs in Envoy; only the `rustng.*`
//! properties mean nothing there.
//!
//! - [`route::set_cluster`]: tell the core which cluster a request goes to.
//! - [`ConfiguredRoot`]: the root context most filters need: parse the plugin configuration
//!   once (refusing the plugin with the reason when it does not parse), then hand every HTTP
//!   context a shared reference to it.

pub mod route;

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
