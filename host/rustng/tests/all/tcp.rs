//! TCP listeners: connections proxied byte for byte to the cluster, through proxy-wasm
//! network filters, compared with Envoy (`envoy.filters.network.wasm` + `tcp_proxy`) running
//! the same module (wasm-tests/rust/tcp-conformance) in front of the same echo server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::envoy::{Envoy, EnvoyPlugin};
use crate::harness::Rustng;

fn tcp_filter() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../wasm-tests/target/wasm32-wasip1/release/tcp_conformance.wasm");
    assert!(
        path.exists(),
        "{} missing: run `make filters`",
        path.display()
    );
    path
}

/// A TCP server that echoes what it reads until the client half-closes.
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// Sends `parts` (with a pause between them), half-closes, and reads everything back.
async fn converse(addr: SocketAddr, parts: &[&[u8]]) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        for part in parts {
            stream.write_all(part).await.expect("write");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stream.shutdown().await.expect("half-close");
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.expect("read");
        String::from_utf8_lossy(&received).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the conversation ends in time")
}

/// Sends `message` and reads `expected` bytes back without closing its side first.
async fn answer_while_open(addr: SocketAddr, message: &[u8], expected: usize) -> String {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(message).await.expect("write");
        let mut received = vec![0u8; expected];
        stream.read_exact(&mut received).await.expect("read");
        String::from_utf8_lossy(&received).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("the answer arrives while the connection is open")
}

fn config(upstream: SocketAddr, filters: &str) -> String {
    config_with(upstream, filters, "")
}

fn config_with(upstream: SocketAddr, filters: &str, configuration: &str) -> String {
    format!(
        "workers: 1
plugins:
  - name: tcpf
    vm_config:
      runtime: envoy.wasm.runtime.v8
      code: {{ local: {{ filename: {} }} }}
    configuration: '{configuration}'
listeners:
  - name: l4
    address: '{{listen}}'
    protocol: tcp
    default_cluster: echo
    network_filters: [{filters}]
clusters:
  - name: echo
    endpoints:
      - address: {upstream}
",
        tcp_filter().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_pass_through_network_filters_as_in_envoy() {
    let (echo, task) = echo_server().await;
    let rustng = Rustng::start(&config(echo, "tcpf"));
    let envoy = Envoy::start_tcp(
        &EnvoyPlugin {
            name: "tcpf",
            wasm: &tcp_filter(),
            configuration: "",
        },
        echo,
    );

    // Each direction marked once; a held chunk leaves with the next one.
    for host in [rustng.addr, envoy.addr] {
        assert_eq!(
            converse(host, &[b"hello\n"]).await,
            "[down][up]hello\n",
            "{host}"
        );
        assert_eq!(
            converse(host, &[b"hold me ", b"now\n"]).await,
            "[down][up]hold me now\n",
            "{host}"
        );
        // Held unmarked until the root's tick resumes it with proxy_continue_stream: the
        // answer arrives while the client keeps its side open (no end of stream flushes it).
        assert_eq!(
            answer_while_open(host, b"wait for it\n", "[down]wait for it\n".len()).await,
            "[down]wait for it\n",
            "{host}"
        );
    }
    assert!(
        rustng.log_eventually_contains("tcp downstream closed"),
        "{}",
        rustng.log()
    );
    assert!(
        rustng.log().contains("tcp upstream closed"),
        "{}",
        rustng.log()
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_without_filters_is_a_plain_proxy() {
    let (echo, task) = echo_server().await;
    let rustng = Rustng::start(&config(echo, "").replace("    network_filters: []\n", ""));
    let large = vec![b'x'; 1024 * 1024];
    let echoed = converse(rustng.addr, &[&large]).await;
    assert_eq!(echoed.len(), large.len());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_paused_on_arrival_waits_for_its_filter_as_in_envoy() {
    let (echo, task) = echo_server().await;
    let rustng = Rustng::start(&config_with(echo, "tcpf", "hold-connection"));
    let envoy = Envoy::start_tcp(
        &EnvoyPlugin {
            name: "tcpf",
            wasm: &tcp_filter(),
            configuration: "hold-connection",
        },
        echo,
    );
    for (name, host) in [("rustng", rustng.addr), ("envoy", envoy.addr)] {
        // Paused in on_new_connection until the filter's second tick after it (ticks every
        // second): the data waits at least a second, then goes through the filter.
        let started = std::time::Instant::now();
        let answer = answer_while_open(host, b"hello\n", "[down][up]hello\n".len()).await;
        let waited = started.elapsed();
        assert_eq!(answer, "[down][up]hello\n", "{name}");
        assert!(
            waited >= Duration::from_millis(900),
            "{name}: answered after {waited:?}, so the connection was not held"
        );
    }
    task.abort();
}
