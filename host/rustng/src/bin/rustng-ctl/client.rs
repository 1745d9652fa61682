//! The admin API over HTTP/1.1: JSON answers, the server's message as the error when the
//! status says the call failed.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A pushed module and a config apply can take a while (compile, canary); a wedged server
/// must not hang a CI job forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) struct AdminClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl AdminClient {
    pub(crate) fn new(base: &str, token: Option<String>) -> anyhow::Result<AdminClient> {
        let base = base.trim_end_matches('/').to_owned();
        let uri: Uri = base.parse().with_context(|| format!("--admin {base}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--admin {base}: only http:// admin URLs are supported");
        }
        Ok(AdminClient {
            base,
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
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
