//! Upstream clusters as a worker sees them: endpoints, their connection pools and the load
//! balancer. Everything here belongs to one worker thread, so it is `Rc` and `RefCell`.

mod balancer;
pub(crate) mod breaker;
pub(crate) mod call;
mod cluster;
mod connect;
mod h1;
mod health;
pub(crate) mod health_check;
mod io;
mod pool;
mod request_body;
mod retry;
mod table;
mod tls;

pub(crate) use balancer::hash_key;
pub(crate) use breaker::{CircuitBreaker, Resource};
pub(crate) use cluster::{ClusterRt, H2Body, Outgoing, UpstreamBody, UpstreamResponse};
pub(crate) use h1::H1Body;
pub use health::HealthStatus;
pub(crate) use health::{ClusterHealth, EndpointHealth};
pub(crate) use request_body::{BoxError, BoxLocal, LocalBody, RequestBody};
pub(crate) use retry::RetryPolicy;
pub(crate) use retry::send as send_with_retries;
pub(crate) use table::ClusterTable;
pub(crate) use tls::UpstreamTls;
