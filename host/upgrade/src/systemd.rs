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

/// Tells systemd (`Type=notify` units) about this service's state, when it asked for that
/// with `NOTIFY_SOCKET`: `READY=1` once serving, `MAINPID=<pid>` when an upgrade hands the
/// service to a new process (sent by the old one, the main process systemd listens to, so
/// `NotifyAccess=main` is enough), `STOPPING=1` when a shutdown starts.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(error) = send_notification(&socket, state) {
        tracing::warn!(%error, state, "cannot notify systemd");
    }
}

fn send_notification(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let datagram = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    // A leading '@' names a socket in the abstract namespace.
    let address = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)?
        }
        None => std::os::unix::net::SocketAddr::from_pathname(std::path::Path::new(socket))?,
    };
    datagram.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}
