//! The new process's side: take the sockets and the running version over, report ready.

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustng_core::{ConfigDocument, InheritedListener, InheritedQuic, InheritedSockets};

use crate::wire::{Connection, Message, SocketInfo, unexpected};
use crate::{SOCKET_ENV, TOKEN_ENV, UpgradeError};

/// How long the old process has to answer the takeover with the sockets, and to confirm it
/// stopped accepting once this one is ready.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// What the replaced process handed over.
#[derive(Debug)]
pub struct Handed {
    /// The config version it ran; this process runs it under the same number.
    pub version: u64,
    /// That version's document (`None`: read the config file).
    pub document: Option<ConfigDocument>,
    /// Every listener's sockets.
    pub sockets: InheritedSockets,
    /// The admin server's socket.
    pub admin: Option<std::net::TcpListener>,
    /// The upgrade socket, for the next upgrade.
    pub upgrade: Option<StdUnixListener>,
    /// The upgrade socket's path.
    pub upgrade_path: PathBuf,
}

/// A takeover in progress: connected to the old process, sockets received, not ready yet.
pub struct Takeover {
    runtime: tokio::runtime::Runtime,
    connection: Connection,
}

impl Takeover {
    /// The upgrade socket and token this process was started with, when an upgrade started
    /// it.
    pub fn from_env() -> Option<(PathBuf, String)> {
        let socket = std::env::var_os(SOCKET_ENV)?;
        let token = std::env::var(TOKEN_ENV).ok()?;
        Some((PathBuf::from(socket), token))
    }

    /// Connects to the old process at `socket`, proves itself with `token` and receives the
    /// running version and the sockets.
    pub fn connect(socket: &Path, token: &str) -> Result<(Takeover, Handed), UpgradeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (connection, handed) = runtime.block_on(async {
            let mut connection = Connection::connect(socket).await?;
            connection
                .send(&Message::Takeover {
                    token: token.to_owned(),
                    pid: std::process::id(),
                })
                .await?;
            let handed = receive(&mut connection, socket).await?;
            Ok::<_, UpgradeError>((connection, handed))
        })?;
        Ok((
            Takeover {
                runtime,
                connection,
            },
            handed,
        ))
    }

    /// Tells the old process this one accepts on every socket, and waits until it has
    /// stopped accepting (from then on the sockets are this process's alone).
    pub fn ready(mut self) -> Result<(), UpgradeError> {
        self.runtime.block_on(async {
            self.connection
                .send(&Message::Ready {
                    pid: std::process::id(),
                })
                .await?;
            match self.connection.recv_within(ANSWER_TIMEOUT).await? {
                Message::Stopped => Ok(()),
                Message::Refused { reason } => Err(UpgradeError::Refused(reason)),
                other => Err(unexpected(&other)),
            }
        })
    }

    /// Tells the old process this one cannot serve, and why (it keeps serving).
    pub fn failed(self, reason: &str) {
        let _ = self
            .runtime
            .block_on(self.connection.send(&Message::Failed {
                reason: reason.to_owned(),
            }));
    }
}

async fn receive(connection: &mut Connection, socket: &Path) -> Result<Handed, UpgradeError> {
    let (version, document, sockets, quic_tag) =
        match connection.recv_within(ANSWER_TIMEOUT).await? {
            Message::Handover {
                version,
                document,
                sockets,
                quic_tag,
            } => (version, document, sockets, quic_tag),
            Message::Refused { reason } => return Err(UpgradeError::Refused(reason)),
            other => return Err(unexpected(&other)),
        };
    let descriptors = connection.recv_descriptors(sockets.len()).await?;
    let mut listeners: Vec<InheritedListener> = Vec::new();
    let mut quic: Vec<InheritedQuic> = Vec::new();
    let mut quic_socket: Option<(String, std::net::SocketAddr, std::net::UdpSocket)> = None;
    let mut admin = None;
    let mut upgrade = None;
    for (info, fd) in sockets.into_iter().zip(descriptors) {
        match info {
            SocketInfo::QuicSocket { name, address } => {
                quic_socket = Some((name, address, std::net::UdpSocket::from(fd)));
            }
            SocketInfo::QuicLink => {
                let Some((name, address, socket)) = quic_socket.take() else {
                    return Err(UpgradeError::Protocol(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "an HTTP/3 link without its socket",
                    )));
                };
                let link = std::os::unix::net::UnixDatagram::from(fd);
                match quic
                    .iter_mut()
                    .find(|q| q.name == name && q.address == address)
                {
                    Some(listener) => listener.sockets.push((socket, link)),
                    None => quic.push(InheritedQuic {
                        name,
                        address,
                        sockets: vec![(socket, link)],
                    }),
                }
            }
            SocketInfo::Listener { name, address } => {
                let socket = std::net::TcpListener::from(fd);
                match listeners
                    .iter_mut()
                    .find(|l| l.name.as_deref() == Some(name.as_str()) && l.address == address)
                {
                    Some(listener) => listener.sockets.push(socket),
                    None => listeners.push(InheritedListener {
                        name: Some(name),
                        address,
                        sockets: vec![socket],
                    }),
                }
            }
            SocketInfo::Admin { .. } => admin = Some(std::net::TcpListener::from(fd)),
            SocketInfo::Upgrade => upgrade = Some(StdUnixListener::from(fd)),
        }
    }
    Ok(Handed {
        version,
        document: document.map(|d| ConfigDocument {
            text: d.text,
            base_dir: d.base_dir,
            origin: d.origin,
        }),
        sockets: match quic_tag {
            Some(tag) => InheritedSockets::new(listeners).with_quic(quic, tag),
            None => InheritedSockets::new(listeners),
        },
        admin,
        upgrade,
        upgrade_path: socket.to_path_buf(),
    })
}
