//! systemd socket activation: the listening sockets of a `.socket` unit, given to the first
//! process at start (`LISTEN_FDS`, `LISTEN_PID`), become its listeners' sockets.

use rustng_core::{InheritedListener, InheritedSockets};

/// The TCP sockets systemd passed to this process, by address; empty when it passed none.
/// Descriptors that are not TCP listening sockets are reported and skipped.
pub fn listen_fds() -> InheritedSockets {
    let mut fds = listenfd::ListenFd::from_env();
    let mut listeners = Vec::new();
    for index in 0..fds.len() {
        match fds.take_tcp_listener(index) {
            Ok(Some(socket)) => match socket.local_addr() {
                Ok(address) => {
                    tracing::info!(%address, fd = 3 + index, "socket from systemd");
                    listeners.push(InheritedListener {
                        name: None,
                        address,
                        sockets: vec![socket],
                    });
                }
                Err(error) => {
                    tracing::warn!(fd = 3 + index, %error, "skipping a socket from systemd")
                }
            },
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(fd = 3 + index, %error, "skipping a descriptor from systemd that is not a TCP socket");
            }
        }
    }
    InheritedSockets::new(listeners)
}
