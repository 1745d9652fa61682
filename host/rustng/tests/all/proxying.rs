//! What a client and an origin see through the proxy.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, get, send};
use crate::harness::{Rustng, simple_config};
use crate::origin::Origin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_request_reaches_the_origin_with_forwarding_headers_and_no_hop_by_hop() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let req = Request::get(proxy.url("/echo/path?q=1"))
        .header("connection", "x-drop-me")
        .header("x-drop-me", "1")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-keep", "kept")
        .body(Full::default())
        .expect("request");
    let reply = send(&client::http1(), req).await;
    assert_eq!(reply.status, 200);
    let echo = reply.json();
    assert_eq!(echo["uri"], "/echo/path?q=1");
    assert_eq!(echo["version"], "HTTP/1.1");
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-for"][0], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"][0], "http");
    assert_eq!(headers["x-keep"][0], "kept");
    assert_eq!(headers["host"][0], proxy.addr.to_string());
    assert!(headers.get("x-drop-me").is_none(), "{headers}");
    let id = headers["x-request-id"][0].as_str().expect("request id");
    assert_eq!(id.len(), 36, "{id}");
    // The response's hop-by-hop headers stop at the proxy too.
    assert!(reply.headers.get("x-hop").is_none());
    assert_eq!(reply.headers["x-origin"], "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_request_id_is_kept() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let req = Request::get(proxy.url("/echo"))
        .header("x-request-id", "my-id")
        .body(Full::default())
        .expect("request");
    let echo = send(&client::http1(), req).await.json();
    assert_eq!(echo["headers"]["x-request-id"][0], "my-id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_on_the_same_port() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let h2 = client::h2c();
    for _ in 0..3 {
        let reply = get(&h2, &proxy.url("/echo/h2")).await;
        assert_eq!(reply.status, 200);
        let echo = reply.json();
        // Downstream HTTP/2, upstream HTTP/1.1 with the authority turned into Host.
        assert_eq!(echo["version"], "HTTP/1.1");
        assert_eq!(echo["uri"], "/echo/h2");
        assert_eq!(echo["headers"]["host"][0], proxy.addr.to_string());
    }
    let h1 = get(&client::http1(), &proxy.url("/")).await;
    assert_eq!(h1.text(), "hello from a\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_http2_cluster_gets_http2() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", "    protocol: http2"));
    for client in [client::http1(), client::h2c()] {
        let echo = get(&client, &proxy.url("/echo")).await.json();
        assert_eq!(echo["version"], "HTTP/2.0");
        assert_eq!(echo["uri"], format!("http://{}/echo", proxy.addr));
    }
    // One multiplexed connection carries everything.
    assert_eq!(origin.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let client = client::http1();
    for _ in 0..20 {
        assert_eq!(get(&client, &proxy.url("/")).await.status, 200);
    }
    assert_eq!(origin.requests(), 20);
    assert_eq!(
        origin.connections(),
        1,
        "sequential requests reuse one upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_keeps_content_length_and_sends_no_body() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let reply = client::raw(
        proxy.addr,
        b"HEAD /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("content-length: 13\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n"), "no body after HEAD: {reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_100_before_the_body() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .await
        .expect("write head");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("100 in time")
        .expect("read");
    assert_eq!(&buf[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("write body");
    let mut rest = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&rest[..n]);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("\"received\":5"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_buffering() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let client = client::http1();
    let rss_before = proxy.rss_kib();

    // 256 MiB down: counted as it streams, never held.
    let size = 256 * 1024 * 1024;
    let response = client
        .request(
            Request::get(proxy.url(&format!("/bytes/{size}")))
                .body(Full::default())
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            received += data.len();
        }
    }
    assert_eq!(received, size);

    // 64 MiB up, chunked (no content-length), with a trailer.
    let (mut tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![b'y'; 1024 * 1024]);
        for _ in 0..64 {
            if tx.send_data(chunk.clone()).await.is_err() {
                return;
            }
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-upload-trailer", http::HeaderValue::from_static("done"));
        let _ = tx.send_trailers(trailers).await;
    });
    let upload_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::channel::Channel<Bytes, std::convert::Infallible>>();
    let req = Request::post(proxy.url("/upload"))
        .header("te", "trailers")
        .body(body)
        .expect("req");
    let response = upload_client.request(req).await.expect("upload response");
    let json: serde_json::Value = serde_json::from_slice(
        &response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes(),
    )
    .expect("json");
    sender.await.expect("sender");
    assert_eq!(json["received"], 64 * 1024 * 1024);

    let grown_mib = proxy.rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 48,
        "proxy grew by {grown_mib} MiB moving 320 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_http2() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", "    protocol: http2"));
    let response = client::h2c()
        .request(
            Request::get(proxy.url("/trailers"))
                .body(Full::default())
                .expect("req"),
        )
        .await
        .expect("response");
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["x-trailer"], "yes");
    assert_eq!(collected.to_bytes(), "body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_pass_through_http1_chunked() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let reply = client::raw(
        proxy.addr,
        b"GET /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("transfer-encoding: chunked\r\n"), "{reply}");
    assert!(
        reply.ends_with("4\r\nbody\r\n0\r\nx-trailer: yes\r\n\r\n"),
        "{reply:?}"
    );
    // A client that did not ask for trailers gets the body without them.
    let reply = client::raw(
        proxy.addr,
        b"GET /trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.ends_with("4\r\nbody\r\n0\r\n\r\n"), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_tunnelled() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("101 in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    for message in [&b"ping"[..], b"second frame"] {
        stream.write_all(message).await.expect("write");
        let mut echo = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(echo, message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let client = client::http1();
    let req = Request::builder()
        .method(Method::POST)
        .uri(proxy.url("/upload?x=1"))
        .header("x-request-id", "log-me")
        .body(Full::new(Bytes::from_static(b"12345")))
        .expect("req");
    let reply = send(&client, req).await;
    assert_eq!(reply.status, 200);
    // The log writer is asynchronous; give it a moment.
    let mut line = None;
    for _ in 0..100 {
        line = proxy
            .log_json()
            .into_iter()
            .find(|l| l["target"] == "access" && l["request_id"] == "log-me");
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.unwrap_or_else(|| panic!("no access log line:\n{}", proxy.log()));
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/upload?x=1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], origin.addr.to_string());
    assert_eq!(line["bytes_sent"], reply.body.len());
    assert_eq!(line["listener"], "main");
    assert!(line["duration_ms"].as_f64().expect("duration") > 0.0);
    assert!(line["timestamp"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let url = proxy.url("/slow/500");
    let in_flight = tokio::spawn(async move { get(&client::http1(), &url).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let status = tokio::task::spawn_blocking(move || proxy.terminate())
        .await
        .expect("terminate");
    assert!(status.success(), "{status}");
    let reply = in_flight.await.expect("request task");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    // Three requests in one write, the second with a body; the last closes.
    let reply = client::raw(
        proxy.addr,
        b"GET /status/201 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          GET /status/202 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let statuses: Vec<&str> = reply
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &reply[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["201", "200", "202"], "{reply}");
    assert!(reply.contains("\"received\":3"), "{reply}");
    assert!(reply.contains("connection: close\r\n"), "{reply}");
    assert_eq!(origin.requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_clients_get_a_length_or_a_close() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    // No keep-alive asked: the response closes the connection.
    let reply = client::raw(
        proxy.addr,
        b"GET /status/200 HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("connection: close\r\n"), "{reply}");
    assert!(reply.ends_with("status 200"), "{reply}");
    // A streamed body of unknown length: no chunked coding for 1.0, the close ends it.
    let reply = client::raw(
        proxy.addr,
        b"GET /trailers HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(!reply.contains("transfer-encoding"), "{reply}");
    assert!(reply.ends_with("\r\n\r\nbody"), "{reply:?}");
}

/// A filter that answers before the request body was read leaves the connection mid-body:
/// the answer says `connection: close` (and the connection closes), so that no client sends
/// its next request on a connection that is going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_was_read_says_connection_close() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&crate::harness::with_plugins(
        &format!(
            "workers: 1
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [deny]
clusters:
  - name: backend
    endpoints: [{{ address: '{}' }}]
",
            origin.addr
        ),
        &crate::stock_filters::deny_loopback(),
    ));
    // 9 of the 100 bytes announced: the rest never comes.
    let answer = client::raw(
        proxy.addr,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nsome body",
        Duration::from_secs(3),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    // A whole body read before the answer keeps the connection.
    let answer = client::raw(
        proxy.addr,
        b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\nsome body",
        Duration::from_millis(500),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}
