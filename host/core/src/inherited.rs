//! Listening sockets a process starts with instead of binding: handed over by the process it
//! replaces (binary upgrade) or opened by systemd (socket activation).
//!
//! The point of taking a socket rather than binding one is that it never closes: connections
//! queued on it while the processes change hands are accepted by the new one, none is refused.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixDatagram;

/// One listener's inherited sockets.
#[derive(Debug)]
pub struct InheritedListener {
    /// The listener's name in the config that bound it; `None` for systemd's sockets, which
    /// only have an address.
    pub name: Option<String>,
    /// The address the sockets are bound to (port 0 already resolved).
    pub address: SocketAddr,
    /// One socket per worker of the process that bound them (`SO_REUSEPORT` siblings), or a
    /// single socket every worker shares.
    pub sockets: Vec<TcpListener>,
}

/// One listener's inherited HTTP/3 sockets: each UDP socket with this process's end of the
/// link to the process that handed it over (see `h3/handover.rs`).
#[derive(Debug)]
pub struct InheritedQuic {
    /// The listener's name.
    pub name: String,
    /// The UDP address (port 0 already resolved).
    pub address: SocketAddr,
    /// One per worker of the old process.
    pub sockets: Vec<(UdpSocket, UnixDatagram)>,
}

/// The sockets a process was given, taken one listener at a time as the first config
/// version binds.
#[derive(Debug, Default)]
pub struct InheritedSockets {
    listeners: Vec<InheritedListener>,
    quic: Vec<InheritedQuic>,
    /// The connection ID tag of the process that handed the sockets over.
    quic_tag: Option<u16>,
}

impl InheritedSockets {
    /// Sockets from `listeners`.
    pub fn new(listeners: Vec<InheritedListener>) -> Self {
        InheritedSockets {
            listeners,
            quic: Vec::new(),
            quic_tag: None,
        }
    }

    /// With HTTP/3 sockets too, from the process whose connection IDs carry `tag`.
    pub fn with_quic(mut self, quic: Vec<InheritedQuic>, tag: u16) -> Self {
        self.quic = quic;
        self.quic_tag = Some(tag);
        self
    }

    /// Whether there is nothing (left) to take.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.quic.is_empty()
    }

    /// The tag of the process these came from, if they came from a RustNg.
    pub(crate) fn quic_tag(&self) -> Option<u16> {
        self.quic_tag
    }

    /// Takes the HTTP/3 sockets of the listener `name` at `address` (or its namesake's, for
    /// port 0), as [`InheritedSockets::take`] does for TCP.
    pub(crate) fn take_quic(
        &mut self,
        name: &str,
        address: SocketAddr,
    ) -> Option<Vec<(UdpSocket, UnixDatagram)>> {
        let position = self.quic.iter().position(|q| {
            q.address == address
                || (address.port() == 0 && q.name == name && q.address.ip() == address.ip())
        })?;
        let taken = self.quic.swap_remove(position);
        (!taken.sockets.is_empty()).then_some(taken.sockets)
    }

    /// Takes the sockets for the listener `name` at `address`: the ones bound to that address,
    /// or, when the config asks for port 0 (any), the ones its namesake bound.
    pub(crate) fn take(&mut self, name: &str, address: SocketAddr) -> Option<Vec<TcpListener>> {
        let position = self
            .listeners
            .iter()
            .position(|l| l.address == address)
            .or_else(|| {
                (address.port() == 0).then(|| {
                    self.listeners.iter().position(|l| {
                        l.name.as_deref() == Some(name) && l.address.ip() == address.ip()
                    })
                })?
            })?;
        let taken = self.listeners.swap_remove(position);
        (!taken.sockets.is_empty()).then_some(taken.sockets)
    }

    /// What no listener took: closed here, with a warning each, since nothing will accept on
    /// them.
    pub(crate) fn close_unused(&mut self) {
        for unused in self.listeners.drain(..) {
            tracing::warn!(
                address = %unused.address,
                name = unused.name.as_deref().unwrap_or(""),
                "an inherited socket matches no listener of the config; closing it"
            );
        }
        for unused in self.quic.drain(..) {
            tracing::warn!(
                address = %unused.address,
                name = %unused.name,
                "an inherited HTTP/3 socket matches no listener of the config; closing it (the old process's QUIC connections on it get no more packets)"
            );
        }
    }
}

/// Spreads `sockets` over `workers`: each socket goes to one worker (so every one keeps being
/// accepted on), and a worker left without one shares a duplicate of another's.
pub(crate) fn spread(
    sockets: Vec<TcpListener>,
    workers: usize,
) -> std::io::Result<Vec<Vec<TcpListener>>> {
    let mut per_worker: Vec<Vec<TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    let count = sockets.len();
    for (index, socket) in sockets.into_iter().enumerate() {
        // systemd's sockets come blocking; the runtime needs them not to.
        socket.set_nonblocking(true)?;
        per_worker[index % workers.max(1)].push(socket);
    }
    if count > 0 {
        for index in count..workers {
            let shared = per_worker[index % count][0].try_clone()?;
            per_worker[index].push(shared);
        }
    }
    Ok(per_worker)
}

/// Spreads UDP sockets over `workers`, each to exactly one (two endpoints reading one socket
/// would take each other's packets); workers beyond their number get none.
pub(crate) fn spread_udp<T>(sockets: Vec<T>, workers: usize) -> Vec<Vec<T>> {
    let mut per_worker: Vec<Vec<T>> = (0..workers).map(|_| Vec::new()).collect();
    for (index, socket) in sockets.into_iter().enumerate() {
        per_worker[index % workers.max(1)].push(socket);
    }
    per_worker
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").expect("bind")
    }

    #[test]
    fn takes_by_address_then_by_name_for_port_zero() {
        let a = socket();
        let b = socket();
        let (a_addr, b_addr) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
        let mut inherited = InheritedSockets::new(vec![
            InheritedListener {
                name: Some("main".into()),
                address: a_addr,
                sockets: vec![a],
            },
            InheritedListener {
                name: Some("other".into()),
                address: b_addr,
                sockets: vec![b],
            },
        ]);
        assert!(
            inherited
                .take("x", "127.0.0.1:1".parse().expect("addr"))
                .is_none()
        );
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let taken = inherited.take("other", any_port).expect("by name");
        assert_eq!(taken[0].local_addr().expect("addr"), b_addr);
        assert!(inherited.take("main", a_addr).is_some());
        assert!(inherited.is_empty());
    }

    #[test]
    fn spreads_every_socket_and_shares_when_short() {
        let three = spread(vec![socket(), socket(), socket()], 2).expect("spread");
        assert_eq!(three.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
        let one = socket();
        let address = one.local_addr().expect("addr");
        let shared = spread(vec![one], 3).expect("spread");
        assert!(shared.iter().all(|w| w.len() == 1));
        assert!(
            shared
                .iter()
                .all(|w| w[0].local_addr().expect("addr") == address)
        );
    }
}
