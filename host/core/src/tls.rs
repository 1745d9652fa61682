//! TLS termination: rustls with ALPN, certificates chosen by SNI.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustng_runtime_config::{CertificateConfig, TlsConfig};

/// Picks a certificate by SNI: exact name, then `*.parent` wildcard, then the default (first).
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(Arc::clone(&self.default));
        };
        // rustls hands us the name already validated as a DNS name; compare lower-cased.
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(Arc::clone(key));
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(key) = self.wildcard.get(parent)
        {
            return Some(Arc::clone(key));
        }
        Some(Arc::clone(&self.default))
    }
}

fn load_certified_key(cert: &CertificateConfig) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(&cert.certificate_chain)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| format!("{}: {e}", cert.certificate_chain.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate found",
            cert.certificate_chain.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&cert.private_key)
        .map_err(|e| format!("{}: {e}", cert.private_key.display()))?;
    let signing_key = ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: {e}", cert.private_key.display()))?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// Builds the rustls server config of one listener (TCP: the ALPN protocols it configures).
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, String> {
    let alpn: Vec<&[u8]> = tls.alpn_protocols.iter().map(|p| p.as_bytes()).collect();
    server_config_for(tls, &alpn, false).map(Arc::new)
}

/// The same certificates with `alpn`; `tls13_only` for QUIC, which runs on TLS 1.3 alone.
pub(crate) fn server_config_for(
    tls: &TlsConfig,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<rustls::ServerConfig, String> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for cert in &tls.certificates {
        let key = Arc::new(load_certified_key(cert)?);
        for name in &cert.server_names {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_owned(), Arc::clone(&key)),
                None => exact.insert(name.clone(), Arc::clone(&key)),
            };
        }
        default.get_or_insert(key);
    }
    let default = default.ok_or("tls: no certificate configured")?;
    let resolver = SniResolver {
        exact,
        wildcard,
        default,
    };
    let builder = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()));
    let builder = if tls13_only {
        builder.with_protocol_versions(&[&rustls::version::TLS13])
    } else {
        builder.with_safe_default_protocol_versions()
    };
    let mut config = builder
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}
