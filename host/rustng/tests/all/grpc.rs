//! gRPC through the proxy with a real tonic client and server: unary calls, error statuses in
//! trailers, and a bidirectional stream whose messages must cross one at a time (not buffered);
//! RustNg's own answers to gRPC requests as gRPC statuses, and `grpc-timeout` as the deadline.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::server::{Grpc, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use crate::harness::{Rustng, simple_config};

/// The message both calls use; hand-written so the test needs no protoc.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Note {
    #[prost(string, tag = "1")]
    pub(crate) text: String,
    #[prost(uint32, tag = "2")]
    pub(crate) seq: u32,
}

pub(crate) const UNARY: &str = "/rustng.test.Echo/Unary";
pub(crate) const BIDI: &str = "/rustng.test.Echo/Chat";
/// Client streaming: the texts joined, the seqs summed.
pub(crate) const COLLECT: &str = "/rustng.test.Echo/Collect";
/// Server streaming: `seq` notes back, numbered.
pub(crate) const COUNT: &str = "/rustng.test.Echo/Count";

struct Unary;

impl UnaryService<Note> for Unary {
    type Response = Note;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Note>, Status>> + Send>>;

    fn call(&mut self, request: Request<Note>) -> Self::Future {
        Box::pin(async move {
            let note = request.into_inner();
            if note.text == "fail" {
                return Err(Status::not_found("no such note"));
            }
            if note.text == "slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let mut response = Response::new(Note {
                text: format!("echo: {}", note.text),
                seq: note.seq + 1,
            });
            response
                .metadata_mut()
                .insert("x-served-by", "tonic".parse().expect("metadata"));
            Ok(response)
        })
    }
}

struct Chat;

type NoteStream = Pin<Box<dyn Stream<Item = Result<Note, Status>> + Send>>;

impl StreamingService<Note> for Chat {
    type Response = Note;
    type ResponseStream = NoteStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<NoteStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Note>>) -> Self::Future {
        Box::pin(async move {
            let incoming = request.into_inner();
            let replies = futures_util::stream::unfold(incoming, |mut incoming| async move {
                match incoming.message().await {
                    Ok(Some(note)) => Some((
                        Ok(Note {
                            text: note.text.to_uppercase(),
                            seq: note.seq,
                        }),
                        incoming,
                    )),
                    Ok(None) => None,
                    Err(status) => Some((Err(status), incoming)),
                }
            });
            Ok(Response::new(Box::pin(replies) as NoteStream))
        })
    }
}

struct Collect;

impl tonic::server::ClientStreamingService<Note> for Collect {
    type Response = Note;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Note>, Status>> + Send>>;

    fn call(&mut self, request: Request<Streaming<Note>>) -> Self::Future {
        Box::pin(async move {
            let mut incoming = request.into_inner();
            let mut texts = Vec::new();
            let mut sum = 0;
            while let Some(note) = incoming.message().await? {
                texts.push(note.text);
                sum += note.seq;
            }
            Ok(Response::new(Note {
                text: texts.join("+"),
                seq: sum,
            }))
        })
    }
}

struct Count;

impl tonic::server::ServerStreamingService<Note> for Count {
    type Response = Note;
    type ResponseStream = NoteStream;
    type Future = Pin<Box<dyn Future<Output = Result<Response<NoteStream>, Status>> + Send>>;

    fn call(&mut self, request: Request<Note>) -> Self::Future {
        Box::pin(async move {
            let note = request.into_inner();
            let replies = futures_util::stream::iter((1..=note.seq).map(move |i| {
                Ok(Note {
                    text: format!("{} #{i}", note.text),
                    seq: i,
                })
            }));
            Ok(Response::new(Box::pin(replies) as NoteStream))
        })
    }
}

/// A tonic server with `rustng.test.Echo/Unary`, `/Chat` (bidirectional), `/Collect` (client
/// streaming) and `/Count` (server streaming) on 127.0.0.1 (HTTP/2).
pub(crate) async fn start_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let response = match req.uri().path() {
                            UNARY => {
                                Grpc::new(ProstCodec::<Note, Note>::default())
                                    .unary(Unary, req)
                                    .await
                            }
                            BIDI => {
                                Grpc::new(ProstCodec::<Note, Note>::default())
                                    .streaming(Chat, req)
                                    .await
                            }
                            COLLECT => {
                                Grpc::new(ProstCodec::<Note, Note>::default())
                                    .client_streaming(Collect, req)
                                    .await
                            }
                            COUNT => {
                                Grpc::new(ProstCodec::<Note, Note>::default())
                                    .server_streaming(Count, req)
                                    .await
                            }
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, Infallible>(response)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

async fn client(proxy: &Rustng) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(proxy.url(""))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect to rustng");
    tonic::client::Grpc::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_of_every_kind_cross_the_proxy_and_are_counted() {
    let (server, task) = start_server().await;
    let admin = crate::harness::free_port();
    let proxy = Rustng::start(&format!(
        "admin: {{ address: '127.0.0.1:{admin}' }}\n{}",
        simple_config(&[server], "", "    protocol: http2")
    ));
    every_kind_of_call(client(&proxy).await).await;

    // Per-method counters: one call of each (status in trailers), and one NOT_FOUND
    // (trailers-only).
    // A call is counted when its exchange ends, a moment after the client has the answer.
    let lines: Vec<String> = [("Unary", "0"), ("Unary", "5"), ("Collect", "0"), ("Count", "0"), ("Chat", "0")]
        .iter()
        .map(|(method, status)| format!(
            "rustng_grpc_requests_total{{listener=\"main\",service=\"rustng.test.Echo\",method=\"{method}\",grpc_status=\"{status}\"}} 1"
        ))
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let metrics = crate::client::get(
            &crate::client::http1(),
            &format!("http://127.0.0.1:{admin}/metrics"),
        )
        .await
        .text();
        if lines.iter().all(|l| metrics.contains(l)) || std::time::Instant::now() > deadline {
            break metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for line in &lines {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    task.abort();
}

/// A tonic client's unary call (and an error status), client streaming, server streaming
/// and bidirectional streaming through `grpc`, whatever carries it (HTTP/2, HTTP/3).
pub(crate) async fn every_kind_of_call<T>(mut grpc: tonic::client::Grpc<T>)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let codec = ProstCodec::<Note, Note>::default;
    grpc.ready().await.map_err(Into::into).expect("ready");
    let echoed = grpc
        .unary(
            Request::new(Note {
                text: "hi".into(),
                seq: 1,
            }),
            PathAndQuery::from_static(UNARY),
            codec(),
        )
        .await
        .expect("unary");
    assert_eq!(
        echoed.metadata().get("x-served-by").expect("metadata"),
        "tonic"
    );
    let echoed = echoed.into_inner();
    assert_eq!((echoed.text.as_str(), echoed.seq), ("echo: hi", 2));
    grpc.ready().await.map_err(Into::into).expect("ready");
    let status = grpc
        .unary(
            Request::new(Note {
                text: "fail".into(),
                seq: 0,
            }),
            PathAndQuery::from_static(UNARY),
            codec(),
        )
        .await
        .expect_err("a status");
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such note");

    grpc.ready().await.map_err(Into::into).expect("ready");
    let notes = (1..=4).map(|seq| Note {
        text: format!("n{seq}"),
        seq,
    });
    let collected = grpc
        .client_streaming(
            Request::new(futures_util::stream::iter(notes)),
            PathAndQuery::from_static(COLLECT),
            codec(),
        )
        .await
        .expect("client streaming")
        .into_inner();
    assert_eq!(
        (collected.text.as_str(), collected.seq),
        ("n1+n2+n3+n4", 10)
    );

    grpc.ready().await.map_err(Into::into).expect("ready");
    let mut counted = grpc
        .server_streaming(
            Request::new(Note {
                text: "tick".into(),
                seq: 5,
            }),
            PathAndQuery::from_static(COUNT),
            codec(),
        )
        .await
        .expect("server streaming")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(note) = counted.message().await.expect("message") {
        seen.push(note.text);
    }
    assert_eq!(
        seen,
        ["tick #1", "tick #2", "tick #3", "tick #4", "tick #5"]
    );

    // Bidirectional: each reply must arrive before the next note is sent, so neither
    // direction may wait for the other's end.
    let (tx, rx) = tokio::sync::mpsc::channel::<Note>(1);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|n| (n, rx)) });
    tx.send(Note {
        text: "m1".into(),
        seq: 1,
    })
    .await
    .expect("send");
    grpc.ready().await.map_err(Into::into).expect("ready");
    let mut replies = grpc
        .streaming(
            Request::new(outgoing),
            PathAndQuery::from_static(BIDI),
            codec(),
        )
        .await
        .expect("stream opened")
        .into_inner();
    for seq in 1..=3u32 {
        if seq > 1 {
            tx.send(Note {
                text: format!("m{seq}"),
                seq,
            })
            .await
            .expect("send");
        }
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .expect("reply before the next send")
            .expect("message")
            .expect("not ended");
        assert_eq!((reply.text, reply.seq), (format!("M{seq}"), seq));
    }
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(5), replies.message())
        .await
        .expect("end in time")
        .expect("clean end with grpc-status 0 in the trailers");
    assert!(end.is_none());
}

async fn call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    request: Request<Note>,
) -> Result<Note, Status> {
    grpc.ready().await.expect("ready");
    grpc.unary(
        request,
        PathAndQuery::from_static(UNARY),
        ProstCodec::<Note, Note>::default(),
    )
    .await
    .map(Response::into_inner)
}

fn note(text: &str) -> Request<Note> {
    Request::new(Note {
        text: text.into(),
        seq: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustngs_own_answers_to_grpc_requests_are_grpc_statuses() {
    // Nothing listens on the endpoint: 502 for HTTP, UNAVAILABLE for gRPC, in trailers-only form.
    let closed = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        socket.local_addr().expect("addr")
    };
    let proxy = Rustng::start(&simple_config(&[closed], "", "    protocol: http2"));
    let mut grpc = client(&proxy).await;
    let status = call(&mut grpc, note("hi")).await.expect_err("no upstream");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "upstream connect error");
    // A plain HTTP client still gets the HTTP answer.
    let plain = crate::client::get(&crate::client::http1(), &proxy.url("/")).await;
    assert_eq!(plain.status, 502);

    // A filter's local response (ip-access: 403) becomes PERMISSION_DENIED.
    let (server, task) = start_server().await;
    let filtered = crate::harness::with_plugins(
        &format!(
            "workers: 1
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [deny]
clusters:
  - name: backend
    protocol: http2
    endpoints: [{{ address: '{server}' }}]
"
        ),
        &crate::stock_filters::deny_loopback(),
    );
    let proxy = Rustng::start(&filtered);
    let mut grpc = client(&proxy).await;
    let status = call(&mut grpc, note("hi")).await.expect_err("denied");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_bounds_the_request() {
    let (server, task) = start_server().await;
    let proxy = Rustng::start(&simple_config(&[server], "", "    protocol: http2"));
    // A raw h2c request: tonic would give up on its own at the same instant, which would
    // prove nothing about RustNg. The method takes 3 s; `grpc-timeout` allows 300 ms.
    let unary = |text: &str, timeout: Option<&'static str>| {
        let message = prost::Message::encode_to_vec(&Note {
            text: text.into(),
            seq: 0,
        });
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
        frame.extend_from_slice(&message);
        let mut request = http::Request::post(proxy.url(UNARY))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(timeout) = timeout {
            request = request.header("grpc-timeout", timeout);
        }
        request
            .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
            .expect("request")
    };
    let client = crate::client::h2c();
    let started = std::time::Instant::now();
    let reply = crate::client::send(&client, unary("slow", Some("300m"))).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["grpc-status"], "4",
        "DEADLINE_EXCEEDED: {:?}",
        reply.headers
    );
    assert_eq!(reply.headers["grpc-message"], "upstream request timeout");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    // Without a deadline the same kind of call is served (a fast one, to keep the test short).
    let reply = crate::client::send(&client, unary("hi", None)).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers.get("grpc-status").is_none(),
        "status comes in trailers"
    );
    task.abort();
}

/// A gRPC frame of `note`.
fn frame(note: &Note) -> Vec<u8> {
    let message = prost::Message::encode_to_vec(note);
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// Splits a gRPC-Web body into its frames: (flag, payload).
fn web_frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        frames.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "trailing bytes");
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_requests_are_translated_both_ways() {
    use base64::Engine as _;
    let (server, task) = start_server().await;
    let proxy = Rustng::start(&simple_config(
        &[server],
        "    http_filters: [envoy.filters.http.grpc_web]",
        "    protocol: http2",
    ));
    let client = crate::client::http1();
    let web = |content_type: &'static str, body: Vec<u8>| {
        http::Request::post(proxy.url(UNARY))
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("request")
    };
    let hello = Note {
        text: "web".into(),
        seq: 1,
    };

    // Binary: the message frame, then the trailers as a trailer frame in the body.
    let reply =
        crate::client::send(&client, web("application/grpc-web+proto", frame(&hello))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/grpc-web");
    let frames = web_frames(&reply.body);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].0, 0);
    let answer: Note = prost::Message::decode(frames[0].1.as_slice()).expect("message");
    assert_eq!(answer.text, "echo: web");
    assert_eq!(frames[1].0, 0x80);
    let trailer = String::from_utf8(frames[1].1.clone()).expect("text");
    assert!(trailer.contains("grpc-status:0\r\n"), "{trailer:?}");

    // Text: base64 both ways (sent in two padded segments, as some clients do).
    let raw = frame(&hello);
    let (first, second) = raw.split_at(4);
    let body = format!(
        "{}{}",
        base64::engine::general_purpose::STANDARD.encode(first),
        base64::engine::general_purpose::STANDARD.encode(second)
    );
    let reply =
        crate::client::send(&client, web("application/grpc-web-text", body.into_bytes())).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/grpc-web-text");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&reply.body)
        .expect("base64 body");
    let frames = web_frames(&decoded);
    assert_eq!(frames.len(), 2, "{frames:?}");
    let answer: Note = prost::Message::decode(frames[0].1.as_slice()).expect("message");
    assert_eq!(answer.text, "echo: web");

    // An error status from the server (trailers-only) stays in the head.
    let fail = Note {
        text: "fail".into(),
        seq: 0,
    };
    let reply = crate::client::send(&client, web("application/grpc-web", frame(&fail))).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["grpc-status"], "5");
    assert_eq!(reply.headers["content-type"], "application/grpc-web");

    // A request that is not gRPC-Web is not translated (the server's own gRPC answer).
    let plain = crate::client::get(&client, &proxy.url("/")).await;
    assert_eq!(plain.headers["content-type"], "application/grpc");
    task.abort();
}
