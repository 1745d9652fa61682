//! The upgrade socket's protocol: length-prefixed JSON messages, with file descriptors passed
//! beside them by `SCM_RIGHTS`.
//!
//! A message says how many descriptors belong to it; the receiver queues every descriptor
//! that arrives and hands a message exactly its count. That keeps the framing independent of
//! how the kernel splits a stream into reads.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Descriptors sent with one `sendmsg` (the kernel's limit is 253).
pub(crate) const FDS_PER_MESSAGE: usize = 64;
/// A message larger than this is refused: a config document is far smaller.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Bytes read per `recvmsg`.
const READ_CHUNK: usize = 64 * 1024;

/// What the two processes (and `rustng upgrade`) say to each other.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// `rustng upgrade` (or the admin API) to the serving process: start `binary`.
    Upgrade { binary: Option<PathBuf> },
    /// The serving process's answer once the new one has taken over.
    Upgraded(crate::Upgraded),
    /// The serving process's answer when the upgrade did not happen; it still serves.
    Refused { reason: String },
    /// The new process, first thing: the token it was started with proves it is the one.
    Takeover { token: String, pid: u32 },
    /// The serving process to the new one: what it runs; `sockets` describes the descriptors
    /// that follow in [`Message::Descriptors`] messages, in order.
    Handover {
        version: u64,
        document: Option<Document>,
        sockets: Vec<SocketInfo>,
        /// The old process's QUIC connection ID tag (absent from a RustNg without HTTP/3).
        #[serde(default)]
        quic_tag: Option<u16>,
    },
    /// Carries `count` descriptors.
    Descriptors { count: usize },
    /// The new process accepts on every listener.
    Ready { pid: u32 },
    /// The new process could not start; it exits.
    Failed { reason: String },
    /// The old process has stopped accepting and drains: the new one owns the sockets.
    Stopped,
}

/// A config document as it travels.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Document {
    pub(crate) text: String,
    pub(crate) base_dir: Option<PathBuf>,
    pub(crate) origin: rustng_core::Origin,
}

/// What one passed descriptor is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SocketInfo {
    /// One of a listener's sockets.
    Listener {
        name: String,
        address: std::net::SocketAddr,
    },
    /// One of a listener's HTTP/3 (UDP) sockets; a [`SocketInfo::QuicLink`] follows it.
    QuicSocket {
        name: String,
        address: std::net::SocketAddr,
    },
    /// The new process's end of the link for the HTTP/3 socket before it
    /// (`rustng-core`'s `h3/handover.rs`).
    QuicLink,
    /// The admin server's socket.
    Admin { address: std::net::SocketAddr },
    /// The upgrade socket itself, so the next upgrade finds the new process at the same path.
    Upgrade,
}

/// The error for a message that makes no sense where it came.
pub(crate) fn unexpected(message: &Message) -> crate::UpgradeError {
    crate::UpgradeError::Protocol(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected message {message:?}"),
    ))
}

/// One end of an upgrade socket connection.
pub(crate) struct Connection {
    stream: UnixStream,
    buffer: Vec<u8>,
    descriptors: VecDeque<OwnedFd>,
}

impl Connection {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Connection {
            stream,
            buffer: Vec::new(),
            descriptors: VecDeque::new(),
        }
    }

    /// Connects to the upgrade socket at `path`.
    pub(crate) async fn connect(path: &std::path::Path) -> Result<Connection, crate::UpgradeError> {
        let stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| crate::UpgradeError::Socket {
                    path: path.to_path_buf(),
                    source,
                })?;
        Ok(Connection::new(stream))
    }

    /// Sends `message`.
    pub(crate) async fn send(&self, message: &Message) -> io::Result<()> {
        self.send_with(message, &[]).await
    }

    /// Sends `message` with `fds` attached to its first byte.
    async fn send_with(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let body = serde_json::to_vec(message).map_err(io::Error::other)?;
        let length = u32::try_from(body.len())
            .ok()
            .filter(|&n| n as usize <= MAX_MESSAGE_BYTES)
            .ok_or_else(|| io::Error::other("message too large"))?;
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&length.to_be_bytes());
        frame.extend_from_slice(&body);
        let mut sent = self
            .stream
            .async_io(Interest::WRITABLE, || {
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                    return Err(io::Error::other("too many descriptors for one message"));
                }
                rustix::net::sendmsg(
                    &self.stream,
                    &[IoSlice::new(&frame)],
                    &mut control,
                    SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            })
            .await?;
        // The descriptors went with the first byte; the rest is plain bytes.
        while sent < frame.len() {
            sent += self
                .stream
                .async_io(Interest::WRITABLE, || {
                    rustix::net::send(&self.stream, &frame[sent..], SendFlags::NOSIGNAL)
                        .map_err(io::Error::from)
                })
                .await?;
        }
        Ok(())
    }

    /// Sends every descriptor in `fds`, in order, in [`Message::Descriptors`] messages.
    pub(crate) async fn send_descriptors(&self, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        for chunk in fds.chunks(FDS_PER_MESSAGE) {
            self.send_with(&Message::Descriptors { count: chunk.len() }, chunk)
                .await?;
        }
        Ok(())
    }

    /// Receives the next message.
    pub(crate) async fn recv(&mut self) -> io::Result<Message> {
        loop {
            if self.buffer.len() >= 4 {
                let length = u32::from_be_bytes([
                    self.buffer[0],
                    self.buffer[1],
                    self.buffer[2],
                    self.buffer[3],
                ]) as usize;
                if length > MAX_MESSAGE_BYTES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "message too large",
                    ));
                }
                if self.buffer.len() >= 4 + length {
                    let message = serde_json::from_slice(&self.buffer[4..4 + length])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.buffer.drain(..4 + length);
                    return Ok(message);
                }
            }
            self.read_more().await?;
        }
    }

    /// Receives the next message within `timeout`.
    pub(crate) async fn recv_within(&mut self, timeout: Duration) -> io::Result<Message> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer in time"))?
    }

    /// Receives `count` descriptors, the ones [`Connection::send_descriptors`] sent.
    pub(crate) async fn recv_descriptors(&mut self, count: usize) -> io::Result<Vec<OwnedFd>> {
        let mut received = Vec::with_capacity(count);
        while received.len() < count {
            match self.recv().await? {
                Message::Descriptors { count: n } => {
                    if self.descriptors.len() < n {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a message announced descriptors that did not arrive",
                        ));
                    }
                    received.extend(self.descriptors.drain(..n));
                }
                other => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("expected descriptors, got {other:?}"),
                    ));
                }
            }
        }
        Ok(received)
    }

    async fn read_more(&mut self) -> io::Result<()> {
        let mut chunk = vec![0u8; READ_CHUNK];
        let (bytes, fds) = self
            .stream
            .async_io(Interest::READABLE, || {
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                // CLOEXEC: these sockets must not leak into a later upgrade's child as stray
                // descriptors.
                let received = rustix::net::recvmsg(
                    &self.stream,
                    &mut [IoSliceMut::new(&mut chunk)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                if received.flags.contains(ReturnFlags::CTRUNC) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "descriptors were cut off",
                    ));
                }
                let mut fds = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = message {
                        fds.extend(rights);
                    }
                }
                Ok((received.bytes, fds))
            })
            .await?;
        self.descriptors.extend(fds);
        if bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the other process closed the upgrade connection",
            ));
        }
        self.buffer.extend_from_slice(&chunk[..bytes]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn messages_and_descriptors_cross_in_order() {
        let (a, b) = UnixStream::pair().expect("pair");
        let (sender, mut receiver) = (Connection::new(a), Connection::new(b));
        let sockets: Vec<std::net::TcpListener> = (0..70)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addresses: Vec<_> = sockets
            .iter()
            .map(|s| s.local_addr().expect("addr"))
            .collect();
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(AsFd::as_fd).collect();
        let big = "x".repeat(300_000);
        // More than a socket buffer holds: both ends must run at once.
        let send = async {
            sender
                .send(&Message::Refused {
                    reason: big.clone(),
                })
                .await
                .expect("send");
            sender.send_descriptors(&fds).await.expect("descriptors");
            sender.send(&Message::Stopped).await.expect("send");
        };
        let receive = async {
            match receiver.recv().await.expect("recv") {
                Message::Refused { reason } => assert_eq!(reason, big),
                other => panic!("unexpected {other:?}"),
            }
            receiver.recv_descriptors(70).await.expect("descriptors")
        };
        let ((), received) = tokio::join!(send, receive);
        let received: Vec<_> = received
            .into_iter()
            .map(|fd| std::net::TcpListener::from(fd).local_addr().expect("addr"))
            .collect();
        assert_eq!(received, addresses, "the same sockets, in order");
        assert!(matches!(receiver.recv().await, Ok(Message::Stopped)));
        drop(sender);
        assert_eq!(
            receiver.recv().await.expect_err("closed").kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let (a, b) = UnixStream::pair().expect("pair");
        let mut receiver = Connection::new(b);
        a.try_write(&[0, 0, 0, 3, b'{', b'x', b'}']).expect("write");
        assert_eq!(
            receiver.recv().await.expect_err("bad json").kind(),
            io::ErrorKind::InvalidData
        );
        let mut huge = Connection::new(UnixStream::pair().expect("pair").1);
        huge.buffer.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(huge.recv().await.is_err());
    }
}
