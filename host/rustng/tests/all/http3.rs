//! HTTP/3 end to end with a real QUIC client (quinn + h3, the crates a Rust HTTP/3 client
//! uses): requests with and without bodies, large downloads, trailers both ways, the filter
//! chain, gRPC (unary and bidirectional streaming, to a tonic server), `alt-svc` on the TCP
//! side, and the HTTP/3 limits. (The machine's curl has no HTTP/3.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, Request, StatusCode};

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

/// A QUIC connection (ALPN `h3`) to `addr`, trusting `cert`.
async fn quic_connect(addr: SocketAddr, cert: &Cert) -> (quinn::Endpoint, quinn::Connection) {
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
    (endpoint, connection)
}

impl H3Client {
    async fn connect(addr: SocketAddr, cert: &Cert) -> H3Client {
        let (endpoint, connection) = quic_connect(addr, cert).await;
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
            // The server may stop reading the request once it has answered (RFC 9114 4.1):
            // that makes finishing fail, and is no reason to drop its response.
            let _ = stream.finish().await;
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
    let config = crate::harness::with_plugins(
        &h3_config(
            certs.path(),
            origin.addr,
            udp,
            "    http_filters: [conformance]",
        ),
        &crate::harness::plugin("conformance", &wasm, " plain"),
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
async fn grpc_calls_of_every_kind_over_http3_with_a_tonic_client() {
    let (grpc_addr, grpc_server) = crate::grpc::start_server().await;
    let certs = tempfile::tempdir().expect("tempdir");
    let cert = make_cert(certs.path(), "localhost", &["localhost"]);
    let udp = free_udp_port();
    let _proxy = Rustng::start(
        &h3_config(certs.path(), grpc_addr, udp, "")
            .replace("    default_cluster: backend", "    default_cluster: grpc"),
    );
    let client = H3Client::connect(udp_addr(udp), &cert).await;
    let grpc = tonic::client::Grpc::with_origin(
        H3Service(client.send.clone()),
        "https://localhost".parse().expect("origin"),
    );
    crate::grpc::every_kind_of_call(grpc).await;
    grpc_server.abort();
}

/// tonic's client over HTTP/3: a `tower::Service` that sends each request on an h3 stream
/// (its body pumped by a task of its own, so both directions stream) and answers with the
/// stream's response and body.
#[derive(Clone)]
struct H3Service(h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>);

impl tower_service::Service<Request<tonic::body::Body>> for H3Service {
    type Response = http::Response<H3Body>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let mut send = self.0.clone();
        Box::pin(async move {
            let (parts, mut body) = request.into_parts();
            let stream = send.send_request(Request::from_parts(parts, ())).await?;
            let (mut tx, mut rx) = stream.split();
            tokio::spawn(async move {
                use http_body_util::BodyExt as _;
                while let Some(Ok(frame)) = body.frame().await {
                    let sent = match frame.into_data() {
                        Ok(data) => tx.send_data(data).await,
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => tx.send_trailers(trailers).await,
                            Err(_) => Ok(()),
                        },
                    };
                    if sent.is_err() {
                        return;
                    }
                }
                let _ = tx.finish().await;
            });
            let response = rx.recv_response().await?;
            Ok(response.map(|()| H3Body {
                stream: rx,
                data_done: false,
            }))
        })
    }
}

/// An h3 response stream as an `http_body::Body`: data, then trailers.
struct H3Body {
    stream: h3::client::RequestStream<h3_quinn::RecvStream, Bytes>,
    data_done: bool,
}

impl http_body::Body for H3Body {
    type Data = Bytes;
    type Error = h3::error::StreamError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::{Poll, ready};
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.stream.poll_recv_data(cx)) {
                Ok(Some(mut data)) => {
                    return Poll::Ready(Some(Ok(http_body::Frame::data(
                        data.copy_to_bytes(data.remaining()),
                    ))));
                }
                Ok(None) => this.data_done = true,
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        Poll::Ready(match ready!(this.stream.poll_recv_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(http_body::Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }
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
        "      max_concurrent_streams: 2\n      idle_timeout: 500ms\n    http: { max_request_headers_kb: 8, request_headers_timeout: 300ms }",
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

    // A stream that never brings its whole head is let go after the request head timeout
    // (here 300 ms), unanswered, and the connection carries on.
    let (_endpoint, raw) = quic_connect(udp_addr(udp), &cert).await;
    let (mut send, mut recv) = raw.open_bi().await.expect("stream");
    // A HEADERS frame announcing 100 bytes, and nothing more.
    send.write_all(&[0x01, 0x40, 0x64]).await.expect("write");
    let started = Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1024)).await;
    // Ended (quinn finishes a dropped stream) or reset, but without a byte of answer.
    assert!(
        matches!(&read, Ok(Ok(bytes)) if bytes.is_empty()) || matches!(read, Ok(Err(_))),
        "the stream is let go, not answered: {read:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(client.get("/echo/still").await.status, 200);

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
