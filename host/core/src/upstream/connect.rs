//! Opening upstream connections: TCP with a deadline, then the HTTP handshake.

use crate::upstream::RequestBody;
use std::net::SocketAddr;
use std::time::Duration;

use crate::downstream_body::DownstreamBody;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::io::UpstreamIo;
use super::tls::UpstreamTls;
use crate::error::{ErrorKind, ProxyError};
use crate::local_exec::LocalExec;

/// A connection to `address`: TCP, then TLS when the cluster has it (each step within
/// `timeout`).
pub(crate) async fn stream(
    address: SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<UpstreamIo, ProxyError> {
    let tcp = tcp(address, timeout).await?;
    match tls {
        None => Ok(UpstreamIo::Plain(tcp)),
        Some(tls) => Ok(UpstreamIo::Tls(Box::new(
            tls.handshake(address, tcp, timeout).await?,
        ))),
    }
}

pub(crate) async fn tcp(address: SocketAddr, timeout: Duration) -> Result<TcpStream, ProxyError> {
    // A failed or timed-out connect sent nothing, so another endpoint may be tried.
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return Err(ProxyError::new(ErrorKind::ConnectRefused)
                .retryable()
                .at(address)
                .because(e));
        }
        Err(_) => {
            return Err(ProxyError::new(ErrorKind::ConnectTimeout)
                .retryable()
                .at(address));
        }
    };
    // Small request heads must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn handshake_failed(address: SocketAddr, e: hyper::Error) -> ProxyError {
    ProxyError::new(ErrorKind::ConnectRefused)
        .retryable()
        .at(address)
        .because(e)
}

/// Opens a hyper HTTP/1.1 connection that stays usable after a `101 Switching Protocols`
/// (protocol switches only; ordinary requests use RustNg's own client in `h1/`). Its driver
/// runs as a task on this worker.
pub(crate) async fn http1_upgradable(
    address: SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
) -> Result<http1::SendRequest<DownstreamBody>, ProxyError> {
    let stream = stream(address, timeout, tls).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| handshake_failed(address, e))?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%address, error = %e, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Opens an HTTP/2 (prior knowledge) connection; it multiplexes every request to `address`.
/// `slot` (its place under the cluster's `max_connections`) is held as long as the connection.
pub(crate) async fn http2(
    address: SocketAddr,
    timeout: Duration,
    tls: Option<&UpstreamTls>,
    slot: super::breaker::ConnectionSlot,
) -> Result<http2::SendRequest<RequestBody>, ProxyError> {
    let stream = stream(address, timeout, tls).await?;
    let (sender, conn) = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| handshake_failed(address, e))?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%address, error = %e, "upstream h2 connection ended");
        }
        drop(slot);
    });
    Ok(sender)
}
