//! End-to-end tests: the real `rustng` binary on 127.0.0.1 in front of in-process origins.
//! One test binary for the whole crate keeps link time down.

mod client;
mod harness;
mod origin;

mod cli;
mod grpc;
mod h1_upstream;
mod limits;
mod proxying;
mod tls;
mod upstreams;
