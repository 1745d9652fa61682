//! Discovery: adapters (singleton proxy-wasm plugins) publish each cluster's endpoint set with
//! the foreign function `rustng.set_endpoints`; the control thread swaps the set in, and this
//! module's thread runs the adapters, once per process, beside the workers.
//!
//! The adapter thread is a worker without listeners: its own runtime, its own cluster table
//! (adapters reach registries through clusters with `proxy_http_call` and `proxy_grpc_*`),
//! and one instance of every adapter, started and retired as config versions change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustng_abi::Status;
use rustng_abi::extensions::MAX_PUBLISHED_ENDPOINTS;
use rustng_runtime_config::Endpoint;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::control::Command;
use crate::filters::Filter;
use crate::snapshot::Snapshot;
use crate::upstream::ClusterTable;

/// `rustng.set_endpoints`'s argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishedSet {
    cluster: String,
    endpoints: Vec<PublishedEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishedEndpoint {
    address: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    zone: String,
    #[serde(default)]
    metadata: serde_json::Value,
    #[serde(default = "yes")]
    healthy: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

/// A checked endpoint set for a cluster, as the control thread applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EndpointSet {
    pub(crate) cluster: String,
    pub(crate) endpoints: Vec<Endpoint>,
    /// Listed, but out of rotation: the registry says unhealthy.
    pub(crate) unhealthy: Vec<SocketAddr>,
}

/// Checks a published set; the reason when it is malformed.
pub(crate) fn parse_set(argument: &[u8]) -> Result<EndpointSet, String> {
    let published: PublishedSet =
        serde_json::from_slice(argument).map_err(|e| format!("not an endpoint set: {e}"))?;
    if published.endpoints.len() > MAX_PUBLISHED_ENDPOINTS {
        return Err(format!(
            "{} endpoints; at most {MAX_PUBLISHED_ENDPOINTS}",
            published.endpoints.len()
        ));
    }
    let mut endpoints = Vec::with_capacity(published.endpoints.len());
    let mut unhealthy = Vec::new();
    for (i, e) in published.endpoints.iter().enumerate() {
        let address: SocketAddr = e
            .address
            .parse()
            .map_err(|_| format!("endpoints[{i}].address: \"{}\" is not ip:port", e.address))?;
        if e.weight == 0 {
            return Err(format!("endpoints[{i}].weight: must be at least 1"));
        }
        if endpoints
            .iter()
            .any(|known: &Endpoint| known.address == address)
        {
            return Err(format!("endpoints[{i}].address: {address} is listed twice"));
        }
        // Zone and metadata are accepted for the adapters' sake; balancing does not use them.
        let _ = (&e.zone, &e.metadata);
        if !e.healthy {
            unhealthy.push(address);
        }
        endpoints.push(Endpoint {
            address,
            weight: e.weight,
        });
    }
    Ok(EndpointSet {
        cluster: published.cluster,
        endpoints,
        unhealthy,
    })
}

/// The `rustng.set_endpoints` foreign function: checks the set at once (a malformed one is
/// `BAD_ARGUMENT` to the adapter) and hands it to the control thread.
pub(crate) fn set_endpoints_function(
    commands: mpsc::UnboundedSender<Command>,
) -> rustng_wasm::ForeignFunction {
    Arc::new(
        move |plugin: &str, argument: &[u8]| match parse_set(argument) {
            Ok(set) => {
                commands
                    .send(Command::SetEndpoints(plugin.to_owned(), set))
                    .map_err(|_| Status::InternalFailure)?;
                Ok(Vec::new())
            }
            Err(reason) => {
                tracing::warn!(plugin, %reason, "refused endpoint set; the cluster keeps its last good set");
                Err(Status::BadArgument)
            }
        },
    )
}

/// Starts the adapter thread; it follows every published snapshot and ends with the control
/// side.
pub(crate) fn start(
    current: Arc<ArcSwap<Snapshot>>,
    mut published: watch::Receiver<u64>,
) -> std::io::Result<()> {
    crate::local_exec::spawn_thread("rustng-discovery", move || async move {
        let clusters = Rc::new(ClusterTable::default());
        let mut adapters: HashMap<String, Rc<Filter>> = HashMap::new();
        let mut answers = crate::resolve::answer_here();
        let mut snapshot = current.load_full();
        clusters.update(&snapshot.config.clusters, &snapshot.cluster_state, 0);
        sync(&snapshot, &clusters, &mut adapters);
        loop {
            tokio::select! {
                changed = published.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    snapshot = current.load_full();
                    clusters.update(&snapshot.config.clusters, &snapshot.cluster_state, 0);
                    sync(&snapshot, &clusters, &mut adapters);
                }
                Some(answer) = answers.recv() => {
                    // An adapter replaced since it asked gets its successor's answer; adapters
                    // ignore tokens they did not issue.
                    if let Some(adapter) = adapters.get(&answer.plugin) {
                        adapter.deliver_foreign_answer(answer.token, answer.bytes);
                    }
                }
            }
        }
        for (_, adapter) in adapters {
            adapter.retire();
        }
    })
}

/// Starts adapters that are new or changed, retires the ones that left.
fn sync(
    snapshot: &Snapshot,
    clusters: &Rc<ClusterTable>,
    adapters: &mut HashMap<String, Rc<Filter>>,
) {
    let mut next = HashMap::new();
    for (name, plugin) in snapshot.plugins.iter().filter(|(_, p)| p.is_singleton()) {
        let adapter = match adapters.remove(name) {
            Some(kept) if Arc::ptr_eq(kept.plugin(), plugin) => kept,
            replaced => {
                if let Some(old) = replaced {
                    old.retire();
                }
                // Before it starts: its first callbacks may read the files it names.
                crate::read_file::allow(name, &plugin.spec().configuration);
                let started = Filter::start(Arc::clone(plugin), Rc::clone(clusters));
                if started.is_running() {
                    tracing::info!(plugin = %name, "discovery adapter started");
                }
                started
            }
        };
        next.insert(name.clone(), adapter);
    }
    for (name, gone) in adapters.drain() {
        tracing::info!(plugin = %name, "discovery adapter stopped");
        crate::read_file::forget(&name);
        gone.retire();
    }
    *adapters = next;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_checked() {
        let set = parse_set(
            br#"{"cluster": "b", "endpoints": [
                {"address": "10.0.0.1:80"},
                {"address": "10.0.0.2:80", "weight": 3, "zone": "z", "metadata": {"k": 1}, "healthy": false}]}"#,
        )
        .expect("valid");
        assert_eq!(set.cluster, "b");
        assert_eq!(set.endpoints[1].weight, 3);
        assert_eq!(set.unhealthy, vec!["10.0.0.2:80".parse().expect("addr")]);
        for (bad, reason) in [
            (&br#"{"cluster": "b"}"#[..], "not an endpoint set"),
            (br#"{"cluster": "b", "endpoints": [{"address": "x"}]}"#, "is not ip:port"),
            (br#"{"cluster": "b", "endpoints": [{"address": "10.0.0.1:80", "weight": 0}]}"#, "at least 1"),
            (br#"{"cluster": "b", "endpoints": [{"address": "10.0.0.1:80"}, {"address": "10.0.0.1:80"}]}"#, "listed twice"),
            (br#"{"cluster": "b", "endpoints": [], "extra": 1}"#, "unknown field"),
        ] {
            let error = parse_set(bad).expect_err("refused");
            assert!(error.contains(reason), "{error}");
        }
    }
}
