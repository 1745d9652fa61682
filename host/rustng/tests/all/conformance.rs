//! The proxy-wasm conformance suite, differential: the same module (wasm-tests/rust/conformance,
//! upstream Rust SDK), the same plugin configuration and the same requests go through Envoy,
//! the reference host, and through RustNg. Each case's report must be identical in both, and
//! must also hold the values the ABI promises (so a bug shared by both hosts still fails).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::Request;
use http_body_util::Full;

use crate::client::{self, HttpClient, Reply, send};
use crate::envoy::{Envoy, EnvoyPlugin};
use crate::harness::Rustng;
use crate::origin::Origin;

/// A conformance module built by `make filters`, under wasm-tests/target:
/// `wasm32-wasip1/release/conformance.wasm` (Rust SDK), `go-conformance.wasm` (Go SDK),
/// `as-conformance.wasm` (AssemblyScript SDK).
pub(crate) fn conformance_wasm(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../wasm-tests/target")
        .join(name);
    assert!(
        path.exists(),
        "{} missing: run `make filters`",
        path.display()
    );
    path
}

pub(crate) const RUST_SDK: &str = "wasm32-wasip1/release/conformance.wasm";
pub(crate) const GO_SDK: &str = "go-conformance.wasm";
pub(crate) const ASSEMBLYSCRIPT_SDK: &str = "as-conformance.wasm";

/// Both hosts, running the conformance module with `configuration`.
struct Hosts {
    rustng: Rustng,
    envoy: Envoy,
    client: HttpClient,
    _origin: Origin,
    grpc: tokio::task::JoinHandle<()>,
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.grpc.abort();
    }
}

impl Hosts {
    async fn start(configuration: &str) -> Hosts {
        Hosts::start_module(RUST_SDK, configuration).await
    }

    async fn start_module(module: &str, configuration: &str) -> Hosts {
        let origin = Origin::start("conformance").await;
        let (grpc_addr, grpc) = crate::grpc::start_server().await;
        let wasm = conformance_wasm(module);
        let rustng = Rustng::start(&format!(
            "workers: 1
plugins:
  - name: conformance
    root_id: ''
    vm_config:
      vm_id: ''
      runtime: envoy.wasm.runtime.v8
      code: {{ local: {{ filename: {wasm} }} }}
      environment_variables: {{ key_values: {{ CONFORMANCE_ENV: {env} }} }}
    configuration:
      '@type': type.googleapis.com/google.protobuf.StringValue
      value: {configuration}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [conformance]
clusters:
  - name: backend
    endpoints:
      - address: {origin}
  - name: grpc
    protocol: http2
    endpoints:
      - address: {grpc_addr}
",
            wasm = wasm.display(),
            origin = origin.addr,
            env = crate::envoy::CONFORMANCE_ENV,
        ));
        let envoy = Envoy::start(
            &EnvoyPlugin {
                name: "conformance",
                wasm: &wasm,
                configuration,
            },
            origin.addr,
            grpc_addr,
        );
        Hosts {
            rustng,
            envoy,
            client: client::http1(),
            _origin: origin,
            grpc,
        }
    }

    /// Runs `case` on both hosts; returns RustNg's report after checking Envoy's is the same.
    async fn case(&self, case: &str) -> String {
        let ours = self
            .request(&self.rustng.url(&format!("/conformance/{case}")))
            .await;
        let reference = self
            .request(&self.envoy.url(&format!("/conformance/{case}")))
            .await;
        assert_eq!(ours.status, 200, "{case} in RustNg: {}", ours.text());
        assert_eq!(
            reference.status,
            200,
            "{case} in Envoy: {}",
            reference.text()
        );
        // Envoy appends its response-code detail to gRPC status messages from upstreams;
        // that suffix is Envoy's bookkeeping, not the upstream's message.
        let reference_text = reference.text().replace("{via_upstream}", "");
        assert_eq!(
            ours.text(),
            reference_text,
            "case {case}: RustNg (left) and Envoy (right) differ"
        );
        assert_eq!(ours.headers["x-conformance-case"], case);
        self.same_logs(case, ours.text().lines().count()).await;
        ours.text()
    }

    /// What the filter logged for `case` (one line per report line) must be the same in
    /// both hosts, in the same order.
    async fn same_logs(&self, case: &str, lines: usize) {
        let marker = format!("conformance {case} ");
        let pick = |log: String| -> Vec<String> {
            log.lines()
                .filter_map(|line| {
                    let start = line.find(&marker)?;
                    // RustNg's JSON lines end the message with a quote.
                    let message = &line[start..];
                    let end = message.find('"').unwrap_or(message.len());
                    Some(message[..end].to_owned())
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ours = pick(self.rustng.log());
            // Envoy's bookkeeping suffix on upstream gRPC messages, as in `case`.
            let reference = pick(self.envoy.log().replace("{via_upstream}", ""));
            if ours.len() >= lines && reference.len() >= lines {
                assert_eq!(
                    ours, reference,
                    "case {case}: the filter's log lines differ, RustNg (left), Envoy (right)"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "case {case}: expected {lines} log lines, RustNg has {ours:?}, Envoy has {reference:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends the same request to both hosts; returns RustNg's reply after checking that the
    /// status and body match Envoy's.
    async fn both(&self, method: &str, path: &str, body: &'static str) -> Reply {
        let send_to = |url: String| {
            let req = Request::builder()
                .method(method)
                .uri(url)
                .header("host", "conformance.test")
                .header("x-probe", "probe-value")
                .body(Full::new(bytes::Bytes::from_static(body.as_bytes())))
                .expect("request");
            send(&self.client, req)
        };
        let ours = send_to(self.rustng.url(path)).await;
        let reference = send_to(self.envoy.url(path)).await;
        assert_eq!(
            (ours.status, ours.text()),
            (reference.status, reference.text()),
            "{method} {path}: RustNg (left) and Envoy (right) differ"
        );
        ours
    }

    async fn request(&self, url: &str) -> Reply {
        let req = Request::get(url)
            .header("host", "conformance.test")
            .header("user-agent", "conformance-test")
            .header("x-probe", "probe-value")
            .body(Full::default())
            .expect("request");
        send(&self.client, req).await
    }

    /// Polls `case` on both hosts until its report contains `line` (both must get there).
    async fn eventually(&self, case: &str, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for (host, url) in [
            ("RustNg", self.rustng.url(&format!("/conformance/{case}"))),
            ("Envoy", self.envoy.url(&format!("/conformance/{case}"))),
        ] {
            loop {
                let report = self.request(&url).await.text();
                if report.lines().any(|l| l == line) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{host}: {case} never reported {line:?}; last report:\n{report}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn assert_lines(report: &str, expected: &[&str]) {
    for line in expected {
        assert!(
            report.lines().any(|l| l == *line),
            "missing {line:?} in report:\n{report}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_with_compare_and_swap_matches_envoy() {
    let hosts = Hosts::start("plain").await;
    let report = hosts.case("shared-data").await;
    assert_lines(
        &report,
        &[
            "get.missing=!NotFound",
            "set.create=Ok",
            "get.created=v1",
            "cas.nonzero=true",
            "set.current-cas=Ok",
            "set.stale-cas=CasMismatch",
            "get.after=v2",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_queues_and_ticks_reach_the_root_context_as_in_envoy() {
    let hosts = Hosts::start("tick").await;
    let report = hosts.case("queue-send").await;
    assert_lines(
        &report,
        &[
            "resolve.own=true",
            "resolve.missing=None",
            "enqueue=Ok",
            "enqueue.unknown=NotFound",
            "dequeue.unknown=NotFound",
        ],
    );
    // on_queue_ready moved the message into shared data; on_tick counted ticks.
    hosts
        .eventually("queue-read", "queue.last=hello queue")
        .await;
    hosts.eventually("tick", "ticked=true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_envoy() {
    let hosts = Hosts::start("plain").await;
    let report = hosts.case("metrics").await;
    assert_lines(
        &report,
        &[
            "define=Ok",
            // A new id per definition (Envoy's behaviour), both adding to one series.
            "define.same-name=false",
            "counter.increment=Ok",
            "counter.get=Ok(5)",
            "gauge.get=Ok(6)",
            "histogram.record=Ok",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_log_level_environment_and_randomness_match_envoy() {
    let hosts = Hosts::start("plain").await;
    let report = hosts.case("runtime").await;
    assert_lines(
        &report,
        &[
            // Both hosts run the wasm log at info (Envoy: `--component-log-level wasm:info`).
            "log-level=Ok(Info)",
            "time.sane=true",
            "env.CONFORMANCE_ENV=from-config",
            "random.differs=true",
            "foreign.unknown=Err(NotFound)",
        ],
    );
    // WASI fd_write: stdout and stderr lines reach both hosts' logs (and `case` compared them).
    for line in [
        "conformance runtime stdout=fd_write",
        "conformance runtime stderr=fd_write",
    ] {
        assert!(hosts.rustng.log().contains(line), "RustNg: {line}");
        assert!(hosts.envoy.log().contains(line), "Envoy: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_match_envoy() {
    let hosts = Hosts::start("plain").await;
    let report = hosts.case("properties").await;
    assert_lines(
        &report,
        &[
            "plugin_name=conformance",
            "request.path=/conformance/properties",
            "request.url_path=/conformance/properties",
            "request.host=conformance.test",
            "request.method=GET",
            "request.scheme=http",
            "request.protocol=HTTP/1.1",
            "request.useragent=conformance-test",
            "request.headers.x-probe=probe-value",
            "source.address.loopback=true",
            "source.port.len=8",
            "get.set=kept",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_buffered_and_rewritten_as_in_envoy() {
    let hosts = Hosts::start("plain").await;
    // The request body is held until its end, then prefixed (content-length removed).
    let reply = hosts
        .both("POST", "/pass/body-rewrite/reflect", "hello body")
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "rewritten:hello body");
    // The response body is held until its end, then upper-cased.
    let reply = hosts
        .both("POST", "/pass/response-upper/reflect", "make me loud")
        .await;
    assert_eq!(reply.text(), "MAKE ME LOUD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_response_resumes_from_a_call_answer_as_in_envoy() {
    let hosts = Hosts::start("plain").await;
    // The response headers wait on an HTTP call; its answer changes them and resumes them.
    let path = "/pass/response-call/echo";
    let ours = hosts.request(&hosts.rustng.url(path)).await;
    let reference = hosts.request(&hosts.envoy.url(path)).await;
    for (host, reply) in [("RustNg", &ours), ("Envoy", &reference)] {
        assert_eq!(reply.status, 200, "{host}: {}", reply.text());
        assert_eq!(reply.headers["x-call-status"], "202", "{host}");
        assert_eq!(reply.headers["x-status-seen"], "200", "{host}");
        assert_eq!(reply.json()["uri"], "/pass/response-call/echo", "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_maps_out_of_their_phase_answer_as_in_envoy() {
    let hosts = Hosts::start("plain").await;
    // The filter calls the header-map hostcalls on maps that are not the current phase's
    // (the request's in the body and response phases, the response's in the request
    // phase, trailers that do not exist) and answers with the statuses; in `proxy_on_log`
    // it does the same for both heads, and logs them.
    let reply = hosts
        .both("POST", "/pass/heads-later/reflect", "some body")
        .await;
    assert_eq!(reply.status, 200);
    assert_lines(
        &reply.text(),
        &[
            "request-headers.response.get.:status=2 ",
            "request-headers.response.pairs=0",
            "request-body.request.get.:path=2 ",
            "response-headers.request.add=2",
            "response-body.response.size=2 false",
        ],
    );
    // In `proxy_on_log` both heads read, but neither changes nor tells its size.
    hosts.same_logs("heads-later", 10).await;
    let log = hosts.rustng.log();
    for line in [
        "log.request.get.:path=0 /pass/heads-later/reflect",
        "log.response.get.:status=0 200",
        "log.request.add=2",
        "log.response.size=2 false",
    ] {
        assert!(log.contains(line), "{line} missing in RustNg's log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_calls_answer_and_resume_streams_as_in_envoy() {
    let hosts = Hosts::start("plain").await;
    let report = hosts.case("call-status").await;
    assert_lines(&report, &["call.status=201", "call.body=status 201"]);
    let report = hosts.case("call-unknown-cluster").await;
    assert_lines(&report, &["dispatch=BadArgument"]);

    // The request waits for the call, gains a header from its answer, then goes upstream.
    let ours = hosts
        .request(&hosts.rustng.url("/pass/call-then-continue/echo"))
        .await;
    let reference = hosts
        .request(&hosts.envoy.url("/pass/call-then-continue/echo"))
        .await;
    for reply in [&ours, &reference] {
        assert_eq!(reply.status, 200, "{}", reply.text());
        let echo = reply.json();
        assert_eq!(echo["headers"]["x-call-status"][0], "201", "{echo}");
        assert_eq!(echo["headers"]["x-call-body"][0], "status 201", "{echo}");
    }
    // A body waits, unread, while the head is paused on the call, then follows it.
    let reply = hosts
        .both(
            "POST",
            "/pass/call-then-continue/reflect",
            "held while paused",
        )
        .await;
    assert_eq!(reply.text(), "held while paused");
}

/// The same cases through a filter built with the upstream Go SDK (Go's own wasip1 port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_sdk_filter_behaves_as_in_envoy() {
    let hosts = Hosts::start_module(GO_SDK, "plain").await;
    let report = hosts.case("shared-data").await;
    assert_lines(
        &report,
        &[
            "get.missing=!NotFound",
            "get.created=v1",
            "set.current-cas=Ok",
            "set.stale-cas=CasMismatch",
            "get.after=v2",
        ],
    );
    let report = hosts.case("metrics").await;
    assert_lines(&report, &["counter.get=5", "gauge.get=6"]);
    let report = hosts.case("properties").await;
    assert_lines(
        &report,
        &[
            "plugin_name=conformance",
            "request.path=/conformance/properties",
            "request.protocol=HTTP/1.1",
            "request.headers.x-probe=probe-value",
            "source.port.len=8",
            "get.set=kept",
        ],
    );
    let report = hosts.case("call-status").await;
    assert_lines(&report, &["call.status=201", "call.body=status 201"]);
    let reply = hosts
        .both("POST", "/pass/body-rewrite/reflect", "from go")
        .await;
    assert_eq!(reply.text(), "rewritten:from go");
    let reply = hosts
        .both("POST", "/pass/call-then-continue/reflect", "go waits")
        .await;
    assert_eq!(reply.text(), "go waits");
}

/// A filter built with the AssemblyScript SDK (@solo-io/proxy-runtime, ABI 0.2.0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assemblyscript_sdk_filter_behaves_as_in_envoy() {
    let hosts = Hosts::start_module(ASSEMBLYSCRIPT_SDK, "plain").await;
    let report = hosts.case("headers").await;
    assert_lines(
        &report,
        &[
            ":method=GET",
            ":path=/conformance/headers",
            ":authority=conformance.test",
            "x-probe=probe-value",
            "x-absent=",
        ],
    );
    let report = hosts.case("properties").await;
    assert_lines(
        &report,
        &[
            "plugin_name=conformance",
            "request.path=/conformance/properties",
            "request.protocol=HTTP/1.1",
            "request.headers.x-probe=probe-value",
        ],
    );
    let report = hosts.case("call-status").await;
    assert_lines(&report, &["call.status=201", "call.body=status 201"]);

    for url in [
        hosts.rustng.url("/pass/add-header/echo"),
        hosts.envoy.url("/pass/add-header/echo"),
    ] {
        let reply = hosts.request(&url).await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.text());
        assert_eq!(reply.headers["x-as-sdk-status"], "200", "{url}");
        let echo = reply.json();
        assert_eq!(echo["headers"]["x-as-sdk"][0], "added", "{url}: {echo}");
        assert!(echo["headers"].get("x-probe").is_none(), "{url}: {echo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_and_streams_behave_as_in_envoy() {
    let hosts = Hosts::start("plain").await;
    // Note { text: "echo: hi", seq: 42 } from the tonic server, as protobuf bytes.
    let report = hosts.case("grpc-unary").await;
    assert_lines(
        &report,
        &["grpc.status=0", "grpc.response=0a086563686f3a206869102a"],
    );
    let report = hosts.case("grpc-unary-fail").await;
    // The message as it travels (percent-encoded), as Envoy hands it over.
    assert_lines(&report, &["grpc.status=5", "grpc.message=no%20such%20note"]);
    let report = hosts.case("grpc-unknown-cluster").await;
    // Envoy reads the upstream as a serialized GrpcService first, then as a cluster name.
    assert_lines(&report, &["dispatch=ParseFailure"]);
    // A paused request gains the gRPC call's outcome as headers, then goes upstream.
    for url in [
        hosts.rustng.url("/pass/grpc-then-continue/echo"),
        hosts.envoy.url("/pass/grpc-then-continue/echo"),
    ] {
        let echo = hosts.request(&url).await.json();
        assert_eq!(echo["headers"]["x-grpc-status"][0], "0", "{url}: {echo}");
        assert_eq!(
            echo["headers"]["x-grpc-response-size"][0], "12",
            "{url}: {echo}"
        );
    }
    // Two messages out, each echoed upper-cased, then the trailers and the close.
    let report = hosts.case("grpc-stream").await;
    assert_lines(
        &report,
        &[
            "stream.content-type=application/grpc",
            "stream.message=0a034f4e451001",
            "stream.message=0a0354574f1002",
            "stream.trailer.grpc-status=0",
            "stream.close=0",
        ],
    );
}
