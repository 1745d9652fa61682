//! Upstream failures, retries and load balancing.

use std::collections::HashMap;

use crate::client::{self, get};
use crate::harness::{Rustng, free_port, simple_config};
use crate::origin::Origin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_502_and_slow_upstream_is_504() {
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proxy = Rustng::start(&simple_config(&[dead], "", ""));
    let reply = get(&client::http1(), &proxy.url("/")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.text(), "upstream connect error");

    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", "    timeout: 200ms"));
    let reply = get(&client::http1(), &proxy.url("/slow/2000")).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.text(), "upstream request timeout");
    // The proxy and the pool recover.
    assert_eq!(get(&client::http1(), &proxy.url("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_on_another_endpoint() {
    let origin = Origin::start("live").await;
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proxy = Rustng::start(&simple_config(&[dead, origin.addr], "", ""));
    let client = client::http1();
    for _ in 0..10 {
        let reply = get(&client, &proxy.url("/")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["x-origin"], "live");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_spreads_by_weight() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let config = format!(
        "workers: 1
listeners:
  - name: main
    address: {{listen}}
    default_cluster: backend
    access_log: false
clusters:
  - name: backend
    endpoints:
      - address: {}
        weight: 3
      - address: {}
",
        a.addr, b.addr
    );
    let proxy = Rustng::start(&config);
    let client = client::http1();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..40 {
        let reply = get(&client, &proxy.url("/")).await;
        let name = reply.headers["x-origin"].to_str().expect("name").to_owned();
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen["a"], 30, "{seen:?}");
    assert_eq!(seen["b"], 10, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_without_a_cluster_answers_404_and_empty_cluster_503() {
    let proxy = Rustng::start(
        "workers: 2
listeners:
  - name: main
    address: '{listen}'
",
    );
    let reply = get(&client::http1(), &proxy.url("/")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.text(), "no route");

    let proxy = Rustng::start(
        "listeners:
  - name: main
    address: '{listen}'
    default_cluster: empty
clusters:
  - name: empty
",
    );
    let reply = get(&client::http1(), &proxy.url("/")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.text(), "no healthy upstream");
}
