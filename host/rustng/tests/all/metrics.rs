//! `/metrics` scraped and parsed with a Prometheus text-format parser (the `prometheus-parse`
//! crate, as a scraper would): downstream connections and requests by listener and status
//! class with latency histograms, upstream requests and failures by cluster, config version,
//! plugin generations, callbacks, guest time and memory.

use prometheus_parse::{Sample, Scrape, Value};

use crate::client;
use crate::harness::{Rustng, free_port};
use crate::origin::Origin;
use crate::stock_filters::module;

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid Prometheus text")
}

/// The value of the sample `name` whose labels include every `labels` pair.
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let sample: &Sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?}"));
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
        Value::Summary(_) => panic!("{name} is a summary"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_happened() {
    let origin = Origin::start("o").await;
    let admin = free_port();
    let dead = free_port();
    let proxy = Rustng::start(&format!(
        "workers: 2
plugins:
  - name: hdr
    vm_config: {{ code: {{ local: {{ filename: {headers} }} }} }}
    configuration: {{ response_headers_to_add: [{{ header: {{ key: x-a, value: b }} }}] }}
  - name: router
    vm_config: {{ code: {{ local: {{ filename: {router} }} }} }}
    configuration:
      virtual_hosts:
        - domains: ['*']
          routes:
            - {{ match: {{ prefix: /dead }}, route: {{ cluster: dead }} }}
            - {{ match: {{ prefix: / }}, route: {{ cluster: backend }} }}
listeners:
  - name: main
    address: '{{listen}}'
    http_filters: [hdr, router]
clusters:
  - name: backend
    endpoints: [{{ address: {origin} }}]
  - name: dead
    connect_timeout: 1s
    endpoints: [{{ address: '127.0.0.1:{dead}' }}]
admin: {{ address: '127.0.0.1:{admin}' }}
",
        headers = module("headers").display(),
        router = module("router").display(),
        origin = origin.addr,
    ));
    let client = client::http1();
    for _ in 0..10 {
        assert_eq!(client::get(&client, &proxy.url("/echo")).await.status, 200);
    }
    assert_eq!(
        client::get(&client, &proxy.url("/status/404")).await.status,
        404
    );
    assert_eq!(
        client::get(&client, &proxy.url("/status/503")).await.status,
        503
    );
    assert_eq!(client::get(&client, &proxy.url("/dead")).await.status, 502);

    let text = client::get(&client, &format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .text();
    let scrape = scrape(&text);
    let main = [("listener", "main")];
    let class = |c: &'static str| [("listener", "main"), ("code_class", c)];
    assert_eq!(
        value(&scrape, "rustng_downstream_requests_total", &class("2xx")),
        10.0,
        "{text}"
    );
    assert_eq!(
        value(&scrape, "rustng_downstream_requests_total", &class("4xx")),
        1.0
    );
    assert_eq!(
        value(&scrape, "rustng_downstream_requests_total", &class("5xx")),
        2.0
    );
    assert_eq!(
        value(&scrape, "rustng_downstream_request_duration_seconds", &main),
        13.0
    );
    assert!(value(&scrape, "rustng_downstream_connections_total", &main) >= 1.0);
    assert!(value(&scrape, "rustng_downstream_connections_active", &main) >= 1.0);
    assert_eq!(
        value(
            &scrape,
            "rustng_downstream_connections_refused_total",
            &main
        ),
        0.0
    );
    let backend = |c: &'static str| [("cluster", "backend"), ("code_class", c)];
    assert_eq!(
        value(&scrape, "rustng_upstream_requests_total", &backend("2xx")),
        10.0
    );
    assert_eq!(
        value(&scrape, "rustng_upstream_requests_total", &backend("5xx")),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "rustng_upstream_request_failures_total",
            &[("cluster", "dead")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "rustng_upstream_request_duration_seconds",
            &[("cluster", "backend")]
        ),
        12.0
    );
    assert_eq!(value(&scrape, "rustng_config_version", &[]), 1.0);
    assert_eq!(
        value(
            &scrape,
            "rustng_wasm_plugin_generation",
            &[("plugin", "router")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "rustng_wasm_plugin_failures_total",
            &[("plugin", "hdr")]
        ),
        0.0
    );
    let origin_endpoint = origin.addr.to_string();
    let dead_endpoint = format!("127.0.0.1:{dead}");
    let endpoint = |cluster: &'static str, address: &str, class: &'static str| {
        value(
            &scrape,
            "rustng_upstream_endpoint_requests_total",
            &[
                ("cluster", cluster),
                ("endpoint", address),
                ("code_class", class),
            ],
        )
    };
    assert_eq!(endpoint("backend", &origin_endpoint, "2xx"), 10.0);
    assert_eq!(endpoint("backend", &origin_endpoint, "5xx"), 1.0);
    assert_eq!(
        value(
            &scrape,
            "rustng_upstream_endpoint_request_failures_total",
            &[("cluster", "dead"), ("endpoint", &dead_endpoint)]
        ),
        1.0
    );
    // The client's keep-alive requests reuse pooled upstream connections: at least one is
    // open, and few were ever opened; the dead endpoint refused its one.
    fn at<'a>(cluster: &'a str, address: &'a str) -> [(&'a str, &'a str); 2] {
        [("cluster", cluster), ("endpoint", address)]
    }
    let connections = value(
        &scrape,
        "rustng_upstream_endpoint_connections_total",
        &at("backend", &origin_endpoint),
    );
    assert!((1.0..=11.0).contains(&connections), "{text}");
    assert!(
        value(
            &scrape,
            "rustng_upstream_endpoint_connections_active",
            &at("backend", &origin_endpoint)
        ) >= 1.0
    );
    assert_eq!(
        value(
            &scrape,
            "rustng_upstream_endpoint_connections_active",
            &at("dead", &dead_endpoint)
        ),
        0.0
    );
    assert_eq!(
        value(
            &scrape,
            "rustng_upstream_endpoint_healthy",
            &[
                ("cluster", "backend"),
                ("endpoint", &origin_endpoint),
                ("reason", "healthy")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            &scrape,
            "rustng_upstream_circuit_breaker_overflows_total",
            &[("cluster", "backend"), ("resource", "requests")]
        ),
        0.0
    );
    // 13 requests through two filters built on rustng-guest, which export only the phases
    // they use: the headers filter is entered for both header phases, the router for the
    // request's alone.
    let calls = |plugin| {
        value(
            &scrape,
            "rustng_wasm_plugin_calls_total",
            &[("plugin", plugin)],
        )
    };
    assert!(
        (20.0..60.0).contains(&calls("hdr")),
        "hdr calls {}",
        calls("hdr")
    );
    assert!(
        (13.0..30.0).contains(&calls("router")),
        "router calls {}",
        calls("router")
    );
    // Guest time and memory are sampled every 32nd callback of an instance: more requests
    // on the same connection (one worker) get both sampled.
    for _ in 0..40 {
        assert_eq!(client::get(&client, &proxy.url("/echo")).await.status, 200);
    }
    let later = client::get(&client, &format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .text();
    let later = self::scrape(&later);
    assert!(
        value(
            &later,
            "rustng_wasm_plugin_call_seconds_total",
            &[("plugin", "hdr")]
        ) > 0.0
    );
    // Two workers, an instance each, at least one page of linear memory apiece.
    assert!(
        value(
            &later,
            "rustng_wasm_plugin_memory_bytes",
            &[("plugin", "router")]
        ) >= 131072.0
    );
    // Every family has its HELP text.
    for family in [
        "rustng_downstream_requests_total",
        "rustng_downstream_request_duration_seconds",
        "rustng_upstream_requests_total",
        "rustng_upstream_request_failures_total",
    ] {
        assert!(scrape.docs.contains_key(family), "no HELP for {family}");
    }
}
