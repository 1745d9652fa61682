//! Discovery with the real binary: the `static` adapter (a singleton proxy-wasm plugin)
//! publishes a cluster's endpoints through `rustng.set_endpoints`; a new configuration
//! publishes a new set, which traffic follows; a malformed set is refused with the reason
//! logged and the cluster keeps its last good set.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::client;
use crate::harness::Rustng;
use crate::origin::Origin;
use crate::stock_filters::module;

/// A cluster whose endpoints the static adapter publishes: `endpoints` is the YAML list of
/// the discovery section. One worker: every client connection meets the same upstream pools.
fn config(endpoints: &str) -> String {
    format!(
        "workers: 1
plugins:
  - name: static-sd
    vm_config: {{ code: {{ local: {{ filename: {adapter} }} }} }}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: backend
    discovery:
      plugin: static-sd
      endpoints: {endpoints}
",
        adapter = module("discovery_static").display()
    )
}

fn one(address: SocketAddr) -> String {
    format!("[{{ address: '{address}' }}]")
}

/// Which origin answers, once the answer is `expected` (within a few seconds).
async fn answered_by(proxy: &Rustng, expected: &str) -> bool {
    let client = client::http1();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let reply = client::get(&client, &proxy.url("/echo")).await;
        if reply.status == 200 && reply.json()["origin"] == expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_static_adapter_publishes_and_a_malformed_set_keeps_the_last_good_one() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let proxy = Rustng::start(&config(&one(a.addr)));
    assert!(answered_by(&proxy, "a").await, "{}", proxy.log());
    assert!(proxy.log_eventually_contains("endpoint set published"));

    // A new set that keeps a: traffic spreads to b, and a's pooled connections carry over
    // (the workers' pools go to the cluster's new version for the addresses that stay).
    let client = client::http1();
    for _ in 0..10 {
        assert_eq!(client::get(&client, &proxy.url("/echo")).await.status, 200);
    }
    let a_connections = a.connections();
    proxy.write_config(&config(&format!(
        "[{{ address: '{}' }}, {{ address: '{}' }}]",
        a.addr, b.addr
    )));
    assert!(answered_by(&proxy, "b").await, "{}", proxy.log());
    for _ in 0..10 {
        assert_eq!(client::get(&client, &proxy.url("/echo")).await.status, 200);
    }
    assert_eq!(
        a.connections(),
        a_connections,
        "a's connections were reused"
    );

    // A new configuration for the adapter: a new set, and traffic follows it. (b answered
    // already; the third published set is the sign that only b is left.)
    proxy.write_config(&config(&one(b.addr)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.log_count("endpoint set published") < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        proxy.log_count("endpoint set published"),
        3,
        "{}",
        proxy.log()
    );
    for _ in 0..10 {
        assert_eq!(
            client::get(&client, &proxy.url("/echo")).await.json()["origin"],
            "b"
        );
    }

    // A malformed set is refused, with the reason; the cluster keeps serving from b.
    proxy.write_config(&config("[{ address: 'not-an-address' }]"));
    assert!(
        proxy.log_eventually_contains("refused endpoint set"),
        "{}",
        proxy.log()
    );
    assert!(proxy.log_eventually_contains("is not ip:port"));
    for _ in 0..10 {
        let reply = client::get(&client, &proxy.url("/echo")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["origin"], "b");
    }
    assert!(a.requests() >= 1 && b.requests() >= 10);
}
