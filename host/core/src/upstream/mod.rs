//! Upstream clusters as a worker sees them: endpoints, their connection pools and the load
//! balancer. Everything here belongs to one worker thread, so it is `Rc` and `RefCell`.

mod balancer;
mod cluster;
mod connect;
mod pool;

pub(crate) use cluster::{ClusterRt, PoolReturn};
