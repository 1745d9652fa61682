//! A cluster on one worker: picks an endpoint, gets a connection, sends the request, retries
//! on another endpoint when nothing reached the first one.

use crate::upstream::{BoxError, RequestBody};
use std::net::SocketAddr;
use std::rc::Rc;
use tokio::net::TcpStream;

use http::uri::{Authority, Parts, Scheme};
use http::{HeaderValue, Request, Response, Uri, Version, header};
use hyper::body::Incoming;

use crate::downstream_body::DownstreamBody;
use hyper::client::conn::http1;
use rustng_runtime_config::{Cluster, UpstreamProtocol};

use super::balancer::Balancer;
use super::connect;
use super::h1::{H1Body, H1Connection, SendError};
use super::pool::EndpointPool;
use crate::error::{ErrorKind, ProxyError};
use crate::snapshot::ClusterShared;
use crate::stats::RequestStats;
use std::sync::Arc;

/// Most endpoints tried for one request (Envoy retries a connect failure on another host too).
const MAX_ATTEMPTS: usize = 3;
/// Fresh connections tried on an endpoint when a pooled one turned out closed before the
/// request was written to it.
const MAX_STALE_RETRIES: usize = 2;

struct EndpointRt {
    address: SocketAddr,
    pool: EndpointPool,
    /// Requests sent to it (this worker's shard of the cluster's per-endpoint counters).
    stats: Arc<RequestStats>,
}

/// A cluster as one worker runs it.
pub(crate) struct ClusterRt {
    config: Cluster,
    endpoints: Vec<EndpointRt>,
    balancer: Balancer,
    /// Upstream requests, this worker's shard `worker`.
    stats: Arc<RequestStats>,
    worker: usize,
    /// Endpoints drained by hand: no new requests go to them.
    drained: Arc<arc_swap::ArcSwap<std::collections::HashSet<SocketAddr>>>,
}

/// The body of an upstream response.
pub(crate) enum UpstreamBody {
    /// Read by RustNg's own HTTP/1.1 client; returns its connection to the pool at the end.
    Http1(H1Body),
    /// From hyper's HTTP/2 client.
    Http2(Incoming),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Http1(body) => std::pin::Pin::new(body).poll_frame(cx),
            UpstreamBody::Http2(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::Http2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::Http2(body) => body.size_hint(),
        }
    }
}

/// A request on its way to an upstream, head and body apart. `body` is `None` once an attempt
/// has started sending it: from then on, no other attempt can be made.
pub(crate) struct Outgoing {
    pub(crate) head: http::request::Parts,
    pub(crate) body: Option<RequestBody>,
    /// How long the response head may take, when a route says (else the cluster's `timeout`).
    pub(crate) timeout: Option<std::time::Duration>,
}

/// A response head from an upstream, with its body still to come.
pub(crate) struct UpstreamResponse {
    pub(crate) head: http::response::Parts,
    pub(crate) body: UpstreamBody,
    pub(crate) endpoint: SocketAddr,
}

impl ClusterRt {
    pub(crate) fn new(config: Cluster, shared: ClusterShared, worker: usize) -> Self {
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| EndpointRt {
                address: e.address,
                pool: EndpointPool::new(config.max_idle_connections, config.idle_timeout),
                stats: shared
                    .endpoints
                    .get(&e.address)
                    .cloned()
                    .unwrap_or_else(|| RequestStats::new(1)),
            })
            .collect();
        let balancer = Balancer::new(config.lb_policy, config.endpoints.iter().map(|e| e.weight));
        ClusterRt {
            config,
            endpoints,
            balancer,
            stats: shared.stats,
            worker,
            drained: shared.drained,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn config(&self) -> &Cluster {
        &self.config
    }

    /// Closes idle connections past their timeout.
    pub(crate) fn sweep(&self) {
        for e in &self.endpoints {
            e.pool.sweep();
        }
    }

    /// Sends the request to an endpoint of this cluster and waits for the response head.
    /// The request is borrowed, not moved: attempts leave it in place when nothing of it was
    /// used, which is what makes a retry possible, and the request future stays small.
    pub(crate) async fn send(
        self: &Rc<Self>,
        req: &mut Outgoing,
    ) -> Result<UpstreamResponse, ProxyError> {
        let started = std::time::Instant::now();
        let result = self.send_to_endpoints(req).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(response) => {
                self.stats
                    .record(self.worker, response.head.status.as_u16(), elapsed);
            }
            Err(_) => self.stats.record_failure(self.worker, elapsed),
        }
        result
    }

    async fn send_to_endpoints(
        self: &Rc<Self>,
        req: &mut Outgoing,
    ) -> Result<UpstreamResponse, ProxyError> {
        if self.endpoints.is_empty() {
            return Err(ProxyError::new(ErrorKind::NoHealthyUpstream));
        }
        prepare_uri(&mut req.head, self.config.protocol)?;
        let drained = self.drained.load();
        let attempts = self.endpoints.len().min(MAX_ATTEMPTS);
        let mut tried = [usize::MAX; MAX_ATTEMPTS];
        let mut last_error = None;
        for attempt in 0..attempts {
            let Some(index) = self
                .balancer
                .pick(|i| tried.contains(&i) || self.is_drained(&drained, i))
            else {
                break;
            };
            tried[attempt] = index;
            let result = match self.config.protocol {
                UpstreamProtocol::Http1 => self.send_http1(index, req).await,
                // Boxed so HTTP/2's state does not grow the HTTP/1.1 request future.
                UpstreamProtocol::Http2 => Box::pin(self.send_http2(index, req)).await,
            };
            let endpoint = &self.endpoints[index].stats;
            match &result {
                Ok(response) => endpoint.count(self.worker, response.head.status.as_u16()),
                Err(_) => endpoint.count_failure(self.worker),
            }
            match result {
                Ok(response) => return Ok(response),
                Err(error) if error.retryable && req.body.is_some() => {
                    tracing::debug!(cluster = %self.config.name, %error, "trying another endpoint");
                    last_error = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| ProxyError::new(ErrorKind::NoHealthyUpstream)))
    }

    async fn send_http1(
        self: &Rc<Self>,
        index: usize,
        req: &mut Outgoing,
    ) -> Result<UpstreamResponse, ProxyError> {
        let endpoint = &self.endpoints[index];
        let address = endpoint.address;
        for _ in 0..=MAX_STALE_RETRIES {
            let (mut conn, reused) = match endpoint.pool.checkout_http1() {
                Some(conn) => (conn, true),
                // Boxed: connecting is the rare path, and inline its state would grow every
                // request future (moved into a Box per request).
                None => {
                    let stream =
                        Box::pin(connect::tcp(address, self.config.connect_timeout)).await?;
                    (H1Connection::new(stream), false)
                }
            };
            let sent = tokio::time::timeout(
                req.timeout.unwrap_or(self.config.timeout),
                conn.send(&req.head, &mut req.body, reused),
            )
            .await;
            match sent {
                Ok(Ok(head)) => {
                    let mut response = Response::new(());
                    *response.status_mut() = head.status;
                    *response.version_mut() = head.version;
                    *response.headers_mut() = head.headers;
                    let (head_parts, ()) = response.into_parts();
                    return Ok(UpstreamResponse {
                        head: head_parts,
                        body: UpstreamBody::Http1(H1Body::new(
                            conn,
                            head.body,
                            (Rc::clone(self), index),
                        )),
                        endpoint: address,
                    });
                }
                // A pooled connection the upstream had already closed: a fresh one.
                Ok(Err(SendError::Retry(_))) if reused => continue,
                Ok(Err(SendError::Retry(cause))) => {
                    return Err(ProxyError::new(ErrorKind::UpstreamProtocol)
                        .retryable()
                        .at(address)
                        .because(cause));
                }
                Ok(Err(SendError::Upstream(cause))) => {
                    return Err(ProxyError::new(ErrorKind::UpstreamProtocol)
                        .at(address)
                        .because(cause));
                }
                Ok(Err(SendError::Downstream(cause))) => {
                    return Err(ProxyError::new(ErrorKind::InvalidRequest)
                        .at(address)
                        .because(cause));
                }
                Err(_) => return Err(ProxyError::new(ErrorKind::UpstreamTimeout).at(address)),
            }
        }
        Err(ProxyError::new(ErrorKind::UpstreamProtocol)
            .retryable()
            .at(address)
            .because("pooled connections kept closing"))
    }

    /// Takes back a connection whose response was read to the end.
    pub(crate) fn checkin_http1(
        &self,
        endpoint: usize,
        conn: H1Connection,
        now: tokio::time::Instant,
    ) {
        self.endpoints[endpoint].pool.checkin_http1(conn, now);
    }

    async fn send_http2(
        self: &Rc<Self>,
        index: usize,
        req: &mut Outgoing,
    ) -> Result<UpstreamResponse, ProxyError> {
        let endpoint = &self.endpoints[index];
        let address = endpoint.address;
        let mut sender = match endpoint.pool.http2() {
            Some(sender) => sender,
            None => {
                let sender = connect::http2(address, self.config.connect_timeout).await?;
                endpoint.pool.set_http2(sender.clone());
                sender
            }
        };
        if let Err(e) = sender.ready().await {
            return Err(ProxyError::new(ErrorKind::UpstreamProtocol)
                .retryable()
                .at(address)
                .because(e));
        }
        // hyper's client takes the request by value; it hands it back if it never sent it.
        let Some(body) = req.body.take() else {
            return Err(ProxyError::new(ErrorKind::UpstreamProtocol).at(address));
        };
        let head = std::mem::replace(&mut req.head, Request::new(()).into_parts().0);
        let request = Request::from_parts(head, body);
        let timeout = req.timeout.unwrap_or(self.config.timeout);
        match tokio::time::timeout(timeout, sender.try_send_request(request)).await {
            Ok(Ok(response)) => {
                let (head, body) = response.into_parts();
                Ok(UpstreamResponse {
                    head,
                    body: UpstreamBody::Http2(body),
                    endpoint: address,
                })
            }
            Ok(Err(mut e)) => {
                let error = match e.take_message() {
                    Some(returned) => {
                        let (head, body) = returned.into_parts();
                        req.head = head;
                        req.body = Some(body);
                        send_error(address, e.into_error()).retryable()
                    }
                    None => send_error(address, e.into_error()),
                };
                Err(error)
            }
            Err(_) => Err(ProxyError::new(ErrorKind::UpstreamTimeout).at(address)),
        }
    }

    /// Opens a dedicated HTTP/1.1 connection that survives a protocol switch (WebSocket).
    pub(crate) async fn connect_for_upgrade(
        &self,
    ) -> Result<(SocketAddr, http1::SendRequest<DownstreamBody>), ProxyError> {
        let timeout = self.config.connect_timeout;
        self.connect_any(|address| connect::http1_upgradable(address, timeout))
            .await
    }

    /// Opens a plain TCP connection to an endpoint (TCP listeners).
    pub(crate) async fn connect_tcp(&self) -> Result<(SocketAddr, TcpStream), ProxyError> {
        let timeout = self.config.connect_timeout;
        self.connect_any(|address| connect::tcp(address, timeout))
            .await
    }

    /// Connects to an endpoint with `connect`, trying another endpoint when one fails, as
    /// requests do.
    async fn connect_any<T, F>(
        &self,
        connect: impl Fn(SocketAddr) -> F,
    ) -> Result<(SocketAddr, T), ProxyError>
    where
        F: std::future::Future<Output = Result<T, ProxyError>>,
    {
        let mut tried = [usize::MAX; MAX_ATTEMPTS];
        let drained = self.drained.load();
        let mut last_error = ProxyError::new(ErrorKind::NoHealthyUpstream);
        for attempt in 0..self.endpoints.len().min(MAX_ATTEMPTS) {
            // Another endpoint than the ones that already failed.
            let Some(index) = self
                .balancer
                .pick(|i| tried.contains(&i) || self.is_drained(&drained, i))
            else {
                break;
            };
            tried[attempt] = index;
            let address = self.endpoints[index].address;
            match connect(address).await {
                Ok(connection) => return Ok((address, connection)),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    /// Whether endpoint `index` is drained (the set is almost always empty: one length check).
    fn is_drained(&self, drained: &std::collections::HashSet<SocketAddr>, index: usize) -> bool {
        !drained.is_empty() && drained.contains(&self.endpoints[index].address)
    }

    /// Cluster `timeout`: how long to wait for a response head.
    pub(crate) fn timeout(&self) -> std::time::Duration {
        self.config.timeout
    }
}

/// HTTP/1.1 upstreams get origin-form (`/path?q`) plus `Host`; HTTP/2 ones need scheme and
/// authority in the URI and carry no `Host`.
fn prepare_uri(
    req: &mut http::request::Parts,
    protocol: UpstreamProtocol,
) -> Result<(), ProxyError> {
    match protocol {
        UpstreamProtocol::Http1 => {
            if req.uri.authority().is_some() {
                if !req.headers.contains_key(header::HOST)
                    && let Some(authority) = req.uri.authority()
                    && let Ok(host) = HeaderValue::from_str(authority.as_str())
                {
                    req.headers.insert(header::HOST, host);
                }
                let path = req.uri.path_and_query().cloned();
                let mut parts = Parts::default();
                parts.path_and_query = path;
                req.uri = Uri::from_parts(parts).map_err(bad_uri)?;
            }
            req.version = Version::HTTP_11;
        }
        UpstreamProtocol::Http2 => {
            if req.uri.authority().is_none() {
                let authority = match req.headers.remove(header::HOST) {
                    Some(host) => Authority::try_from(host.as_bytes()).map_err(bad_uri)?,
                    None => Authority::from_static("localhost"),
                };
                let mut parts = Parts::default();
                parts.scheme = Some(Scheme::HTTP);
                parts.authority = Some(authority);
                parts.path_and_query = req.uri.path_and_query().cloned();
                req.uri = Uri::from_parts(parts).map_err(bad_uri)?;
            } else {
                req.headers.remove(header::HOST);
            }
            req.version = Version::HTTP_2;
        }
    }
    Ok(())
}

/// A failed HTTP/2 exchange is the client's fault when hyper says the request body it was
/// streaming broke (a malformed chunk, a client gone mid-upload); otherwise the upstream's.
fn send_error(address: SocketAddr, e: hyper::Error) -> ProxyError {
    let kind = if e.is_user() {
        ErrorKind::InvalidRequest
    } else {
        ErrorKind::UpstreamProtocol
    };
    ProxyError::new(kind).at(address).because(e)
}

fn bad_uri(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> ProxyError {
    ProxyError::new(ErrorKind::InvalidRequest).because(e)
}
