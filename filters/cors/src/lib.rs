//! RustNg's CORS filter: answers allowed preflight requests itself (`204` with the policy's
//! headers) and adds `access-control-allow-origin` (and the rest of the policy) to the
//! responses of allowed cross-origin requests. Requests from other origins pass unmarked,
//! as Envoy's CORS filter lets them, so the browser refuses the response to the page.

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod policy;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use policy::{CorsPolicy, Verdict};

rustng_sdk::configured_http_filter!(CorsPolicy::parse, |policy| {
    Box::new(Cors {
        policy,
        response_headers: Vec::new(),
    })
});

struct Cors {
    policy: Rc<CorsPolicy>,
    /// Headers the response gets, decided on the request.
    response_headers: Vec<(&'static str, String)>,
}

impl Context for Cors {}

impl HttpContext for Cors {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let origin = self.get_http_request_header("origin");
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let requested = self.get_http_request_header("access-control-request-method");
        match self
            .policy
            .verdict(origin.as_deref(), &method, requested.as_deref())
        {
            Verdict::Ignore => Action::Continue,
            Verdict::Preflight(headers) => {
                let headers: Vec<(&str, &str)> =
                    headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.send_http_response(204, headers, None);
                Action::Pause
            }
            Verdict::Mark(headers) => {
                self.response_headers = headers;
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in std::mem::take(&mut self.response_headers) {
            self.set_http_response_header(name, Some(&value));
        }
        Action::Continue
    }
}
