//! Per-route retries: the router module's `retry_policy` (Envoy's fields) becomes
//! `rustng.route.retry_*` properties, and the core retries on them. The upstream here is a
//! scripted raw TCP server: each request it reads gets the next scripted behaviour.

use std::net::SocketAddr;
use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, Reply, send};
use crate::harness::Rustng;
use crate::stock_filters::module;

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Answer with this status; the body is the request body it read.
    Status(u16),
    /// Close the connection without an answer.
    Reset,
    /// Answer 200 after this long.
    Slow(Duration),
}

/// An upstream that plays `script` in order, one behaviour per request (the last one repeats).
struct Scripted {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: &[Behaviour]) -> Scripted {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        let script: Arc<Vec<Behaviour>> = Arc::new(script.to_vec());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                let script = Arc::clone(&script);
                tokio::spawn(async move {
                    while let Some(body) = read_request(&mut stream).await {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let behaviour = script[n.min(script.len() - 1)];
                        let status = match behaviour {
                            Behaviour::Reset => return,
                            Behaviour::Slow(wait) => {
                                tokio::time::sleep(wait).await;
                                200
                            }
                            Behaviour::Status(status) => status,
                        };
                        let head = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nx-attempt: {}\r\n\r\n",
                            body.len(),
                            n + 1
                        );
                        if stream.write_all(head.as_bytes()).await.is_err()
                            || stream.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Scripted {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads one request (head and a content-length body); its body, or `None` at EOF.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(body)
}

/// RustNg with the router: `/retry` has `retry_policy` (YAML flow mapping), `/once` none.
fn start_proxy(retry_policy: &str, upstream: &Scripted) -> Rustng {
    Rustng::start(&format!(
        "workers: 1
plugins:
  - name: router
    vm_config: {{ code: {{ local: {{ filename: {router} }} }} }}
    configuration:
      virtual_hosts:
        - name: all
          domains: ['*']
          routes:
            - match: {{ prefix: /retry }}
              route: {{ cluster: flaky, timeout: 5s, retry_policy: {retry_policy} }}
            - match: {{ prefix: /once }}
              route: {{ cluster: flaky }}
listeners:
  - name: main
    address: '{{listen}}'
    http: {{ buffer_limit_bytes: 16384 }}
    http_filters: [router]
clusters:
  - name: flaky
    endpoints: [{{ address: '{upstream}' }}]
",
        router = module("router").display(),
        upstream = upstream.addr,
    ))
}

async fn post(proxy: &Rustng, path: &str, body: impl Into<Bytes>) -> Reply {
    send(
        &client::http1(),
        Request::post(proxy.url(path))
            .body(Full::new(body.into()))
            .expect("request"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_retried_with_the_body_replayed() {
    use Behaviour::*;
    let upstream = Scripted::start(&[Status(503), Reset, Status(200)]).await;
    let proxy = start_proxy(
        "{ retry_on: '5xx', num_retries: 2, retry_back_off: { base_interval: 5ms } }",
        &upstream,
    );
    let reply = post(&proxy, "/retry", "hello").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "hello",
        "the third attempt got the whole body"
    );
    assert_eq!(reply.headers["x-attempt"], "3");
    assert_eq!(upstream.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_num_retries_and_at_conditions_that_do_not_match() {
    use Behaviour::*;
    // gateway-error: 503 is retried once, then the second 503 is the answer.
    let upstream = Scripted::start(&[Status(503)]).await;
    let proxy = start_proxy("{ retry_on: gateway-error, num_retries: 1 }", &upstream);
    assert_eq!(post(&proxy, "/retry", "x").await.status, 503);
    assert_eq!(upstream.requests(), 2);
    // A 500 is not a gateway error: one attempt.
    drop(proxy);
    let upstream = Scripted::start(&[Status(500), Status(200)]).await;
    let proxy = start_proxy("{ retry_on: gateway-error, num_retries: 3 }", &upstream);
    assert_eq!(post(&proxy, "/retry", "x").await.status, 500);
    assert_eq!(upstream.requests(), 1);
    // A route without a policy never retries.
    assert_eq!(post(&proxy, "/once", "x").await.status, 200);
    drop(proxy);
    let upstream = Scripted::start(&[Status(503), Status(200)]).await;
    let proxy = start_proxy("{ retry_on: reset }", &upstream);
    assert_eq!(post(&proxy, "/once", "x").await.status, 503);
    // retriable-status-codes names its own codes.
    drop(proxy);
    let upstream = Scripted::start(&[Status(429), Status(200)]).await;
    let proxy = start_proxy(
        "{ retry_on: retriable-status-codes, retriable_status_codes: [429] }",
        &upstream,
    );
    assert_eq!(post(&proxy, "/retry", "x").await.status, 200);
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_attempt_is_cut_by_per_try_timeout_and_retried() {
    use Behaviour::*;
    let upstream = Scripted::start(&[Slow(Duration::from_secs(3)), Status(200)]).await;
    let proxy = start_proxy("{ retry_on: 5xx, per_try_timeout: 200ms }", &upstream);
    let started = Instant::now();
    let reply = post(&proxy, "/retry", "x").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_larger_than_the_buffer_limit_is_sent_once_whole() {
    use Behaviour::*;
    let upstream = Scripted::start(&[Status(503), Status(200)]).await;
    let proxy = start_proxy("{ retry_on: 5xx, num_retries: 2 }", &upstream);
    let body = vec![b'z'; 100_000];
    let reply = post(&proxy, "/retry", body.clone()).await;
    // Too large to hold for a retry: the first answer stands, and the body arrived whole.
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body.len(), body.len());
    assert_eq!(upstream.requests(), 1);
}

/// The routing helpers of sdk/go and sdk/assemblyscript, used by the Go and AssemblyScript
/// conformance filters on `/route/<cluster>/...`: they name the cluster and two retries on 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_and_assemblyscript_filters_route_and_retry_through_the_sdk_helpers() {
    use crate::conformance::{ASSEMBLYSCRIPT_SDK, GO_SDK, conformance_wasm};
    use Behaviour::*;
    for sdk in [GO_SDK, ASSEMBLYSCRIPT_SDK] {
        let upstream = Scripted::start(&[Status(503), Status(200)]).await;
        let proxy = Rustng::start(&format!(
            "workers: 1
plugins:
  - name: sdk
    vm_config: {{ code: {{ local: {{ filename: {module} }} }} }}
listeners:
  - name: main
    address: '{{listen}}'
    http_filters: [sdk]
clusters:
  - name: flaky
    endpoints: [{{ address: '{upstream}' }}]
",
            module = conformance_wasm(sdk).display(),
            upstream = upstream.addr,
        ));
        // No default cluster: only the helper's property routes the request.
        let reply = post(&proxy, "/route/flaky/x", "body").await;
        assert_eq!(reply.status, 200, "{sdk}: {}", reply.text());
        assert_eq!(reply.text(), "body", "{sdk}");
        assert_eq!(upstream.requests(), 2, "{sdk}: one retry after the 503");
        assert_eq!(
            post(&proxy, "/route/nowhere/x", "").await.status,
            503,
            "{sdk}"
        );
    }
}
