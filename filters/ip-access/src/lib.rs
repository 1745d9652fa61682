//! RustNg's IP access filter: requests from addresses in `deny`, or outside a non-empty
//! `allow` list, get `403` before anything else runs; the client address is Envoy's
//! `source.address` property (the TCP peer, not a header a client could forge).

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod cidr;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use cidr::{AccessRules, address_of};

rustng_sdk::configured_http_filter!(AccessRules::parse, |rules| { Box::new(IpAccess { rules }) });

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
