//! HTTP/3: QUIC (quinn) and HTTP/3 framing (h3) in front of the same request path as HTTP/1.1
//! and HTTP/2 ([`crate::proxy::ProxyService`]): filters, routing and upstreams do not know
//! which protocol brought a request, except through `request.protocol` (`HTTP/3`).
//!
//! Each worker has its own UDP socket on the listener's HTTP/3 address (`SO_REUSEPORT`, as
//! for TCP); the kernel spreads packets by their address tuple, so a connection's packets
//! reach the worker that owns it as long as the client's address does not change.

mod body;
mod cid;
mod endpoint;
mod handover;
mod server;

pub(crate) use endpoint::{QuicSide, bind, server_config};
pub(crate) use handover::{PASSED_IN, PASSED_OUT, QuicLink};
