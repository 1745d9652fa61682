//! The wasm host against tiny hand-written modules, one behaviour each: the start sequence,
//! configuration buffers, logging, and hostile guests (bad pointers, loops, memory bombs).

// A test collects log lines across threads with a Mutex: no worker's data path is involved.
#![allow(clippy::disallowed_types)]

mod sdk;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustng_abi::{AbiVersion, LogLevel};
use rustng_wasm::{
    BodyOutcome, EngineLimits, ForeignFunctions, HeadersOutcome, InstanceEnv, Limits, LogSink,
    PluginConfig, PluginHost, PluginInstance, PluginModule, RequestHead, StreamAction, StreamInfo,
    WasmEngine, WasmError,
};

type Lines = Arc<Mutex<Vec<(LogLevel, String)>>>;

fn engine() -> &'static WasmEngine {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    ENGINE.get_or_init(|| WasmEngine::new().expect("engine"))
}

fn capture() -> (LogSink, Lines) {
    let lines: Lines = Arc::default();
    let sink_lines = Arc::clone(&lines);
    let sink: LogSink = Arc::new(move |_plugin: &str, level: LogLevel, message: &str| {
        if let Ok(mut l) = sink_lines.lock() {
            l.push((level, message.to_owned()));
        }
    });
    (sink, lines)
}

/// An instance environment of its own (fresh shared state) that logs into `sink`.
fn env(sink: LogSink) -> InstanceEnv {
    InstanceEnv {
        log: Some(sink),
        ..InstanceEnv::default()
    }
}

/// A module with a bump allocator, the 0.2.1 marker and the given extra imports and body.
fn module(imports: &str, body: &str) -> Vec<u8> {
    module_of(AbiVersion::V0_2_1, imports, body)
}

/// The same for any ABI version.
fn module_of(version: AbiVersion, imports: &str, body: &str) -> Vec<u8> {
    let marker = version.marker();
    let text = format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (func (export "malloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap)
      (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (local.get $ptr))
  (func (export "{marker}"))
  {body}
)"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("bad test module: {e}\n{text}"))
}

const LOG: &str = r#"(import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))"#;
const GET_BUFFER: &str = r#"(import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))"#;

fn config(plugin_configuration: &str) -> Arc<PluginConfig> {
    Arc::new(PluginConfig {
        name: "test".into(),
        plugin_configuration: plugin_configuration.as_bytes().to_vec(),
        ..PluginConfig::default()
    })
}

fn start(bytes: &[u8], limits: Limits) -> (Result<PluginInstance, WasmError>, Lines) {
    let module = PluginModule::compile(engine(), bytes).expect("compiles");
    let (sink, lines) = capture();
    (
        PluginInstance::start(&module, config(r#"{"tag":"abc"}"#), limits, env(sink)),
        lines,
    )
}

fn lines(lines: &Lines) -> Vec<(LogLevel, String)> {
    lines.lock().map(|l| l.clone()).unwrap_or_default()
}

#[test]
fn the_start_sequence_reads_configuration_and_logs() {
    let bytes = module(
        &format!("{LOG} {GET_BUFFER}"),
        r#"
  (data (i32.const 16) "vm started")
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 16) (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (if (i32.ne (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size)
                      (i32.const 64) (i32.const 68)) (i32.const 0))
      (then (return (i32.const 0))))
    (drop (call $log (i32.const 3) (i32.load (i32.const 64)) (i32.load (i32.const 68))))
    (i32.const 1))
"#,
    );
    let module = PluginModule::compile(engine(), &bytes).expect("compiles");
    assert_eq!(module.abi_version(), AbiVersion::V0_2_1);
    let (result, logged) = start(&bytes, Limits::default());
    let mut instance = result.expect("starts");
    assert_eq!(
        lines(&logged),
        vec![
            (LogLevel::Info, "vm started".to_owned()),
            (LogLevel::Warn, r#"{"tag":"abc"}"#.to_owned()),
        ]
    );
    assert_eq!(instance.memory_bytes(), 2 * 65536);
}

#[test]
fn unimplemented_calls_answer_notsup_and_bad_pointers_6_without_trapping() {
    // Every proxy_* hostcall is implemented; WASI's file reads are not (no filesystem), and
    // go through the same table-driven stubs (an unimplemented proxy_* call would answer 12).
    let bytes = module(
        &format!(
            r#"{LOG}
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))"#
        ),
        r#"
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (i32.and
      (i32.and
        (i32.eq (call $fd_read (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)) (i32.const 58))
        ;; proxy_done with no root waiting to finish: NOT_FOUND (1), as in Envoy.
        (i32.eq (call $done) (i32.const 1)))
      (i32.and
        (i32.eq (call $log (i32.const 2) (i32.const -16) (i32.const 64)) (i32.const 6))
        (i32.and
          (i32.eq (call $log (i32.const 2) (i32.const 100) (i32.const 200000)) (i32.const 6))
          (i32.eq (call $log (i32.const 99) (i32.const 0) (i32.const 1)) (i32.const 2))))))
"#,
    );
    let (result, logged) = start(&bytes, Limits::default());
    result.expect("every check in the module held");
    assert!(lines(&logged).is_empty());
}

#[test]
fn an_endless_loop_hits_the_deadline() {
    let bytes = module(
        "",
        r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 1))
"#,
    );
    let limits = Limits {
        call_deadline: Duration::from_millis(50),
        ..Limits::default()
    };
    let started = Instant::now();
    let (result, _) = start(&bytes, limits);
    match result {
        Err(WasmError::Deadline { callback, limit_ms }) => {
            assert_eq!(callback, "proxy_on_configure");
            assert_eq!(limit_ms, 50);
        }
        Err(other) => panic!("expected a deadline, got {other}"),
        Ok(_) => panic!("expected a deadline, the loop returned"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_memory_bomb_stops_at_the_limit() {
    // Grows one page at a time until growth fails, then says how far it got.
    let bytes = module(
        "",
        r#"
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (block $full
      (loop $more
        (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
        (br $more)))
    (i32.const 1))
"#,
    );
    let limits = Limits {
        max_memory_bytes: 4 * 1024 * 1024,
        ..Limits::default()
    };
    let (result, _) = start(&bytes, limits);
    let mut instance = result.expect("growth fails softly; the module carries on");
    assert_eq!(instance.memory_bytes(), 4 * 1024 * 1024);

    // A module that needs more than the limit up front is refused at instantiation.
    let greedy = wat::parse_str(
        r#"(module (memory (export "memory") 128) (func (export "malloc") (param i32) (result i32) (i32.const 0))
            (func (export "proxy_abi_version_0_2_1")))"#,
    )
    .expect("wat");
    let (result, _) = start(&greedy, limits);
    assert!(
        matches!(
            result,
            Err(WasmError::Trap {
                callback: "instantiate",
                ..
            })
        ),
        "{:?}",
        result.err()
    );
}

#[test]
fn traps_and_refusals_are_errors_with_the_reason() {
    let trap = module(
        "",
        r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) unreachable)"#,
    );
    match start(&trap, Limits::default()).0 {
        Err(WasmError::Trap { callback, message }) => {
            assert_eq!(callback, "proxy_on_vm_start");
            assert!(message.contains("unreachable"), "{message}");
        }
        other => panic!("expected a trap, got {:?}", other.err()),
    }
    let refuses = module(
        "",
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))"#,
    );
    let error = start(&refuses, Limits::default()).0.err().expect("refused");
    assert_eq!(
        error.to_string(),
        "proxy_on_configure returned false: the plugin refused its configuration"
    );
}

#[test]
fn modules_that_are_not_proxy_wasm_are_refused_at_load() {
    let error = |bytes: &[u8]| {
        PluginModule::compile(engine(), bytes)
            .err()
            .expect("refused")
            .to_string()
    };
    assert!(error(b"not wasm at all").starts_with("invalid wasm module"));
    let no_marker = wat::parse_str(r#"(module (memory (export "memory") 1))"#).expect("wat");
    assert_eq!(
        error(&no_marker),
        "not a usable proxy-wasm module: no proxy_abi_version_* export: not a proxy-wasm module"
    );
    let no_allocator = wat::parse_str(
        r#"(module (memory (export "memory") 1) (func (export "proxy_abi_version_0_2_1")))"#,
    )
    .expect("wat");
    assert_eq!(
        error(&no_allocator),
        "not a usable proxy-wasm module: exports neither proxy_on_memory_allocate nor malloc"
    );
    let unknown_import = module(
        r#"(import "env" "open_socket" (func (param i32) (result i32)))"#,
        "",
    );
    assert_eq!(error(&unknown_import), "unknown import env.open_socket");
    let wrong_signature = module(
        r#"(import "env" "proxy_log" (func (param i32) (result i32)))"#,
        "",
    );
    assert!(
        error(&wrong_signature)
            .starts_with("not a usable proxy-wasm module: imports do not match the ABI")
    );
}

#[test]
fn wasi_output_becomes_log_lines_and_proc_exit_ends_the_call() {
    let bytes = module(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
           (import "wasi_unstable" "proc_exit" (func $exit (param i32)))"#,
        r#"
  (data (i32.const 16) "hello from wasi\n")
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (i32.store (i32.const 100) (i32.const 16))
    (i32.store (i32.const 104) (i32.const 16))
    (i32.eqz (call $fd_write (i32.const 2) (i32.const 100) (i32.const 1) (i32.const 108))))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $exit (i32.const 3))
    (i32.const 1))
"#,
    );
    let (result, logged) = start(&bytes, Limits::default());
    assert_eq!(
        lines(&logged),
        vec![(LogLevel::Error, "hello from wasi".to_owned())]
    );
    match result {
        Err(WasmError::Trap { callback, message }) => {
            assert_eq!(callback, "proxy_on_configure");
            assert!(message.contains("proc_exit(3)"), "{message}");
        }
        other => panic!("expected proc_exit to end the call, got {:?}", other.err()),
    }
}

#[test]
fn foreign_functions_are_called_by_name_and_unknown_ones_are_not_found() {
    let bytes = module(
        &format!(
            r#"{LOG}
  {GET_BUFFER}
  (import "env" "proxy_call_foreign_function" (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (data (i32.const 100) "test.upper")
  (data (i32.const 120) "quiet")
  (data (i32.const 140) "nope")"#
        ),
        r#"
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (if (i32.ne (call $foreign (i32.const 100) (i32.const 10) (i32.const 120) (i32.const 5)
                               (i32.const 200) (i32.const 204))
                (i32.const 0))
      (then (return (i32.const 0))))
    ;; The result (pointer at 200, length at 204) goes to the log.
    (drop (call $log (i32.const 2) (i32.load (i32.const 200)) (i32.load (i32.const 204))))
    (i32.eq (call $foreign (i32.const 140) (i32.const 4) (i32.const 120) (i32.const 5)
                           (i32.const 200) (i32.const 204))
            (i32.const 1)))
  ;; Logs "<function id>:<arguments>" (ids below 10 only) at warn.
  (func (export "proxy_on_foreign_function") (param $root i32) (param $id i32) (param $size i32)
    (i32.store8 (i32.const 300) (i32.add (i32.const 48) (local.get $id)))
    (i32.store8 (i32.const 301) (i32.const 58))
    (drop (call $get_buffer (i32.const 8) (i32.const 0) (local.get $size) (i32.const 208) (i32.const 212)))
    (memory.copy (i32.const 302) (i32.load (i32.const 208)) (i32.load (i32.const 212)))
    (drop (call $log (i32.const 3) (i32.const 300) (i32.add (i32.const 2) (i32.load (i32.const 212))))))
"#,
    );
    let mut foreign = ForeignFunctions::default();
    foreign.register(
        "test.upper",
        Arc::new(|plugin: &str, argument: &[u8]| {
            Ok(format!(
                "{plugin}:{}",
                String::from_utf8_lossy(argument).to_uppercase()
            )
            .into_bytes())
        }),
    );
    let module = PluginModule::compile(engine(), &bytes).expect("compiles");
    let (sink, logged) = capture();
    let env = InstanceEnv {
        host: Arc::new(PluginHost::new(foreign)),
        log: Some(sink),
        ..InstanceEnv::default()
    };
    PluginInstance::start(&module, config(""), Limits::default(), env).expect("every check held");
    assert_eq!(
        lines(&logged),
        vec![(LogLevel::Info, "test:QUIET".to_owned())]
    );
}

#[test]
fn abi_0_1_0_modules_read_configuration_and_resume_by_direction() {
    let bytes = module_of(
        AbiVersion::V0_1_0,
        &format!(
            r#"{LOG}
  (import "env" "proxy_get_configuration" (func $get_configuration (param i32 i32) (result i32)))
  (import "env" "proxy_continue_request" (func $continue_request (result i32)))
  (import "env" "proxy_clear_route_cache" (func $clear_route_cache (result i32)))"#
        ),
        r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (if (i32.ne (call $get_configuration (i32.const 200) (i32.const 204)) (i32.const 0))
      (then (return (i32.const 0))))
    (drop (call $log (i32.const 3) (i32.load (i32.const 200)) (i32.load (i32.const 204))))
    (i32.eqz (call $clear_route_cache)))
  ;; 0.1.0's two-argument form; resumes itself through the 0.1.0 call.
  (func (export "proxy_on_request_headers") (param i32 i32) (result i32)
    (drop (call $continue_request))
    (i32.const 1))
"#,
    );
    let (result, logged) = start(&bytes, Limits::default());
    let mut instance = result.expect("starts");
    assert_eq!(
        lines(&logged),
        vec![(LogLevel::Warn, r#"{"tag":"abc"}"#.to_owned())]
    );
    let context = instance.create_http_context().expect("context");
    let outcome = instance
        .on_request_headers(
            context,
            &mut RequestHead::default(),
            &mut StreamInfo::default(),
            true,
        )
        .expect("runs");
    assert_eq!(outcome, HeadersOutcome::Pause);
    assert_eq!(
        instance.take_stream_actions(),
        vec![(context.id(), StreamAction::ContinueRequest)]
    );
}

/// Callbacks that log their names, check they get the context `proxy_on_context_create` got,
/// and (`proxy_on_done`) read `:path`; `trap_in` is replaced by `unreachable`.
fn stream_callbacks(trap_in: &str) -> Vec<u8> {
    let body = r#"
  (data (i32.const 100) "create")
  (data (i32.const 110) "headers")
  (data (i32.const 120) "done")
  (data (i32.const 130) "log")
  (data (i32.const 140) "delete")
  (data (i32.const 150) "mismatch")
  (data (i32.const 160) ":path")
  (global $context (mut i32) (i32.const 0))
  (func $say (param i32 i32) (drop (call $log (i32.const 2) (local.get 0) (local.get 1))))
  (func $check (param $c i32)
    (if (i32.ne (local.get $c) (global.get $context))
      (then (call $say (i32.const 150) (i32.const 8)))))
  (func (export "proxy_on_context_create") (param $c i32) (param $parent i32)
    (if (i32.eqz (local.get $parent)) (then (return)))
    (global.set $context (local.get $c))
    (call $say (i32.const 100) (i32.const 6)))
  (func (export "proxy_on_request_headers") (param $c i32) (param i32 i32) (result i32)
    (call $check (local.get $c)) (call $say (i32.const 110) (i32.const 7)) (i32.const 0))
  (func (export "proxy_on_done") (param $c i32) (result i32)
    (call $check (local.get $c)) (call $say (i32.const 120) (i32.const 4))
    (if (i32.eqz (call $get (i32.const 0) (i32.const 160) (i32.const 5) (i32.const 200) (i32.const 204)))
      (then (call $say (i32.load (i32.const 200)) (i32.load (i32.const 204)))))
    (i32.const 1))
  (func (export "proxy_on_log") (param $c i32)
    (call $check (local.get $c)) (call $say (i32.const 130) (i32.const 3)))
  (func (export "proxy_on_delete") (param $c i32)
    (call $check (local.get $c)) (call $say (i32.const 140) (i32.const 6)))
"#;
    // The callback's first instruction (after its signature) becomes `unreachable`.
    let body = match body.find(&format!(r#"(export "{trap_in}")"#)) {
        Some(at) if !trap_in.is_empty() => {
            let first = at
                + body[at..]
                    .find("(call $check")
                    .expect("a checking callback");
            format!("{}unreachable {}", &body[..first], &body[first..])
        }
        _ => body.to_owned(),
    };
    let get = r#"(import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))"#;
    module(&format!("{LOG} {get}"), &body)
}

#[test]
fn back_to_back_callbacks_keep_their_order_context_and_names() {
    let request = || RequestHead {
        uri: http::Uri::from_static("/x"),
        ..RequestHead::default()
    };
    let (result, logged) = start(&stream_callbacks(""), Limits::default());
    let mut instance = result.expect("starts");
    let mut head = request();
    let (context, outcome) =
        instance.start_http_stream(&mut head, &mut StreamInfo::default(), true);
    assert_eq!(outcome.expect("runs"), HeadersOutcome::Continue);
    instance
        .finish_http_context(context, &mut Some(head), &mut None)
        .expect("finishes");
    let said: Vec<String> = lines(&logged).into_iter().map(|(_, line)| line).collect();
    // `proxy_on_done` reads the request's head, as in Envoy.
    assert_eq!(said, ["create", "headers", "done", "/x", "log", "delete"]);

    // A trap is reported against the callback it happened in, and the instance is failed.
    for callback in ["proxy_on_request_headers", "proxy_on_log"] {
        let (result, _) = start(&stream_callbacks(callback), Limits::default());
        let mut instance = result.expect("starts");
        let mut head = request();
        let (context, outcome) =
            instance.start_http_stream(&mut head, &mut StreamInfo::default(), true);
        let error = match outcome {
            Err(error) => error,
            Ok(_) => instance
                .finish_http_context(context, &mut Some(head), &mut None)
                .expect_err("traps"),
        };
        match error {
            WasmError::Trap { callback: at, .. } => assert_eq!(at, callback),
            other => panic!("{callback}: expected a trap, got {other}"),
        }
    }
}

/// Response callbacks that log their names and the body's size; `answer` makes the headers
/// callback send a local response and return Continue, `pause` return Pause.
fn response_callbacks(answer: bool, pause: bool) -> Vec<u8> {
    let send = r#"(import "env" "proxy_send_local_response" (func $send (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))"#;
    let headers_body = if answer {
        "(drop (call $send (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const -1)))"
    } else {
        ""
    };
    let action = i32::from(pause);
    let body = format!(
        r#"
  (data (i32.const 100) "response headers")
  (data (i32.const 120) "response body of 5")
  (data (i32.const 140) ":status")
  (data (i32.const 150) "no head in the body phase")
  (data (i32.const 180) "no body in the headers phase")
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 100) (i32.const 16)))
    (if (i32.ne (call $get_buffer (i32.const 1) (i32.const 0) (i32.const 5) (i32.const 208) (i32.const 212)) (i32.const 0))
      (then (drop (call $log (i32.const 2) (i32.const 180) (i32.const 28)))))
    {headers_body}
    (i32.const {action}))
  (func (export "proxy_on_response_body") (param $c i32) (param $size i32) (param $end i32) (result i32)
    (if (i32.and (i32.eq (local.get $size) (i32.const 5)) (local.get $end))
      (then (drop (call $log (i32.const 2) (i32.const 120) (i32.const 18)))))
    (if (i32.eq (call $get (i32.const 2) (i32.const 140) (i32.const 7) (i32.const 200) (i32.const 204)) (i32.const 2))
      (then (drop (call $log (i32.const 2) (i32.const 150) (i32.const 25)))))
    (i32.const 0))
"#
    );
    let get = r#"(import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))"#;
    module(&format!("{LOG} {GET_BUFFER} {send} {get}"), &body)
}

#[test]
fn a_whole_response_runs_its_body_callback_only_after_headers_that_continue() {
    let run = |answer: bool, pause: bool| {
        let (result, logged) = start(&response_callbacks(answer, pause), Limits::default());
        let mut instance = result.expect("starts");
        let context = instance.create_http_context().expect("context");
        let mut head = rustng_wasm::ResponseHead::default();
        let mut body = bytes::Bytes::from_static(b"hello");
        let outcome = instance
            .on_whole_response(context, &mut head, &mut body, &mut StreamInfo::default())
            .expect("runs");
        let said: Vec<String> = lines(&logged).into_iter().map(|(_, line)| line).collect();
        assert_eq!(&body[..], b"hello", "the body comes back");
        (outcome, said)
    };
    let (outcome, said) = run(false, false);
    assert_eq!(
        outcome,
        (HeadersOutcome::Continue, Some(BodyOutcome::Continue))
    );
    // As in Envoy, the headers callback does not see the body, nor the body callback the head.
    assert_eq!(
        said,
        [
            "response headers",
            "no body in the headers phase",
            "response body of 5",
            "no head in the body phase"
        ]
    );

    let (outcome, said) = run(false, true);
    assert_eq!(outcome, (HeadersOutcome::Pause, None));
    assert_eq!(said, ["response headers", "no body in the headers phase"]);

    // A local response ends the stream, as in Envoy, even when the callback continues.
    let (outcome, said) = run(true, false);
    assert!(
        matches!(outcome, (HeadersOutcome::LocalResponse(ref local), None) if local.status == 403),
        "{outcome:?}"
    );
    assert_eq!(said, ["response headers", "no body in the headers phase"]);
}

#[test]
fn each_abi_version_links_its_own_calls() {
    // 0.2.0's gRPC call has no initial metadata, and the route cache call still exists.
    let old = module_of(
        AbiVersion::V0_2_0,
        r#"(import "env" "proxy_grpc_call" (func (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_clear_route_cache" (func (result i32)))"#,
        "",
    );
    PluginModule::compile(engine(), &old).expect("a 0.2.0 module loads");
    // 0.2.1 dropped proxy_get_configuration: a module that imports it is refused.
    let mixed = module(
        r#"(import "env" "proxy_get_configuration" (func (param i32 i32) (result i32)))"#,
        "",
    );
    match PluginModule::compile(engine(), &mixed) {
        Err(WasmError::UnknownImport { name, .. }) => assert_eq!(name, "proxy_get_configuration"),
        Err(other) => panic!("expected an unknown import, got {other}"),
        Ok(_) => panic!("expected an unknown import"),
    }
}

#[test]
fn modules_are_compiled_once_per_process_and_kept_on_disk() {
    let bytes = module(LOG, "");
    let dir = tempfile_dir();
    let limits = EngineLimits {
        cache_dir: Some(dir.clone()),
        ..EngineLimits::default()
    };
    let first = WasmEngine::with_limits(limits.clone()).expect("engine");
    PluginModule::compile(&first, &bytes).expect("compiles");
    PluginModule::compile(&first, &bytes).expect("from memory");
    let stats = first.cache_stats();
    assert_eq!((stats.memory_misses, stats.memory_hits), (1, 1));

    // A new process (a new engine) with the same directory loads the machine code from disk.
    // (The engine's own small modules come from disk too: counted from after it exists.)
    let second = WasmEngine::with_limits(limits).expect("engine");
    let before = second.cache_stats().disk_hits;
    PluginModule::compile(&second, &bytes).expect("from disk");
    assert_eq!(second.cache_stats().disk_hits, before + 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_instance_pool_refuses_the_next_instance_with_the_reason() {
    let small = WasmEngine::with_limits(EngineLimits {
        instance_slots: 1,
        ..EngineLimits::default()
    })
    .expect("engine");
    let bytes = module(
        "",
        r#"(func (export "proxy_on_context_create") (param i32 i32))"#,
    );
    let module = PluginModule::compile(&small, &bytes).expect("compiles");
    let start = || {
        let (sink, _) = capture();
        PluginInstance::start(&module, config(""), Limits::default(), env(sink))
    };
    let first = start().expect("the pool's one slot");
    match start() {
        Err(e) => assert!(
            e.to_string().contains("instance pool is full"),
            "reason: {e}"
        ),
        Ok(_) => panic!("a second instance in a one-slot pool"),
    }
    // The slot comes back when its instance is dropped.
    drop(first);
    start().expect("the freed slot");
}

/// A fresh directory under the system's temporary directory.
fn tempfile_dir() -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir =
        std::env::temp_dir().join(format!("rustng-wasm-cache-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Values come back in memory the guest's allocator gave; a bad return pointer, an unknown
/// property and an empty range answer with their statuses.
#[test]
fn returned_values_are_allocated_by_the_guest() {
    let bytes = module(
        &format!(
            r#"{GET_BUFFER}
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (data (i32.const 100) "plugin_name")"#
        ),
        r#"
  (func $check (param i32) (if (i32.eqz (local.get 0)) (then unreachable)))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    ;; The plugin configuration, 13 bytes starting with '{'.
    (call $check (i32.eqz (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 0) (i32.const 4))))
    (call $check (i32.eq (i32.load (i32.const 4)) (i32.const 13)))
    (call $check (i32.ge_u (i32.load (i32.const 0)) (i32.const 8192)))
    (call $check (i32.eq (i32.load8_u (i32.load (i32.const 0))) (i32.const 123)))
    ;; An empty range: success, the return slots untouched.
    (i32.store (i32.const 8) (i32.const 77))
    (call $check (i32.eqz (call $get_buffer (i32.const 7) (i32.const 13) (i32.const 10) (i32.const 8) (i32.const 12))))
    (call $check (i32.eq (i32.load (i32.const 8)) (i32.const 77)))
    ;; A property: "test", allocated after the configuration.
    (call $check (i32.eqz (call $get_property (i32.const 100) (i32.const 11) (i32.const 16) (i32.const 20))))
    (call $check (i32.eq (i32.load (i32.const 20)) (i32.const 4)))
    (call $check (i32.gt_u (i32.load (i32.const 16)) (i32.load (i32.const 0))))
    (call $check (i32.eq (i32.load (i32.load (i32.const 16))) (i32.const 0x74736574)))
    ;; A return pointer out of memory: INVALID_MEMORY_ACCESS.
    (call $check (i32.eq (call $get_property (i32.const 100) (i32.const 11) (i32.const -4) (i32.const 20)) (i32.const 6)))
    ;; No such property: NOT_FOUND.
    (call $check (i32.eq (call $get_property (i32.const 100) (i32.const 3) (i32.const 16) (i32.const 20)) (i32.const 1)))
    (i32.const 1))
"#,
    );
    let (result, _) = start(&bytes, Limits::default());
    result.expect("every check in the module held");
}

/// An allocator that gives no memory makes the call fail with `INTERNAL_FAILURE`, not trap.
#[test]
fn an_allocator_that_fails_makes_the_call_fail() {
    let bytes = wat::parse_str(
        r#"(module
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "plugin_name")
  (func (export "malloc") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (i32.eq (call $get_property (i32.const 100) (i32.const 11) (i32.const 16) (i32.const 20))
      (i32.const 10))))"#,
    )
    .expect("valid module");
    let (result, _) = start(&bytes, Limits::default());
    result.expect("the call answered INTERNAL_FAILURE");
}
