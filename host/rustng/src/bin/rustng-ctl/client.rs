//! The admin API over HTTP/1.1: JSON answers, the server's message as the error when the
//! status says the call failed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// A pushed module and a config apply can take a while (compile, canary); a wedged server
/// must not hang a CI job forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) struct AdminClient {
    base: String,
    token: Option<String>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

/// Files for an `https://` admin URL: the CA that issued the server's certificate, and for
/// mutual TLS the client's certificate and key.
pub(crate) struct TlsFiles {
    pub(crate) ca: Option<PathBuf>,
    pub(crate) cert: Option<PathBuf>,
    pub(crate) key: Option<PathBuf>,
}

impl AdminClient {
    pub(crate) fn new(
        base: &str,
        token: Option<String>,
        tls: &TlsFiles,
    ) -> anyhow::Result<AdminClient> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().with_context(|| format!("--admin {base}"))?;
        let config = match uri.scheme_str() {
            Some("http") => client_config(&TlsFiles {
                ca: None,
                cert: None,
                key: None,
            })?,
            Some("https") => {
                if tls.ca.is_none() {
                    bail!(
                        "--admin {base}: https needs --cacert (the CA of the admin server's certificate)"
                    );
                }
                client_config(tls)?
            }
            _ => bail!("--admin {base}: http:// or https:// expected"),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(AdminClient {
            base,
            token,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None, "application/json").await
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.call(Method::POST, path, Some(body), "application/json")
            .await
    }

    pub(crate) async fn put_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.call(Method::PUT, path, Some(body), "application/json")
            .await
    }

    pub(crate) async fn post_text(&self, path: &str, body: String) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body.into()), "application/yaml")
            .await
    }

    pub(crate) async fn put_text(&self, path: &str, body: String) -> anyhow::Result<Value> {
        self.call(Method::PUT, path, Some(body.into()), "application/yaml")
            .await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: &'static str,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Full::new(body.unwrap_or_default()))?;
        let response = tokio::time::timeout(CALL_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| anyhow!("{url}: no answer within {CALL_TIMEOUT:?}"))?
            .with_context(|| format!("{url}: cannot reach the admin server"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{url}: reading the answer"))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).trim().to_owned()));
        if status.is_success() {
            return Ok(value);
        }
        Err(anyhow!(failure(status, &value)))
    }
}

/// The server's message, with every field error on its own line.
fn failure(status: StatusCode, value: &Value) -> String {
    let message = value
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    let mut out = format!("{message} ({status})");
    for error in value
        .get("errors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let path = error.get("path").and_then(Value::as_str).unwrap_or("");
        let text = error.get("message").and_then(Value::as_str).unwrap_or("");
        out.push_str(&format!("\n  {path}: {text}"));
    }
    out
}

/// Trusts only `tls.ca` (an admin port has its own CA, not a public one) and presents the
/// client certificate when one is given.
fn client_config(tls: &TlsFiles) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &tls.ca {
        for cert in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("--cacert {}", ca.display()))?
        {
            roots
                .add(cert.with_context(|| format!("--cacert {}", ca.display()))?)
                .with_context(|| format!("--cacert {}", ca.display()))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect())
                .with_context(|| format!("--cert {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("--key {}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--cert and --key go together"),
    })
}
