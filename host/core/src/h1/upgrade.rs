//! A downstream connection after `101 Switching Protocols`: the socket, handed from the
//! HTTP/1.1 connection loop to whoever tunnels it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::wire::Io;

/// The client's side of a switched connection: the bytes it sent right after the request head
/// come first, then the socket.
pub(crate) struct Upgraded {
    io: Box<dyn Io>,
    read_ahead: Bytes,
}

impl Upgraded {
    pub(crate) fn new(io: Box<dyn Io>, read_ahead: Bytes) -> Self {
        Upgraded { io, read_ahead }
    }
}

/// Resolves to the [`Upgraded`] connection once the `101` has been written, or to an error if
/// the response was anything else.
pub(crate) struct OnUpgrade(pub(crate) oneshot::Receiver<Upgraded>);

impl OnUpgrade {
    pub(crate) async fn wait(self) -> io::Result<Upgraded> {
        self.0
            .await
            .map_err(|_| io::Error::other("the connection did not switch protocols"))
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read_ahead.is_empty() {
            let n = self.read_ahead.len().min(buf.remaining());
            buf.put_slice(&self.read_ahead[..n]);
            self.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
