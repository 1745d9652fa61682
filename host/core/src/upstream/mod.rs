//! Upstream clusters as a worker sees them: endpoints, their connection pools and the load
//! balancer. Everything here belongs to one worker thread, so it is `Rc` and `RefCell`.

mod balancer;
mod cluster;
mod connect;
mod h1;
mod pool;
mod request_body;
mod retry;
mod table;

pub(crate) use cluster::{ClusterRt, Outgoing, UpstreamBody};
pub(crate) use h1::H1Body;
pub(crate) use request_body::{BoxError, BoxLocal, LocalBody, RequestBody};
pub(crate) use retry::RetryPolicy;
pub(crate) use retry::send as send_with_retries;
pub(crate) use table::ClusterTable;
