//! The `etcd` discovery adapter against a real etcd: the initial read, then changes through
//! the watch (a gRPC stream the module opens with `proxy_grpc_stream`) within a bound this
//! test asserts; a cut connection resumes the watch from the last revision seen, so changes
//! made while it was cut still arrive; an etcd restart is survived; a value that is not an
//! endpoint is left out with a warning.
//!
//! RustNg reaches etcd through a relay the test can cut (etcd itself stays up and takes
//! writes meanwhile), which is how the resume is proven: a watch restarted "from now" would
//! miss those writes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::etcd::Etcd;
use crate::harness::{Rustng, free_port};
use crate::origin::Origin;
use crate::stock_filters::module;
use crate::traffic::{converges, spread};

/// How long a change in etcd may take to reach traffic.
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

/// A TCP relay to `target` on a fixed port, which can be cut (every connection dropped, new
/// ones refused) and restored.
struct Relay {
    port: u16,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let mut relay = Relay {
            port: free_port(),
            target,
            task: None,
        };
        relay.restore().await;
        relay
    }

    async fn restore(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("relay binds");
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Dropped with the task when cut: every connection with it.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }

    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

fn config(relay: &Relay) -> String {
    format!(
        "workers: 1
plugins:
  - name: etcd-sd
    vm_config: {{ code: {{ local: {{ filename: {adapter} }} }} }}
    configuration:
      grpc_service: {{ envoy_grpc: {{ cluster_name: etcd }}, timeout: 2s }}
      retry_interval: 300ms
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: etcd
    protocol: http2
    endpoints: [{{ address: '127.0.0.1:{relay}' }}]
  - name: backend
    discovery: {{ plugin: etcd-sd, prefix: /services/backend/ }}
",
        adapter = module("discovery_etcd").display(),
        relay = relay.port,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_changes_reach_traffic_and_the_watch_resumes_after_a_cut() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let endpoint = |origin: &Origin, weight: u32| {
        format!(r#"{{"address": "{}", "weight": {weight}}}"#, origin.addr)
    };
    let mut etcd = Etcd::start();
    etcd.put("/services/backend/a", &endpoint(&a, 1));
    // Outside the prefix: not the cluster's.
    etcd.put("/services/backend-other/x", &endpoint(&b, 1));
    let mut relay = Relay::start(etcd.address().parse().expect("addr")).await;
    let proxy = Rustng::start(&config(&relay));
    let url = proxy.url("/echo");

    // The initial read.
    assert!(
        converges(&url, &["a"], PROPAGATION_BOUND).await.is_some(),
        "{}",
        proxy.log()
    );

    // Changes through the watch: a put (bare ip:port is an endpoint too), then a delete.
    etcd.put("/services/backend/b", &b.addr.to_string());
    let took = converges(&url, &["a", "b"], PROPAGATION_BOUND).await;
    assert!(
        took.is_some(),
        "put within {PROPAGATION_BOUND:?}: {}",
        proxy.log()
    );
    eprintln!("put reached traffic in {took:?}");
    etcd.delete("/services/backend/a");
    let took = converges(&url, &["b"], PROPAGATION_BOUND).await;
    assert!(
        took.is_some(),
        "delete within {PROPAGATION_BOUND:?}: {}",
        proxy.log()
    );
    eprintln!("delete reached traffic in {took:?}");

    // Cut: the watch ends, traffic stays on the last set. Writes made meanwhile, a malformed
    // value among them, arrive once the watch resumes from the revision after the last seen.
    relay.cut();
    assert!(
        proxy.log_eventually_contains("watch closed"),
        "{}",
        proxy.log()
    );
    etcd.put("/services/backend/a", &endpoint(&a, 3));
    etcd.put("/services/backend/broken", "not an endpoint");
    assert_eq!(spread(&url, 10).await.get("b"), Some(&10));
    relay.restore().await;
    let took = converges(&url, &["a", "b"], PROPAGATION_BOUND).await;
    assert!(took.is_some(), "resumed watch: {}", proxy.log());
    assert!(
        proxy.log_eventually_contains(
            "key /services/backend/broken: \\\"not an endpoint\\\" is not ip:port; left out"
        ),
        "{}",
        proxy.log()
    );
    // a has weight 3 now: about three quarters of the traffic.
    let seen = spread(&url, 200).await;
    let to_a = seen.get("a").copied().unwrap_or(0);
    assert!((130..=170).contains(&to_a), "weights 3:1: {seen:?}");

    // etcd crashes and comes back on its data: the adapter watches again and follows.
    etcd.restart();
    etcd.delete("/services/backend/b");
    assert!(
        converges(&url, &["a"], PROPAGATION_BOUND).await.is_some(),
        "after an etcd restart: {}\n{}",
        proxy.log(),
        etcd.log()
    );
}
