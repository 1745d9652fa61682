//! Routing as a wasm module: filters/router (proxy-wasm Rust SDK) decides, through the
//! property `rustng.route.cluster`, where each request goes; its route table is its plugin
//! configuration, written in the config as a YAML mapping.

use std::collections::HashSet;
use std::path::PathBuf;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::client::{self, Reply, send};
use crate::harness::Rustng;
use crate::origin::Origin;

fn router_wasm() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../filters/target/wasm32-wasip1/release/router.wasm");
    assert!(
        path.exists(),
        "{} missing: run `make filters`",
        path.display()
    );
    path
}

async fn get(client: &client::HttpClient, proxy: &Rustng, host: &str, path: &str) -> Reply {
    send(
        client,
        Request::get(proxy.url(path))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_module_sends_each_request_where_its_table_says() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let proxy = Rustng::start(&format!(
        "workers: 1
plugins:
  - name: router
    vm_config: {{ code: {{ local: {{ filename: {wasm} }} }} }}
    configuration:
      virtual_hosts:
        - name: api
          domains: [api.test]
          routes:
            - match: {{ prefix: /b/ }}
              route: {{ cluster: b, prefix_rewrite: /, host_rewrite_literal: b.internal }}
            - match: {{ prefix: /split }}
              route:
                weighted_clusters:
                  clusters: [{{ name: a, weight: 50 }}, {{ name: b, weight: 50 }}]
            - match: {{ safe_regex: {{ regex: '/svc/[a-z]+/.*' }} }}
              route:
                cluster: b
                regex_rewrite: {{ pattern: {{ regex: '^/svc/([a-z]+)/(.*)$' }}, substitution: '/\\2/\\1' }}
            - match: {{ prefix: /slow/ }}
              route: {{ cluster: a, timeout: 200ms }}
            - match: {{ prefix: /nowhere }}
              route: {{ cluster: missing }}
            - match: {{ prefix: / }}
              route: {{ cluster: a }}
        - name: other
          domains: ['*']
          routes:
            - match: {{ path: /old }}
              redirect: {{ path_redirect: /new }}
            - match: {{ prefix: /health }}
              direct_response: {{ status: 200, body: {{ inline_string: healthy }} }}
listeners:
  - name: main
    address: '{{listen}}'
    http_filters: [router]
clusters:
  - name: a
    endpoints: [{{ address: {a} }}]
  - name: b
    endpoints: [{{ address: {b} }}]
",
        wasm = router_wasm().display(),
        a = a.addr,
        b = b.addr,
    ));
    let client = client::http1();

    let reply = get(&client, &proxy, "api.test", "/echo/x").await;
    assert_eq!(reply.json()["origin"], "a", "{}", reply.text());

    // Prefix and host rewritten on the way to b.
    let reply = get(&client, &proxy, "api.test:8080", "/b/echo?q=1").await;
    let json = reply.json();
    assert_eq!(json["origin"], "b");
    assert_eq!(json["uri"], "/echo?q=1");
    assert_eq!(json["headers"]["host"][0], "b.internal");

    // A regex route, its rewrite moving the captured groups; the query stays.
    let reply = get(&client, &proxy, "api.test", "/svc/users/echo?q=2").await;
    let json = reply.json();
    assert_eq!(json["origin"], "b");
    assert_eq!(json["uri"], "/echo/users?q=2");

    // The route's timeout, not the cluster's (15 s by default), bounds the wait: 504.
    let started = std::time::Instant::now();
    let reply = get(&client, &proxy, "api.test", "/slow/2000").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
    assert_eq!(
        get(&client, &proxy, "api.test", "/slow/10").await.status,
        200
    );

    // A 50/50 split reaches both clusters (40 requests: all on one side has odds 2^-39).
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let reply = get(&client, &proxy, "api.test", "/split/echo").await;
        seen.insert(
            reply.json()["origin"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(seen, HashSet::from(["a".to_owned(), "b".to_owned()]));

    // Answered by the router itself, or by the core for a cluster the config lacks.
    let reply = get(&client, &proxy, "elsewhere.test", "/old").await;
    assert_eq!(reply.status, 301);
    assert_eq!(reply.headers["location"], "http://elsewhere.test/new");
    let reply = get(&client, &proxy, "elsewhere.test", "/health").await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "healthy")
    );
    assert_eq!(
        get(&client, &proxy, "elsewhere.test", "/else").await.status,
        404
    );
    let reply = get(&client, &proxy, "api.test", "/nowhere").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "cluster not found");
}

#[test]
fn a_bad_route_table_fails_the_start_with_the_reason() {
    let config = format!(
        "plugins:
  - name: router
    vm_config: {{ code: {{ local: {{ filename: {} }} }} }}
    configuration:
      virtual_hosts: [{{ name: v, domains: ['*'], routes: [{{ match: {{ prefix: / }} }}] }}]
listeners:
  - name: main
    address: 127.0.0.1:0
    http_filters: [router]
",
        router_wasm().display()
    );
    let run = crate::harness::cli_with_config("run", &config);
    assert_eq!(run.code, Some(1));
    let output = format!("{}{}", run.stdout, run.stderr);
    assert!(output.contains("router"), "{output}");
    assert!(
        output.contains(
            "virtual_hosts[v].routes[0]: needs exactly one of route, redirect, direct_response"
        ),
        "{output}"
    );
}
