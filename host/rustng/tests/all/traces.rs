//! OpenTelemetry tracing end to end: trace context propagated to a real upstream (W3C and B3),
//! spans exported to an in-test OTLP collector over gRPC (tonic) and over HTTP, decoded with
//! the official generated OTLP types (`opentelemetry-proto`), so RustNg's hand-declared
//! messages are checked against the real schema. A dead collector must cost traffic nothing.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::server::{Grpc, UnaryService};
use tonic_prost::ProstCodec;

use crate::client::{self, HttpClient, Reply};
use crate::harness::{Rustng, free_port};
use crate::origin::Origin;

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// An OTLP trace collector on 127.0.0.1: gRPC `TraceService/Export` (HTTP/2) and OTLP/HTTP
/// `POST /v1/traces` (HTTP/1.1 or 2) on one port; every export request it receives comes out
/// of `received`.
struct Collector {
    addr: SocketAddr,
    received: mpsc::UnboundedReceiver<Export>,
    task: tokio::task::JoinHandle<()>,
}

/// One export request as received.
struct Export {
    content_type: String,
    request: ExportTraceServiceRequest,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Receive(mpsc::UnboundedSender<Export>);

impl UnaryService<ExportTraceServiceRequest> for Receive {
    type Response = ExportTraceServiceResponse;
    type Future = Pin<
        Box<
            dyn Future<Output = Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status>>
                + Send,
        >,
    >;

    fn call(&mut self, request: tonic::Request<ExportTraceServiceRequest>) -> Self::Future {
        let content_type = request
            .metadata()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let _ = self.0.send(Export {
            content_type,
            request: request.into_inner(),
        });
        Box::pin(async { Ok(tonic::Response::new(ExportTraceServiceResponse::default())) })
    }
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        let (sender, received) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let sender = sender.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let sender = sender.clone();
                            async move {
                                let response = if req.uri().path() == EXPORT {
                                    Grpc::new(ProstCodec::<
                                        ExportTraceServiceResponse,
                                        ExportTraceServiceRequest,
                                    >::default())
                                    .unary(Receive(sender), req)
                                    .await
                                    .map(tonic::body::Body::new)
                                } else {
                                    otlp_http(req, &sender).await
                                };
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Collector {
            addr,
            received,
            task,
        }
    }

    /// Every span received until `count` have arrived or `bound` passes.
    async fn spans(&mut self, count: usize, bound: Duration) -> Vec<(Export, Vec<Span>)> {
        let deadline = Instant::now() + bound;
        let mut out = Vec::new();
        let mut seen = 0;
        while seen < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.received.recv()).await {
                Ok(Some(export)) => {
                    let spans: Vec<Span> = export
                        .request
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .flat_map(|s| s.spans.clone())
                        .collect();
                    seen += spans.len();
                    out.push((export, spans));
                }
                _ => break,
            }
        }
        out
    }
}

/// OTLP/HTTP: a binary protobuf request body, an `ExportTraceServiceResponse` back.
async fn otlp_http(
    req: http::Request<hyper::body::Incoming>,
    sender: &mpsc::UnboundedSender<Export>,
) -> http::Response<tonic::body::Body> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let path_ok = req.method() == http::Method::POST && req.uri().path() == "/v1/traces";
    let body = req.into_body().collect().await.expect("body").to_bytes();
    let status = match ExportTraceServiceRequest::decode(body) {
        Ok(request) if path_ok => {
            let _ = sender.send(Export {
                content_type,
                request,
            });
            http::StatusCode::OK
        }
        _ => http::StatusCode::BAD_REQUEST,
    };
    let mut response = http::Response::new(tonic::body::Body::new(Full::new(Bytes::from(
        ExportTraceServiceResponse::default().encode_to_vec(),
    ))));
    *response.status_mut() = status;
    response
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn traced_config(origin: SocketAddr, collector: SocketAddr, admin: u16, tracing: &str) -> String {
    format!(
        "workers: 1
log: {{ level: info }}
admin: {{ address: '127.0.0.1:{admin}' }}
tracing:
{tracing}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: backend
    endpoints: [{{ address: '{origin}' }}]
  - name: otel
    protocol: http2
    endpoints: [{{ address: '{collector}' }}]
"
    )
}

async fn get_with(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client::send(client, request.body(Full::default()).expect("request")).await
}

/// The upstream's view of a header, from the origin's `/echo` answer.
fn seen_upstream(reply: &Reply, name: &str) -> Option<String> {
    reply.json()["headers"][name][0].as_str().map(str::to_owned)
}

const PARENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_grpc_collector_with_their_parents() {
    let origin = Origin::start("traced").await;
    let mut collector = Collector::start().await;
    let admin = free_port();
    let proxy = Rustng::start(&traced_config(
        origin.addr,
        collector.addr,
        admin,
        "  service_name: edge\n  otlp: { cluster: otel }\n  schedule_delay: 50ms",
    ));
    let client = client::http1();

    // A caller with a sampled trace: the upstream gets the same trace, RustNg's span as parent.
    let child = get_with(
        &client,
        &proxy.url("/echo/child?x=1"),
        &[
            (
                "traceparent",
                &format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"),
            ),
            ("tracestate", "vendor=opaque"),
            ("user-agent", "trace-test/1"),
        ],
    )
    .await;
    assert_eq!(child.status, 200);
    let sent = seen_upstream(&child, "traceparent").expect("traceparent upstream");
    let fields: Vec<&str> = sent.split('-').collect();
    assert_eq!(fields.len(), 4, "{sent}");
    assert_eq!(
        (fields[0], fields[1], fields[3]),
        ("00", PARENT_TRACE, "01")
    );
    let rustng_span = fields[2].to_owned();
    assert_ne!(
        rustng_span, PARENT_SPAN,
        "RustNg's own span is the parent upstream"
    );
    assert_eq!(
        seen_upstream(&child, "tracestate").as_deref(),
        Some("vendor=opaque")
    );

    // No context: a new trace, sampled at 100 %.
    let root = get_with(&client, &proxy.url("/echo/root"), &[]).await;
    let root_parent = seen_upstream(&root, "traceparent").expect("traceparent upstream");
    assert!(root_parent.starts_with("00-") && root_parent.ends_with("-01"));
    let root_trace = root_parent[3..35].to_owned();

    // An upstream 503 makes an error span.
    let failed = get_with(&client, &proxy.url("/status/503"), &[]).await;
    assert_eq!(failed.status, 503);

    let exports = collector.spans(3, Duration::from_secs(10)).await;
    let spans: Vec<&Span> = exports.iter().flat_map(|(_, s)| s).collect();
    assert_eq!(spans.len(), 3, "three requests, three spans");
    for (export, _) in &exports {
        assert_eq!(export.content_type, "application/grpc");
        let resource = export.request.resource_spans[0]
            .resource
            .as_ref()
            .expect("resource");
        let service = resource
            .attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref()?.value.clone());
        assert_eq!(service, Some(Value::StringValue("edge".into())));
    }

    let child_span = spans
        .iter()
        .find(|s| hex(&s.trace_id) == PARENT_TRACE)
        .expect("the child's span");
    assert_eq!(hex(&child_span.span_id), rustng_span);
    assert_eq!(hex(&child_span.parent_span_id), PARENT_SPAN);
    assert_eq!(child_span.trace_state, "vendor=opaque");
    assert_eq!(child_span.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(child_span.name, "GET");
    assert!(child_span.end_time_unix_nano >= child_span.start_time_unix_nano);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    assert!(
        now - child_span.start_time_unix_nano < 60_000_000_000,
        "Unix nanoseconds"
    );
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.path", "/echo/child"),
        ("url.query", "x=1"),
        ("url.scheme", "http"),
        ("network.protocol.version", "1.1"),
        ("client.address", "127.0.0.1"),
        ("user_agent.original", "trace-test/1"),
        ("http.response.status_code", "200"),
        ("rustng.listener", "main"),
        ("upstream_cluster", "backend"),
        ("upstream_address", &origin.addr.to_string()),
    ] {
        assert_eq!(
            attribute(child_span, key).as_deref(),
            Some(value),
            "{key} in {child_span:?}"
        );
    }
    assert!(attribute(child_span, "guid:x-request-id").is_some());
    assert!(child_span.status.as_ref().is_none_or(|s| s.code == 0));

    let root_span = spans
        .iter()
        .find(|s| hex(&s.trace_id) == root_trace)
        .expect("the root's span");
    assert!(root_span.parent_span_id.is_empty(), "a root span");
    assert_eq!(hex(&root_span.span_id), &root_parent[36..52]);

    let error_span = spans
        .iter()
        .find(|s| attribute(s, "url.path").as_deref() == Some("/status/503"))
        .expect("the 503's span");
    assert_eq!(error_span.status.as_ref().map(|s| s.code), Some(2));
    assert_eq!(
        attribute(error_span, "http.response.status_code").as_deref(),
        Some("503")
    );

    // The access log names the trace.
    assert!(proxy.log_eventually_contains(&format!("\"trace_id\":\"{PARENT_TRACE}\"")));
    // Counted once the collector's answer is in, a moment after it has the spans.
    let metrics = metrics_when(&client, admin, |m| {
        metric(m, "rustng_tracing_spans_exported_total") == 3.0
    })
    .await;
    assert_eq!(
        metric(&metrics, "rustng_tracing_spans_exported_total"),
        3.0,
        "{metrics}"
    );
}

/// /metrics once `ready` holds, or after 5 s.
async fn metrics_when(client: &HttpClient, admin: u16, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(client, admin).await;
        if ready(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(client: &HttpClient, admin: u16) -> String {
    client::get(client, &format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .text()
}

/// A metric's value, from the text exposition.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_ratio_for_roots_and_the_callers_decision_otherwise() {
    let origin = Origin::start("traced").await;
    let mut collector = Collector::start().await;
    let admin = free_port();
    let proxy = Rustng::start(&traced_config(
        origin.addr,
        collector.addr,
        admin,
        "  random_sampling: 0\n  otlp: { cluster: otel }\n  schedule_delay: 50ms",
    ));
    let client = client::http1();
    for _ in 0..20 {
        let reply = get_with(&client, &proxy.url("/echo/unsampled"), &[]).await;
        let sent = seen_upstream(&reply, "traceparent").expect("propagated even unsampled");
        assert!(sent.ends_with("-00"), "{sent}");
    }
    // A caller that says sampled wins over 0 %, in W3C and in B3 (multi-header) form.
    get_with(
        &client,
        &proxy.url("/echo/w3c"),
        &[(
            "traceparent",
            &format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"),
        )],
    )
    .await;
    let b3_trace = "a3ce929d0e0e4736";
    let b3 = get_with(
        &client,
        &proxy.url("/echo/b3"),
        &[
            ("x-b3-traceid", b3_trace),
            ("x-b3-spanid", PARENT_SPAN),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let b3_span = seen_upstream(&b3, "x-b3-spanid").expect("B3 kept for a B3 caller");
    assert_ne!(b3_span, PARENT_SPAN);
    assert_eq!(
        seen_upstream(&b3, "x-b3-parentspanid").as_deref(),
        Some(PARENT_SPAN)
    );
    assert_eq!(
        seen_upstream(&b3, "x-b3-traceid"),
        Some(format!("0000000000000000{b3_trace}")),
        "a 64-bit B3 trace id, widened as W3C needs"
    );
    assert_eq!(
        seen_upstream(&b3, "traceparent"),
        Some(format!("00-0000000000000000{b3_trace}-{b3_span}-01"))
    );
    // A caller that says not sampled is followed too.
    get_with(
        &client,
        &proxy.url("/echo/denied"),
        &[("b3", &format!("{PARENT_TRACE}-{PARENT_SPAN}-0"))],
    )
    .await;

    // Exactly the two sampled requests, and nothing more within a few export periods.
    let exports = collector.spans(3, Duration::from_secs(3)).await;
    let mut paths: Vec<String> = exports
        .iter()
        .flat_map(|(_, spans)| spans)
        .filter_map(|s| attribute(s, "url.path"))
        .collect();
    paths.sort();
    assert_eq!(paths, vec!["/echo/b3", "/echo/w3c"]);
    let metrics = metrics_when(&client, admin, |m| {
        metric(m, "rustng_tracing_spans_exported_total") == 2.0
    })
    .await;
    assert_eq!(metric(&metrics, "rustng_tracing_spans_exported_total"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_reaches_the_collector() {
    let origin = Origin::start("traced").await;
    let mut collector = Collector::start().await;
    let proxy = Rustng::start(
        &traced_config(
            origin.addr,
            collector.addr,
            free_port(),
            "  otlp: { cluster: otel, protocol: http }\n  schedule_delay: 50ms",
        )
        // OTLP/HTTP over HTTP/1.1.
        .replace("    protocol: http2\n", ""),
    );
    let client = client::http1();
    for _ in 0..5 {
        assert_eq!(
            get_with(&client, &proxy.url("/echo/h"), &[]).await.status,
            200
        );
    }
    let exports = collector.spans(5, Duration::from_secs(10)).await;
    assert_eq!(exports.iter().map(|(_, s)| s.len()).sum::<usize>(), 5);
    assert!(
        exports
            .iter()
            .all(|(e, _)| e.content_type == "application/x-protobuf")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_costs_traffic_nothing() {
    let origin = Origin::start("traced").await;
    // A collector that accepts connections and never says a word: every export runs into
    // its timeout while requests keep coming.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead = stalled.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = stalled.accept().await {
            held.push(stream);
        }
    });
    let admin = free_port();
    let proxy = Rustng::start(&traced_config(
        origin.addr,
        dead,
        admin,
        "  otlp: { cluster: otel, timeout: 200ms }\n  max_queue_size: 8\n  max_export_batch_size: 4\n  schedule_delay: 20ms",
    ));
    let client = client::http1();
    let started = Instant::now();
    for _ in 0..300 {
        assert_eq!(
            get_with(&client, &proxy.url("/echo/d"), &[]).await.status,
            200
        );
    }
    let elapsed = started.elapsed();
    assert!(
        proxy.log_eventually_contains("span export failed; the spans are dropped"),
        "the failure is logged"
    );
    let metrics = metrics_when(&client, admin, |m| {
        metric(
            m,
            "rustng_tracing_spans_dropped_total{reason=\"export_failed\"}",
        ) >= 4.0
    })
    .await;
    let full = metric(
        &metrics,
        "rustng_tracing_spans_dropped_total{reason=\"queue_full\"}",
    );
    let failed = metric(
        &metrics,
        "rustng_tracing_spans_dropped_total{reason=\"export_failed\"}",
    );
    assert!(failed >= 4.0, "{metrics}");
    assert!(full > 0.0, "a queue of 8 overflows: {metrics}");
    assert_eq!(metric(&metrics, "rustng_tracing_spans_exported_total"), 0.0);
    assert!(metric(&metrics, "rustng_tracing_spans_queued") <= 8.0);
    assert!(
        elapsed < Duration::from_secs(20),
        "300 requests took {elapsed:?}"
    );
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_read_the_trace_and_spans_time_each_plugin() {
    let origin = Origin::start("traced").await;
    let mut collector = Collector::start().await;
    let wasm = crate::conformance::conformance_wasm(crate::conformance::RUST_SDK);
    let config = traced_config(
        origin.addr,
        collector.addr,
        free_port(),
        "  otlp: { cluster: otel }\n  schedule_delay: 50ms",
    )
    .replace(
        "    default_cluster: backend\n",
        "    default_cluster: backend\n    http_filters: [conformance]\n",
    );
    let config = crate::harness::with_plugins(
        &config,
        &crate::harness::plugin("conformance", &wasm, " plain"),
    );
    let proxy = Rustng::start(&config);
    let client = client::http1();
    let report = get_with(
        &client,
        &proxy.url("/conformance/rustng-trace"),
        &[(
            "traceparent",
            &format!("00-{PARENT_TRACE}-{PARENT_SPAN}-01"),
        )],
    )
    .await
    .text();
    let line = |name: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {report}"))
            .to_owned()
    };
    assert_eq!(line("trace_id"), PARENT_TRACE);
    assert_eq!(line("parent_span_id"), PARENT_SPAN);
    let span_id = line("span_id");
    assert_eq!(span_id.len(), 16);
    assert_eq!(
        line("traceparent"),
        format!("00-{PARENT_TRACE}-{span_id}-01")
    );
    assert_eq!(line("sampled"), "[1]");

    // Through to the upstream, the span has the filter's time.
    let passed = get_with(&client, &proxy.url("/echo/filtered"), &[]).await;
    assert_eq!(passed.status, 200);
    let exports = collector.spans(2, Duration::from_secs(10)).await;
    let spans: Vec<&Span> = exports.iter().flat_map(|(_, s)| s).collect();
    assert_eq!(spans.len(), 2);
    let local = spans
        .iter()
        .find(|s| hex(&s.trace_id) == PARENT_TRACE)
        .expect("the filter's answer has a span");
    assert_eq!(hex(&local.span_id), span_id, "the span filters were told");
    assert_eq!(
        attribute(local, "upstream_cluster"),
        None,
        "answered by the filter"
    );
    for span in spans {
        let micros: i64 = attribute(span, "rustng.plugin.conformance.duration_us")
            .expect("the plugin's time")
            .parse()
            .expect("integer");
        assert!((0..1_000_000).contains(&micros), "{micros} µs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_name_the_route_the_router_chose() {
    let origin = Origin::start("traced").await;
    let mut collector = Collector::start().await;
    let router = crate::stock_filters::module("router");
    let config = traced_config(
        origin.addr,
        collector.addr,
        free_port(),
        "  otlp: { cluster: otel }\n  schedule_delay: 50ms",
    )
    .replace(
        "    default_cluster: backend\n",
        "    http_filters: [router]\n",
    );
    let config = crate::harness::with_plugins(
        &config,
        &crate::harness::plugin(
            "router",
            &router,
            "
      virtual_hosts:
        - name: all
          domains: ['*']
          routes:
            - name: echo-route
              match: { prefix: /echo }
              route: { cluster: backend }
            - match: { prefix: / }
              route: { cluster: backend }",
        ),
    );
    let proxy = Rustng::start(&config);
    let client = client::http1();
    assert_eq!(
        get_with(&client, &proxy.url("/echo/named"), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get_with(&client, &proxy.url("/other"), &[]).await.status,
        200
    );
    let exports = collector.spans(2, Duration::from_secs(10)).await;
    let spans: Vec<&Span> = exports.iter().flat_map(|(_, s)| s).collect();
    let named = spans
        .iter()
        .find(|s| attribute(s, "url.path").as_deref() == Some("/echo/named"))
        .expect("span");
    assert_eq!(
        attribute(named, "route_name").as_deref(),
        Some("echo-route")
    );
    assert_eq!(
        attribute(named, "upstream_cluster").as_deref(),
        Some("backend")
    );
    let unnamed = spans
        .iter()
        .find(|s| attribute(s, "url.path").as_deref() == Some("/other"))
        .expect("span");
    assert_eq!(attribute(unnamed, "route_name"), None);
}
