//! The `dns` discovery adapter against a real dnsmasq on 127.0.0.1: names resolve to
//! endpoints (A records with the configured port, SRV records with theirs and their weights),
//! a rewritten hosts file reaches traffic within a bound this test asserts, and a DNS server
//! that stops answering leaves every cluster on its last good set.
//!
//! Everything is on 127.0.0.1, so the origins differ by port: `a.test` and `b.test` both
//! resolve to 127.0.0.1 and the cluster lists them with different ports, as Envoy's
//! `STRICT_DNS` clusters list `host:port` pairs.

use std::time::Duration;

use crate::dnsmasq::Dnsmasq;
use crate::harness::{Rustng, free_port};
use crate::origin::Origin;
use crate::stock_filters::module;
use crate::traffic::{converges, spread};

/// How long a DNS change may take to reach traffic: the records live one second, the adapter
/// re-resolves no sooner than 500 ms, and dnsmasq rereads its hosts file on inotify.
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

fn config(dns: &Dnsmasq, a: &Origin, b: &Origin, srv_listener: u16) -> String {
    format!(
        "workers: 1
plugins:
  - name: dns-sd
    vm_config: {{ code: {{ local: {{ filename: {adapter} }} }} }}
    configuration:
      resolvers: ['{resolver}']
      dns_min_refresh_rate: 500ms
      dns_failure_refresh_rate: 500ms
      dns_query_timeout: 1s
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
  - name: by-srv
    address: '127.0.0.1:{srv_listener}'
    default_cluster: services
clusters:
  - name: backend
    discovery:
      plugin: dns-sd
      endpoints: [{{ address: 'a.test:{a_port}' }}, {{ address: 'b.test:{b_port}' }}]
      dns_lookup_family: V4_ONLY
  - name: services
    discovery:
      plugin: dns-sd
      srv: [_web._tcp.svc.test]
",
        adapter = module("discovery_dns").display(),
        resolver = dns.address(),
        a_port = a.addr.port(),
        b_port = b.addr.port(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_changes_reach_traffic_and_a_dead_server_keeps_the_last_good_set() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let both = [("a.test", "127.0.0.1"), ("b.test", "127.0.0.1")];
    let mut dns = Dnsmasq::start(
        &both,
        &[
            ("_web._tcp.svc.test", "a.test", a.addr.port(), 0, 1),
            ("_web._tcp.svc.test", "b.test", b.addr.port(), 0, 3),
            // A lower-preference record: never used while priority 0 has addresses.
            ("_web._tcp.svc.test", "a.test", 1, 5, 1),
        ],
    );
    let srv_port = free_port();
    let proxy = Rustng::start(&config(&dns, &a, &b, srv_port));
    let main = proxy.url("/echo");
    let by_srv = format!("http://127.0.0.1:{srv_port}/echo");

    // Both names resolve: both origins serve.
    assert!(
        converges(&main, &["a", "b"], PROPAGATION_BOUND)
            .await
            .is_some(),
        "{}",
        proxy.log()
    );

    // SRV: the target's port and weight (1:3), priority 5 unused.
    let by_weight = spread(&by_srv, 200).await;
    let share_b = by_weight.get("b").copied().unwrap_or(0);
    assert_eq!(
        by_weight.get("a").copied().unwrap_or(0) + share_b,
        200,
        "{by_weight:?}"
    );
    assert!((130..=170).contains(&share_b), "weights 1:3: {by_weight:?}");

    // b.test leaves DNS: it leaves the cluster (a name that is gone is an answer), and the SRV
    // target b.test has no address left either.
    dns.set_hosts(&both[..1]);
    let took = converges(&main, &["a"], PROPAGATION_BOUND).await;
    assert!(
        took.is_some(),
        "b.test removal within {PROPAGATION_BOUND:?}: {}",
        proxy.log()
    );
    assert!(
        converges(&by_srv, &["a"], PROPAGATION_BOUND)
            .await
            .is_some(),
        "{}",
        proxy.log()
    );
    eprintln!("removal reached traffic in {took:?}");

    // And comes back.
    dns.set_hosts(&both);
    let took = converges(&main, &["a", "b"], PROPAGATION_BOUND).await;
    assert!(
        took.is_some(),
        "b.test return within {PROPAGATION_BOUND:?}: {}",
        proxy.log()
    );
    // The SRV cluster follows on its own refresh: both must have it before the server dies,
    // or the last good set of one of them is still the old one.
    assert!(
        converges(&by_srv, &["a", "b"], PROPAGATION_BOUND)
            .await
            .is_some(),
        "{}",
        proxy.log()
    );
    eprintln!("addition reached traffic in {took:?}");

    // The DNS server dies: lookups fail, every cluster keeps its last good set, traffic goes on.
    dns.stop();
    assert!(
        proxy.log_eventually_contains("lookup failed, keeping the last good addresses"),
        "{}",
        proxy.log()
    );
    for url in [&main, &by_srv] {
        let seen = spread(url, 40).await;
        let mut names: Vec<&str> = seen.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["a", "b"], "{url}: {seen:?}");
    }
}
