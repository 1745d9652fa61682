//! The `kubernetes` discovery adapter against a fake API server (`kube_fake.rs`: Kubernetes
//! cannot run here; the fake speaks the API server's HTTPS wire protocol for EndpointSlices,
//! list and watch, with resource versions, bookmarks-free streaming and `410 Expired`).
//! RustNg reaches it over TLS (the cluster's `trusted_ca`, SNI), authenticates with the token
//! file it re-reads for every request, lists then watches the Service's slices, follows
//! changes and readiness within a bound this test asserts, survives a token rotation, lists
//! again after a compaction, and keeps its last set while the API server refuses it.

use std::time::Duration;

use crate::harness::Rustng;
use crate::kube_fake::FakeKubeApi;
use crate::origin::Origin;
use crate::stock_filters::module;
use crate::tls::make_cert;
use crate::traffic::{converges, spread};

/// Watch windows are one second: a change shows within about that, plus a request.
const PROPAGATION_BOUND: Duration = Duration::from_secs(5);

fn config(api: &FakeKubeApi, certs: &std::path::Path) -> String {
    format!(
        "workers: 1
plugins:
  - name: k8s-sd
    vm_config: {{ code: {{ local: {{ filename: {adapter} }} }} }}
    configuration:
      cluster: kube-api
      token_file: '{token}'
      watch_window: 1s
      retry_interval: 200ms
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: kube-api
    endpoints: [{{ address: '{api}' }}]
    tls: {{ sni: kubernetes.test, trusted_ca: '{ca}' }}
  - name: backend
    discovery: {{ plugin: k8s-sd, namespace: shop, service: web, port: http }}
",
        adapter = module("discovery_kubernetes").display(),
        token = certs.join("token").display(),
        api = api.addr,
        ca = certs.join("kube.crt").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_are_listed_watched_and_followed() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let certs = tempfile::tempdir().expect("tempdir");
    make_cert(certs.path(), "kube", &["kubernetes.test"]);
    std::fs::write(certs.path().join("token"), "token-1\n").expect("token");
    let api = FakeKubeApi::start(certs.path(), "kube", "token-1").await;
    // Slices of Service web in namespace shop (each origin has its own port), and one of
    // another Service, which is not ours.
    let ip = "127.0.0.1";
    api.put_slice("shop", "web", "web-a", a.addr.port(), &[(ip, true)]);
    api.put_slice("shop", "other", "other-b", b.addr.port(), &[(ip, true)]);

    let proxy = Rustng::start(&config(&api, certs.path()));
    let url = proxy.url("/echo");
    assert!(
        converges(&url, &["a"], PROPAGATION_BOUND).await.is_some(),
        "{}",
        proxy.log()
    );

    // Changes through the watch.
    api.put_slice("shop", "web", "web-b", b.addr.port(), &[(ip, true)]);
    let took = converges(&url, &["a", "b"], PROPAGATION_BOUND).await;
    assert!(
        took.is_some(),
        "a new slice within {PROPAGATION_BOUND:?}: {}",
        proxy.log()
    );
    eprintln!("a new slice reached traffic in {took:?}");
    api.put_slice("shop", "web", "web-a", a.addr.port(), &[(ip, false)]);
    let took = converges(&url, &["b"], PROPAGATION_BOUND).await;
    assert!(
        took.is_some(),
        "not ready within {PROPAGATION_BOUND:?}: {}",
        proxy.log()
    );
    eprintln!("a not-ready endpoint left traffic in {took:?}");

    // The kubelet rotates the token: the file changes, the server takes only the new one.
    std::fs::write(certs.path().join("token"), "token-2\n").expect("token");
    api.set_token("token-2");
    api.put_slice("shop", "web", "web-a", a.addr.port(), &[(ip, true)]);
    assert!(
        converges(&url, &["a", "b"], PROPAGATION_BOUND)
            .await
            .is_some(),
        "after a token rotation: {}",
        proxy.log()
    );

    // History compacted: the next watch is told 410 Expired and the adapter lists again.
    let before = api.requests().await.len();
    api.compact();
    api.delete_slice("shop", "web-b");
    assert!(
        converges(&url, &["a"], PROPAGATION_BOUND).await.is_some(),
        "after a compaction: {}",
        proxy.log()
    );
    let after: Vec<String> = api.requests().await[before..].to_vec();
    assert!(
        after
            .iter()
            .any(|r| r.starts_with("authorized ") && !r.contains("watch=1")),
        "listed again: {after:?}"
    );
    assert!(
        proxy.log_eventually_contains("listing again"),
        "{}",
        proxy.log()
    );

    // The API server refuses the token: the last set stays, and the adapter says why.
    api.set_token("someone-else");
    assert!(
        proxy.log_eventually_contains("API server answered 401: Unauthorized"),
        "{}",
        proxy.log()
    );
    assert_eq!(spread(&url, 10).await.get("a"), Some(&10));
    let requests = api.requests().await;
    assert!(
        requests.iter().all(|r| !r.contains("other")),
        "only Service web is asked for: {requests:?}"
    );
}
