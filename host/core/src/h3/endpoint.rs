//! A listener's QUIC side on one worker: its UDP socket turned into a quinn endpoint, and the
//! TLS and transport settings it accepts connections with.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use quinn::crypto::rustls::QuicServerConfig;
use rustng_runtime_config::{Http3, TlsConfig};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::Notify;

use quinn::Runtime as _;

use super::cid::TaggedCids;
use super::handover::{QuicLink, SharedUdp};
use crate::listener::ListenerSlot;
use crate::registry::Registry;

/// ALPN of HTTP/3 (RFC 9114).
const ALPN_H3: &[u8] = b"h3";

/// Binds a UDP socket with `SO_REUSEPORT`, one per worker, as [`crate::listener::bind`] does
/// for TCP.
pub(crate) fn bind(address: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// The QUIC server settings of a listener: its certificates (chosen by SNI, as on TCP) with
/// ALPN `h3` over TLS 1.3, and the HTTP/3 limits.
pub(crate) fn server_config(
    tls: &TlsConfig,
    http3: &Http3,
) -> Result<Arc<quinn::ServerConfig>, String> {
    let rustls = crate::tls::server_config_for(tls, &[ALPN_H3], true)?;
    let crypto = QuicServerConfig::try_from(rustls).map_err(|e| e.to_string())?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(http3.max_concurrent_streams))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(http3.idle_timeout)
                .map_err(|_| format!("http3.idle_timeout {:?} is too long", http3.idle_timeout))?,
        ));
    config.transport_config(Arc::new(transport));
    Ok(Arc::new(config))
}

/// A listener's QUIC endpoints on this worker: one, or several after an upgrade from a
/// process with more workers.
pub(crate) struct QuicSide {
    pub(crate) address: SocketAddr,
    endpoints: Vec<(quinn::Endpoint, Rc<Notify>, Arc<SharedUdp>)>,
    /// The settings it accepts with, to see whether a new version changes them.
    config: Arc<quinn::ServerConfig>,
}

impl QuicSide {
    /// Starts accepting HTTP/3 connections on `sockets` for the listener in `slot`.
    pub(crate) fn start(
        sockets: Vec<(std::net::UdpSocket, Arc<QuicLink>)>,
        config: Arc<quinn::ServerConfig>,
        slot: &Rc<ListenerSlot>,
        registry: &Rc<Registry>,
        open: &Rc<std::cell::Cell<usize>>,
    ) -> std::io::Result<QuicSide> {
        let mut address = slot
            .current()
            .config
            .http3
            .as_ref()
            .map_or(slot.current().config.address, |h3| h3.address);
        let mut endpoints = Vec::with_capacity(sockets.len());
        for (socket, link) in sockets {
            address = socket.local_addr()?;
            let tag = link.tag;
            let mut endpoint_config = quinn::EndpointConfig::default();
            endpoint_config.cid_generator(move || Box::new(TaggedCids { tag }));
            let runtime = Arc::new(quinn::TokioRuntime);
            let shared = Arc::new(SharedUdp::new(runtime.wrap_udp_socket(socket)?, link));
            let endpoint = quinn::Endpoint::new_with_abstract_socket(
                endpoint_config,
                Some((*config).clone()),
                Arc::clone(&shared) as Arc<dyn quinn::AsyncUdpSocket>,
                runtime,
            )?;
            let stop = Rc::new(Notify::new());
            tokio::task::spawn_local(super::server::accept_loop(
                endpoint.clone(),
                Rc::clone(slot),
                Rc::clone(registry),
                Rc::clone(open),
                Rc::clone(&stop),
            ));
            endpoints.push((endpoint, stop, shared));
        }
        Ok(QuicSide {
            address,
            endpoints,
            config,
        })
    }

    /// Takes a new version's settings for new connections; open ones keep theirs.
    pub(crate) fn update(&mut self, config: Arc<quinn::ServerConfig>) {
        if !Arc::ptr_eq(&self.config, &config) {
            for (endpoint, _, _) in &self.endpoints {
                endpoint.set_server_config(Some((*config).clone()));
            }
            self.config = config;
        }
    }

    /// Stops accepting: new connections are refused, open ones finish (the registry drains
    /// them with the listener's TCP connections).
    pub(crate) fn stop(self) {
        for (endpoint, stop, socket) in self.endpoints {
            endpoint.set_server_config(None);
            stop.notify_one();
            socket.retire();
        }
    }
}
