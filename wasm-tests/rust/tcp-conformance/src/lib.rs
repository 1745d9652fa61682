//! The TCP conformance filter (upstream proxy-wasm Rust SDK, stream contexts). Data from the
//! client is prefixed with `[up]`, data from the upstream with `[down]`, so a client of an
//! echo server reads `[down][up]<what it sent>`. A chunk containing `hold` is held (the
//! filter pauses) and leaves together with the next one; a chunk containing `wait` is held,
//! unmarked, until the root context's next tick resumes it (`proxy_continue_stream`). With the
//! plugin configuration `hold-connection`, new connections pause in `on_new_connection` until
//! the second tick after their arrival (ticks then come every second: held at least a second).
//! Every callback logs a line, so the hosts' logs can be compared too.

use std::cell::RefCell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, PeerType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

thread_local! {
    /// Connections waiting for the next tick to let their client data go on.
    static WAITING: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// New connections held, with the ticks they have seen.
    static HELD: RefCell<Vec<(u32, u32)>> = const { RefCell::new(Vec::new()) };
    /// `hold-connection` configured.
    static HOLD_CONNECTIONS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let configuration = self.get_plugin_configuration().unwrap_or_default();
        let hold = configuration == b"hold-connection";
        HOLD_CONNECTIONS.with(|h| h.set(hold));
        self.set_tick_period(Duration::from_millis(if hold { 1000 } else { 20 }));
        true
    }

    fn on_tick(&mut self) {
        let due: Vec<u32> = HELD.with(|held| {
            let mut held = held.borrow_mut();
            for (_, ticks) in held.iter_mut() {
                *ticks += 1;
            }
            let due = held
                .iter()
                .filter(|(_, t)| *t >= 2)
                .map(|(c, _)| *c)
                .collect();
            held.retain(|(_, t)| *t < 2);
            due
        });
        let waiting = WAITING.with(|w| std::mem::take(&mut *w.borrow_mut()));
        for context in due.into_iter().chain(waiting) {
            let _ = hostcalls::set_effective_context(context);
            let _ = hostcalls::resume_downstream();
        }
    }

    fn create_stream_context(&self, context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Connection { context_id }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Connection {
    context_id: u32,
}

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
        if HOLD_CONNECTIONS.with(|h| h.get()) {
            HELD.with(|h| h.borrow_mut().push((self.context_id, 0)));
            return Action::Pause;
        }
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
        if held.windows(4).any(|w| w == b"wait") {
            WAITING.with(|w| w.borrow_mut().push(self.context_id));
            return Action::Pause;
        }
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
