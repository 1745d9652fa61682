//! A fake Kubernetes API server: a real one cannot run on this machine, so the `kubernetes`
//! adapter is tested against this server instead. It speaks the API server's wire protocol
//! for what the adapter uses: HTTPS, bearer-token authentication (401 with a `Status`
//! otherwise), `GET /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices` with a
//! `kubernetes.io/service-name` label selector as a list (`EndpointSliceList` with its
//! `resourceVersion`) or as a watch (`watch=1`, `resourceVersion`, `timeoutSeconds`,
//! `allowWatchBookmarks`): newline-delimited `ADDED` / `MODIFIED` / `DELETED` events after
//! the given version, streamed as they happen until the timeout, and an `ERROR` event with a
//! `410 Expired` status for a version older than the history kept (after a compaction).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Mutex, watch};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Clone, Default)]
struct Store {
    version: u64,
    /// (namespace, name) → slice.
    slices: BTreeMap<(String, String), serde_json::Value>,
    /// Every change: (version, event type, slice).
    history: Vec<(u64, &'static str, serde_json::Value)>,
    /// Versions below this are compacted away: a watch from them is `410 Expired`.
    oldest: u64,
    token: String,
}

pub(crate) struct FakeKubeApi {
    pub(crate) addr: SocketAddr,
    store: watch::Sender<Store>,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKubeApi {
    /// Serves HTTPS with the certificate `name` (`<dir>/<name>.crt` and `.key`), accepting
    /// `token`.
    pub(crate) async fn start(dir: &std::path::Path, name: &str, token: &str) -> FakeKubeApi {
        let acceptor = crate::tls::acceptor(dir, name);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let store = watch::Sender::new(Store {
            version: 1,
            oldest: 1,
            token: token.to_owned(),
            ..Store::default()
        });
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (store.clone(), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, s, r) = (acceptor.clone(), s.clone(), Arc::clone(&r));
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, s.clone(), Arc::clone(&r))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FakeKubeApi {
            addr,
            store,
            requests,
            task,
        }
    }

    /// Creates or replaces the slice `name` of Service `service` in `namespace`: `endpoints`
    /// are (address, ready), all on port `http` = `port`.
    pub(crate) fn put_slice(
        &self,
        namespace: &str,
        service: &str,
        name: &str,
        port: u16,
        endpoints: &[(&str, bool)],
    ) {
        self.store.send_modify(|store| {
            store.version += 1;
            let slice = serde_json::json!({
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "resourceVersion": store.version.to_string(),
                    "labels": { "kubernetes.io/service-name": service },
                    "ownerReferences": [{ "apiVersion": "v1", "kind": "Service", "name": service }]
                },
                "addressType": "IPv4",
                "endpoints": endpoints.iter().map(|(address, ready)| serde_json::json!({
                    "addresses": [address],
                    "conditions": { "ready": ready, "serving": ready, "terminating": false },
                    "nodeName": "node-1",
                    "zone": "zone-a",
                    "targetRef": { "kind": "Pod", "namespace": namespace, "name": format!("{name}-pod") }
                })).collect::<Vec<_>>(),
                "ports": [{ "name": "http", "protocol": "TCP", "port": port }]
            });
            let key = (namespace.to_owned(), name.to_owned());
            let kind = if store.slices.contains_key(&key) { "MODIFIED" } else { "ADDED" };
            store.history.push((store.version, kind, slice.clone()));
            store.slices.insert(key, slice);
        });
    }

    pub(crate) fn delete_slice(&self, namespace: &str, name: &str) {
        self.store.send_modify(|store| {
            if let Some(mut slice) = store
                .slices
                .remove(&(namespace.to_owned(), name.to_owned()))
            {
                store.version += 1;
                slice["metadata"]["resourceVersion"] = store.version.to_string().into();
                store.history.push((store.version, "DELETED", slice));
            }
        });
    }

    /// Forgets the history and moves past it, as an API server whose watch cache was
    /// rebuilt: watches open now end with `410 Expired`, and so does any watch from a version
    /// before now.
    pub(crate) fn compact(&self) {
        self.store.send_modify(|store| {
            store.history.clear();
            store.version += 1;
            store.oldest = store.version + 1;
        });
    }

    /// From now on only `token` is accepted.
    pub(crate) fn set_token(&self, token: &str) {
        self.store
            .send_modify(|store| store.token = token.to_owned());
    }

    /// Every request: its path and query, and whether it was authorized.
    pub(crate) async fn requests(&self) -> Vec<String> {
        self.requests.lock().await.clone()
    }
}

fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code
    })
}

fn json_reply(code: u16, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .expect("response")
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    store: watch::Sender<Store>,
    requests: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Body>, Infallible> {
    let uri = req.uri().clone();
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", store.borrow().token));
    requests.lock().await.push(format!(
        "{} {}",
        if authorized { "authorized" } else { "denied" },
        uri.path_and_query().map(|p| p.as_str()).unwrap_or_default()
    ));
    if !authorized {
        return Ok(json_reply(
            401,
            &status(401, "Unauthorized", "Unauthorized"),
        ));
    }
    let Some(namespace) = uri
        .path()
        .strip_prefix("/apis/discovery.k8s.io/v1/namespaces/")
        .and_then(|rest| rest.strip_suffix("/endpointslices"))
        .map(str::to_owned)
    else {
        return Ok(json_reply(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ));
    };
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%2F", "/").replace("%3D", "=")))
        .collect();
    let Some(service) = query
        .get("labelSelector")
        .and_then(|s| s.strip_prefix("kubernetes.io/service-name="))
        .map(str::to_owned)
    else {
        return Ok(json_reply(
            400,
            &status(
                400,
                "BadRequest",
                "a service-name label selector is required",
            ),
        ));
    };
    let matches = move |slice: &serde_json::Value| {
        slice["metadata"]["namespace"] == namespace.as_str()
            && slice["metadata"]["labels"]["kubernetes.io/service-name"] == service.as_str()
    };
    if query.get("watch").map(String::as_str) != Some("1") {
        let current = store.borrow().clone();
        let items: Vec<&serde_json::Value> =
            current.slices.values().filter(|s| matches(s)).collect();
        return Ok(json_reply(
            200,
            &serde_json::json!({
                "kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1",
                "metadata": { "resourceVersion": current.version.to_string() },
                "items": items
            }),
        ));
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timeout = Duration::from_secs(
        query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
    let mut changes = store.subscribe();
    tokio::spawn(async move {
        let line = |kind: &str, object: &serde_json::Value| {
            Ok(Frame::data(Bytes::from(
                serde_json::json!({ "type": kind, "object": object }).to_string() + "\n",
            )))
        };
        let mut sent = from;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let current = changes.borrow_and_update().clone();
            if sent + 1 < current.oldest {
                let expired = status(
                    410,
                    "Expired",
                    &format!("too old resource version: {sent} ({})", current.oldest),
                );
                let _ = sender.send(line("ERROR", &expired)).await;
                return;
            }
            let after = sent;
            for (version, kind, slice) in current.history.iter().filter(|(v, _, _)| *v > after) {
                if matches(slice) && sender.send(line(kind, slice)).await.is_err() {
                    return;
                }
                sent = *version;
            }
            sent = sent.max(current.version);
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stream = tokio_stream_from(receiver);
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("response"))
}

/// The receiver as a stream of body frames.
fn tokio_stream_from(
    receiver: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_util::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|frame| (frame, receiver))
    })
}
