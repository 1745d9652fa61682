//! Config versions on a running process: the watched file, SIGHUP, refused configs, module
//! swaps under load, and history kept in the state directory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::client::{self, HttpClient};
use crate::harness::{Rustng, free_port};
use crate::origin::Origin;
use crate::plugins::BUMP_MALLOC;
use crate::stock_filters::module;

/// A config with one listener sending everything to `cluster` (one of `a` and `b`), and
/// whatever `extra` adds at the end (more listeners, `state_dir`).
pub(crate) fn two_clusters(a: SocketAddr, b: SocketAddr, cluster: &str, extra: &str) -> String {
    format!(
        "workers: 2
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: {cluster}
clusters:
  - name: a
    endpoints: [{{ address: {a} }}]
  - name: b
    endpoints: [{{ address: {b} }}]
{extra}"
    )
}

/// Which origin answers `/echo` now.
pub(crate) async fn answering(client: &HttpClient, proxy: &Rustng) -> String {
    let reply = client::get(client, &proxy.url("/echo")).await;
    reply.json()["origin"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Polls until `origin` answers, for at most five seconds.
async fn wait_for_origin(client: &HttpClient, proxy: &Rustng, origin: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while answering(client, proxy).await != origin {
        assert!(
            Instant::now() < deadline,
            "{origin} never answered:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` until it holds, for at most five seconds; `what` names it in the failure.
async fn eventually(proxy: &Rustng, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The generation stamp a response carries (see [`stamped`]).
fn stamp_of(reply: client::Reply) -> String {
    reply
        .headers
        .get("x-generation")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_applied_and_a_broken_one_refused_with_every_error() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proxy = Rustng::start_at(&two_clusters(a.addr, b.addr, "a", ""), addr);
    let client = client::http1();
    assert_eq!(answering(&client, &proxy).await, "a");

    // The file is watched: saving it is enough.
    proxy.write_config(&two_clusters(a.addr, b.addr, "b", ""));
    wait_for_origin(&client, &proxy, "b").await;
    assert!(proxy.log_eventually_contains("config reloaded"));

    // A typo stops the parser: refused with its path.
    proxy.write_config(&format!(
        "{}listeners_typo: 1\n",
        two_clusters(a.addr, b.addr, "a", "")
    ));
    assert!(proxy.log_eventually_contains("listeners_typo"));
    // Three mistakes of meaning: every one is reported with its path, and nothing changes.
    proxy.write_config(&format!(
        "workers: 2
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: nowhere
  - name: twin
    address: '{{listen}}'
    default_cluster: a
  - name: third
    address: 127.0.0.1:1
    default_cluster: missing
clusters:
  - name: a
    endpoints: [{{ address: {} }}]
",
        a.addr
    ));
    assert!(proxy.log_eventually_contains("listeners[2].default_cluster"));
    let log = proxy.log();
    assert!(log.contains("listeners[0].default_cluster"), "{log}");
    assert!(log.contains("listeners[1].address"), "{log}");
    assert_eq!(
        answering(&client, &proxy).await,
        "b",
        "the running version stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_come_and_go_and_sighup_reloads_an_unwatched_file() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let base = two_clusters(a.addr, b.addr, "a", "");
    let proxy = Rustng::start_with_args(&base, addr, &["--no-watch"]);
    let client = client::http1();

    let second: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let with_second = base.replace(
        "clusters:",
        &format!("  - name: second\n    address: '{second}'\n    default_cluster: b\nclusters:"),
    );
    proxy.write_config(&with_second);
    // Not watched: nothing happens until SIGHUP.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(std::net::TcpStream::connect(second).is_err());
    proxy.sighup();
    eventually(&proxy, "the second listener opening", || {
        std::net::TcpStream::connect(second).is_ok()
    })
    .await;
    let reply = client::get(&client, &format!("http://{second}/echo")).await;
    assert_eq!(reply.json()["origin"], "b");
    assert_eq!(
        answering(&client, &proxy).await,
        "a",
        "the first listener kept going"
    );

    // Removed again: the port closes, the other listener is untouched.
    proxy.write_config(&base);
    proxy.sighup();
    eventually(&proxy, "the second listener closing", || {
        std::net::TcpStream::connect(second).is_err()
    })
    .await;
    assert_eq!(answering(&client, &proxy).await, "a");
    // SIGHUP with an unchanged file makes no new version.
    proxy.sighup();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(proxy.log_count("config reloaded"), 2, "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_kept_in_the_state_dir_across_a_restart() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let state = tempfile::tempdir().expect("state dir");
    let admin = free_port();
    let extra = format!(
        "state_dir: {}\nadmin: {{ address: '127.0.0.1:{admin}' }}\n",
        state.path().display()
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let proxy = Rustng::start_with_args(
        &two_clusters(a.addr, b.addr, "a", &extra),
        addr,
        &["--no-watch"],
    );
    let client = client::http1();
    proxy.write_config(&two_clusters(a.addr, b.addr, "b", &extra));
    proxy.sighup();
    wait_for_origin(&client, &proxy, "b").await;
    let metrics = client::get(&client, &format!("http://127.0.0.1:{admin}/metrics")).await;
    assert!(
        metrics.text().contains("rustng_config_version 2"),
        "{}",
        metrics.text()
    );
    proxy.terminate();

    let versions = std::fs::read_dir(state.path().join("versions"))
        .expect("versions dir")
        .count();
    assert_eq!(versions, 2);
    let second: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state.path().join("versions/0000000002.json")).expect("record"),
    )
    .expect("json");
    assert_eq!(second["origin"]["kind"], "file");
    assert!(
        second["text"]
            .as_str()
            .expect("text")
            .contains("default_cluster: b")
    );

    // A restart continues the numbering.
    let proxy = Rustng::start_with_args(
        &two_clusters(a.addr, b.addr, "a", &extra),
        addr,
        &["--no-watch"],
    );
    let metrics = client::get(&client, &format!("http://127.0.0.1:{admin}/metrics")).await;
    assert!(
        metrics.text().contains("rustng_config_version 3"),
        "{}",
        metrics.text()
    );
    drop(proxy);
}

/// A wasm custom section (id 0) named `rustng-test` holding `payload`: appended to a module, it
/// makes new bytes (a new sha256, so a new module to RustNg) with the same code.
fn custom_section(payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"rustng-test";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    let mut section = vec![0u8];
    leb(body.len(), &mut section);
    section.extend_from_slice(&body);
    section
}

/// The headers filter stamping `stamp` on the request (the origin echoes it) and on the
/// response: a response whose two stamps differ ran on two generations.
fn stamped(module: &std::path::Path, stamp: &str, origin: SocketAddr, timeout: &str) -> String {
    format!(
        "workers: 2
plugins:
  - name: stamp
    vm_config: {{ code: {{ local: {{ filename: {module} }} }} }}
    configuration:
      request_headers_to_add:
        - header: {{ key: x-generation, value: '{stamp}' }}
      response_headers_to_add:
        - header: {{ key: x-generation, value: '{stamp}' }}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [stamp]
clusters:
  - name: backend
    timeout: {timeout}
    endpoints: [{{ address: {origin} }}]
",
        module = module.display()
    )
}

/// One client's requests, all checked: 200, and both stamps the same.
async fn load_loop(
    client: HttpClient,
    url: String,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
) -> Vec<String> {
    let mut failures = Vec::new();
    // Bounded: the test stops it, and it cannot outlive a minute either way.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let request = http::Request::get(&url)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        match client.request(request).await {
            Ok(response) => {
                let status = response.status();
                let stamp = response
                    .headers()
                    .get("x-generation")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let body = http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let echoed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let upstream_stamp = echoed["headers"]["x-generation"][0]
                    .as_str()
                    .unwrap_or_default();
                if status != 200 || stamp.is_empty() || stamp != upstream_stamp {
                    failures.push(format!(
                        "{status}: response stamp {stamp:?}, request stamp {upstream_stamp:?}"
                    ));
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => failures.push(format!("request failed: {error}")),
        }
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_module_swaps_and_fifty_config_changes_under_load_fail_no_request() {
    let origin = Origin::start("o").await;
    let dir = tempfile::tempdir().expect("modules dir");
    let base = std::fs::read(module("headers")).expect("headers module");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let first = dir.path().join("stamp-0.wasm");
    std::fs::write(&first, &base).expect("module");
    let proxy = Rustng::start_with_args(
        &stamped(&first, "g0", origin.addr, "15s"),
        addr,
        &["--no-watch"],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let url = proxy.url("/echo");
    let mut loops = Vec::new();
    for client in [client::http1(), client::http1(), client::h2c()] {
        loops.push(tokio::spawn(load_loop(
            client,
            url.clone(),
            Arc::clone(&stop),
            Arc::clone(&served),
        )));
    }

    let probe = client::http1();
    let mut swap_latencies = Vec::new();
    let mut module_path = first.clone();
    for change in 1..=100 {
        let stamp = format!("g{change}");
        let timeout = if change % 2 == 0 {
            // A module swap: the same code with different bytes, so a new module.
            module_path = dir.path().join(format!("stamp-{change}.wasm"));
            let mut bytes = base.clone();
            bytes.extend(custom_section(stamp.as_bytes()));
            std::fs::write(&module_path, bytes).expect("module");
            "15s".to_owned()
        } else {
            // A config change: the plugin's configuration and a cluster setting.
            format!("{}s", 10 + change)
        };
        proxy.write_config(&stamped(&module_path, &stamp, origin.addr, &timeout));
        let started = Instant::now();
        proxy.sighup();
        loop {
            let reply = client::get(&probe, &proxy.url("/echo")).await;
            if reply
                .headers
                .get("x-generation")
                .and_then(|v| v.to_str().ok())
                == Some(&stamp)
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{stamp} never served:\n{}",
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        swap_latencies.push((change % 2 == 0, started.elapsed()));

        if change == 50 {
            // A broken module and a broken config in the middle of it all: both refused.
            let broken = dir.path().join("broken.wasm");
            std::fs::write(&broken, b"\0asm\x01\0\0\0garbage").expect("module");
            proxy.write_config(&stamped(&broken, "broken", origin.addr, "15s"));
            proxy.sighup();
            assert!(proxy.log_eventually_contains("plugin stamp: invalid wasm module"));
            proxy.write_config(
                &stamped(&module_path, "broken", origin.addr, "15s")
                    .replace("default_cluster: backend", "default_cluster: nowhere"),
            );
            proxy.sighup();
            assert!(proxy.log_eventually_contains("listeners[0].default_cluster"));
            let reply = client::get(&probe, &proxy.url("/echo")).await;
            assert_eq!(
                reply
                    .headers
                    .get("x-generation")
                    .and_then(|v| v.to_str().ok()),
                Some(stamp.as_str())
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for l in loops {
        failures.extend(l.await.expect("load loop"));
    }
    let served = served.load(Ordering::Relaxed);
    let median = |module_swap: bool| {
        let mut of_kind: Vec<Duration> = swap_latencies
            .iter()
            .filter(|(m, _)| *m == module_swap)
            .map(|(_, d)| *d)
            .collect();
        of_kind.sort();
        of_kind[of_kind.len() / 2]
    };
    // Timings of this (debug) build are for the curious; `make bench` measures the release.
    eprintln!(
        "{served} requests under 100 changes; median change-to-served: config {:?}, new module {:?}",
        median(false),
        median(true)
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(served > 200, "the load kept going ({served} requests)");
    assert!(!proxy.log().contains("plugin failed"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_rolls_back_to_a_kept_generation_and_a_config_to_a_kept_version() {
    let origin = Origin::start("o").await;
    let module = module("headers");
    let port = free_port();
    let document = |stamp: &str| rustng_core::ConfigDocument {
        text: stamped(&module, stamp, origin.addr, "15s")
            .replace("{listen}", &format!("127.0.0.1:{port}")),
        base_dir: None,
        origin: rustng_core::Origin::Api {
            principal: "test".into(),
        },
    };
    let first = document("g1");
    let config = rustng_runtime_config::from_yaml(&first.text).expect("config");
    let server = rustng_core::Server::bind_document(config, first).expect("bind");
    let controller = server.controller();
    let shutdown = server.shutdown_handle();
    let running = std::thread::spawn(move || server.run());
    let client = client::http1();
    let url = format!("http://127.0.0.1:{port}/echo");
    assert_eq!(stamp_of(client::get(&client, &url).await), "g1");

    let applied = controller.apply(document("g2")).await.expect("apply");
    assert_eq!(applied.version, 2);
    assert_eq!(stamp_of(client::get(&client, &url).await), "g2");
    let unchanged = controller.apply(document("g2")).await.expect("apply");
    assert!(!unchanged.changed);

    // The plugin goes back to generation 1 (its configuration with it), as version 3.
    let rolled = controller
        .rollback_plugin("stamp", 1)
        .await
        .expect("rollback");
    assert_eq!(rolled.version, 3);
    assert_eq!(stamp_of(client::get(&client, &url).await), "g1");
    let generations = controller.plugins().await;
    assert_eq!(generations.len(), 2);
    assert!(
        generations[0].active && !generations[1].active,
        "{generations:?}"
    );
    assert!(matches!(
        controller.rollback_plugin("stamp", 7).await,
        Err(rustng_core::ApplyError::UnknownGeneration { .. })
    ));
    assert!(matches!(
        controller.rollback_plugin("nope", 1).await,
        Err(rustng_core::ApplyError::UnknownPlugin(_))
    ));

    // The whole config back to version 2: a new version 4 running g2 again.
    let back = controller.rollback(2).await.expect("rollback");
    assert_eq!(back.version, 4);
    assert_eq!(stamp_of(client::get(&client, &url).await), "g2");
    assert!(matches!(
        controller.rollback(99).await,
        Err(rustng_core::ApplyError::UnknownVersion(99))
    ));
    let history = controller.history().await;
    assert_eq!(
        history.iter().map(|r| r.version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(history[3].origin, rustng_core::Origin::Rollback { to: 2 });

    // Refused: every error, nothing changes.
    let mut broken = document("g9");
    broken.text = broken
        .text
        .replace("default_cluster: backend", "default_cluster: nope");
    let refused = controller.apply(broken).await.expect_err("refused");
    assert_eq!(
        refused.field_errors()[0].path,
        "listeners[0].default_cluster"
    );
    assert_eq!(controller.version(), 4);
    assert_eq!(stamp_of(client::get(&client, &url).await), "g2");

    shutdown.shutdown();
    running.join().expect("server thread").expect("server");
}

/// A module whose root callbacks do what the test asks: `vm_start` and `configure` are the
/// bodies of `proxy_on_vm_start` and `proxy_on_configure` (each must leave an i32);
/// `abi: false` leaves out the ABI version export.
fn canary_module(
    dir: &std::path::Path,
    name: &str,
    abi: bool,
    vm_start: &str,
    configure: &str,
) -> std::path::PathBuf {
    let abi = if abi {
        r#"(func (export "proxy_abi_version_0_2_1"))"#
    } else {
        ""
    };
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  {malloc}
  {abi}
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) {vm_start})
  (func (export "proxy_on_configure") (param i32 i32) (result i32) {configure})
)"#,
        malloc = BUMP_MALLOC
    );
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wat::parse_str(&text).expect("wat")).expect("write module");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_that_fails_its_canary_is_refused_and_the_old_one_serves() {
    let origin = Origin::start("o").await;
    let dir = tempfile::tempdir().expect("modules dir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let good = stamped(&module("headers"), "g1", origin.addr, "15s");
    let proxy = Rustng::start_with_args(&good, addr, &["--no-watch"]);
    let client = client::http1();
    let cases = [
        (
            "no-abi",
            canary_module(
                dir.path(),
                "no-abi",
                false,
                "(i32.const 1)",
                "(i32.const 1)",
            ),
            "proxy_abi_version",
        ),
        (
            "refuses",
            canary_module(
                dir.path(),
                "refuses",
                true,
                "(i32.const 1)",
                "(i32.const 0)",
            ),
            "configur",
        ),
        (
            "traps",
            canary_module(dir.path(), "traps", true, "unreachable", "(i32.const 1)"),
            "unreachable",
        ),
        (
            "loops",
            canary_module(
                dir.path(),
                "loops",
                true,
                "(i32.const 1)",
                "(loop $l (br $l)) (i32.const 1)",
            ),
            "deadline",
        ),
    ];
    for (refused, (name, path, reason)) in cases.iter().enumerate() {
        let before = proxy.log_count("config refused");
        proxy.write_config(&stamped(path, name, origin.addr, "15s"));
        proxy.sighup();
        eventually(&proxy, &format!("refusing {name}"), || {
            proxy.log_count("config refused") > before
        })
        .await;
        assert_eq!(proxy.log_count("config refused"), refused + 1);
        let log = proxy.log().to_lowercase();
        assert!(
            log.contains(reason),
            "{name}: no {reason:?} in the reason:\n{log}"
        );
        assert_eq!(
            stamp_of(client::get(&client, &proxy.url("/echo")).await),
            "g1"
        );
    }
    assert!(!proxy.log().contains("config reloaded"), "{}", proxy.log());
}

/// The JWT filter with a remote JWKS (its per-instance cache is the state under test), a
/// backend with `timeout`, and the filter's `cache_duration`.
fn jwt_config(backend: SocketAddr, auth: SocketAddr, timeout: &str, cache: &str) -> String {
    format!(
        "workers: 1
plugins:
  - name: jwt
    vm_config: {{ code: {{ local: {{ filename: {jwt} }} }} }}
    configuration:
      providers:
        test:
          remote_jwks:
            http_uri: {{ uri: 'http://auth.test/.well-known/jwks.json', cluster: auth, timeout: 2s }}
            cache_duration: {cache}
          claim_to_headers: [{{ header_name: x-sub, claim_name: sub }}]
      rules: [{{ match: {{ prefix: / }}, requires: {{ provider_name: test }} }}]
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [jwt]
clusters:
  - name: backend
    timeout: {timeout}
    endpoints: [{{ address: {backend} }}]
  - name: auth
    endpoints: [{{ address: {auth} }}]
",
        jwt = module("jwt_authn").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrelated_change_keeps_plugin_instances_and_their_state() {
    use crate::jwt_authn::{JwksServer, claims, jwks, token};
    let origin = Origin::start("o").await;
    let auth = JwksServer::start(jwks()).await;
    let proxy = Rustng::start(&jwt_config(origin.addr, auth.addr, "15s", "300s"));
    let bearer = format!(
        "Bearer {}",
        token(jsonwebtoken::Algorithm::RS256, "rsa", claims("erin"))
    );
    let client = client::http1();
    let verified = |proxy: &Rustng| {
        let request = http::Request::get(proxy.url("/echo"))
            .header("authorization", bearer.clone())
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request");
        client::send(&client, request)
    };
    assert_eq!(verified(&proxy).await.json()["headers"]["x-sub"][0], "erin");
    assert_eq!(auth.fetches.load(Ordering::SeqCst), 1);

    // A cluster setting changes, the plugin does not: same instance, same JWKS cache.
    proxy.write_config(&jwt_config(origin.addr, auth.addr, "14s", "300s"));
    eventually(&proxy, "the cluster change", || {
        proxy.log_count("config reloaded") == 1
    })
    .await;
    for _ in 0..3 {
        assert_eq!(verified(&proxy).await.status, 200);
    }
    assert_eq!(
        auth.fetches.load(Ordering::SeqCst),
        1,
        "the kept instance still has its keys"
    );

    // The plugin's own configuration changes: a new generation starts with an empty cache.
    proxy.write_config(&jwt_config(origin.addr, auth.addr, "14s", "301s"));
    eventually(&proxy, "the plugin change", || {
        proxy.log_count("config reloaded") == 2
    })
    .await;
    assert_eq!(verified(&proxy).await.status, 200);
    assert_eq!(auth.fetches.load(Ordering::SeqCst), 2);
}

/// A plugin whose instances each fill 16 MiB of their memory in `proxy_on_vm_start`; `mark`
/// makes each module different (a new generation).
fn memory_hog(dir: &std::path::Path, mark: u32) -> std::path::PathBuf {
    let text = format!(
        r#"(module
  (memory (export "memory") 1)
  {malloc}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (memory.grow (i32.const 256)))
    (memory.fill (i32.const 65536) (i32.const {fill}) (i32.const 16777216))
    (i32.const 1))
)"#,
        malloc = BUMP_MALLOC,
        fill = mark % 250 + 1,
    );
    let path = dir.join(format!("hog-{mark}.wasm"));
    std::fs::write(&path, wat::parse_str(&text).expect("wat")).expect("write module");
    path
}

fn hog_config(module: &std::path::Path, origin: SocketAddr) -> String {
    format!(
        "workers: 2
plugins:
  - name: hog
    vm_config: {{ code: {{ local: {{ filename: {module} }} }} }}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [hog]
clusters:
  - name: backend
    endpoints: [{{ address: {origin} }}]
",
        module = module.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_generations_give_their_memory_back() {
    let origin = Origin::start("o").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy = Rustng::start(&hog_config(&memory_hog(dir.path(), 0), origin.addr));
    let client = client::http1();
    assert_eq!(client::get(&client, &proxy.url("/echo")).await.status, 200);
    let before = proxy.rss_kib();
    // Twenty generations, each holding 2 × 16 MiB on the workers (and 16 MiB in its canary):
    // kept, they would add about a gigabyte.
    for mark in 1..=20 {
        proxy.write_config(&hog_config(&memory_hog(dir.path(), mark), origin.addr));
        eventually(&proxy, "the new generation", || {
            proxy.log_count("config reloaded") == mark as usize
        })
        .await;
        assert_eq!(client::get(&client, &proxy.url("/echo")).await.status, 200);
    }
    let after = proxy.rss_kib();
    assert!(
        after < before + 160 * 1024,
        "RSS went from {before} KiB to {after} KiB over 20 generations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_start_the_new_generation_gets_the_old_one_back() {
    let origin = Origin::start("o").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = module("headers");
    let proxy = Rustng::start(&stamped(&module, "old", origin.addr, "15s"));
    let client = client::http1();
    assert_eq!(
        stamp_of(client::get(&client, &proxy.url("/echo")).await),
        "old"
    );
    // The first instance of this module (the canary) starts; every later one (the workers')
    // finds the mark the canary left in shared data and refuses to start.
    let once = dir.path().join("once.wasm");
    let text = format!(
        r#"(module
  (import "env" "proxy_get_shared_data" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "started-once")
  {malloc}
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (if (result i32)
      (i32.eqz (call $get (i32.const 16) (i32.const 12) (i32.const 64) (i32.const 68) (i32.const 72)))
      (then (i32.const 0))
      (else
        (drop (call $set (i32.const 16) (i32.const 12) (i32.const 16) (i32.const 1) (i32.const 0)))
        (i32.const 1))))
)"#,
        malloc = BUMP_MALLOC
    );
    std::fs::write(&once, wat::parse_str(&text).expect("wat")).expect("write module");
    proxy.write_config(&stamped(&once, "new", origin.addr, "15s"));
    eventually(&proxy, "the restore", || {
        proxy.log_count("restoring the previous version") == 1
    })
    .await;
    for _ in 0..10 {
        assert_eq!(
            stamp_of(client::get(&client, &proxy.url("/echo")).await),
            "old"
        );
    }
    // And the process takes the next good version as usual.
    proxy.write_config(&stamped(&module, "next", origin.addr, "15s"));
    eventually(&proxy, "the next version", || {
        proxy.log_count("config reloaded") == 1
    })
    .await;
    assert_eq!(
        stamp_of(client::get(&client, &proxy.url("/echo")).await),
        "next"
    );
}
