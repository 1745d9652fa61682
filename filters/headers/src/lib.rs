//! RustNg's header filter: adds, sets and removes request and response headers, configured
//! with Envoy's header manipulation fields (see [`rules`]). Request rules run before the
//! request leaves (so a router after this filter sees them), response rules before the
//! response goes out.

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod rules;

use rustng_guest::{Action, Headers, Request, RequestFilter, Response, ResponseFilter};

use rules::{Edit, HeaderRules, HeaderValueOption, edits};

// Header edits need no per-request state: built on `rustng-guest`, the host enters it twice
// per request (the two header phases) instead of seven times.
rustng_guest::http_filter!(HeaderEdits);

struct HeaderEdits {
    rules: HeaderRules,
}

impl RequestFilter for HeaderEdits {
    fn configure(configuration: &[u8]) -> Result<HeaderEdits, String> {
        HeaderRules::parse(configuration).map(|rules| HeaderEdits { rules })
    }

    fn on_request_headers(&self, request: &mut Request<'_>, _end_of_stream: bool) -> Action {
        let rules = &self.rules;
        apply(
            request.headers(),
            &rules.request_headers_to_add,
            &rules.request_headers_to_remove,
        );
        Action::Continue
    }
}

impl ResponseFilter for HeaderEdits {
    fn on_response_headers(&self, response: &mut Response<'_>, _end_of_stream: bool) -> Action {
        let rules = &self.rules;
        apply(
            response.headers(),
            &rules.response_headers_to_add,
            &rules.response_headers_to_remove,
        );
        Action::Continue
    }
}

/// Makes one message's edits.
fn apply(mut headers: Headers<'_>, add: &[HeaderValueOption], remove: &[String]) {
    let planned = edits(add, remove, |name| headers.get_bytes(name).is_some());
    for edit in planned {
        let _ = match edit {
            Edit::Remove(name) => headers.remove(name),
            Edit::Set(name, value) => headers.set(name, value),
            Edit::Add(name, value) => headers.add(name, value),
        };
    }
}
