//! TLS to upstreams (`clusters[].tls`): RustNg verifies the origin's certificate against the
//! configured CA and the SNI name, negotiates the cluster's protocol by ALPN, and keeps the
//! TLS connections pooled (a TLS 1.3 session ticket arriving on an idle connection does not
//! make it look closed). A certificate the CA did not sign, or one for another name, is a
//! 502 (the connection failed) with the handshake error logged.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::client;
use crate::harness::Rustng;
use crate::tls::make_cert;

/// An HTTPS origin with the certificate `name` in `dir`; answers with the ALPN protocol it
/// negotiated, and counts connections.
struct TlsOrigin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsOrigin {
    async fn start(dir: &std::path::Path, name: &str) -> TlsOrigin {
        let acceptor = crate::tls::acceptor(dir, name);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let alpn = tls
                        .get_ref()
                        .1
                        .alpn_protocol()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .unwrap_or_default();
                    let service = hyper::service::service_fn(move |_req: Request<_>| {
                        let body = serde_json::json!({ "origin": "tls", "alpn": alpn }).to_string();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsOrigin {
            addr,
            connections,
            task,
        }
    }
}

fn config(origin: &TlsOrigin, protocol: &str, sni: &str, ca: &std::path::Path) -> String {
    format!(
        "workers: 1
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: secure
clusters:
  - name: secure
    protocol: {protocol}
    endpoints: [{{ address: '{origin}' }}]
    tls: {{ sni: {sni}, trusted_ca: '{ca}' }}
",
        origin = origin.addr,
        ca = ca.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_verifies_negotiates_and_pools() {
    let certs = tempfile::tempdir().expect("tempdir");
    make_cert(certs.path(), "origin", &["origin.test"]);
    make_cert(certs.path(), "stranger", &["origin.test"]);
    let ca = certs.path().join("origin.crt");

    for (protocol, alpn) in [("http1", "http/1.1"), ("http2", "h2")] {
        let origin = TlsOrigin::start(certs.path(), "origin").await;
        let proxy = Rustng::start(&config(&origin, protocol, "origin.test", &ca));
        let client = client::http1();
        for i in 0..20 {
            let reply = client::get(&client, &proxy.url("/")).await;
            assert_eq!(reply.status, 200, "{protocol} request {i}: {}", proxy.log());
            assert_eq!(reply.json()["alpn"], alpn);
            // Let a session ticket or two land on the idle pooled connection.
            if i % 5 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        assert_eq!(
            origin.connections.load(Ordering::SeqCst),
            1,
            "{protocol}: one pooled TLS connection served every request"
        );
    }

    // A certificate the trusted CA did not sign, and a name the certificate does not hold.
    let stranger = TlsOrigin::start(certs.path(), "stranger").await;
    let proxy = Rustng::start(&config(&stranger, "http1", "origin.test", &ca));
    let reply = client::get(&client::http1(), &proxy.url("/")).await;
    assert_eq!(reply.status, 502);
    assert!(
        proxy.log_eventually_contains("TLS handshake"),
        "{}",
        proxy.log()
    );
    let origin = TlsOrigin::start(certs.path(), "origin").await;
    let proxy = Rustng::start(&config(&origin, "http1", "other.test", &ca));
    assert_eq!(
        client::get(&client::http1(), &proxy.url("/")).await.status,
        502
    );
    assert!(
        proxy.log_eventually_contains("certificate not valid for name"),
        "{}",
        proxy.log()
    );
}
