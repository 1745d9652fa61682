//! HTTP/1.1 on the wire, for both sides of the proxy: the downstream server connection and the
//! pieces the upstream client shares with it (head parsing, body framing, chunk coding).
//!
//! Pure functions over byte buffers live in `decode` and `encode`, so every edge case of the
//! format is a unit test without sockets; `server` drives a client connection with them.

pub(crate) mod decode;
pub(crate) mod encode;
mod server;
mod upgrade;
mod wire;

pub(crate) use server::Connection;
pub(crate) use upgrade::OnUpgrade;
pub(crate) use wire::H1RequestBody;
