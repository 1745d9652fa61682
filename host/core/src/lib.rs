//! RustNg native core: listeners, TLS, the HTTP/1.1 and HTTP/2 codecs, upstream pools and load
//! balancing, and the per-request proxy pipeline.
//!
//! Thread per core: [`Server::run`] starts `workers` threads, each with a current-thread tokio
//! runtime, its own `SO_REUSEPORT` accept socket per listener and its own upstream pools. A
//! request never leaves the thread that accepted it, so per-request state is `Rc`/`Cell` and
//! the hot path takes no lock.

mod access_log;
mod body;
mod connection;
mod control;
mod discovery;
mod downstream_body;
mod error;
mod filtered;
mod filters;
mod grpc;
mod grpc_stats;
mod grpc_web;
mod h1;
mod h3;
mod head_timeout;
mod headers;
mod inherited;
mod listener;
mod local_exec;
mod proxy;
mod read_file;
mod registry;
mod request_id;
mod resolve;
mod server;
mod snapshot;
mod sniff;
mod stats;
mod tcp_proxy;
mod telemetry;
mod tls;
mod trace;
mod tunnel;
mod upstream;
mod worker;

pub use control::{
    Applied, ApplyError, ClusterInfo, ConfigDocument, Controller, DrainError, EndpointInfo,
    HandoverState, Origin, PluginGenerationInfo, VersionRecord,
};
pub use error::{CoreError, ErrorKind, ErrorSource, ProxyError};
pub use inherited::{InheritedListener, InheritedQuic, InheritedSockets};
pub use server::{Server, ShutdownHandle};
pub use telemetry::Telemetry;
pub use upstream::HealthStatus;
