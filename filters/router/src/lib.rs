//! RustNg's router, a proxy-wasm HTTP filter: its route table is its plugin configuration, so
//! changing routes is a configuration change, never a rebuild or a restart.
//!
//! It picks a virtual host by `:authority` and the first matching route (see [`table`]), then
//! either names the cluster for the core through the property `rustng.route.cluster` (with
//! `:path` and `:authority` rewritten when the route says so), or answers itself: a redirect,
//! a direct response, or 404 when nothing matches (as Envoy's router does).
//!
//! Built on `rustng-guest`, not the upstream SDK: the router decides on request headers alone,
//! so the module exports that one callback and the host enters it once per request.

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod table;

use std::cell::Cell;

use rustng_guest::{Action, Request, RequestFilter, route};

use table::{Decision, RequestView, RouteConfiguration};

rustng_guest::request_filter!(Router);

/// The route table, and xorshift state for weighted clusters (seeded from WASI's random
/// source once).
struct Router {
    table: RouteConfiguration,
    /// [`RouteConfiguration::reads_authority`], once.
    reads_authority: bool,
    random: Cell<u32>,
}

impl Router {
    fn next_random(&self) -> u32 {
        let mut x = self.random.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.random.set(x);
        x
    }
}

impl RequestFilter for Router {
    fn configure(configuration: &[u8]) -> Result<Router, String> {
        let table = RouteConfiguration::parse(configuration)?;
        let mut seed = [0u8; 4];
        let _ = getrandom::getrandom(&mut seed);
        Ok(Router {
            reads_authority: table.reads_authority(),
            table,
            random: Cell::new(u32::from_le_bytes(seed) | 1),
        })
    }

    fn on_request_headers(&self, request: &mut Request<'_>, _end_of_stream: bool) -> Action {
        let mut headers = request.headers();
        let authority = if self.reads_authority {
            headers.get(":authority").unwrap_or_default()
        } else {
            ""
        };
        let path = headers.get(":path").unwrap_or_default();
        let header = |name: &str| headers.get(name).map(str::to_owned);
        // Envoy's `source.address` is `ip:port`; the hash wants the IP alone.
        let source_ip = || {
            let address = std::str::from_utf8(request.property(&["source", "address"])?).ok()?;
            Some(match address.parse::<std::net::SocketAddr>() {
                Ok(parsed) => parsed.ip().to_string(),
                Err(_) => address.to_owned(),
            })
        };
        let decision = self.table.decide(
            &RequestView {
                authority,
                path,
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
                let _ = route::set_cluster(cluster);
                if let Some(name) = route_name {
                    let _ = route::set_route_name(name);
                }
                if let Some(key) = hash_key {
                    let _ = route::set_hash_key(&key);
                }
                if let Some(timeout) = timeout {
                    let _ = route::set_timeout(timeout);
                }
                if !retry.is_empty() {
                    let _ = route::set_properties(retry);
                }
                if let Some(path) = path {
                    let _ = headers.set(":path", &path);
                }
                if let Some(authority) = authority {
                    let _ = headers.set(":authority", &authority);
                }
                Action::Continue
            }
            Decision::Redirect { status, location } => {
                let _ = request.send_response(status, &[("location", &location)], &[]);
                Action::Pause
            }
            Decision::Direct { status, body } => {
                let _ = request.send_response(
                    status,
                    &[("content-type", "text/plain")],
                    body.as_bytes(),
                );
                Action::Pause
            }
            Decision::NotFound => {
                let _ = request.send_response(404, &[], &[]);
                Action::Pause
            }
        }
    }
}
