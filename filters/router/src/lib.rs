//! RustNg's router, a proxy-wasm HTTP filter: its route table is its plugin configuration, so
//! changing routes is a configuration change, never a rebuild or a restart.
//!
//! It picks a virtual host by `:authority` and the first matching route (see [`table`]), then
//! either names the cluster for the core through the property `rustng.route.cluster` (with
//! `:path` and `:authority` rewritten when the route says so), or answers itself: a redirect,
//! a direct response, or 404 when nothing matches (as Envoy's router does).

pub mod table;

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use table::{Decision, RequestView, RouteConfiguration};

/// The property the core reads the chosen cluster from (`rustng_abi::extensions`).
const ROUTE_CLUSTER: &str = "rustng.route.cluster";

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { table: None, random: Rc::new(Cell::new(0)) })
    });
}}

struct Root {
    table: Option<Rc<RouteConfiguration>>,
    /// xorshift state for weighted clusters, seeded from WASI's random source once.
    random: Rc<Cell<u32>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match RouteConfiguration::parse(&bytes) {
            Ok(table) => {
                self.table = Some(Rc::new(table));
                let mut seed = [0u8; 4];
                let _ = getrandom::getrandom(&mut seed);
                self.random.set(u32::from_le_bytes(seed) | 1);
                true
            }
            Err(error) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &error).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let table = Rc::clone(self.table.as_ref()?);
        Some(Box::new(Router {
            table,
            random: Rc::clone(&self.random),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Router {
    table: Rc<RouteConfiguration>,
    random: Rc<Cell<u32>>,
}

impl Context for Router {}

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

impl HttpContext for Router {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let authority = self
            .get_http_request_header(":authority")
            .unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let scheme = self
            .get_http_request_header(":scheme")
            .unwrap_or_else(|| "http".to_owned());
        let header = |name: &str| self.get_http_request_header(name);
        let decision = self.table.decide(
            &RequestView {
                authority: &authority,
                path: &path,
                scheme: &scheme,
                header: &header,
            },
            self.next_random(),
        );
        match decision {
            Decision::Forward {
                cluster,
                path,
                authority,
            } => {
                self.set_property(vec![ROUTE_CLUSTER], Some(cluster.as_bytes()));
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
