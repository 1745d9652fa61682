//! RustNg's header filter: adds, sets and removes request and response headers, configured
//! with Envoy's header manipulation fields (see [`rules`]). Request rules run before the
//! request leaves (so a router after this filter sees them), response rules before the
//! response goes out.

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod rules;

use rustng_guest::{Action, Request, RequestFilter, Response, ResponseFilter};

use rules::{Edit, HeaderRules, edits};

// Header edits need no per-request state: built on `rustng-guest`, the host enters it twice
// per request (the two header phases) instead of seven times.
rustng_guest::http_filter!(Headers);

struct Headers {
    rules: HeaderRules,
}

impl RequestFilter for Headers {
    fn configure(configuration: &[u8]) -> Result<Headers, String> {
        HeaderRules::parse(configuration).map(|rules| Headers { rules })
    }

    fn on_request_headers(&self, request: &mut Request<'_>, _end_of_stream: bool) -> Action {
        let rules = &self.rules;
        let present = |name: &str| request.header_bytes(name).is_some();
        let planned = edits(
            &rules.request_headers_to_add,
            &rules.request_headers_to_remove,
            present,
        );
        for edit in planned {
            let _ = match edit {
                Edit::Remove(name) => request.remove_header(name),
                Edit::Set(name, value) => request.set_header(name, value),
                Edit::Add(name, value) => request.add_header(name, value),
            };
        }
        Action::Continue
    }
}

impl ResponseFilter for Headers {
    fn on_response_headers(&self, response: &mut Response<'_>, _end_of_stream: bool) -> Action {
        let rules = &self.rules;
        let present = |name: &str| response.header_bytes(name).is_some();
        let planned = edits(
            &rules.response_headers_to_add,
            &rules.response_headers_to_remove,
            present,
        );
        for edit in planned {
            let _ = match edit {
                Edit::Remove(name) => response.remove_header(name),
                Edit::Set(name, value) => response.set_header(name, value),
                Edit::Add(name, value) => response.add_header(name, value),
            };
        }
        Action::Continue
    }
}
