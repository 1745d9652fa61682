//! RustNg's IP access filter: requests from addresses in `deny`, or outside a non-empty
//! `allow` list, get `403` before anything else runs; the client address is Envoy's
//! `source.address` property (the TCP peer, not a header a client could forge).

pub mod cidr;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use cidr::{AccessRules, address_of};

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { rules: Rc::new(AccessRules::default()) })
    });
}}

struct Root {
    rules: Rc<AccessRules>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match AccessRules::parse(&bytes) {
            Ok(rules) => {
                self.rules = Rc::new(rules);
                true
            }
            Err(error) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &error).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(IpAccess {
            rules: Rc::clone(&self.rules),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct IpAccess {
    rules: Rc<AccessRules>,
}

impl Context for IpAccess {}

impl HttpContext for IpAccess {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let source = self
            .get_property(vec!["source", "address"])
            .and_then(|bytes| String::from_utf8(bytes).ok());
        // No readable address: refused, never waved through.
        let permitted = source
            .as_deref()
            .and_then(address_of)
            .is_some_and(|address| self.rules.permits(address));
        if permitted {
            return Action::Continue;
        }
        self.send_http_response(
            403,
            vec![("content-type", "text/plain")],
            Some(b"forbidden\n"),
        );
        Action::Pause
    }
}
