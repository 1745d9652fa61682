//! Health and balancing with the real binary: an endpoint killed under load leaves rotation
//! by its failing active health check (and no request fails after that), and comes back when
//! it answers again; outlier detection ejects an endpoint that answers 5xx in a row; least
//! request favours a fast endpoint over a slow one; a circuit breaker opens (503 with
//! `x-envoy-overloaded`) and closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::client;
use crate::harness::{Rustng, free_port};

/// A small HTTP/1.1 upstream whose every answer is `status` with its name as the body, after
/// `delay`; `kill` closes its socket and every connection at once, as a crashed process would.
struct Backend {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    tasks: Option<JoinSet<()>>,
}

impl Backend {
    async fn start(name: &'static str, status: u16, delay: Duration) -> Backend {
        Backend::start_at("127.0.0.1:0".parse().expect("addr"), name, status, delay).await
    }

    async fn start_at(
        addr: SocketAddr,
        name: &'static str,
        status: u16,
        delay: Duration,
    ) -> Backend {
        let listener = TcpListener::bind(addr).await.expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let counted = Arc::clone(&counted);
                connections.spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // One request head at a time (the tests send no bodies).
                        let end = loop {
                            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        };
                        buffer.drain(..end);
                        counted.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n\r\n{name}",
                            name.len()
                        );
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Backend {
            addr,
            requests,
            tasks: Some(tasks),
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Closes the listening socket and every connection.
    fn kill(&mut self) {
        // Dropping the set aborts the accept loop, which drops the connections' set.
        self.tasks = None;
    }
}

/// `endpoints` as the YAML list items of a cluster.
fn endpoint_list(endpoints: &[SocketAddr]) -> String {
    endpoints
        .iter()
        .map(|e| format!("      - address: {e}\n"))
        .collect()
}

fn config(cluster: &str, endpoints: &[SocketAddr], admin_port: u16) -> String {
    let endpoints = endpoint_list(endpoints);
    format!(
        "workers: 2
log: {{ level: info }}
admin: {{ address: 127.0.0.1:{admin_port} }}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: backend
{cluster}    endpoints:
{endpoints}"
    )
}

/// The `rustng_upstream_endpoint_healthy` line of `endpoint`, from `/metrics`.
async fn health_line(admin_port: u16, endpoint: SocketAddr) -> String {
    let client = client::http1();
    let metrics = client::get(&client, &format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .text();
    metrics
        .lines()
        .find(|l| {
            l.starts_with("rustng_upstream_endpoint_healthy{")
                && l.contains(&format!("endpoint=\"{endpoint}\""))
        })
        .unwrap_or_default()
        .to_owned()
}

async fn wait_health(
    admin_port: u16,
    endpoint: SocketAddr,
    reason: &str,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if health_line(admin_port, endpoint)
            .await
            .contains(&format!("reason=\"{reason}\""))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_leaves_rotation_by_its_health_check_and_comes_back() {
    let a = Backend::start("a", 200, Duration::ZERO).await;
    let mut b = Backend::start("b", 200, Duration::ZERO).await;
    let b_addr = b.addr;
    let admin_port = free_port();
    let check = "    health_checks:
      - timeout: 250ms
        interval: 100ms
        interval_jitter: 20ms
        unhealthy_threshold: 2
        healthy_threshold: 2
        http_health_check: { path: /healthz }
";
    let proxy = Rustng::start(&config(check, &[a.addr, b.addr], admin_port));
    assert!(wait_health(admin_port, b_addr, "healthy", Duration::from_secs(5)).await);

    // Load, recording when each request ended and how.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(tokio::sync::Mutex::new(Vec::<(Instant, String)>::new()));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, outcomes, url) = (Arc::clone(&stop), Arc::clone(&outcomes), proxy.url("/"));
        loops.push(tokio::spawn(async move {
            let client = client::http1();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let request = http::Request::get(&url)
                    .body(http_body_util::Full::default())
                    .expect("request");
                let outcome = match client.request(request).await {
                    Ok(response) if response.status() == 200 => "ok".to_owned(),
                    Ok(response) => format!("status {}", response.status()),
                    Err(error) => format!("error {error}"),
                };
                outcomes.lock().await.push((Instant::now(), outcome));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kill = b.requests();
    assert!(before_kill > 0, "b took traffic");
    b.kill();
    assert!(
        wait_health(admin_port, b_addr, "failed_check", Duration::from_secs(5)).await,
        "{}",
        health_line(admin_port, b_addr).await
    );
    let ejected_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Back: the same address answers again, passes two checks, and takes traffic.
    let b = Backend::start_at(b_addr, "b", 200, Duration::ZERO).await;
    assert!(wait_health(admin_port, b_addr, "healthy", Duration::from_secs(5)).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    for handle in loops {
        handle.await.expect("load loop");
    }
    assert!(b.requests() > 0, "b is back in rotation");
    let outcomes = outcomes.lock().await;
    let after: Vec<&String> = outcomes
        .iter()
        .filter(|(at, _)| *at >= ejected_at)
        .map(|(_, outcome)| outcome)
        .collect();
    assert!(
        after.len() > 100,
        "{} requests after the ejection",
        after.len()
    );
    let failed: Vec<&&String> = after.iter().filter(|o| o.as_str() != "ok").collect();
    assert!(failed.is_empty(), "failed after the ejection: {failed:?}");
    assert!(proxy.log_eventually_contains("health check fails: endpoint out of rotation"));
    assert!(proxy.log_eventually_contains("health check passes: endpoint back in rotation"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_an_endpoint_that_fails_in_a_row() {
    let good = Backend::start("good", 200, Duration::ZERO).await;
    let bad = Backend::start("bad", 503, Duration::ZERO).await;
    let admin_port = free_port();
    let outlier = "    outlier_detection:
      consecutive_5xx: 3
      base_ejection_time: 30s
      max_ejection_percent: 50
";
    let proxy = Rustng::start(&config(outlier, &[good.addr, bad.addr], admin_port));
    let client = client::http1();
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(client::get(&client, &proxy.url("/")).await.status.as_u16());
    }
    // Two workers each see the bad endpoint; three 503s in a row eject it for everyone.
    let failures = statuses.iter().filter(|s| **s == 503).count();
    assert!((3..=6).contains(&failures), "{statuses:?}");
    assert!(
        statuses[statuses.len() - 20..].iter().all(|s| *s == 200),
        "{statuses:?}"
    );
    assert!(
        health_line(admin_port, bad.addr)
            .await
            .contains("reason=\"ejected\"")
    );
    assert!(proxy.log_eventually_contains("endpoint ejected (outlier detection)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_favours_the_fast_endpoint() {
    let fast = Backend::start("fast", 200, Duration::ZERO).await;
    let slow = Backend::start("slow", 200, Duration::from_millis(100)).await;
    let proxy = Rustng::start(
        &config(
            "    lb_policy: LEAST_REQUEST\n",
            &[fast.addr, slow.addr],
            free_port(),
        )
        .replace("workers: 2", "workers: 1"),
    );
    let mut loops = JoinSet::new();
    for _ in 0..8 {
        let url = proxy.url("/");
        loops.spawn(async move {
            let client = client::http1();
            let deadline = Instant::now() + Duration::from_millis(1500);
            while Instant::now() < deadline {
                assert_eq!(client::get(&client, &url).await.status, 200);
            }
        });
    }
    while let Some(done) = loops.join_next().await {
        done.expect("loop");
    }
    let (f, s) = (fast.requests(), slow.requests());
    // Round robin would split them by time waited; least request keeps the slow one at
    // about one request in flight.
    assert!(f > 10 * s, "fast {f}, slow {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_opens_and_closes() {
    let slow = Backend::start("slow", 200, Duration::from_millis(400)).await;
    let admin_port = free_port();
    let breaker = "    circuit_breakers:
      thresholds:
        - max_requests: 2
";
    let proxy = Rustng::start(
        &config(breaker, &[slow.addr], admin_port).replace("workers: 2", "workers: 1"),
    );
    let mut requests = JoinSet::new();
    for _ in 0..6 {
        let url = proxy.url("/");
        requests.spawn(async move {
            let client = client::http1();
            let reply = client::get(&client, &url).await;
            (
                reply.status.as_u16(),
                reply.headers.get("x-envoy-overloaded").cloned(),
                reply.text(),
            )
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = requests.join_next().await {
        answers.push(answer.expect("request"));
    }
    let served = answers.iter().filter(|(s, _, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert_eq!(served, 2, "{answers:?}");
    assert_eq!(refused.len(), 4, "{answers:?}");
    assert!(
        refused.iter().all(
            |(_, header, body)| header.as_ref().is_some_and(|h| h == "true")
                && body == "upstream overflow"
        ),
        "{refused:?}"
    );
    // Closed again once the two in flight are done.
    let client = client::http1();
    assert_eq!(client::get(&client, &proxy.url("/")).await.status, 200);
    let metrics = client::get(&client, &format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .text();
    assert!(
        metrics.contains(
            "rustng_upstream_circuit_breaker_overflows_total{cluster=\"backend\",resource=\"requests\"} 4"
        ),
        "{metrics}"
    );
}

/// The router with a header hash policy in front of a `RING_HASH` (or `MAGLEV`) cluster.
fn hashed_config(policy: &str, endpoints: &[SocketAddr]) -> String {
    let endpoints = endpoint_list(endpoints);
    format!(
        "workers: 2
plugins:
  - name: router
    vm_config: {{ code: {{ local: {{ filename: {router} }} }} }}
    configuration:
      virtual_hosts:
        - domains: ['*']
          routes:
            - match: {{ prefix: / }}
              route:
                cluster: backend
                hash_policy:
                  - header: {{ header_name: x-user }}
listeners:
  - name: main
    address: '{{listen}}'
    http_filters: [router]
clusters:
  - name: backend
    lb_policy: {policy}
    endpoints:
{endpoints}",
        router = crate::stock_filters::module("router").display()
    )
}

/// Which backend answers each of `users` (by its name in the body).
async fn placement(proxy: &Rustng, users: usize) -> Vec<String> {
    let client = client::http1();
    let mut names = Vec::with_capacity(users);
    for user in 0..users {
        let request = http::Request::get(proxy.url("/"))
            .header("x-user", format!("user-{user}"))
            .body(http_body_util::Full::default())
            .expect("request");
        let reply = client::send(&client, request).await;
        assert_eq!(reply.status, 200);
        names.push(reply.text());
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_keys_and_moves_about_one_nth_for_a_new_endpoint() {
    for policy in ["RING_HASH", "MAGLEV"] {
        let names = ["a", "b", "c", "d", "e"];
        let mut backends = Vec::new();
        for name in names {
            backends.push(Backend::start(name, 200, Duration::ZERO).await);
        }
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let proxy = Rustng::start(&hashed_config(policy, &addrs[..4]));
        let users = 400;
        let first = placement(&proxy, users).await;
        // Every worker, every time: the same endpoint for the same key.
        assert_eq!(placement(&proxy, users).await, first, "{policy}");
        for name in &names[..4] {
            let share = first.iter().filter(|n| n == name).count();
            assert!(
                share > users / 10,
                "{policy}: {name} got {share} of {users}"
            );
        }

        // A fifth endpoint: about a fifth of the keys move, to it.
        proxy.write_config(&hashed_config(policy, &addrs));
        let deadline = Instant::now() + Duration::from_secs(10);
        while backends[4].requests() == 0 && Instant::now() < deadline {
            let _ = placement(&proxy, 20).await;
        }
        let after = placement(&proxy, users).await;
        let to_new = after.iter().filter(|n| *n == "e").count();
        let elsewhere = first
            .iter()
            .zip(&after)
            .filter(|(before, now)| before != now && *now != "e")
            .count();
        assert!(
            (users / 10..users * 3 / 10).contains(&to_new),
            "{policy}: {to_new} moved to e"
        );
        let allowed = if policy == "RING_HASH" { 0 } else { users / 20 };
        assert!(
            elsewhere <= allowed,
            "{policy}: {elsewhere} moved between the old endpoints"
        );
    }
}
