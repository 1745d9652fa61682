//! A worker's clusters by name, replaced whole when a new config version arrives.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use rustng_runtime_config::Cluster;

use super::ClusterRt;
use crate::snapshot::ClusterShared;

/// The clusters one worker runs. Lookups (a router naming a cluster, a plugin's HTTP call) see
/// the current version; a request that already holds its `ClusterRt` keeps it, so a cluster
/// that changed is dropped once its last request ends. Its endpoints' pools go over to the
/// new version where the address stays (and the pool settings did not change); the rest
/// close with it.
#[derive(Default)]
pub(crate) struct ClusterTable {
    current: RefCell<Rc<HashMap<String, Rc<ClusterRt>>>>,
}

impl ClusterTable {
    pub(crate) fn get(&self, name: &str) -> Option<Rc<ClusterRt>> {
        self.current.borrow().get(name).cloned()
    }

    /// Every cluster of the current version.
    pub(crate) fn all(&self) -> Rc<HashMap<String, Rc<ClusterRt>>> {
        Rc::clone(&self.current.borrow())
    }

    /// Switches to `clusters`. A cluster whose config did not change keeps its `ClusterRt`,
    /// and with it its pools and balancer position.
    pub(crate) fn update(
        &self,
        clusters: &[Cluster],
        shared: &HashMap<String, ClusterShared>,
        worker: usize,
    ) {
        let old = self.all();
        let next = clusters
            .iter()
            .map(|config| {
                let cluster = match old.get(&config.name) {
                    Some(kept) if kept.config() == config => Rc::clone(kept),
                    previous => {
                        let shared = shared
                            .get(&config.name)
                            .cloned()
                            .unwrap_or_else(|| ClusterShared::new(1));
                        Rc::new(ClusterRt::new(
                            config.clone(),
                            shared,
                            worker,
                            previous.map(|p| &**p),
                        ))
                    }
                };
                (config.name.clone(), cluster)
            })
            .collect();
        *self.current.borrow_mut() = Rc::new(next);
    }
}
