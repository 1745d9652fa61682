//! RustNg's header filter: adds, sets and removes request and response headers, configured
//! with Envoy's header manipulation fields (see [`rules`]). Request rules run before the
//! request leaves (so a router after this filter sees them), response rules before the
//! response goes out.

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod rules;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use rules::{Edit, HeaderRules, edits};

rustng_sdk::configured_http_filter!(HeaderRules::parse, |rules| { Box::new(Headers { rules }) });

struct Headers {
    rules: Rc<HeaderRules>,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let rules = Rc::clone(&self.rules);
        let has = |name: &str| self.get_http_request_header(name).is_some();
        for edit in edits(
            &rules.request_headers_to_add,
            &rules.request_headers_to_remove,
            has,
        ) {
            match edit {
                Edit::Remove(name) => self.set_http_request_header(name, None),
                Edit::Set(name, value) => self.set_http_request_header(name, Some(value)),
                Edit::Add(name, value) => self.add_http_request_header(name, value),
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let rules = Rc::clone(&self.rules);
        let has = |name: &str| self.get_http_response_header(name).is_some();
        for edit in edits(
            &rules.response_headers_to_add,
            &rules.response_headers_to_remove,
            has,
        ) {
            match edit {
                Edit::Remove(name) => self.set_http_response_header(name, None),
                Edit::Set(name, value) => self.set_http_response_header(name, Some(value)),
                Edit::Add(name, value) => self.add_http_response_header(name, value),
            }
        }
        Action::Continue
    }
}
