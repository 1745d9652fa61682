//! RustNg's stock filters (filters/), each a proxy-wasm module built from source, in a chain
//! with the router.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::client::{self, send};
use crate::harness::Rustng;
use crate::origin::Origin;

/// A `plugins:` item (for `harness::with_plugins`): the ip-access module as `deny`, refusing
/// the loopback clients every test is.
pub(crate) fn deny_loopback() -> String {
    crate::harness::plugin("deny", &module("ip_access"), " { deny: ['127.0.0.0/8'] }")
}

pub(crate) fn module(name: &str) -> std::path::PathBuf {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../../filters/target/wasm32-wasip1/release/{name}.wasm"
    ));
    assert!(
        path.exists(),
        "{} missing: run `make filters`",
        path.display()
    );
    path
}

/// RustNg with `workers` workers and one filter, the module `name` with `configuration` (YAML,
/// indented for the `configuration:` key), in front of `origin`.
fn with_filter(name: &str, configuration: &str, workers: usize, origin: &Origin) -> Rustng {
    Rustng::start(&format!(
        "workers: {workers}
plugins:
  - name: {name}
    vm_config: {{ code: {{ local: {{ filename: {module} }} }} }}
    configuration:
{configuration}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [{name}]
clusters:
  - name: backend
    endpoints: [{{ address: {origin} }}]
",
        module = module(name).display(),
        origin = origin.addr,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_headers_filter_adds_sets_and_removes_headers_both_ways() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&format!(
        "workers: 1
plugins:
  - name: headers
    vm_config: {{ code: {{ local: {{ filename: {headers} }} }} }}
    configuration:
      request_headers_to_add:
        - header: {{ key: x-env, value: prod }}
        - header: {{ key: x-tenant, value: default }}
          append_action: ADD_IF_ABSENT
        - header: {{ key: x-route, value: api }}
          append_action: OVERWRITE_IF_EXISTS_OR_ADD
        - header: {{ key: x-client, value: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% via %PROTOCOL%' }}
        - header: {{ key: x-tenant-short, value: '%REQ(x-none?x-tenant):2%' }}
        - header: {{ key: x-dropped, value: '%REQ(x-none)%' }}
        - header: {{ key: x-kept, value: '%REQ(x-none)%' }}
          keep_empty_value: true
      request_headers_to_remove: [x-secret]
      response_headers_to_add:
        - header: {{ key: x-served-by, value: rustng }}
        - header: {{ key: x-status, value: 'code %RESPONSE_CODE%, 100%% from %RESP(x-origin)%' }}
      response_headers_to_remove: [x-origin]
  - name: router
    vm_config: {{ code: {{ local: {{ filename: {router} }} }} }}
    configuration:
      virtual_hosts:
        - domains: ['*']
          routes:
            - match: {{ prefix: /, headers: [{{ name: x-route, exact: api }}] }}
              route: {{ cluster: backend }}
listeners:
  - name: main
    address: '{{listen}}'
    http_filters: [headers, router]
clusters:
  - name: backend
    endpoints: [{{ address: {origin} }}]
",
        headers = module("headers").display(),
        router = module("router").display(),
        origin = origin.addr,
    ));
    let reply = send(
        &client::http1(),
        Request::get(proxy.url("/echo"))
            .header("x-tenant", "acme")
            .header("x-route", "web")
            .header("x-secret", "s3cr3t")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    // The router after the headers filter saw the overwritten x-route.
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = &reply.json()["headers"];
    assert_eq!(seen["x-env"][0], "prod");
    assert_eq!(seen["x-tenant"].as_array().map(Vec::len), Some(1));
    assert_eq!(seen["x-tenant"][0], "acme");
    assert_eq!(seen["x-route"][0], "api");
    assert!(seen.get("x-secret").is_none(), "{seen}");
    // Envoy's substitution commands, a fallback header and a length, an empty value
    // dropped or kept.
    assert_eq!(seen["x-client"][0], "127.0.0.1 via HTTP/1.1");
    assert_eq!(seen["x-tenant-short"][0], "ac");
    assert!(seen.get("x-dropped").is_none(), "{seen}");
    assert_eq!(seen["x-kept"][0], "");
    assert_eq!(reply.headers["x-served-by"], "rustng");
    assert_eq!(reply.headers["x-status"], "code 200, 100% from a");
    assert!(
        reply.headers.get("x-origin").is_none(),
        "{:?}",
        reply.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_access_filter_allows_and_denies_by_the_client_address() {
    let origin = Origin::start("a").await;
    let client = client::http1();
    // The tests' client is 127.0.0.1.
    for (rules, status) in [
        ("      allow: ['127.0.0.0/8']", 200),
        ("      allow: ['10.0.0.0/8']", 403),
        (
            "      allow: ['127.0.0.0/8']\n      deny: ['127.0.0.1/32']",
            403,
        ),
        ("      deny: ['192.168.0.0/16', '::1']", 200),
    ] {
        let proxy = with_filter("ip_access", rules, 1, &origin);
        let reply = client::get(&client, &proxy.url("/echo")).await;
        assert_eq!(reply.status, status, "{rules}: {}", reply.text());
        if status == 403 {
            assert_eq!(reply.text(), "forbidden\n");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cors_filter_answers_preflights_and_marks_allowed_origins() {
    let origin = Origin::start("a").await;
    let proxy = with_filter(
        "cors",
        "      allow_origin_string_match: [{ exact: 'https://app.test' }]
      allow_methods: GET, PUT
      allow_headers: content-type
      max_age: '600'",
        1,
        &origin,
    );
    let client = client::http1();
    let request = |method: &str, origin: &str| {
        Request::builder()
            .method(method)
            .uri(proxy.url("/echo"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .body(Full::new(Bytes::new()))
            .expect("request")
    };
    // The preflight is answered by the filter; the origin never sees it.
    let preflight = send(&client, request("OPTIONS", "https://app.test")).await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.headers["access-control-allow-origin"],
        "https://app.test"
    );
    assert_eq!(
        preflight.headers["access-control-allow-methods"],
        "GET, PUT"
    );
    assert_eq!(preflight.headers["access-control-max-age"], "600");
    assert_eq!(origin.requests(), 0);

    let allowed = send(&client, request("GET", "https://app.test")).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://app.test"
    );
    let other = send(&client, request("GET", "https://evil.test")).await;
    assert_eq!(other.status, 200);
    assert!(other.headers.get("access-control-allow-origin").is_none());
    // A preflight from an origin the policy does not know goes on, unanswered by the filter.
    let other_preflight = send(&client, request("OPTIONS", "https://evil.test")).await;
    assert!(
        other_preflight
            .headers
            .get("access-control-allow-origin")
            .is_none()
    );
    assert_eq!(origin.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_rate_limit_is_one_bucket_for_every_worker() {
    let origin = Origin::start("a").await;
    let proxy = with_filter(
        "local_ratelimit",
        "      token_bucket: { max_tokens: 3, tokens_per_fill: 1, fill_interval: 1m }",
        2,
        &origin,
    );
    // A new connection each: SO_REUSEPORT spreads them over both workers, whose instances
    // must draw from the one bucket in shared data (per-worker buckets would allow up to 6).
    let mut allowed = 0;
    let mut limited = Vec::new();
    for _ in 0..10 {
        let reply = client::raw(
            proxy.addr,
            b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            std::time::Duration::from_secs(5),
        )
        .await;
        if reply.starts_with("HTTP/1.1 200 ") {
            allowed += 1;
        } else {
            limited.push(reply);
        }
    }
    assert_eq!(allowed, 3, "{limited:?}");
    for reply in &limited {
        assert!(reply.starts_with("HTTP/1.1 429 "), "{reply}");
        assert!(reply.contains("retry-after: "), "{reply}");
        assert!(reply.contains("x-ratelimit-limit: 3\r\n"), "{reply}");
        assert!(reply.ends_with("local_rate_limited"), "{reply}");
    }
}
