//! QUIC through a binary upgrade. TCP sockets are simply handed over: an accepted connection
//! is its own socket and stays with the process that accepted it. A QUIC connection is only a
//! connection ID on a shared UDP socket, so when the new process takes over the old one's UDP
//! sockets, both read from them and either may get any packet.
//!
//! So each packet is placed by its destination connection ID ([`super::cid`]): a process
//! keeps what carries its tag (and new connections, while it accepts them) and passes the rest
//! to the other process over a unix datagram socket pair made for each UDP socket at the
//! handover. The old process's connections thus drain on it, undisturbed, while the new one
//! takes every new connection; once the old process exits, its end of the pair closes and the
//! new one stops passing packets on.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixDatagram as StdUnixDatagram;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use arc_swap::ArcSwapOption;
use quinn::udp::{EcnCodepoint, RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

use super::cid::{Addressee, addressee};

/// Datagrams passed to the other process, and taken from it, since the start: process-wide,
/// for `/metrics` (they move only during an upgrade).
pub(crate) static PASSED_OUT: AtomicU64 = AtomicU64::new(0);
pub(crate) static PASSED_IN: AtomicU64 = AtomicU64::new(0);

/// What a passed datagram is prefixed with: source family, address (16 bytes) and port, ECN,
/// destination family and address.
const HEADER_LEN: usize = 1 + 16 + 2 + 1 + 1 + 16;

/// One UDP socket's link to the other process, set by the control thread at a handover and
/// read by the worker's socket on its next receive.
#[derive(Debug)]
pub(crate) struct QuicLink {
    /// This process's connection ID tag.
    pub(crate) tag: u16,
    /// Whether this process takes new connections (the old one stops at the handover).
    accepting: AtomicBool,
    /// A pair end waiting to be taken up by the socket (`None` with a new generation: the
    /// link was dropped).
    pending: ArcSwapOption<StdUnixDatagram>,
    generation: AtomicU64,
}

impl QuicLink {
    pub(crate) fn new(tag: u16, peer: Option<StdUnixDatagram>) -> Arc<QuicLink> {
        let link = QuicLink {
            tag,
            accepting: AtomicBool::new(true),
            pending: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
        };
        if let Some(peer) = peer {
            link.pending.store(Some(Arc::new(peer)));
            link.generation.store(1, Ordering::Release);
        }
        Arc::new(link)
    }

    /// Links to a successor: its connections' packets go to `peer`, and so do new
    /// connections. `None`: the upgrade failed; this process takes everything again.
    pub(crate) fn hand_over(&self, peer: Option<StdUnixDatagram>) {
        self.accepting.store(peer.is_none(), Ordering::Release);
        self.pending.store(peer.map(Arc::new));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A UDP socket shared with another process during an upgrade: quinn's own socket, with the
/// packets of the other process's connections passed to it and its passed packets taken in.
#[derive(Debug)]
pub(crate) struct SharedUdp {
    inner: Arc<dyn AsyncUdpSocket>,
    link: Arc<QuicLink>,
    /// The link's pair end, registered with this runtime once taken up.
    peer: ArcSwapOption<tokio::net::UnixDatagram>,
    seen: AtomicU64,
    /// This process stopped serving (it drains): with a successor linked, the successor
    /// reads the socket and passes this process's packets on, so they all arrive one way.
    retired: AtomicBool,
}

impl SharedUdp {
    pub(crate) fn new(inner: Arc<dyn AsyncUdpSocket>, link: Arc<QuicLink>) -> Self {
        SharedUdp {
            inner,
            link,
            peer: ArcSwapOption::empty(),
            seen: AtomicU64::new(0),
            retired: AtomicBool::new(false),
        }
    }

    /// The process stops serving on this socket: see [`SharedUdp::retired`].
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Takes up a link set since the last receive (inside the endpoint's task, so on the
    /// runtime that will poll it).
    fn follow_link(&self) {
        let generation = self.link.generation.load(Ordering::Acquire);
        if self.seen.swap(generation, Ordering::AcqRel) == generation {
            return;
        }
        let peer = self.link.pending.swap(None).and_then(|pending| {
            let std = Arc::try_unwrap(pending).ok()?;
            std.set_nonblocking(true).ok()?;
            tokio::net::UnixDatagram::from_std(std).ok()
        });
        self.peer.store(peer.map(Arc::new));
    }

    /// Whether this process handles a datagram for `addressee`.
    fn keeps(&self, addressee: Addressee) -> bool {
        match addressee {
            Addressee::Tagged(tag) => tag == self.link.tag,
            Addressee::Newcomer => self.link.accepting.load(Ordering::Acquire),
        }
    }

    /// A datagram the other process passed, into `buf` and `meta`; `None` when there is none.
    fn poll_passed(
        &self,
        peer: &tokio::net::UnixDatagram,
        cx: &mut Context<'_>,
        buf: &mut IoSliceMut<'_>,
        meta: &mut RecvMeta,
    ) -> Option<io::Result<()>> {
        loop {
            match peer.poll_recv_ready(cx) {
                Poll::Pending => return None,
                Poll::Ready(Err(e)) => return Some(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
            match peer.try_recv(buf) {
                // The other process closed its end: it has exited.
                Ok(0) => return Some(Err(io::ErrorKind::ConnectionReset.into())),
                Ok(n) => match decode_header(&buf[..n]) {
                    Some((addr, ecn, dst_ip)) => {
                        buf.copy_within(HEADER_LEN..n, 0);
                        *meta = RecvMeta {
                            addr,
                            len: n - HEADER_LEN,
                            stride: n - HEADER_LEN,
                            ecn,
                            dst_ip,
                        };
                        PASSED_IN.fetch_add(1, Ordering::Relaxed);
                        return Some(Ok(()));
                    }
                    // Not something this code sent: skip it.
                    None => continue,
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Passes what belongs to the other process out of the `count` received buffers and
    /// packs what stays to the front; how many buffers are left.
    fn sort(
        &self,
        peer: &tokio::net::UnixDatagram,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
        count: usize,
    ) -> usize {
        let mut kept_buffers = 0;
        for i in 0..count {
            let m = meta[i];
            let stride = m.stride.max(1);
            let mut kept_bytes = 0;
            let mut start = 0;
            // One buffer holds several datagrams from one sender with GRO: each is placed on
            // its own, and the kept ones stay in order (all `stride` long but maybe the last).
            while start < m.len {
                let end = (start + stride).min(m.len);
                let datagram = &bufs[i][start..end];
                if self.keeps(addressee(datagram)) {
                    if kept_bytes != start {
                        bufs[i].copy_within(start..end, kept_bytes);
                    }
                    kept_bytes += end - start;
                } else if !pass(peer, &m, datagram) {
                    // The other process is gone; what was its connections' is nobody's.
                    self.peer.store(None);
                }
                start = end;
            }
            if kept_bytes == 0 {
                continue;
            }
            if kept_buffers != i {
                let (front, back) = bufs.split_at_mut(i);
                front[kept_buffers][..kept_bytes].copy_from_slice(&back[0][..kept_bytes]);
            }
            meta[kept_buffers] = RecvMeta {
                len: kept_bytes,
                ..m
            };
            kept_buffers += 1;
        }
        kept_buffers
    }
}

/// Sends `datagram` to the other process; dropped if its buffer is full (QUIC resends).
/// `false` when the other process is gone.
fn pass(peer: &tokio::net::UnixDatagram, meta: &RecvMeta, datagram: &[u8]) -> bool {
    let mut message = Vec::with_capacity(HEADER_LEN + datagram.len());
    encode_header(&mut message, meta);
    message.extend_from_slice(datagram);
    match peer.try_send(&message) {
        Ok(_) => {
            PASSED_OUT.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

fn encode_header(out: &mut Vec<u8>, meta: &RecvMeta) {
    let address = |out: &mut Vec<u8>, ip: Option<IpAddr>| match ip {
        Some(IpAddr::V4(v4)) => {
            out.push(4);
            out.extend_from_slice(&v4.to_ipv6_mapped().octets());
        }
        Some(IpAddr::V6(v6)) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
        None => {
            out.push(0);
            out.extend_from_slice(&[0; 16]);
        }
    };
    address(out, Some(meta.addr.ip()));
    out.extend_from_slice(&meta.addr.port().to_be_bytes());
    out.push(meta.ecn.map_or(0, |e| e as u8));
    address(out, meta.dst_ip);
}

fn decode_header(message: &[u8]) -> Option<(SocketAddr, Option<EcnCodepoint>, Option<IpAddr>)> {
    if message.len() < HEADER_LEN {
        return None;
    }
    let address = |family: u8, bytes: &[u8]| -> Option<Option<IpAddr>> {
        let octets: [u8; 16] = bytes.try_into().ok()?;
        let v6 = Ipv6Addr::from(octets);
        match family {
            4 => Some(Some(IpAddr::V4(
                v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            ))),
            6 => Some(Some(IpAddr::V6(v6))),
            0 => Some(None),
            _ => None,
        }
    };
    let source = address(message[0], &message[1..17])??;
    let port = u16::from_be_bytes([message[17], message[18]]);
    let ecn = EcnCodepoint::from_bits(message[19]);
    let destination = address(message[20], &message[21..37])?;
    Some((SocketAddr::new(source, port), ecn, destination))
}

impl AsyncUdpSocket for SharedUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.follow_link();
        let Some(peer) = self.peer.load_full() else {
            // No upgrade under way: quinn's socket as it is.
            return self.inner.poll_recv(cx, bufs, meta);
        };
        if let (Some(buf), Some(m)) = (bufs.first_mut(), meta.first_mut()) {
            match self.poll_passed(&peer, cx, buf, m) {
                Some(Ok(())) => return Poll::Ready(Ok(1)),
                // The other process is gone: its connections with it.
                Some(Err(error)) => {
                    tracing::debug!(%error, "the other process's QUIC link closed");
                    self.peer.store(None);
                    return self.inner.poll_recv(cx, bufs, meta);
                }
                None => {}
            }
        }
        if self.retired.load(Ordering::Acquire) {
            // The successor reads the socket; what is ours comes through the link (whose
            // readiness the poll above registered).
            return Poll::Pending;
        }
        loop {
            let count = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(count)) => count,
                other => return other,
            };
            let kept = self.sort(&peer, bufs, meta, count);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_keeps_addresses_and_ecn() {
        for (addr, dst) in [("127.0.0.1:4433", Some("127.0.0.2")), ("[::1]:443", None)] {
            let meta = RecvMeta {
                addr: addr.parse().expect("addr"),
                len: 3,
                stride: 3,
                ecn: Some(EcnCodepoint::Ect0),
                dst_ip: dst.map(|d| d.parse().expect("ip")),
            };
            let mut message = Vec::new();
            encode_header(&mut message, &meta);
            message.extend_from_slice(b"pkt");
            assert_eq!(message.len(), HEADER_LEN + 3);
            let (source, ecn, destination) = decode_header(&message).expect("decodes");
            assert_eq!(source, meta.addr);
            assert_eq!(ecn, meta.ecn);
            assert_eq!(destination, meta.dst_ip);
        }
        assert!(decode_header(b"short").is_none());
    }
}
