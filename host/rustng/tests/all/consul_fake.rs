//! A fake Consul agent: Consul cannot run on this machine (not packaged for Debian, no
//! network to fetch it), so the `consul` adapter is tested against this server instead. It
//! speaks Consul's real wire protocol for the one endpoint the adapter uses:
//! `GET /v1/health/service/<name>` with `passing`, `tag`, `dc`, `index` and `wait`, answering
//! Consul's JSON shape (`Node`, `Service`, `Checks`) with `X-Consul-Index`, and blocking
//! queries as Consul runs them: a query whose `index` is not behind the catalog waits until
//! the catalog changes or `wait` passes, then answers with the current index.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Mutex, watch};

/// One instance of the service.
#[derive(Clone, Debug)]
pub(crate) struct Instance {
    pub(crate) id: &'static str,
    pub(crate) address: SocketAddr,
    pub(crate) weight: u32,
    pub(crate) passing: bool,
}

#[derive(Clone, Debug, Default)]
struct Catalog {
    index: u64,
    services: HashMap<String, Vec<Instance>>,
    /// Answer 500 instead, as an agent that lost its servers does.
    failing: bool,
}

pub(crate) struct FakeConsul {
    pub(crate) addr: SocketAddr,
    catalog: watch::Sender<Catalog>,
    queries: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeConsul {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeConsul {
    pub(crate) async fn start() -> FakeConsul {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake consul");
        let addr = listener.local_addr().expect("addr");
        let catalog = watch::Sender::new(Catalog {
            index: 1,
            ..Catalog::default()
        });
        let queries = Arc::new(Mutex::new(Vec::new()));
        let (c, q) = (catalog.subscribe(), Arc::clone(&queries));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (c, q) = (c.clone(), Arc::clone(&q));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, c.clone(), Arc::clone(&q))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeConsul {
            addr,
            catalog,
            queries,
            task,
        }
    }

    /// Replaces the service's instances; the catalog index moves on.
    pub(crate) fn set_service(&self, name: &str, instances: Vec<Instance>) {
        self.catalog.send_modify(|catalog| {
            catalog.index += 1;
            catalog.services.insert(name.to_owned(), instances);
        });
    }

    /// A restored or rebuilt Consul: the index starts again lower.
    pub(crate) fn reset_index(&self, index: u64) {
        self.catalog.send_modify(|catalog| catalog.index = index);
    }

    pub(crate) fn set_failing(&self, failing: bool) {
        self.catalog
            .send_modify(|catalog| catalog.failing = failing);
    }

    pub(crate) fn index(&self) -> u64 {
        self.catalog.borrow().index
    }

    /// Every query received (path and query string), in order.
    pub(crate) async fn queries(&self) -> Vec<String> {
        self.queries.lock().await.clone()
    }
}

fn parameters(query: &str) -> HashMap<&str, &str> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect()
}

/// Consul's duration format: `100ms`, `30s`, `5m`.
fn wait_of(text: &str) -> Duration {
    let parsed = if let Some(ms) = text.strip_suffix("ms") {
        ms.parse().ok().map(Duration::from_millis)
    } else if let Some(s) = text.strip_suffix('s') {
        s.parse().ok().map(Duration::from_secs)
    } else if let Some(m) = text.strip_suffix('m') {
        m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60))
    } else {
        None
    };
    // Consul's default and maximum.
    parsed
        .unwrap_or(Duration::from_secs(300))
        .min(Duration::from_secs(600))
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    mut catalog: watch::Receiver<Catalog>,
    queries: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    queries.lock().await.push(path_and_query);
    let Some(name) = req.uri().path().strip_prefix("/v1/health/service/") else {
        return Ok(reply(404, 0, "Invalid URL path"));
    };
    let name = name.replace("%20", " ");
    let query = req.uri().query().unwrap_or_default().to_owned();
    let parameters = parameters(&query);
    let index: u64 = parameters
        .get("index")
        .and_then(|i| i.parse().ok())
        .unwrap_or(0);
    if index > 0 && index >= catalog.borrow_and_update().index {
        let wait = wait_of(parameters.get("wait").copied().unwrap_or("5m"));
        let _ = tokio::time::timeout(wait, catalog.changed()).await;
    }
    let current = catalog.borrow().clone();
    if current.failing {
        return Ok(reply(
            500,
            current.index,
            "rpc error making call: No cluster leader",
        ));
    }
    let only_passing = parameters.contains_key("passing");
    let entries: Vec<serde_json::Value> = current
        .services
        .get(&name)
        .into_iter()
        .flatten()
        .filter(|instance| instance.passing || !only_passing)
        .map(|instance| entry(&name, instance))
        .collect();
    let body = serde_json::to_string(&entries).expect("json");
    Ok(reply(200, current.index, &body))
}

fn entry(service: &str, instance: &Instance) -> serde_json::Value {
    serde_json::json!({
        "Node": {
            "ID": "2b9b7c8e-6d33-4a3c-9ef6-6ff7b5b1d6a0",
            "Node": "node-1",
            "Address": instance.address.ip().to_string(),
            "Datacenter": "dc1",
            "TaggedAddresses": { "lan": instance.address.ip().to_string() },
            "Meta": {},
            "CreateIndex": 5,
            "ModifyIndex": 5
        },
        "Service": {
            "ID": instance.id,
            "Service": service,
            "Tags": ["test"],
            "Address": "",
            "Meta": {},
            "Port": instance.address.port(),
            "Weights": { "Passing": instance.weight, "Warning": 1 },
            "EnableTagOverride": false,
            "CreateIndex": 6,
            "ModifyIndex": 6
        },
        "Checks": [
            { "Node": "node-1", "CheckID": "serfHealth", "Name": "Serf Health Status",
              "Status": "passing", "ServiceID": "", "ServiceName": "" },
            { "Node": "node-1", "CheckID": format!("service:{}", instance.id),
              "Name": format!("Service '{service}' check"),
              "Status": if instance.passing { "passing" } else { "critical" },
              "ServiceID": instance.id, "ServiceName": service }
        ]
    })
}

fn reply(status: u16, index: u64, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-consul-index", index.to_string())
        .header("x-consul-knownleader", "true")
        .header("x-consul-lastcontact", "0")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("response")
}
