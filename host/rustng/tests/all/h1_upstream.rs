//! RustNg's own HTTP/1.1 upstream client against origins that misbehave on purpose: raw TCP
//! scripts, so every byte the proxy sees is chosen by the test.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::{self, get, send};
use crate::harness::{Rustng, simple_config};

/// An origin that runs `script` on every accepted connection and counts connections.
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start<F, Fut>(script: F) -> Scripted
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let script = Arc::new(script);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(script(stream));
            }
        });
        Scripted {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one request head (the tests send no request bodies unless they say so).
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_not_used() {
    // Answers one request per connection, keep-alive in name only, then closes.
    let origin = Scripted::start(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let client = client::http1();
    for _ in 0..5 {
        let reply = get(&client, &proxy.url("/")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "ok");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(origin.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_close_delimited_bodies_are_not_reused() {
    let origin = Scripted::start(|mut s| async move {
        let Some(head) = read_head(&mut s).await else {
            return;
        };
        if head.starts_with("GET /close") {
            let _ = s
                .write_all(
                    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nclose",
                )
                .await;
        } else {
            // No length at all: the body is whatever comes until the upstream closes.
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil-close body")
                .await;
        }
    })
    .await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let client = client::http1();
    assert_eq!(get(&client, &proxy.url("/close")).await.text(), "close");
    assert_eq!(get(&client, &proxy.url("/close")).await.text(), "close");
    assert_eq!(
        get(&client, &proxy.url("/eof")).await.text(),
        "until-close body"
    );
    assert_eq!(
        get(&client, &proxy.url("/eof")).await.text(),
        "until-close body"
    );
    assert_eq!(origin.connections(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_upstream_responses_are_502() {
    let origin = Scripted::start(|mut s| async move {
        let Some(head) = read_head(&mut s).await else {
            return;
        };
        let reply: &[u8] = if head.starts_with("GET /garbage") {
            b"HELLO THERE\r\n\r\n"
        } else if head.starts_with("GET /two-lengths") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
        } else if head.starts_with("GET /huge-head") {
            // Handled below: a head that never ends.
            b""
        } else {
            b"HTTP/1.1 200 OK\r\nContent-"
        };
        if head.starts_with("GET /huge-head") {
            let line = format!("X-Fill: {}\r\n", "a".repeat(1000));
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            for _ in 0..100 {
                if s.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        } else {
            let _ = s.write_all(reply).await;
        }
        // Then close (for the truncated head).
    })
    .await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let client = client::http1();
    for path in ["/garbage", "/two-lengths", "/huge-head", "/truncated-head"] {
        let reply = get(&client, &proxy.url(path)).await;
        assert_eq!(reply.status, 502, "{path}");
        assert_eq!(
            reply.text(),
            "upstream reset before response headers",
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_response_does_not_wait_for_the_request_body() {
    // Refuses uploads without reading them, like an origin enforcing a size limit.
    let origin = Scripted::start(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig")
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", "    timeout: 10s"));
    // 32 MiB: far more than the socket buffers hold, so a proxy that insisted on sending the
    // whole body before reading the answer would stall until its timeout.
    let body = Bytes::from(vec![b'z'; 32 * 1024 * 1024]);
    let req = Request::post(proxy.url("/upload"))
        .body(Full::new(body))
        .expect("req");
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), client::http1().request(req)).await;
    let elapsed = started.elapsed();
    // The client may see the 413 or, having its upload cut, a reset; never a hang.
    if let Ok(Ok(response)) = response {
        assert_eq!(response.status(), 413);
        let body = response.into_body().collect().await.map(|b| b.to_bytes());
        if let Ok(body) = body {
            assert_eq!(body, "big");
        }
    }
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    // And the proxy keeps serving.
    let ok = Scripted::start(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        }
    })
    .await;
    let proxy2 = Rustng::start(&simple_config(&[ok.addr], "", ""));
    assert_eq!(get(&client::http1(), &proxy2.url("/")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_by_the_upstream_is_not_passed_off_as_complete() {
    let origin = Scripted::start(|mut s| async move {
        if read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
                .await;
        }
    })
    .await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let response = client::http1()
        .request(
            Request::get(proxy.url("/"))
                .body(Full::default())
                .expect("req"),
        )
        .await;
    // The client must see an error, not a short body that looks whole: either the body fails
    // or, when the abort beat the flush of the head, the whole exchange does.
    if let Ok(response) = response {
        assert_eq!(response.status(), 200);
        assert!(response.into_body().collect().await.is_err());
    }
    let mut line = None;
    for _ in 0..100 {
        line = proxy
            .log_json()
            .into_iter()
            .find(|l| l["target"] == "access");
        if line.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = line.expect("access log line");
    assert_eq!(line["completed"], false);
    assert_eq!(line["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_and_interim_responses_are_decoded() {
    let origin = Scripted::start(|mut s| async move {
        while read_head(&mut s).await.is_some() {
            let _ = s
                .write_all(
                    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
                      HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                      5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n",
                )
                .await;
        }
    })
    .await;
    let proxy = Rustng::start(&simple_config(&[origin.addr], "", ""));
    let client = client::http1();
    for _ in 0..3 {
        let reply = send(
            &client,
            Request::get(proxy.url("/"))
                .body(Full::default())
                .expect("req"),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello, world");
    }
    assert_eq!(
        origin.connections(),
        1,
        "chunked responses keep the connection reusable"
    );
}
