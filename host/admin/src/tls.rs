//! HTTPS for the admin port, and mutual TLS when `admin.tls.client_ca` is set: a client
//! without a certificate from that CA does not finish the handshake, before any token is
//! looked at.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustng_runtime_config::AdminTls;

/// The admin server's TLS configuration (ALPN `h2` for gRPC, `http/1.1` for REST).
pub(crate) fn server_config(tls: &AdminTls) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.certificate_chain)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("certificate_chain {}: {e}", tls.certificate_chain.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate_chain {}: no certificate",
            tls.certificate_chain.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.private_key)
        .map_err(|e| format!("private_key {}: {e}", tls.private_key.display()))?;
    let provider = Arc::new(ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("client_ca {}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("client_ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("client_ca {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("client_ca {}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate_chain and private_key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
