//! One applied config version, as every worker builds its state from it.

use std::collections::HashMap;
use std::sync::Arc;

use rustng_runtime_config::{Config, Listener};

use crate::filters::LoadedPlugin;
use crate::listener::ConnectionLimit;
use crate::stats::RequestStats;
use crate::upstream::{CircuitBreaker, ClusterHealth, EndpointHealth};

/// An applied config version with everything prepared that may fail or take time (TLS
/// material, compiled and canaried plugins), so that switching a worker to it cannot fail and
/// takes microseconds. Immutable; shared by every worker and the admin server.
pub(crate) struct Snapshot {
    pub(crate) version: u64,
    pub(crate) config: Arc<Config>,
    /// In config order.
    pub(crate) listeners: Vec<ListenerSpec>,
    /// The generation each configured plugin runs, by plugin name.
    pub(crate) plugins: HashMap<String, Arc<LoadedPlugin>>,
    /// What each cluster keeps across versions for the same name.
    pub(crate) cluster_state: HashMap<String, ClusterShared>,
    /// Tracing settings, when the config has them.
    pub(crate) tracer: Option<Arc<crate::trace::Tracer>>,
}

/// A cluster's state that outlives versions: its counters, and the endpoints an operator
/// drained by hand (no new requests; by address, so they stay drained across versions).
#[derive(Clone)]
pub(crate) struct ClusterShared {
    pub(crate) stats: Arc<RequestStats>,
    /// Requests per endpoint address (counts only: no histogram per endpoint).
    pub(crate) endpoints: HashMap<std::net::SocketAddr, Arc<RequestStats>>,
    pub(crate) drained: Arc<arc_swap::ArcSwap<std::collections::HashSet<std::net::SocketAddr>>>,
    /// Each endpoint's health (active checks, ejections), by address.
    pub(crate) health: HashMap<std::net::SocketAddr, Arc<EndpointHealth>>,
    /// The cluster's health totals.
    pub(crate) cluster_health: Arc<ClusterHealth>,
    /// What the cluster has in flight, against its circuit breakers.
    pub(crate) breaker: Arc<CircuitBreaker>,
    /// TLS to the endpoints, built from the cluster's `tls` when the version was prepared.
    pub(crate) tls: Option<Arc<crate::upstream::UpstreamTls>>,
}

impl ClusterShared {
    pub(crate) fn new(workers: usize) -> Self {
        ClusterShared {
            stats: RequestStats::new(workers),
            endpoints: HashMap::new(),
            drained: Arc::default(),
            health: HashMap::new(),
            cluster_health: Arc::default(),
            breaker: Arc::default(),
            tls: None,
        }
    }

    /// The same cluster state for a version with these endpoint addresses: counters kept for
    /// addresses it had, new ones for the rest.
    pub(crate) fn for_endpoints(
        &self,
        addresses: impl Iterator<Item = std::net::SocketAddr>,
        workers: usize,
    ) -> ClusterShared {
        let addresses: Vec<std::net::SocketAddr> = addresses.collect();
        let health: HashMap<_, _> = addresses
            .iter()
            .map(|address| {
                let health = self
                    .health
                    .get(address)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointHealth::new(*address)));
                (*address, health)
            })
            .collect();
        self.cluster_health
            .recount(health.values().map(AsRef::as_ref));
        ClusterShared {
            stats: Arc::clone(&self.stats),
            endpoints: addresses
                .iter()
                .map(|address| {
                    let stats = self
                        .endpoints
                        .get(address)
                        .map_or_else(|| RequestStats::new(workers), Arc::clone);
                    (*address, stats)
                })
                .collect(),
            drained: Arc::clone(&self.drained),
            health,
            cluster_health: Arc::clone(&self.cluster_health),
            breaker: Arc::clone(&self.breaker),
            tls: self.tls.clone(),
        }
    }
}

/// A listener of a version, with the state that outlives versions.
#[derive(Clone)]
pub(crate) struct ListenerSpec {
    pub(crate) config: Listener,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// The QUIC settings of the listener's HTTP/3 side, if it has one.
    pub(crate) quic: Option<Arc<quinn::ServerConfig>>,
    /// Kept across versions for the same listener name: it counts open connections.
    pub(crate) limit: Arc<ConnectionLimit>,
    /// Downstream request counters, kept across versions for the same listener name.
    pub(crate) stats: Arc<RequestStats>,
    /// Per-method gRPC counters, kept likewise.
    pub(crate) grpc: Arc<crate::grpc_stats::GrpcStats>,
}
