//! The TCP conformance filter (upstream proxy-wasm Rust SDK, stream contexts). Data from the
//! client is prefixed with `[up]`, data from the upstream with `[down]`, so a client of an
//! echo server reads `[down][up]<what it sent>`. A chunk containing `hold` is held (the
//! filter pauses) and leaves together with the next one. Every callback logs a line, so the
//! hosts' logs can be compared too.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, PeerType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Connection))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Connection;

impl Context for Connection {}

fn log(message: &str) {
    let _ = hostcalls::log(LogLevel::Info, message);
}

/// The held data, marked once, unless it asks to be held longer.
fn mark(held: &[u8], marker: &[u8]) -> Option<Vec<u8>> {
    if held.windows(4).any(|w| w == b"hold") && !held.ends_with(b"\n") {
        return None;
    }
    let mut marked = marker.to_vec();
    marked.extend_from_slice(held);
    Some(marked)
}

impl StreamContext for Connection {
    fn on_new_connection(&mut self) -> Action {
        log("tcp new connection");
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        log(&format!(
            "tcp downstream data {data_size} end={end_of_stream}"
        ));
        if data_size == 0 {
            return Action::Continue;
        }
        let held = self.get_downstream_data(0, data_size).unwrap_or_default();
        match mark(&held, b"[up]") {
            Some(marked) => {
                self.set_downstream_data(0, data_size, &marked);
                Action::Continue
            }
            None => Action::Pause,
        }
    }

    fn on_downstream_close(&mut self, _peer: PeerType) {
        log("tcp downstream closed");
    }

    fn on_upstream_data(&mut self, data_size: usize, end_of_stream: bool) -> Action {
        log(&format!(
            "tcp upstream data {data_size} end={end_of_stream}"
        ));
        if data_size == 0 {
            return Action::Continue;
        }
        let held = self.get_upstream_data(0, data_size).unwrap_or_default();
        let mut marked = b"[down]".to_vec();
        marked.extend_from_slice(&held);
        self.set_upstream_data(0, data_size, &marked);
        Action::Continue
    }

    fn on_upstream_close(&mut self, _peer: PeerType) {
        log("tcp upstream closed");
    }
}
