//! `rustng.control.v1.ControlPlane` both ways. Served by RustNg on its admin port
//! (`ApplyConfig`, `StreamConfig` with ACK/NACK per document, `WatchConfig`), with the admin
//! API's tokens and audit. And RustNg subscribing to a control plane: the server here is the
//! test's own implementation of `Subscribe` over the same proto (the real protocol; RustNg is
//! the real binary), stopped and restarted while traffic flows.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::Stream;
use rustng_admin::proto::control_plane_client::ControlPlaneClient;
use rustng_admin::proto::control_plane_server::{ControlPlane, ControlPlaneServer};
use rustng_admin::proto::{ApplyResult, ConfigDocument, ConfigVersion, WatchRequest};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::admin_api::{ADMIN_TOKEN, READ_TOKEN, start};
use crate::client;
use crate::harness::{Rustng, free_port};
use crate::origin::Origin;

fn authorized<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
    }
    request
}

async fn admin_client(url: &str) -> ControlPlaneClient<Channel> {
    let channel = Channel::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect to the admin port");
    ControlPlaneClient::new(channel)
}

fn document(yaml: &str, nonce: &str) -> ConfigDocument {
    ConfigDocument {
        yaml: yaml.to_owned(),
        nonce: nonce.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_serves_the_control_plane_api() {
    let origin = Origin::start("o").await;
    let admin = start(&origin, false);
    let mut client = admin_client(&admin.url).await;
    let running = client::get(&client::http1(), &format!("{}/v1/config", admin.url)).await;
    assert_eq!(running.status, 401, "REST answers on the same port");
    let yaml = {
        let reply = crate::client::send(
            &client::http1(),
            http::Request::get(format!("{}/v1/config", admin.url))
                .header("authorization", format!("Bearer {READ_TOKEN}"))
                .body(http_body_util::Full::default())
                .expect("request"),
        )
        .await;
        reply.json()["yaml"].as_str().expect("yaml").to_owned()
    };
    let two = yaml.replace("value: one", "value: two");
    let three = yaml.replace("value: one", "value: three");
    let broken = yaml.replace("default_cluster: backend", "default_cluster: nowhere");

    // Auth: none, read role, then admin.
    let none = client
        .apply_config(authorized(document(&two, "a"), None))
        .await
        .expect_err("unauthenticated");
    assert_eq!(none.code(), Code::Unauthenticated);
    let read = client
        .apply_config(authorized(document(&two, "a"), Some(READ_TOKEN)))
        .await
        .expect_err("read role");
    assert_eq!(read.code(), Code::PermissionDenied);

    let mut watch = client
        .watch_config(authorized(WatchRequest {}, Some(READ_TOKEN)))
        .await
        .expect("watch")
        .into_inner();
    let first: ConfigVersion = next(&mut watch).await;
    assert_eq!(first.version, 1);
    assert!(first.yaml.contains("name: hdr"));

    let applied = client
        .apply_config(authorized(document(&two, "n-two"), Some(ADMIN_TOKEN)))
        .await
        .expect("apply")
        .into_inner();
    assert!(applied.applied && applied.changed, "{applied:?}");
    assert_eq!((applied.version, applied.nonce.as_str()), (2, "n-two"));
    assert_eq!(admin.generation_tag().await, "two");
    let second = next(&mut watch).await;
    assert_eq!(second.version, 2);
    assert_eq!(second.origin, "api (ops)");

    // A stream of documents, answered in order: NACK, ACK, ACK without a change.
    let (documents, outbound) = mpsc::channel(4);
    for (yaml, nonce) in [(&broken, "bad"), (&three, "three"), (&three, "again")] {
        documents.send(document(yaml, nonce)).await.expect("queue");
    }
    drop(documents);
    let outbound = futures_util::stream::unfold(outbound, |mut rx| async move {
        rx.recv().await.map(|d| (d, rx))
    });
    let mut answers = client
        .stream_config(authorized(outbound, Some(ADMIN_TOKEN)))
        .await
        .expect("stream")
        .into_inner();
    let nack: ApplyResult = next(&mut answers).await;
    assert!(!nack.applied && nack.nonce == "bad", "{nack:?}");
    assert_eq!(nack.version, 2);
    assert_eq!(nack.errors[0].path, "listeners[0].default_cluster");
    let ack = next(&mut answers).await;
    assert!(
        ack.applied && ack.changed && ack.version == 3 && ack.nonce == "three",
        "{ack:?}"
    );
    let same = next(&mut answers).await;
    assert!(
        same.applied && !same.changed && same.version == 3,
        "{same:?}"
    );
    assert_eq!(admin.generation_tag().await, "three");
    assert_eq!(next(&mut watch).await.version, 3);

    let subscribe = client
        .subscribe(authorized(futures_util::stream::empty(), Some(ADMIN_TOKEN)))
        .await
        .expect_err("not served by RustNg");
    assert_eq!(subscribe.code(), Code::Unimplemented);

    // Audit: the two refusals, the apply, and the three streamed documents.
    let results = admin.audit_actions();
    assert_eq!(
        results,
        [
            "gRPC ApplyConfig unauthorized",
            "gRPC ApplyConfig forbidden",
            "gRPC ApplyConfig ok",
            "gRPC StreamConfig refused",
            "gRPC StreamConfig ok",
            "gRPC StreamConfig ok",
        ]
    );
}

/// The next message of a stream, within ten seconds.
async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message in time")
        .expect("no error")
        .expect("the stream goes on")
}

/// One subscriber's stream, as the test's control plane sees it.
struct Session {
    hello: ApplyResult,
    documents: mpsc::Sender<Result<ConfigDocument, Status>>,
    answers: Streaming<ApplyResult>,
}

/// The control plane's side of `Subscribe`: each stream becomes a [`Session`] for the test.
struct TestControlPlane {
    sessions: mpsc::UnboundedSender<Session>,
}

type Documents = Pin<Box<dyn Stream<Item = Result<ConfigDocument, Status>> + Send>>;
type Never<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ControlPlane for TestControlPlane {
    async fn apply_config(
        &self,
        _: Request<ConfigDocument>,
    ) -> Result<Response<ApplyResult>, Status> {
        Err(Status::unimplemented("test control plane"))
    }

    type StreamConfigStream = Never<ApplyResult>;

    async fn stream_config(
        &self,
        _: Request<Streaming<ConfigDocument>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        Err(Status::unimplemented("test control plane"))
    }

    type WatchConfigStream = Never<ConfigVersion>;

    async fn watch_config(
        &self,
        _: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        Err(Status::unimplemented("test control plane"))
    }

    type SubscribeStream = Documents;

    async fn subscribe(
        &self,
        request: Request<Streaming<ApplyResult>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if token.as_deref() != Some("Bearer cp-token") {
            return Err(Status::unauthenticated("bad token"));
        }
        let mut answers = request.into_inner();
        let hello = answers
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no hello"))?;
        let (documents, outbound) = mpsc::channel(8);
        let _ = self.sessions.send(Session {
            hello,
            documents,
            answers,
        });
        let outbound = futures_util::stream::unfold(outbound, |mut rx| async move {
            rx.recv().await.map(|d| (d, rx))
        });
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// Serves the test control plane on `addr` until the task is aborted.
fn serve_control_plane(
    addr: SocketAddr,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::UnboundedReceiver<Session>,
) {
    let (sessions, received) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let service = ControlPlaneServer::new(TestControlPlane { sessions });
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve(addr)
            .await;
    });
    (task, received)
}

async fn next_session(sessions: &mut mpsc::UnboundedReceiver<Session>) -> Session {
    tokio::time::timeout(Duration::from_secs(15), sessions.recv())
        .await
        .expect("RustNg subscribed in time")
        .expect("session")
}

/// Two clusters, `cluster` the default, subscribed to the control plane at `cp`.
fn subscribed_config(
    cluster: &str,
    a: SocketAddr,
    b: SocketAddr,
    cp: SocketAddr,
    token: &std::path::Path,
) -> String {
    crate::reload::two_clusters(
        a,
        b,
        cluster,
        &format!(
            "control_plane: {{ address: 'http://{cp}', node: edge-1, token_file: {} }}\n",
            token.display()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribed_rustng_keeps_serving_while_its_control_plane_is_away() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let files = tempfile::tempdir().expect("tempdir");
    let token = files.path().join("cp-token");
    std::fs::write(&token, "cp-token\n").expect("token");
    let cp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let (server, mut sessions) = serve_control_plane(cp);
    let proxy = Rustng::start(&subscribed_config("a", a.addr, b.addr, cp, &token));
    let client = client::http1();
    assert_eq!(crate::reload::answering(&client, &proxy).await, "a");

    let mut session = next_session(&mut sessions).await;
    assert_eq!(
        (session.hello.node.as_str(), session.hello.version),
        ("edge-1", 1)
    );
    let listen = proxy.addr.to_string();
    let to_b = subscribed_config("b", a.addr, b.addr, cp, &token).replace("{listen}", &listen);
    session
        .documents
        .send(Ok(document(&to_b, "v-b")))
        .await
        .expect("send");
    let ack = next(&mut session.answers).await;
    assert!(
        ack.applied && ack.version == 2 && ack.nonce == "v-b",
        "{ack:?}"
    );
    assert_eq!(crate::reload::answering(&client, &proxy).await, "b");
    let broken = to_b.replace("default_cluster: b", "default_cluster: c");
    session
        .documents
        .send(Ok(document(&broken, "bad")))
        .await
        .expect("send");
    let nack = next(&mut session.answers).await;
    assert!(!nack.applied && nack.version == 2, "{nack:?}");
    assert_eq!(nack.errors[0].path, "listeners[0].default_cluster");

    // Traffic flows while the control plane goes away and comes back.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
        let url = proxy.url("/echo");
        tokio::spawn(async move {
            let client = client::http1();
            let mut failures = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let reply = client
                    .request(
                        http::Request::get(&url)
                            .body(http_body_util::Full::default())
                            .expect("request"),
                    )
                    .await;
                match reply {
                    Ok(r) if r.status() == 200 => {}
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(e.to_string()),
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            failures
        })
    };
    server.abort();
    drop(session);
    let _ = server.await;
    assert!(
        proxy.log_eventually_contains("control plane"),
        "{}",
        proxy.log()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (server, mut sessions) = serve_control_plane(cp);
    let mut session = next_session(&mut sessions).await;
    assert_eq!(
        session.hello.version, 2,
        "the last good version ran meanwhile"
    );
    let to_a = subscribed_config("a", a.addr, b.addr, cp, &token).replace("{listen}", &listen);
    session
        .documents
        .send(Ok(document(&to_a, "v-a")))
        .await
        .expect("send");
    let ack = next(&mut session.answers).await;
    assert!(ack.applied && ack.version == 3, "{ack:?}");
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.expect("load");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        served.load(Ordering::Relaxed) > 50,
        "traffic flowed throughout"
    );
    assert_eq!(crate::reload::answering(&client, &proxy).await, "a");
    let history = proxy.log();
    assert!(
        history.contains("control plane unreachable") || history.contains("closed the stream"),
        "{history}"
    );
    server.abort();
}
