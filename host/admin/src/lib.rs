//! RustNg's admin server: an HTTP/1.1 endpoint for operators, apart from the traffic.
//!
//! It runs on a thread of its own with its own small runtime, so a slow scrape or a burst of
//! admin calls never takes time from a worker, and a worker under load never delays
//! `/health`. It binds loopback unless configured otherwise (`admin.address`).
//!
//! Endpoints: `GET /health` (the process is up), `GET /metrics` (Prometheus text). Anything
//! else is 404, other methods 405.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustng_core::Telemetry;

/// Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running admin server.
pub struct AdminServer {
    address: SocketAddr,
}

impl AdminServer {
    /// Binds `address` (so a taken port fails the start, with the address in the error) and
    /// serves on a thread of its own until the process exits.
    pub fn start(address: SocketAddr, telemetry: Telemetry) -> io::Result<AdminServer> {
        let listener = std::net::TcpListener::bind(address)
            .map_err(|e| io::Error::new(e.kind(), format!("admin address {address}: {e}")))?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("rustng-admin".into())
            .spawn(move || runtime.block_on(serve(listener, telemetry)))?;
        tracing::info!(%address, "admin server listening");
        Ok(AdminServer { address })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

async fn serve(listener: std::net::TcpListener, telemetry: Telemetry) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "admin server cannot listen");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::debug!(%error, "admin accept failed");
                        continue;
                    }
                };
                let telemetry = telemetry.clone();
                tokio::task::spawn_local(async move {
                    let service = service_fn(move |req| {
                        let response = answer(&req, &telemetry);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%peer, %error, "admin connection error");
                    }
                });
            }
        })
        .await;
}

/// The answer to one admin request.
fn answer(req: &Request<Incoming>, telemetry: &Telemetry) -> Response<Full<Bytes>> {
    let known = matches!(req.uri().path(), "/health" | "/metrics");
    if !known {
        return text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match req.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            PROMETHEUS_TEXT,
            telemetry.render_prometheus(),
        ),
        _ => text(StatusCode::OK, "text/plain", "ok\n".into()),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}
