//! End-to-end tests: the real `rustng` binary on 127.0.0.1 in front of in-process origins.
//! One test binary for the whole crate keeps link time down.

// The bans in clippy.toml protect worker threads. Tests run on tokio's multi-thread runtime,
// where spawning is fine, and block only their own threads while waiting for a process.
#![allow(clippy::disallowed_methods)]

mod client;
mod consul_fake;
mod dnsmasq;
mod envoy;
mod etcd;
mod harness;
mod kube_fake;
mod origin;

mod admin_api;
mod balancing;
mod cli;
mod conformance;
mod control_plane;
mod discovery;
mod discovery_consul;
mod discovery_dns;
mod discovery_etcd;
mod discovery_kubernetes;
mod grpc;
mod h1_upstream;
mod http3;
mod jwt_authn;
mod limits;
mod metrics;
mod plugins;
mod proxying;
mod reload;
mod retries;
mod routing;
mod stock_filters;
mod tcp;
mod tls;
mod traces;
mod traffic;
mod upgrade;
mod upstream_tls;
mod upstreams;
