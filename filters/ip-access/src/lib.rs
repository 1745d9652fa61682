//! RustNg's IP access filter: requests from addresses in `deny`, or outside a non-empty
//! `allow` list, get `403` before anything else runs; the client address is Envoy's
//! `source.address` property (the TCP peer, not a header a client could forge).

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod cidr;

use rustng_guest::{Action, Request, RequestFilter};

use cidr::{AccessRules, address_of};

// Request headers are all it needs: built on `rustng-guest`, the host enters it once per
// request.
rustng_guest::request_filter!(IpAccess);

struct IpAccess {
    rules: AccessRules,
}

impl RequestFilter for IpAccess {
    fn configure(configuration: &[u8]) -> Result<IpAccess, String> {
        AccessRules::parse(configuration).map(|rules| IpAccess { rules })
    }

    fn on_request_headers(&self, request: &mut Request<'_>, _end_of_stream: bool) -> Action {
        let source = request
            .property(&["source", "address"])
            .and_then(|bytes| std::str::from_utf8(bytes).ok());
        // No readable address: refused, never waved through.
        let permitted = source
            .and_then(address_of)
            .is_some_and(|address| self.rules.permits(address));
        if permitted {
            return Action::Continue;
        }
        let _ = request.send_response(403, &[("content-type", "text/plain")], b"forbidden\n");
        Action::Pause
    }
}
