//! The conformance filter (upstream proxy-wasm Rust SDK). A request to `/conformance/<case>`
//! runs one group of hostcalls and is answered locally with a report, one `name=value` line
//! per check, so that a test can assert the values and compare two hosts byte for byte. Other
//! requests pass through untouched.
//!
//! Root context: `on_vm_start` registers the queue `conformance`; `on_configure` sets a tick
//! period of 50 ms when the plugin configuration contains `tick`; `on_tick` counts ticks in
//! shared data (`ticks`); `on_queue_ready` moves each message into shared data
//! (`queue.last`). The `tick` and `queue-*` cases read those back.
//!
//! Every report line is also logged at info level (`conformance <case> <name>=<value>`), so
//! that the hosts' logs can be compared too.
//!
//! Requests to `/pass/<case>/...` go upstream, with the case's stream behaviour:
//! `body-rewrite` buffers the request body and prefixes it; `response-upper` buffers the
//! response body and upper-cases it; `call-then-continue` pauses the request on an HTTP
//! call to the `backend` cluster and resumes it with the call's status as a header (the
//! body, if any, follows once it is resumed); `response-call` pauses the response headers on
//! an HTTP call and resumes them with the call's status as a response header;
//! `heads-later` reads the heads in the phases
//! after they left (request headers in the request body and response phases, response
//! headers in the response body) and answers with what it saw as the body. The
//! `/conformance/call-*` cases answer locally from an HTTP call's response.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: 0 }) });
}}

const QUEUE: &str = "conformance";

/// The header-map hostcalls themselves, for reading statuses the SDK's wrappers do not
/// expect.
mod raw {
    unsafe extern "C" {
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_size(map_type: u32, return_size: *mut usize) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
    }

    /// A value and the status it came with.
    pub fn get(map: u32, name: &str) -> (u32, Option<String>) {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size = 0usize;
        // SAFETY: `name` is readable for its length; the host writes the return pair.
        let status = unsafe {
            proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size)
        };
        if status != 0 || data.is_null() {
            return (status, None);
        }
        // SAFETY: the host allocated it with this module's allocator for us.
        let value = unsafe { Vec::from_raw_parts(data, size, size) };
        (status, Some(String::from_utf8_lossy(&value).into_owned()))
    }
}

struct Root {
    queue: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.queue = self.register_shared_queue(QUEUE);
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        if String::from_utf8_lossy(&config).contains("tick") {
            self.set_tick_period(std::time::Duration::from_millis(50));
        }
        true
    }

    fn on_tick(&mut self) {
        // Compare-and-swap loop: every worker's instance ticks into the same counter.
        loop {
            let (value, cas) = self.get_shared_data("ticks");
            let count = value
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let next = (count + 1).to_string();
            match self.set_shared_data("ticks", Some(next.as_bytes()), cas) {
                Err(Status::CasMismatch) => continue,
                _ => break,
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(message)) = self.dequeue_shared_queue(queue_id) {
            let _ = self.set_shared_data("queue.last", Some(&message), None);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One request: which `/pass/` or call case it runs, and what a gRPC stream reported.
#[derive(Default)]
struct Stream {
    case: String,
    grpc: Vec<String>,
    /// `heads-later`: what each phase read, `phase.header=value` lines.
    seen: Vec<String>,
}

impl Stream {
    /// An HTTP call: `GET path` on `upstream`, 5 s at most.
    fn get_from(&self, upstream: &str, path: &str) -> Result<u32, Status> {
        self.dispatch_http_call(
            upstream,
            vec![
                (":method", "GET"),
                (":path", path),
                (":authority", "conformance.test"),
            ],
            None,
            vec![],
            std::time::Duration::from_secs(5),
        )
    }

    /// `heads-later`: what each header-map hostcall answers for `map` in the current phase:
    /// values read (`:path` and a missing header), the map's size and pairs, and a change.
    /// Statuses are reported as numbers (the SDK's wrappers panic on one they do not
    /// expect).
    fn note_map(&mut self, phase: &str, map: MapType, first: &str) {
        let map = map as u32;
        for name in [first, "x-missing"] {
            let (status, value) = raw::get(map, name);
            self.seen.push(format!(
                "{phase}.get.{name}={status} {}",
                value.unwrap_or_default()
            ));
        }
        let mut size = 0usize;
        // SAFETY: the host writes one `usize`.
        let status = unsafe { raw::proxy_get_header_map_size(map, &mut size) };
        self.seen.push(format!(
            "{phase}.size={status} {}",
            if status == 0 { size > 0 } else { false }
        ));
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: the host writes the return pair.
        let status = unsafe { raw::proxy_get_header_map_pairs(map, &mut data, &mut len) };
        if status == 0 && !data.is_null() {
            // SAFETY: the host allocated it with this module's allocator for us.
            drop(unsafe { Vec::from_raw_parts(data, len, len) });
        }
        self.seen.push(format!("{phase}.pairs={status}"));
        let (key, value) = ("x-late", "1");
        // SAFETY: both slices are readable for their lengths.
        let status = unsafe {
            raw::proxy_add_header_map_value(
                map,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        self.seen.push(format!("{phase}.add={status}"));
    }
}

/// The cluster of the gRPC cases (HTTP/2 to the test's tonic server).
const GRPC_UPSTREAM: &str = "grpc";
const GRPC_SERVICE: &str = "rustng.test.Echo";

/// A `rustng.test.Note { text = 1, seq = 2 }` in protobuf's wire format, by hand.
fn note(text: &str, seq: u8) -> Vec<u8> {
    let mut out = vec![0x0a, text.len() as u8];
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&[0x10, seq]);
    out
}

const UPSTREAM: &str = "backend";

impl Context for Stream {
    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        if self.case == "grpc-then-continue" {
            // The paused request gains the call's outcome as a header, then goes upstream.
            let size = response_size.to_string();
            self.set_http_request_header("x-grpc-status", Some(&status_code.to_string()));
            self.set_http_request_header("x-grpc-response-size", Some(&size));
            self.resume_http_request();
            return;
        }
        let mut lines = vec![format!("grpc.status={status_code}")];
        if status_code == 0 {
            let body = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            lines.push(format!("grpc.response={}", printable(&body)));
        } else {
            let (_, message) = self.get_grpc_status();
            lines.push(format!("grpc.message={}", message.unwrap_or_default()));
        }
        self.answer_lines(&lines);
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, _num_elements: u32) {
        let content_type = self
            .get_grpc_stream_initial_metadata_value("content-type")
            .map(|v| printable(&v))
            .unwrap_or_default();
        self.grpc
            .push(format!("stream.content-type={content_type}"));
    }

    fn on_grpc_stream_message(&mut self, _token: u32, message_size: usize) {
        let message = self
            .get_grpc_stream_message(0, message_size)
            .unwrap_or_default();
        self.grpc
            .push(format!("stream.message={}", printable(&message)));
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, _num_elements: u32) {
        let status = self
            .get_grpc_stream_trailing_metadata_value("grpc-status")
            .map(|v| printable(&v))
            .unwrap_or_default();
        self.grpc
            .push(format!("stream.trailer.grpc-status={status}"));
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status_code: u32) {
        let mut lines = std::mem::take(&mut self.grpc);
        lines.push(format!("stream.close={status_code}"));
        self.answer_lines(&lines);
    }

    fn on_http_call_response(
        &mut self,
        _token: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "none".to_owned());
        let body = self
            .get_http_call_response_body(0, body_size)
            .map(|b| printable(&b))
            .unwrap_or_default();
        match self.case.as_str() {
            "call-then-continue" => {
                self.set_http_request_header("x-call-status", Some(&status));
                self.set_http_request_header("x-call-body", Some(&body));
                self.resume_http_request();
            }
            "response-call" => {
                // The response headers wait, changeable, while the call is out.
                self.set_http_response_header("x-call-status", Some(&status));
                let seen = self.get_http_response_header(":status").unwrap_or_default();
                self.set_http_response_header("x-status-seen", Some(&seen));
                self.resume_http_response();
            }
            _ => {
                let report = format!("call.status={status}\ncall.body={body}\n");
                for line in report.lines() {
                    let _ = hostcalls::log(
                        LogLevel::Info,
                        &format!("conformance {} {line}", self.case),
                    );
                }
                self.send_http_response(
                    200,
                    vec![("x-conformance-case", self.case.as_str())],
                    Some(report.as_bytes()),
                );
            }
        }
    }
}

impl Stream {
    /// Answers the request with `lines` (for callbacks after the request headers).
    fn answer_lines(&self, lines: &[String]) {
        for line in lines {
            let _ = hostcalls::log(LogLevel::Info, &format!("conformance {} {line}", self.case));
        }
        let mut body = lines.join("\n");
        body.push('\n');
        self.send_http_response(
            200,
            vec![("x-conformance-case", self.case.as_str())],
            Some(body.as_bytes()),
        );
    }

    /// `/conformance/grpc-*`: a gRPC call or stream whose outcome becomes the answer.
    fn grpc(&mut self, case: &str, report: &mut Report) -> Action {
        self.case = case.to_owned();
        let timeout = std::time::Duration::from_secs(5);
        let opened = match case {
            "grpc-unary" => self.dispatch_grpc_call(
                GRPC_UPSTREAM,
                GRPC_SERVICE,
                "Unary",
                vec![("x-from", b"conformance")],
                Some(&note("hi", 41)),
                timeout,
            ),
            "grpc-unary-fail" => self.dispatch_grpc_call(
                GRPC_UPSTREAM,
                GRPC_SERVICE,
                "Unary",
                vec![],
                Some(&note("fail", 0)),
                timeout,
            ),
            "grpc-unknown-cluster" => self.dispatch_grpc_call(
                "no-such-cluster",
                GRPC_SERVICE,
                "Unary",
                vec![],
                Some(&note("hi", 1)),
                timeout,
            ),
            _ => self
                .open_grpc_stream(GRPC_UPSTREAM, GRPC_SERVICE, "Chat", vec![])
                .inspect(|token| {
                    self.send_grpc_stream_message(*token, Some(&note("one", 1)), false);
                    self.send_grpc_stream_message(*token, Some(&note("two", 2)), true);
                }),
        };
        match opened {
            Ok(_) => Action::Pause,
            Err(status) => {
                report.line("dispatch", format!("{status:?}"));
                Action::Continue
            }
        }
    }

    /// `/pass/<case>/...`: stream behaviour on a request that goes upstream.
    fn pass(&mut self, case: &str) -> Action {
        self.case = case.to_owned();
        match case {
            "heads-later" => {
                self.note_map(
                    "request-headers.response",
                    MapType::HttpResponseHeaders,
                    ":status",
                );
                self.note_map(
                    "request-headers.trailers",
                    MapType::HttpRequestTrailers,
                    "x-t",
                );
                Action::Continue
            }
            "body-rewrite" => {
                self.set_http_request_header("content-length", None);
                Action::Continue
            }
            "grpc-then-continue" => {
                let call = self.dispatch_grpc_call(
                    GRPC_UPSTREAM,
                    GRPC_SERVICE,
                    "Unary",
                    vec![],
                    Some(&note("hi", 41)),
                    std::time::Duration::from_secs(5),
                );
                match call {
                    Ok(_) => Action::Pause,
                    Err(_) => Action::Continue,
                }
            }
            "call-then-continue" => {
                let call = self.get_from(UPSTREAM, "/status/201");
                match call {
                    Ok(_) => Action::Pause,
                    Err(status) => {
                        self.set_http_request_header("x-call-error", Some(&format!("{status:?}")));
                        Action::Continue
                    }
                }
            }
            _ => Action::Continue,
        }
    }

    /// `/conformance/call-*`: a call whose answer becomes the local response.
    fn call(&mut self, case: &str, report: &mut Report) -> Action {
        self.case = case.to_owned();
        let (upstream, path) = match case {
            "call-status" => (UPSTREAM, "/status/201"),
            "call-unknown-cluster" => ("no-such-cluster", "/"),
            _ => (UPSTREAM, "/status/404"),
        };
        let call = self.get_from(upstream, path);
        match call {
            Ok(_) => Action::Pause,
            Err(status) => {
                report.line("dispatch", format!("{status:?}"));
                Action::Continue
            }
        }
    }
}

/// The checks of one case, in order.
#[derive(Default)]
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn line(&mut self, name: &str, value: impl Into<String>) {
        self.lines.push(format!("{name}={}", value.into()));
    }

    fn status(&mut self, name: &str, result: Result<(), Status>) {
        self.line(name, status_text(result.err()));
    }

    fn bytes(&mut self, name: &str, result: Result<Option<Vec<u8>>, Status>) {
        let value = match result {
            Ok(Some(bytes)) => printable(&bytes),
            Ok(None) => "!NotFound".to_owned(),
            Err(status) => format!("!{status:?}"),
        };
        self.line(name, value);
    }
}

fn status_text(status: Option<Status>) -> String {
    match status {
        None => "Ok".to_owned(),
        Some(status) => format!("{status:?}"),
    }
}

/// Text as text; anything else as hex, so reports stay one line per check.
fn printable(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => text.to_owned(),
        _ => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if let Some(rest) = path.strip_prefix("/pass/") {
            let case = rest.split('/').next().unwrap_or_default().to_owned();
            return self.pass(&case);
        }
        let Some(case) = path.strip_prefix("/conformance/") else {
            return Action::Continue;
        };
        let case = case.split('?').next().unwrap_or_default().to_owned();
        let mut report = Report::default();
        if case.starts_with("call-") {
            let action = self.call(&case, &mut report);
            if action == Action::Pause {
                return action;
            }
        }
        if case.starts_with("grpc-") {
            let action = self.grpc(&case, &mut report);
            if action == Action::Pause {
                return action;
            }
        }
        match case.as_str() {
            c if c.starts_with("call-") || c.starts_with("grpc-") => {}
            "shared-data" => shared_data(self, &mut report),
            "queue-send" => queue_send(self, &mut report),
            "queue-read" => {
                let (value, _) = self.get_shared_data("queue.last");
                report.bytes("queue.last", Ok(value));
            }
            "tick" => {
                let (value, _) = self.get_shared_data("ticks");
                let ticks = value
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                report.line("ticked", (ticks > 0).to_string());
            }
            "metrics" => metrics(&mut report),
            "runtime" => runtime(&mut report),
            "properties" => properties(&mut report),
            // RustNg only (Envoy has no such properties): the request's trace context.
            "rustng-trace" => rustng_trace(&mut report),
            _ => report.line("unknown-case", case.as_str()),
        }
        for line in &report.lines {
            let _ = hostcalls::log(LogLevel::Info, &format!("conformance {case} {line}"));
        }
        let mut body = report.lines.join("\n");
        body.push('\n');
        self.send_http_response(
            200,
            vec![
                ("content-type", "text/plain"),
                ("x-conformance-case", &case),
            ],
            Some(body.as_bytes()),
        );
        Action::Pause
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.case == "heads-later" && end_of_stream {
            self.note_map("request-body.request", MapType::HttpRequestHeaders, ":path");
        }
        match self.case.as_str() {
            "body-rewrite" if !end_of_stream => Action::Pause,
            "body-rewrite" => {
                let body = self.get_http_request_body(0, body_size).unwrap_or_default();
                let mut rewritten = b"rewritten:".to_vec();
                rewritten.extend_from_slice(&body);
                self.set_http_request_body(0, body_size, &rewritten);
                Action::Continue
            }
            _ => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        if self.case != "heads-later" {
            return;
        }
        self.seen.clear();
        self.note_map("log.request", MapType::HttpRequestHeaders, ":path");
        self.note_map("log.response", MapType::HttpResponseHeaders, ":status");
        for line in &self.seen {
            let _ = hostcalls::log(LogLevel::Info, &format!("conformance heads-later {line}"));
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.case == "response-call" {
            let call = self.get_from(UPSTREAM, "/status/202");
            if call.is_ok() {
                return Action::Pause;
            }
        }
        if self.case == "heads-later" {
            self.note_map(
                "response-headers.request",
                MapType::HttpRequestHeaders,
                ":path",
            );
        }
        if self.case == "response-upper" || self.case == "heads-later" {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.case != "response-upper" && self.case != "heads-later" {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if self.case == "heads-later" {
            self.note_map(
                "response-body.request",
                MapType::HttpRequestHeaders,
                ":path",
            );
            self.note_map(
                "response-body.response",
                MapType::HttpResponseHeaders,
                ":status",
            );
            let mut report = self.seen.join("\n");
            report.push('\n');
            self.set_http_response_body(0, body_size, report.as_bytes());
            return Action::Continue;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        self.set_http_response_body(0, body_size, &body.to_ascii_uppercase());
        Action::Continue
    }
}

fn shared_data(stream: &Stream, report: &mut Report) {
    let key = "conformance.k";
    report.bytes("get.missing", Ok(stream.get_shared_data(key).0));
    report.status("set.create", stream.set_shared_data(key, Some(b"v1"), None));
    let (value, cas) = stream.get_shared_data(key);
    report.bytes("get.created", Ok(value));
    report.line("cas.nonzero", cas.is_some_and(|c| c != 0).to_string());
    report.status(
        "set.current-cas",
        stream.set_shared_data(key, Some(b"v2"), cas),
    );
    report.status(
        "set.stale-cas",
        stream.set_shared_data(key, Some(b"v3"), cas),
    );
    report.bytes("get.after", Ok(stream.get_shared_data(key).0));
    report.status(
        "set.empty-value",
        stream.set_shared_data("conformance.empty", Some(b""), None),
    );
    report.bytes(
        "get.empty-value",
        Ok(stream.get_shared_data("conformance.empty").0),
    );
}

fn queue_send(stream: &Stream, report: &mut Report) {
    let queue = stream.resolve_shared_queue("", QUEUE);
    report.line("resolve.own", queue.is_some_and(|q| q != 0).to_string());
    report.line(
        "resolve.missing",
        format!("{:?}", stream.resolve_shared_queue("", "no-such-queue")),
    );
    if let Some(queue) = queue {
        report.status(
            "enqueue",
            stream.enqueue_shared_queue(queue, Some(b"hello queue")),
        );
    }
    report.status(
        "enqueue.unknown",
        stream.enqueue_shared_queue(0x7fff_fff0, Some(b"x")),
    );
    report.line(
        "dequeue.unknown",
        match stream.dequeue_shared_queue(0x7fff_fff0) {
            Ok(value) => format!("{value:?}"),
            Err(status) => format!("{status:?}"),
        },
    );
}

/// The host's clock, log level, environment and randomness, through proxy-wasm and WASI.
fn runtime(report: &mut Report) {
    // WASI fd_write on stdout and stderr: both hosts log these lines (compared like the
    // report's own lines).
    println!("conformance runtime stdout=fd_write");
    eprintln!("conformance runtime stderr=fd_write");
    report.line("log-level", format!("{:?}", hostcalls::get_log_level()));
    // proxy_get_current_time_nanoseconds and WASI clock_time_get read the same wall clock.
    let proxy_time = hostcalls::get_current_time();
    let wasi_time = std::time::SystemTime::now();
    let sane = proxy_time.is_ok_and(|t| {
        let after_2020 = t > std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_577_836_800);
        let apart = t
            .duration_since(wasi_time)
            .or_else(|e| Ok::<_, ()>(e.duration()))
            .unwrap_or_default();
        after_2020 && apart < std::time::Duration::from_secs(5)
    });
    report.line("time.sane", sane.to_string());
    // WASI environ_get: the plugin's environment_variables.
    report.line(
        "env.CONFORMANCE_ENV",
        std::env::var("CONFORMANCE_ENV").unwrap_or_else(|e| format!("!{e}")),
    );
    // WASI random_get: two draws differ.
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    let drawn = getrandom::getrandom(&mut a).and_then(|()| getrandom::getrandom(&mut b));
    report.line("random.differs", (drawn.is_ok() && a != b).to_string());
    report.line(
        "foreign.unknown",
        format!(
            "{:?}",
            hostcalls::call_foreign_function("conformance_no_such_function", None)
        ),
    );
}

fn metrics(report: &mut Report) {
    let counter = hostcalls::define_metric(MetricType::Counter, "conformance.requests");
    let gauge = hostcalls::define_metric(MetricType::Gauge, "conformance.level");
    let histogram = hostcalls::define_metric(MetricType::Histogram, "conformance.sizes");
    let (Ok(counter), Ok(gauge), Ok(histogram)) = (counter, gauge, histogram) else {
        report.line("define", "failed");
        return;
    };
    report.line("define", "Ok");
    report.line(
        "define.same-name",
        (hostcalls::define_metric(MetricType::Counter, "conformance.requests") == Ok(counter))
            .to_string(),
    );
    report.status("counter.increment", hostcalls::increment_metric(counter, 3));
    report.status("counter.record", hostcalls::record_metric(counter, 2));
    report.line(
        "counter.get",
        format!("{:?}", hostcalls::get_metric(counter)),
    );
    report.status("gauge.record", hostcalls::record_metric(gauge, 10));
    report.status("gauge.decrement", hostcalls::increment_metric(gauge, -4));
    report.line("gauge.get", format!("{:?}", hostcalls::get_metric(gauge)));
    report.status("histogram.record", hostcalls::record_metric(histogram, 42));
}

fn rustng_trace(report: &mut Report) {
    for name in ["trace_id", "span_id", "parent_span_id", "traceparent"] {
        report.bytes(name, hostcalls::get_property(vec!["rustng", "trace", name]));
    }
    match hostcalls::get_property(vec!["rustng.trace.sampled"]) {
        Ok(Some(flag)) => report.line("sampled", format!("{flag:?}")),
        other => report.line("sampled", format!("{other:?}")),
    }
}

fn properties(report: &mut Report) {
    let text = [
        "plugin_name",
        "plugin_root_id",
        "plugin_vm_id",
        "request.path",
        "request.url_path",
        "request.host",
        "request.method",
        "request.scheme",
        "request.protocol",
        "request.query",
        "request.useragent",
        "request.referer",
        "request.headers.x-probe",
        "request.headers.x-absent",
        "connection.mtls",
        "no_such_property",
    ];
    for name in text {
        let path: Vec<&str> = name.splitn(3, '.').collect();
        report.bytes(name, hostcalls::get_property(path));
    }
    // Addresses vary with the ports; check their shape.
    match hostcalls::get_property(vec!["source", "address"]) {
        Ok(Some(address)) => report.line(
            "source.address.loopback",
            String::from_utf8_lossy(&address)
                .starts_with("127.0.0.1:")
                .to_string(),
        ),
        other => report.line("source.address.loopback", format!("{other:?}")),
    }
    match hostcalls::get_property(vec!["source", "port"]) {
        Ok(Some(port)) => report.line("source.port.len", port.len().to_string()),
        other => report.line("source.port.len", format!("{other:?}")),
    }
    report.status(
        "set",
        hostcalls::set_property(vec!["conformance_note"], Some(b"kept")),
    );
    report.bytes("get.set", hostcalls::get_property(vec!["conformance_note"]));
}
