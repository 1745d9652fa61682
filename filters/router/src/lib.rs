//! RustNg's router, a proxy-wasm HTTP filter: its route table is its plugin configuration, so
//! changing routes is a configuration change, never a rebuild or a restart.
//!
//! It picks a virtual host by `:authority` and the first matching route (see [`table`]), then
//! either names the cluster for the core through the property `rustng.route.cluster` (with
//! `:path` and `:authority` rewritten when the route says so), or answers itself: a redirect,
//! a direct response, or 404 when nothing matches (as Envoy's router does).

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod table;

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use table::{Decision, RequestView, RouteConfiguration};

rustng_sdk::configured_http_filter!(Settings::parse, |settings| {
    Box::new(Router { settings })
});

/// The route table, and xorshift state for weighted clusters (seeded from WASI's random
/// source once).
struct Settings {
    table: RouteConfiguration,
    random: Cell<u32>,
}

impl Settings {
    fn parse(bytes: &[u8]) -> Result<Settings, String> {
        let table = RouteConfiguration::parse(bytes)?;
        let mut seed = [0u8; 4];
        let _ = getrandom::getrandom(&mut seed);
        Ok(Settings {
            table,
            random: Cell::new(u32::from_le_bytes(seed) | 1),
        })
    }
}

struct Router {
    settings: Rc<Settings>,
}

impl Context for Router {}

impl Router {
    fn next_random(&self) -> u32 {
        let random = &self.settings.random;
        let mut x = random.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        random.set(x);
        x
    }
}

impl HttpContext for Router {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let authority = self
            .get_http_request_header(":authority")
            .unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let header = |name: &str| self.get_http_request_header(name);
        // Envoy's `source.address` is `ip:port`; the hash wants the IP alone.
        let source_ip = || {
            let address = self.get_property(vec!["source", "address"])?;
            let address = String::from_utf8(address).ok()?;
            Some(match address.parse::<std::net::SocketAddr>() {
                Ok(parsed) => parsed.ip().to_string(),
                Err(_) => address,
            })
        };
        let decision = self.settings.table.decide(
            &RequestView {
                authority: &authority,
                path: &path,
                header: &header,
                source_ip: &source_ip,
            },
            self.next_random(),
        );
        match decision {
            Decision::Forward {
                cluster,
                path,
                authority,
                timeout,
                retry,
                hash_key,
                route_name,
            } => {
                let _ = rustng_sdk::route::set_cluster(cluster);
                if let Some(name) = route_name {
                    let _ = rustng_sdk::route::set_route_name(name);
                }
                if let Some(key) = hash_key {
                    let _ = rustng_sdk::route::set_hash_key(&key);
                }
                if let Some(timeout) = timeout {
                    let _ = rustng_sdk::route::set_timeout(timeout);
                }
                if !retry.is_empty() {
                    let _ = rustng_sdk::route::set_properties(retry);
                }
                if let Some(path) = path {
                    self.set_http_request_header(":path", Some(&path));
                }
                if let Some(authority) = authority {
                    self.set_http_request_header(":authority", Some(&authority));
                }
                Action::Continue
            }
            Decision::Redirect { status, location } => {
                self.send_http_response(u32::from(status), vec![("location", &location)], None);
                Action::Pause
            }
            Decision::Direct { status, body } => {
                self.send_http_response(
                    u32::from(status),
                    vec![("content-type", "text/plain")],
                    Some(body.as_bytes()),
                );
                Action::Pause
            }
            Decision::NotFound => {
                self.send_http_response(404, vec![], None);
                Action::Pause
            }
        }
    }
}
