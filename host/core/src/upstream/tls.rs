//! TLS origination to a cluster's endpoints: rustls, the CAs the operator names (no system
//! trust store), SNI, ALPN for the cluster's protocol, and a client certificate for upstreams
//! that require mutual TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustng_runtime_config::UpstreamProtocol;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::error::{ErrorKind, ProxyError};

/// A cluster's TLS client side, built once per config version on the control thread.
pub(crate) struct UpstreamTls {
    connector: TlsConnector,
    /// `None`: each endpoint is verified by its IP address.
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    pub(crate) fn new(
        config: &rustng_runtime_config::UpstreamTls,
        protocol: UpstreamProtocol,
    ) -> Result<UpstreamTls, String> {
        let mut roots = rustls::RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.trusted_ca)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", config.trusted_ca.display()))?;
        let (added, _) = roots.add_parsable_certificates(cas);
        if added == 0 {
            return Err(format!(
                "{}: no CA certificate found",
                config.trusted_ca.display()
            ));
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots);
        let mut client = match &config.client_certificate {
            Some((chain, key)) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(chain)
                    .and_then(|certs| certs.collect::<Result<_, _>>())
                    .map_err(|e| format!("{}: {e}", chain.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: {e}", key.display()))?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("client certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![match protocol {
            UpstreamProtocol::Http1 => b"http/1.1".to_vec(),
            UpstreamProtocol::Http2 => b"h2".to_vec(),
        }];
        let server_name = config
            .sni
            .as_ref()
            .map(|name| {
                ServerName::try_from(name.clone()).map_err(|e| format!("sni \"{name}\": {e}"))
            })
            .transpose()?;
        Ok(UpstreamTls {
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    /// The TLS handshake over a connected socket, within `timeout`. A failed handshake sent
    /// no request, so another endpoint may be tried.
    pub(crate) async fn handshake(
        &self,
        address: SocketAddr,
        tcp: TcpStream,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, ProxyError> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(address.ip().into()));
        match tokio::time::timeout(timeout, self.connector.connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(ProxyError::new(ErrorKind::ConnectRefused)
                .retryable()
                .at(address)
                .because(format!("TLS handshake: {e}"))),
            Err(_) => Err(ProxyError::new(ErrorKind::ConnectTimeout)
                .retryable()
                .at(address)),
        }
    }
}
