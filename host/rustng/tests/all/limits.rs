//! Bad and greedy clients get a clear answer and the proxy keeps serving everyone else.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, get, raw};
use crate::harness::{Rustng, simple_config};
use crate::origin::Origin;

/// A keep-alive connection that has had one `200` (small response, read in one go).
async fn keep_alive_after_one_request(proxy: &Rustng) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.expect("read");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    s
}

async fn still_serving(proxy: &Rustng) {
    assert_eq!(get(&client::http1(), &proxy.url("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_get_431() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(
        &[origin.addr],
        "    http: { max_request_headers_kb: 16 }",
        "",
    ));
    let big = "a".repeat(20 * 1024);
    let reply = raw(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431 "), "{reply:.200}");
    // Under the limit is fine.
    let ok = "a".repeat(8 * 1024);
    let reply = raw(
        proxy.addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {ok}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply:.200}");
    assert_eq!(origin.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_gets_408_and_is_closed() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(
        &[origin.addr],
        "    http: { request_headers_timeout: 500ms }",
        "",
    ));
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let started = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    // Keep trickling a header byte now and then, never finishing the head.
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    trickle.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    still_serving(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_garbage_never_hurts() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    for bad in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n"[..],
        b"NOT A REQUEST\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        // Request smuggling shapes: two framings, or a chunked body an HTTP/1.0 peer cannot have.
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /a b c HTTP/1.1\r\nHost: x\r\n\r\n",
        // A broken chunk in a body the origin reads: the client's fault, not the upstream's.
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let reply = raw(proxy.addr, bad, Duration::from_secs(5)).await;
        assert!(
            reply.starts_with("HTTP/1.1 400 "),
            "{:?} -> {reply:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // Random bytes, deterministic seed: no panic, no hang, still serving.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        let len = (seed % 512) as usize + 1;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = raw(proxy.addr, &junk, Duration::from_millis(200)).await;
    }
    // An HTTP/2 preface followed by junk frames.
    let mut h2_junk = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_junk.extend_from_slice(&[0, 0, 4, 9, 9, 0, 0, 0, 1, 1, 2, 3, 4]);
    let _ = raw(proxy.addr, &h2_junk, Duration::from_millis(500)).await;
    still_serving(&proxy).await;
    assert!(!proxy.log().contains("panicked"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_closed() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "    max_connections: 2", ""));
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(keep_alive_after_one_request(&proxy).await);
    }
    let reply = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        reply, "",
        "third connection must be closed without a response"
    );
    drop(held);
    // Slots come back when connections close.
    let mut ok = false;
    for _ in 0..50 {
        let reply = raw(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await;
        if reply.starts_with("HTTP/1.1 200") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "slots not released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(
        &[origin.addr],
        "    http: { idle_timeout: 300ms }",
        "",
    ));
    let mut s = keep_alive_after_one_request(&proxy).await;
    let mut buf = [0u8; 512];
    let started = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "expected close");
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(250) && idle < Duration::from_secs(2),
        "{idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_max_concurrent_streams_is_advertised_and_enforced() {
    let origin = Origin::start("a").await;
    let proxy = Rustng::start(&simple_config(
        &[origin.addr],
        "    http: { max_concurrent_streams: 3 }",
        "",
    ));
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (client, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.expect("ready");
    // One round trip first, so the client has the server's SETTINGS before opening streams
    // (streams opened before that may be refused, which is enforcement too, but not this test).
    let warmup = http::Request::get(proxy.url("/")).body(()).expect("req");
    let (response, _) = client.send_request(warmup, true).expect("send");
    assert_eq!(response.await.expect("warm-up").status(), 200);
    // Six slow requests at once: the server's limit keeps at most three in flight.
    let mut responses = Vec::new();
    for _ in 0..6 {
        client = client.ready().await.expect("ready");
        let req = http::Request::get(proxy.url("/slow/300"))
            .body(())
            .expect("req");
        let (response, _) = client.send_request(req, true).expect("send");
        responses.push(response);
    }
    let started = Instant::now();
    for r in responses {
        assert_eq!(r.await.expect("response").status(), 200);
    }
    // The server's limit, not the client's patience, kept concurrency at three.
    assert_eq!(
        origin.most_concurrent_slow(),
        3,
        "after {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_request_body_ends_reaches_a_client_still_sending() {
    // No cluster: the 404 goes out before the body is read, and the connection must close
    // without a reset, which would throw away the answer on the client's side.
    let proxy = Rustng::start(
        "listeners:
  - name: main
    address: '{listen}'
",
    );
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let mut request = b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n".to_vec();
    request.extend_from_slice(&vec![b'x'; 256 * 1024]);
    // Written concurrently: the proxy answers while the body is still coming.
    let (mut read, mut write) = stream.split();
    let writing = async {
        let _ = write.write_all(&request).await;
    };
    let reading = async {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let ((), reply) = tokio::join!(writing, reading);
    assert!(reply.starts_with("HTTP/1.1 404 "), "{reply:?}");
    assert!(reply.ends_with("no route"), "{reply:?}");
}
