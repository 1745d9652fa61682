//! An in-process origin on 127.0.0.1:0 with one behaviour per path, counting its connections.
//!
//! Paths: `/echo…` (request as JSON), `/status/N`, `/slow/MS`, `/bytes/N` (streamed),
//! `/upload` (counts body bytes), `/trailers`, `/ws` (101 then byte echo), anything else 200.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Body = BoxBody<Bytes, Infallible>;

pub(crate) struct Origin {
    pub(crate) addr: SocketAddr,
    pub(crate) connections: Arc<AtomicUsize>,
    pub(crate) requests: Arc<AtomicUsize>,
    slow: Arc<SlowGauge>,
    task: tokio::task::JoinHandle<()>,
}

/// How many `/slow` requests are running, and the most that ever ran at once.
#[derive(Default)]
struct SlowGauge {
    running: AtomicUsize,
    most: AtomicUsize,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub(crate) async fn start(name: &'static str) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind origin");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let slow = Arc::new(SlowGauge::default());
        let (c, r, g) = (
            Arc::clone(&connections),
            Arc::clone(&requests),
            Arc::clone(&slow),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let r = Arc::clone(&r);
                let g = Arc::clone(&g);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        r.fetch_add(1, Ordering::SeqCst);
                        handle(name, req, Arc::clone(&g))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Origin {
            addr,
            connections,
            requests,
            slow,
            task,
        }
    }

    /// The most `/slow` requests that were running at the same time.
    pub(crate) fn most_concurrent_slow(&self) -> usize {
        self.slow.most.load(Ordering::SeqCst)
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

fn headers_json(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in headers {
        map.entry(k.to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    map
}

async fn handle(
    name: &'static str,
    mut req: Request<Incoming>,
    slow: Arc<SlowGauge>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let mut response =
        if path.starts_with("/echo") || path.ends_with("/echo") {
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let version = format!("{:?}", req.version());
            let headers = headers_json(req.headers());
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json = serde_json::json!({
                "origin": name, "method": method, "uri": uri, "version": version,
                "headers": headers, "body_len": body.len(),
            });
            Response::new(full(json.to_string()))
        } else if path.ends_with("/reflect") {
            // The request body as the response body, for filters that rewrite bodies.
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Response::new(full(body))
        } else if let Some(code) = path.strip_prefix("/status/") {
            let mut r = Response::new(full(format!("status {code}")));
            *r.status_mut() = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            r
        } else if let Some(ms) = path.strip_prefix("/slow/") {
            let running = slow.running.fetch_add(1, Ordering::SeqCst) + 1;
            slow.most.fetch_max(running, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            slow.running.fetch_sub(1, Ordering::SeqCst);
            Response::new(full("slow"))
        } else if let Some(n) = path.strip_prefix("/bytes/") {
            let n: usize = n.parse().unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let mut left = n;
                while left > 0 {
                    let take = left.min(chunk.len());
                    if tx.send(Ok(Frame::data(chunk.slice(..take)))).await.is_err() {
                        return;
                    }
                    left -= take;
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            Response::new(StreamBody::new(stream).boxed())
        } else if path == "/upload" {
            let mut body = req.into_body();
            let mut total = 0usize;
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(d) = frame.data_ref() {
                    total += d.len();
                }
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(headers_json(&t));
                }
            }
            Response::new(full(
                serde_json::json!({"received": total, "trailers": trailers}).to_string(),
            ))
        } else if path == "/trailers" {
            let mut trailers = HeaderMap::new();
            trailers.insert("x-trailer", HeaderValue::from_static("yes"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"body"))),
                Ok(Frame::trailers(trailers)),
            ];
            let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
            // HTTP/1.1 sends only trailers announced in `trailer` (hyper enforces it).
            r.headers_mut()
                .insert("trailer", HeaderValue::from_static("x-trailer"));
            r
        } else if path == "/ws" {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("upgrade", HeaderValue::from_static("websocket"));
            r.headers_mut()
                .insert("connection", HeaderValue::from_static("upgrade"));
            return Ok(r);
        } else {
            Response::new(full(format!("hello from {name}\n")))
        };
    response
        .headers_mut()
        .insert("x-origin", HeaderValue::from_static(name));
    response
        .headers_mut()
        .insert("connection", HeaderValue::from_static("keep-alive, x-hop"));
    response
        .headers_mut()
        .insert("x-hop", HeaderValue::from_static("secret"));
    Ok(response)
}
