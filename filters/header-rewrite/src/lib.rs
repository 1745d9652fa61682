//! A header filter written against the upstream proxy-wasm Rust SDK, unchanged from what would
//! run in Envoy: it tags requests and responses with its configured tag, answers `/deny` with
//! a local 403, and logs what it saw.
//!
//! Configuration: the tag as plain text (for example `abc`); empty means `rustng`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { tag: String::from("rustng") })
    });
}}

struct Root {
    tag: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        if let Some(config) = self.get_plugin_configuration() {
            match String::from_utf8(config) {
                Ok(tag) if !tag.trim().is_empty() => self.tag = tag.trim().to_owned(),
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        proxy_wasm::hostcalls::log(LogLevel::Info, &format!("configured with tag {}", self.tag))
            .ok();
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            tag: self.tag.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    tag: String,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.get_http_request_header(":path").as_deref() == Some("/deny") {
            self.send_http_response(
                403,
                vec![("x-denied-by", self.tag.as_str())],
                Some(b"denied\n"),
            );
            return Action::Pause;
        }
        self.set_http_request_header("x-filter-tag", Some(&self.tag));
        self.set_http_request_header("x-remove-me", None);
        if let Some(method) = self.get_http_request_header(":method") {
            self.add_http_request_header("x-filter-method", &method);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let status = self.get_http_response_header(":status").unwrap_or_default();
        self.set_http_response_header("x-filter-saw-status", Some(&status));
        self.set_http_response_header("x-filter-tag", Some(&self.tag));
        Action::Continue
    }

    fn on_log(&mut self) {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let status = self.get_http_response_header(":status").unwrap_or_default();
        proxy_wasm::hostcalls::log(LogLevel::Info, &format!("done with {path} -> {status}")).ok();
    }
}
