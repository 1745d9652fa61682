//! HTTP/3 end to end with a real QUIC client (quinn + h3, the crates a Rust HTTP/3 client
//! uses): requests with and without bodies, large downloads, trailers both ways, the filter
//! chain, gRPC (unary and bidirectional streaming, to a tonic server), `alt-svc` on the TCP
//! side, and the HTTP/3 limits. (The machine's curl has no HTTP/3.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};
use prost::Message as _;

use crate::harness::Rustng;
use crate::origin::Origin;
use crate::tls::{Cert, make_cert};

/// An HTTP/3 connection to RustNg, trusting `cert`.
struct H3Client {
    send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    driver: tokio::task::JoinHandle<h3::error::ConnectionError>,
    _endpoint: quinn::Endpoint,
}

/// A response as the client read it.
struct H3Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl H3Client {
    async fn connect(addr: SocketAddr, cert: &Cert) -> H3Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der.clone()).expect("root");
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic client config");
        let mut endpoint =
            quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connection = tokio::time::timeout(
            Duration::from_secs(10),
            endpoint.connect(addr, "localhost").expect("connect"),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection))
            .await
            .expect("h3 client");
        let driver =
            tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        H3Client {
            send,
            driver,
            _endpoint: endpoint,
        }
    }

    async fn get(&self, path: &str) -> H3Reply {
        self.request(
            Request::get(format!("https://localhost{path}"))
                .body(())
                .expect("request"),
            &[],
            None,
        )
        .await
    }

    /// Sends `request` with `body` in `chunks` and `trailers`, reads the whole answer.
    async fn request(
        &self,
        request: Request<()>,
        chunks: &[Bytes],
        trailers: Option<HeaderMap>,
    ) -> H3Reply {
        let exchange = async {
            let mut send = self.send.clone();
            let mut stream = send.send_request(request).await?;
            for chunk in chunks {
                stream.send_data(chunk.clone()).await?;
            }
            if let Some(trailers) = trailers {
                stream.send_trailers(trailers).await?;
            }
            stream.finish().await?;
            let response = stream.recv_response().await?;
            let mut body = BytesMut::new();
            while let Some(mut chunk) = stream.recv_data().await? {
                body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
            let trailers = stream.recv_trailers().await?;
            Ok::<_, h3::error::StreamError>(H3Reply {
                status: response.status(),
                headers: response.headers().clone(),
                body: body.freeze(),
                trailers,
            })
        };
        tokio::time::timeout(Duration::from_secs(20), exchange)
            .await
            .expect("answer in time")
            .expect("answer")
    }
}

impl Drop for H3Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A UDP port nobody uses now.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// RustNg with one listener serving TLS on TCP and HTTP/3 on `udp`, in front of `origin`.
fn h3_config(dir: &std::path::Path, origin: SocketAddr, udp: u16, extra: &str) -> String {
    let dir = dir.display();
    format!(
        "workers: 1
listeners:
  - name: edge
    address: '{{listen}}'
    default_cluster: backend
    tls:
      certificates:
        - certificate_chain: {dir}/localhost.crt
          private_key: {dir}/localhost.key
    http3:
      address: 127.0.0.1:{udp}
{extra}
clusters:
  - name: backend
    endpoints: [{{ address: '{origin}' }}]
  - name: grpc
    protocol: http2
    endpoints: [{{ address: '{origin}' }}]
"
    )
}

fn udp_addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_serves_requests_bodies_downloads_and_trailers() {
    let origin = Origin::start("h3").await;
    let certs = tempfile::tempdir().expect("tempdir");
    let cert = make_cert(certs.path(), "localhost", &["localhost"]);
    let udp = free_udp_port();
    let proxy = Rustng::start(&h3_config(certs.path(), origin.addr, udp, ""));
    let client = H3Client::connect(udp_addr(udp), &cert).await;

    let echo = client.get("/echo/h3?q=1").await;
    assert_eq!(echo.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&echo.body).expect("json");
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["uri"], "/echo/h3?q=1");
    assert_eq!(seen["headers"]["host"][0], "localhost");
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(
        seen["headers"].get("content-length"),
        None,
        "a GET has no body upstream"
    );
    assert!(seen["headers"].get("transfer-encoding").is_none(), "{seen}");
    assert!(
        echo.headers.get("alt-svc").is_none(),
        "not on HTTP/3 itself"
    );

    // A POST body in pieces, with trailers.
    let chunks: Vec<Bytes> = (0..64)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; 16 * 1024]))
        .collect();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().expect("value"));
    let upload = client
        .request(
            Request::post("https://localhost/upload")
                .body(())
                .expect("request"),
            &chunks,
            Some(trailers),
        )
        .await;
    assert_eq!(upload.status, 200);
    let counted: serde_json::Value = serde_json::from_slice(&upload.body).expect("json");
    assert_eq!(counted["received"], 64 * 16 * 1024);
    assert_eq!(counted["trailers"]["x-checksum"][0], "abc");

    // A large download, streamed.
    let big = client.get("/bytes/8000000").await;
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), 8_000_000);

    // Response trailers come through.
    // (`te: trailers`, as any client that wants them says, so the HTTP/1.1 origin sends them.)
    let with_trailers = client
        .request(
            Request::get("https://localhost/trailers")
                .header("te", "trailers")
                .body(())
                .expect("request"),
            &[],
            None,
        )
        .await;
    assert_eq!(
        with_trailers
            .trailers
            .as_ref()
            .and_then(|t| t.get("x-trailer"))
            .map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );

    // Many requests at once on one connection.
    let started = Instant::now();
    let replies = futures_util::future::join_all((0..20).map(|i| {
        let client = &client;
        async move { client.get(&format!("/echo/{i}")).await.status }
    }))
    .await;
    assert!(replies.iter().all(|s| *s == 200), "{replies:?}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // The TCP side announces HTTP/3.
    let tcp = crate::tls::tls_get_headers(proxy.addr, "localhost", &cert, "/echo/tcp").await;
    assert_eq!(
        tcp.get("alt-svc").and_then(|v| v.to_str().ok()),
        Some(format!("h3=\":{udp}\"; ma=86400").as_str())
    );
    // The access log says HTTP/3.
    assert!(proxy.log_eventually_contains("\"protocol\":\"HTTP/3.0\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_requests_run_the_filter_chain() {
    let origin = Origin::start("h3").await;
    let certs = tempfile::tempdir().expect("tempdir");
    let cert = make_cert(certs.path(), "localhost", &["localhost"]);
    let udp = free_udp_port();
    let wasm = crate::conformance::conformance_wasm(crate::conformance::RUST_SDK);
    let config = h3_config(
        certs.path(),
        origin.addr,
        udp,
        "    http_filters: [conformance]",
    )
    .replace(
        "listeners:\n",
        &format!(
            "plugins:
  - name: conformance
    vm_config: {{ code: {{ local: {{ filename: {} }} }} }}
    configuration: plain
listeners:\n",
            wasm.display()
        ),
    );
    let _proxy = Rustng::start(&config);
    let client = H3Client::connect(udp_addr(udp), &cert).await;
    let report = client.get("/conformance/properties").await;
    let text = String::from_utf8_lossy(&report.body);
    assert!(text.contains("request.protocol=HTTP/3\n"), "{text}");
    assert!(text.contains("request.scheme=https\n"), "{text}");
    assert!(text.contains("request.host=localhost\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_http3_unary_client_server_and_bidirectional_streaming() {
    let (grpc_addr, grpc_server) = crate::grpc::start_server().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let cert = make_cert(certs.path(), "localhost", &["localhost"]);
    let udp = free_udp_port();
    let _proxy = Rustng::start(
        &h3_config(certs.path(), grpc_addr, udp, "")
            .replace("    default_cluster: backend", "    default_cluster: grpc"),
    );
    let client = H3Client::connect(udp_addr(udp), &cert).await;
    let grpc_request = |method: &str| {
        Request::post(format!("https://localhost{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request")
    };

    let unary = client
        .request(
            grpc_request(crate::grpc::UNARY),
            &[frame(&crate::grpc::Note {
                text: "over quic".into(),
                seq: 1,
            })],
            None,
        )
        .await;
    assert_eq!(unary.status, 200);
    assert_eq!(grpc_status(&unary), Some("0"));
    let notes = unframe(&unary.body);
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].text, "echo: over quic");
    assert_eq!(notes[0].seq, 2);

    // A status error arrives in the trailers.
    let failed = client
        .request(
            grpc_request(crate::grpc::UNARY),
            &[frame(&crate::grpc::Note {
                text: "fail".into(),
                seq: 1,
            })],
            None,
        )
        .await;
    assert_eq!(grpc_status(&failed), Some("5"), "NOT_FOUND");

    // Client streaming: several messages in the request body.
    let collected = client
        .request(
            grpc_request(crate::grpc::COLLECT),
            &(1..=3)
                .map(|seq| {
                    frame(&crate::grpc::Note {
                        text: format!("q{seq}"),
                        seq,
                    })
                })
                .collect::<Vec<_>>(),
            None,
        )
        .await;
    assert_eq!(grpc_status(&collected), Some("0"));
    let summed = unframe(&collected.body);
    assert_eq!((summed[0].text.as_str(), summed[0].seq), ("q1+q2+q3", 6));

    // Server streaming: several messages in the response body.
    let counted = client
        .request(
            grpc_request(crate::grpc::COUNT),
            &[frame(&crate::grpc::Note {
                text: "h3".into(),
                seq: 3,
            })],
            None,
        )
        .await;
    assert_eq!(grpc_status(&counted), Some("0"));
    let texts: Vec<String> = unframe(&counted.body).into_iter().map(|n| n.text).collect();
    assert_eq!(texts, ["h3 #1", "h3 #2", "h3 #3"]);

    // Bidirectional: each message must come back before the next is sent, so nothing may
    // wait for the end of the request body.
    let mut send = client.send.clone();
    let mut stream = send
        .send_request(grpc_request(crate::grpc::BIDI))
        .await
        .expect("stream");
    let mut replies = Vec::new();
    let mut pending = BytesMut::new();
    let mut head_seen = false;
    for seq in 0..3 {
        stream
            .send_data(frame(&crate::grpc::Note {
                text: format!("m{seq}"),
                seq,
            }))
            .await
            .expect("send");
        if !head_seen {
            let response = tokio::time::timeout(Duration::from_secs(10), stream.recv_response())
                .await
                .expect("head in time")
                .expect("head");
            assert_eq!(response.status(), 200);
            head_seen = true;
        }
        loop {
            let decoded = unframe(&pending);
            if decoded.len() > replies.len() {
                replies = decoded;
                break;
            }
            let mut chunk = tokio::time::timeout(Duration::from_secs(10), stream.recv_data())
                .await
                .expect("reply before the request ends")
                .expect("data")
                .expect("more data");
            pending.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
    }
    stream.finish().await.expect("finish");
    while let Some(mut chunk) = stream.recv_data().await.expect("data") {
        pending.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
    }
    let trailers = stream.recv_trailers().await.expect("trailers");
    let texts: Vec<String> = unframe(&pending).into_iter().map(|n| n.text).collect();
    assert_eq!(texts, vec!["M0", "M1", "M2"]);
    assert_eq!(
        trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.as_bytes()),
        Some(&b"0"[..])
    );
    grpc_server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http3_limits_streams_headers_and_idle_connections() {
    let origin = Origin::start("h3").await;
    let certs = tempfile::tempdir().expect("tempdir");
    let cert = make_cert(certs.path(), "localhost", &["localhost"]);
    let udp = free_udp_port();
    let proxy = Rustng::start(&h3_config(
        certs.path(),
        origin.addr,
        udp,
        "      max_concurrent_streams: 2\n      idle_timeout: 500ms\n    http: { max_request_headers_kb: 8 }",
    ));
    let client = H3Client::connect(udp_addr(udp), &cert).await;

    // Six slow requests at once: the connection lets two run at a time, all six finish.
    let replies = futures_util::future::join_all((0..6).map(|_| client.get("/slow/200"))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(
        origin.most_concurrent_slow(),
        2,
        "max_concurrent_streams: 2"
    );

    // The header limit is announced in SETTINGS (QPACK's max field section size), so a
    // compliant client refuses to send a bigger head itself.
    let mut send = client.send.clone();
    let refused = send
        .send_request(
            Request::get("https://localhost/echo/big")
                .header("x-big", "x".repeat(16 * 1024))
                .body(())
                .expect("request"),
        )
        .await
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default();
    assert!(refused.contains("max_size: 8192"), "{refused}");
    assert_eq!(
        client.get("/echo/after").await.status,
        200,
        "the connection goes on"
    );

    // Idle past idle_timeout: RustNg closes the connection.
    let idle = Instant::now();
    let mut client = client;
    let closed = tokio::time::timeout(Duration::from_secs(5), &mut client.driver).await;
    assert!(closed.is_ok(), "an idle HTTP/3 connection is closed");
    assert!(
        idle.elapsed() >= Duration::from_millis(400),
        "{:?}",
        idle.elapsed()
    );
    drop(proxy);
}

/// A gRPC message frame.
fn frame(note: &crate::grpc::Note) -> Bytes {
    let message = note.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(&message);
    out.freeze()
}

/// Every whole gRPC message in `data`.
fn unframe(mut data: &[u8]) -> Vec<crate::grpc::Note> {
    let mut notes = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
        if data.len() < 5 + len {
            break;
        }
        notes.push(crate::grpc::Note::decode(&data[5..5 + len]).expect("note"));
        data = &data[5 + len..];
    }
    notes
}

fn grpc_status(reply: &H3Reply) -> Option<&str> {
    reply
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| reply.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_drain_on_the_old_process_through_a_binary_upgrade() {
    let origin = Origin::start("h3").await;
    let certs = tempfile::tempdir().expect("tempdir");
    let cert = make_cert(certs.path(), "localhost", &["localhost"]);
    let udp = free_udp_port();
    let admin = crate::harness::free_port();
    let config = h3_config(certs.path(), origin.addr, udp, "").replace(
        "workers: 1\n",
        &format!("workers: 2\nstate_dir: '{{dir}}/state'\ndrain_timeout: 20s\nupgrade: {{ pid_file: '{{dir}}/rustng.pid' }}\nadmin: {{ address: '127.0.0.1:{admin}' }}\n"),
    );
    let proxy = Rustng::start(&config);
    let pid_file = proxy.dir().join("rustng.pid");
    let _successor = crate::upgrade::Successor(pid_file.clone());
    let old_pid = proxy.pid();

    // Requests in flight on a connection to the old process while the upgrade happens: a
    // slow answer and a large download, whose packets (the client's ACKs above all) reach
    // the shared sockets either process reads.
    let old_connection = Arc::new(H3Client::connect(udp_addr(udp), &cert).await);
    assert_eq!(old_connection.get("/echo/before").await.status, 200);
    let slow = tokio::spawn({
        let c = Arc::clone(&old_connection);
        async move { c.get("/slow/3000").await.status }
    });
    let download = tokio::spawn({
        let c = Arc::clone(&old_connection);
        async move { c.get("/bytes/30000000").await.body.len() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (ok, out, err) =
        crate::upgrade::rustng_upgrade(&proxy.dir().join("rustng.yaml"), &[]).await;
    assert!(ok, "{out}{err}\n{}", proxy.log());
    let new_pid = crate::upgrade::pid_in(&pid_file).expect("new pid");
    assert_ne!(new_pid, old_pid);

    // A new connection reaches the new process, while the old one still serves its own.
    let new_connection = H3Client::connect(udp_addr(udp), &cert).await;
    assert_eq!(new_connection.get("/echo/after").await.status, 200);
    assert_eq!(
        slow.await.expect("join"),
        200,
        "the slow answer crossed the upgrade"
    );
    assert_eq!(
        download.await.expect("join"),
        30_000_000,
        "the download too"
    );

    // With its last connection closed, the old process exits long before drain_timeout.
    drop(old_connection);
    assert!(
        crate::upgrade::wait_exited(old_pid, Duration::from_secs(10)).await,
        "the old process drained its QUIC connections and exited\n{}",
        proxy.log()
    );
    // Its connection IDs' packets have nowhere to go now; the new process's are unaffected.
    for i in 0..5 {
        assert_eq!(new_connection.get(&format!("/echo/{i}")).await.status, 200);
    }
    // The new process did get some of the old one's packets off the shared sockets, and
    // passed them on (without that, the transfers above would have stalled or broken).
    let metrics = crate::client::get(
        &crate::client::http1(),
        &format!("http://127.0.0.1:{admin}/metrics"),
    )
    .await
    .text();
    let passed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rustng_http3_upgrade_datagrams_total{direction=\"out\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    eprintln!("the new process passed {passed} of the old one's datagrams on");
    assert!(passed > 0, "{metrics}");
}
