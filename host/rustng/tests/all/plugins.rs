//! proxy-wasm plugins in the real binary: a filter built with the upstream Rust SDK changes
//! requests and responses and answers locally, and hostile modules meet their failure policy
//! while the proxy keeps serving.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::Full;

use crate::client::{self, get, send};
use crate::harness::{Rustng, cli_with_config};
use crate::origin::Origin;

fn sdk_filter() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../filters/target/wasm32-wasip1/release/header_rewrite.wasm");
    assert!(
        path.exists(),
        "{} missing: run `make filters`",
        path.display()
    );
    path
}

fn config(origin: &Origin, plugins: &str, filters: &str) -> String {
    format!(
        "workers: 1
plugins:
{plugins}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [{filters}]
clusters:
  - name: backend
    endpoints:
      - address: {}
",
        origin.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_rust_sdk_filter_runs_unchanged() {
    let origin = Origin::start("a").await;
    let plugins = format!(
        "  - name: hdr
    root_id: ''
    vm_config:
      vm_id: ''
      runtime: envoy.wasm.runtime.v8
      code: {{ local: {{ filename: {} }} }}
    configuration:
      '@type': type.googleapis.com/google.protobuf.StringValue
      value: abc
    failure_policy: FAIL_CLOSED",
        sdk_filter().display()
    );
    let proxy = Rustng::start(&config(&origin, &plugins, "hdr"));
    let client = client::http1();

    let req = Request::get(proxy.url("/echo/x"))
        .header("x-remove-me", "please")
        .body(Full::default())
        .expect("req");
    let reply = send(&client, req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-filter-saw-status"], "200");
    assert_eq!(reply.headers["x-filter-tag"], "abc");
    let echo = reply.json();
    assert_eq!(echo["headers"]["x-filter-tag"][0], "abc");
    assert_eq!(echo["headers"]["x-filter-method"][0], "GET");
    assert!(echo["headers"].get("x-remove-me").is_none());
    // The filter ran after the proxy's own headers were set.
    assert!(echo["headers"]["x-request-id"][0].is_string());

    let denied = get(&client, &proxy.url("/deny")).await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.headers["x-denied-by"], "abc");
    assert_eq!(denied.text(), "denied\n");
    assert_eq!(
        origin.requests(),
        1,
        "the denied request never reached the origin"
    );
    // proxy_on_log reads the request and response heads (`:path`, `:status`), as in Envoy,
    // for a request that went upstream and for one the filter answered.
    assert!(
        proxy.log_eventually_contains("done with /echo/x -> 200"),
        "{}",
        proxy.log()
    );
    assert!(proxy.log_eventually_contains("done with /deny -> 403"));
}

/// Traps on paths starting `/b`, loops forever on `/l`, adds 60 KB headers until the host
/// refuses one (then traps, as an SDK would) on `/h`, passes the rest.
/// A bump allocator exported as `malloc`, for the hand-written test modules: the host only
/// allocates a few small buffers per test.
pub(crate) const BUMP_MALLOC: &str = r#"(global $heap (mut i32) (i32.const 4096))
  (func (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.add (local.get $size) (i32.const 8))))
    (local.get $p))"#;

fn hostile_module(dir: &std::path::Path) -> PathBuf {
    let wasm = wat::parse_str(format!(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) ":path")
  (data (i32.const 32) "x-flood")
  {malloc}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $second i32)
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 68)))
    (local.set $second (i32.load8_u (i32.add (i32.load (i32.const 64)) (i32.const 1))))
    (if (i32.eq (local.get $second) (i32.const 98)) (then unreachable))
    (if (i32.eq (local.get $second) (i32.const 108)) (then (loop $forever (br $forever))))
    (if (i32.eq (local.get $second) (i32.const 104))
      (then
        (memory.fill (i32.const 65536) (i32.const 97) (i32.const 60000))
        (loop $flood
          (br_if $flood (i32.eqz (call $add (i32.const 0) (i32.const 32) (i32.const 7)
                                           (i32.const 65536) (i32.const 60000)))))
        unreachable))
    (i32.const 0))
)"#,
        malloc = BUMP_MALLOC
    ))
    .expect("wat");
    let path = dir.join("hostile.wasm");
    std::fs::write(&path, wasm).expect("write module");
    path
}

fn hostile_plugin(path: &std::path::Path, policy: &str) -> String {
    format!(
        "  - name: hostile
    vm_config: {{ code: {{ local: {{ filename: {} }} }} }}
    failure_policy: {policy}",
        path.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_policies_decide_and_the_proxy_keeps_serving() {
    let origin = Origin::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = hostile_module(dir.path());
    let client = client::http1();

    // FAIL_CLOSED: the trap answers 503, and the plugin stays failed.
    let proxy = Rustng::start(&config(
        &origin,
        &hostile_plugin(&module, "FAIL_CLOSED"),
        "hostile",
    ));
    assert_eq!(get(&client, &proxy.url("/ok")).await.status, 200);
    let failed = get(&client, &proxy.url("/boom")).await;
    assert_eq!(failed.status, 503);
    assert_eq!(failed.text(), "plugin failed\n");
    assert_eq!(get(&client, &proxy.url("/ok")).await.status, 503);
    assert!(
        proxy.log_eventually_contains("plugin failed"),
        "{}",
        proxy.log()
    );

    // FAIL_OPEN: the failed plugin is skipped.
    let proxy = Rustng::start(&config(
        &origin,
        &hostile_plugin(&module, "FAIL_OPEN"),
        "hostile",
    ));
    assert_eq!(get(&client, &proxy.url("/boom")).await.status, 200);
    assert_eq!(get(&client, &proxy.url("/ok")).await.status, 200);

    // FAIL_RELOAD: 503 for the failing request, a fresh instance for the next; an endless
    // loop is cut at the deadline the same way.
    let proxy = Rustng::start(&config(
        &origin,
        &format!(
            "{}\n    limits: {{ callback_timeout: 30ms }}",
            hostile_plugin(&module, "FAIL_RELOAD")
        ),
        "hostile",
    ));
    assert_eq!(get(&client, &proxy.url("/boom")).await.status, 503);
    assert_eq!(get(&client, &proxy.url("/ok")).await.status, 200);
    let started = Instant::now();
    assert_eq!(get(&client, &proxy.url("/loop")).await.status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(&client, &proxy.url("/ok")).await.status, 200);
    assert!(
        proxy.log_eventually_contains("deadline exceeded"),
        "{}",
        proxy.log()
    );
    // The plugin's own callback timeout, not the default.
    assert!(proxy.log().contains("30 ms"), "{}", proxy.log());
    // A header flood stops at the host's map limit (1 MiB), not at the host's memory. A
    // deadline far away, so that only the host's refusal can stop it (a debug build on a
    // busy machine takes tens of milliseconds to copy the values).
    let proxy = Rustng::start(&config(
        &origin,
        &format!(
            "{}\n    limits: {{ callback_timeout: 5s }}",
            hostile_plugin(&module, "FAIL_RELOAD")
        ),
        "hostile",
    ));
    let before = proxy.rss_kib();
    let traps = |proxy: &Rustng| proxy.log().matches("unreachable").count();
    let deadlines = |proxy: &Rustng| proxy.log().matches("deadline exceeded").count();
    let (traps_before, deadlines_before) = (traps(&proxy), deadlines(&proxy));
    assert_eq!(get(&client, &proxy.url("/headers")).await.status, 503);
    assert_eq!(get(&client, &proxy.url("/ok")).await.status, 200);
    // Refused by the host, so the module trapped (its `unreachable`), not the deadline.
    let deadline = Instant::now() + Duration::from_secs(5);
    while traps(&proxy) == traps_before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(traps(&proxy), traps_before + 1, "{}", proxy.log());
    assert_eq!(deadlines(&proxy), deadlines_before, "{}", proxy.log());
    assert!(
        proxy.rss_kib() < before + 64 * 1024,
        "RSS grew from {before} KiB to {} KiB",
        proxy.rss_kib()
    );
}

#[test]
fn a_module_that_cannot_load_stops_the_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.wasm");
    std::fs::write(&bad, b"\0asm not really").expect("write");
    let run = cli_with_config(
        "run",
        &format!(
            "plugins:
  - name: broken
    vm_config: {{ code: {{ local: {{ filename: {} }} }} }}
listeners:
  - name: main
    address: 127.0.0.1:0
    http_filters: [broken]
",
            bad.display()
        ),
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("plugin broken: invalid wasm module"),
        "{}",
        run.stderr
    );
}

/// A module that passes everything but traps in `phase` (one of its HTTP callbacks).
fn trapping_module(dir: &std::path::Path, phase: &str) -> PathBuf {
    let callback = |name: &str, params: &str, result: bool| {
        let body = if name == phase {
            "unreachable"
        } else if result {
            "(i32.const 0)"
        } else {
            ""
        };
        let result = if result { "(result i32)" } else { "" };
        format!("  (func (export \"{name}\") {params} {result} {body})\n")
    };
    let mut text = format!(
        r#"(module
  (memory (export "memory") 1)
  {malloc}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
"#,
        malloc = BUMP_MALLOC
    );
    text += &callback("proxy_on_request_headers", "(param i32 i32 i32)", true);
    text += &callback("proxy_on_request_body", "(param i32 i32 i32)", true);
    text += &callback("proxy_on_response_headers", "(param i32 i32 i32)", true);
    text += &callback("proxy_on_response_body", "(param i32 i32 i32)", true);
    text += &callback("proxy_on_log", "(param i32)", false);
    text += ")";
    let path = dir.join(format!("{phase}.wasm"));
    std::fs::write(&path, wat::parse_str(&text).expect("wat")).expect("write module");
    path
}

/// A trap in any phase meets the failure policy, and the proxy keeps serving: before the
/// response has started the client gets 503; once it has, the response is cut (a body
/// phase) or already complete (`proxy_on_log`), and the next request meets the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_in_any_phase_meets_the_policy() {
    let origin = Origin::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let client = client::http1();
    let post = |url: String| {
        Request::post(url)
            .body(Full::new(bytes::Bytes::from_static(b"some body")))
            .expect("request")
    };
    for (phase, first) in [
        ("proxy_on_request_headers", Some(503)),
        ("proxy_on_request_body", Some(503)),
        ("proxy_on_response_headers", Some(503)),
        ("proxy_on_response_body", None),
        ("proxy_on_log", Some(200)),
    ] {
        let module = trapping_module(dir.path(), phase);
        let proxy = Rustng::start(&config(
            &origin,
            &hostile_plugin(&module, "FAIL_CLOSED"),
            "hostile",
        ));
        let url = proxy.url("/echo/x");
        // A body phase trap after the head went out cuts the response: no status to check.
        let reply = tokio::time::timeout(Duration::from_secs(5), client.request(post(url.clone())))
            .await
            .expect("answered in time");
        if let Some(status) = first {
            assert_eq!(
                reply.expect("a response").status().as_u16(),
                status,
                "{phase}"
            );
        }
        // The plugin stays failed (FAIL_CLOSED); the proxy answers every next request.
        for _ in 0..3 {
            assert_eq!(get(&client, &url).await.status, 503, "{phase}");
        }
        assert!(
            proxy.log_eventually_contains(&format!("{phase}: trap")),
            "{phase}: {}",
            proxy.log()
        );
    }
}

/// A module whose allocator answers null on `/n…` and traps on `/t…`, when the host returns
/// a header value into it; it tags the request `x-read: failed` when a read fails.
fn failing_allocator_module(dir: &std::path::Path) -> PathBuf {
    let wasm = wat::parse_str(
        r#"(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) ":path")
  (data (i32.const 32) "x-read")
  (data (i32.const 48) "failed")
  (global $heap (mut i32) (i32.const 4096))
  (global $mode (mut i32) (i32.const 0))
  (func (export "malloc") (param $size i32) (result i32)
    (local $p i32)
    (if (i32.eq (global.get $mode) (i32.const 1)) (then (return (i32.const 0))))
    (if (i32.eq (global.get $mode) (i32.const 2)) (then unreachable))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (i32.add (local.get $size) (i32.const 8))))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $second i32)
    (global.set $mode (i32.const 0))
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 68)))
    (local.set $second (i32.load8_u (i32.add (i32.load (i32.const 64)) (i32.const 1))))
    (if (i32.eq (local.get $second) (i32.const 110)) (then (global.set $mode (i32.const 1))))
    (if (i32.eq (local.get $second) (i32.const 116)) (then (global.set $mode (i32.const 2))))
    (if (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 72) (i32.const 76))
      (then (drop (call $add (i32.const 0) (i32.const 32) (i32.const 6) (i32.const 48) (i32.const 6)))))
    (global.set $mode (i32.const 0))
    (i32.const 0))
)"#,
    )
    .expect("wat");
    let path = dir.join("failing_allocator.wasm");
    std::fs::write(&path, wasm).expect("write module");
    path
}

/// A header value goes into memory the module's allocator gives: a null from the allocator,
/// or a trap in it, is `INTERNAL_FAILURE` for the read, which the module sees; the callback
/// goes on, and so does the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_read_meets_an_allocator_that_fails_or_traps() {
    let origin = Origin::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = failing_allocator_module(dir.path());
    let client = client::http1();
    let proxy = Rustng::start(&config(
        &origin,
        &hostile_plugin(&module, "FAIL_CLOSED"),
        "hostile",
    ));
    let read = get(&client, &proxy.url("/echo/ok")).await;
    assert_eq!(read.status, 200);
    assert!(
        read.json()["headers"].get("x-read").is_none(),
        "{}",
        read.text()
    );
    let null = get(&client, &proxy.url("/n/echo")).await;
    assert_eq!(null.status, 200);
    assert_eq!(
        null.json()["headers"]["x-read"][0],
        "failed",
        "{}",
        null.text()
    );
    let trapped = get(&client, &proxy.url("/t/echo")).await;
    assert_eq!(trapped.status, 200);
    assert_eq!(
        trapped.json()["headers"]["x-read"][0],
        "failed",
        "{}",
        trapped.text()
    );
    // Still the same instance: no trap reached the callback.
    let again = get(&client, &proxy.url("/n/echo")).await;
    assert_eq!(
        again.json()["headers"]["x-read"][0],
        "failed",
        "{}",
        again.text()
    );
    assert!(!proxy.log().contains("trap"), "{}", proxy.log());
}

/// The admin server's `/metrics` shows what plugins defined with `proxy_define_metric` and how
/// often each plugin failed; `/health` answers; other paths and methods are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_metrics_show_plugin_metrics_and_failures() {
    let origin = Origin::start("a").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let hostile = trapping_module(dir.path(), "proxy_on_request_headers");
    let conformance = crate::conformance::conformance_wasm(crate::conformance::RUST_SDK);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", crate::harness::free_port())
        .parse()
        .expect("addr");
    let plugins = format!(
        "  - name: conformance
    vm_config: {{ code: {{ local: {{ filename: {} }} }} }}
{}",
        conformance.display(),
        hostile_plugin(&hostile, "FAIL_OPEN"),
    );
    let proxy = Rustng::start(&format!(
        "{}admin: {{ address: '{admin}' }}\n",
        config(&origin, &plugins, "conformance, hostile")
    ));
    let client = client::http1();
    // The conformance filter answers this one itself, after using its metrics.
    let report = get(&client, &proxy.url("/conformance/metrics")).await;
    assert_eq!(report.status, 200, "{}", report.text());
    assert!(
        report.text().contains("counter.get=Ok(5)"),
        "{}",
        report.text()
    );
    // This one reaches the hostile filter, which traps; FAIL_OPEN lets it through.
    assert_eq!(get(&client, &proxy.url("/echo/x")).await.status, 200);

    let metrics = get(&client, &format!("http://{admin}/metrics")).await;
    assert_eq!(metrics.status, 200);
    assert_eq!(
        metrics.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = metrics.text();
    for expected in [
        "# TYPE rustng_wasm_plugin_failures_total counter\n",
        "rustng_wasm_plugin_failures_total{plugin=\"conformance\"} 0\n",
        "rustng_wasm_plugin_failures_total{plugin=\"hostile\"} 1\n",
        "# TYPE rustng_wasmcustom_conformance_requests counter\nrustng_wasmcustom_conformance_requests 5\n",
        "# TYPE rustng_wasmcustom_conformance_level gauge\nrustng_wasmcustom_conformance_level 6\n",
        "rustng_wasmcustom_conformance_sizes_count 1\n",
        "rustng_wasmcustom_conformance_sizes_sum 42\n",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    let health = get(&client, &format!("http://{admin}/health")).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok\n");
    assert_eq!(
        get(&client, &format!("http://{admin}/nope")).await.status,
        404
    );
    let post = send(
        &client,
        Request::post(format!("http://{admin}/metrics"))
            .body(Full::new(bytes::Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(post.status, 405);
}
