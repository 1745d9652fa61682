//! The `consul` discovery adapter against a fake Consul agent (`consul_fake.rs`: Consul
//! cannot run here; the fake speaks its HTTP API and runs blocking queries as Consul does).
//! The adapter follows a service with blocking queries (an idle service costs no polling),
//! asks for passing instances only, follows changes within a bound this test asserts, resets
//! an index that went backwards, and keeps its last set while Consul fails.

use std::time::{Duration, Instant};

use crate::consul_fake::{FakeConsul, Instance};
use crate::harness::Rustng;
use crate::origin::Origin;
use crate::stock_filters::module;
use crate::traffic::{converges, spread};

const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

fn config(consul: &FakeConsul) -> String {
    format!(
        "workers: 1
plugins:
  - name: consul-sd
    vm_config: {{ code: {{ local: {{ filename: {adapter} }} }} }}
    configuration: {{ cluster: consul, token: test-token, wait: 3s, retry_interval: 200ms }}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: consul
    endpoints: [{{ address: '{consul}' }}]
  - name: backend
    discovery: {{ plugin: consul-sd, service: web }}
",
        adapter = module("discovery_consul").display(),
        consul = consul.addr,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul_blocking_queries_follow_the_service_and_failures_keep_the_last_set() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let instance = |id, origin: &Origin, passing| Instance {
        id,
        address: origin.addr,
        weight: 1,
        passing,
    };
    let consul = FakeConsul::start().await;
    consul.set_service(
        "web",
        vec![instance("web-a", &a, true), instance("web-b", &b, true)],
    );
    let proxy = Rustng::start(&config(&consul));
    let url = proxy.url("/echo");
    assert!(
        converges(&url, &["a", "b"], PROPAGATION_BOUND)
            .await
            .is_some(),
        "{}",
        proxy.log()
    );

    // Idle: one blocking query waits at Consul; nothing polls.
    let before = consul.queries().await.len();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = consul.queries().await.len() - before;
    assert!(idle <= 1, "{idle} queries in 1.5 s while nothing changed");
    let last = consul.queries().await.last().cloned().unwrap_or_default();
    assert!(
        last.starts_with("/v1/health/service/web?passing&index=")
            && last.contains(&format!("index={}&", consul.index()))
            && last.ends_with("&wait=3000ms"),
        "{last}"
    );

    // b's check goes critical: Consul's `passing` filter drops it, at once.
    consul.set_service(
        "web",
        vec![instance("web-a", &a, true), instance("web-b", &b, false)],
    );
    let took = converges(&url, &["a"], PROPAGATION_BOUND).await;
    assert!(
        took.is_some(),
        "critical within {PROPAGATION_BOUND:?}: {}",
        proxy.log()
    );
    eprintln!("a critical check reached traffic in {took:?}");

    // Consul restored from an older snapshot: its index goes back (below the adapter's, even
    // after the change below). A query already waiting, or one that arrives with the old
    // index, blocks until `wait` (3 s) runs out, as in Consul; the answer's lower index makes
    // the adapter reset to 0 and it follows.
    let before_reset = consul.queries().await.len();
    consul.reset_index(1);
    consul.set_service(
        "web",
        vec![instance("web-a", &a, true), instance("web-b", &b, true)],
    );
    let took = converges(
        &url,
        &["a", "b"],
        PROPAGATION_BOUND + Duration::from_secs(4),
    )
    .await;
    assert!(
        took.is_some(),
        "after an index reset: {:?} {}",
        consul.queries().await,
        proxy.log()
    );
    eprintln!("a change after an index reset reached traffic in {took:?}");
    // The query after the answer with the lower index (on the adapter's next tick).
    let deadline = Instant::now() + Duration::from_secs(2);
    let reset = loop {
        let reset = consul.queries().await[before_reset..]
            .iter()
            .any(|q| q.contains("index=0&"));
        if reset || Instant::now() > deadline {
            break reset;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        reset,
        "the index was reset to 0: {:?}",
        consul.queries().await
    );

    // Consul fails: the last set stays, and the adapter says so.
    consul.set_failing(true);
    assert!(
        proxy.log_eventually_contains("query failed, keeping the last set: Consul answered 500"),
        "{}",
        proxy.log()
    );
    let seen = spread(&url, 20).await;
    assert!(
        seen.contains_key("a") && seen.contains_key("b") && seen.len() == 2,
        "{seen:?}"
    );
    consul.set_failing(false);
    consul.set_service("web", vec![instance("web-b", &b, true)]);
    assert!(
        converges(&url, &["b"], PROPAGATION_BOUND).await.is_some(),
        "{}",
        proxy.log()
    );
}
