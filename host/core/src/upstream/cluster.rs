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
use super::breaker::{CircuitBreaker, ConnectionSlot, Overflow, Permit, Resource};
use super::connect;
use super::h1::{H1Body, H1Connection, SendError};
use super::health::{ClusterHealth, EndpointHealth};
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
    /// Shared with the cluster's next version while the address and the pool settings stay:
    /// a changed endpoint set (a discovery update, say) keeps the other endpoints' idle
    /// connections.
    pool: Rc<EndpointPool>,
    /// Requests sent to it (this worker's shard of the cluster's per-endpoint counters).
    stats: Arc<RequestStats>,
    /// Shared by every worker: in rotation or not.
    health: Arc<EndpointHealth>,
    /// Requests in flight to it from this worker (least request).
    active: std::cell::Cell<u32>,
}

/// A request in flight to an endpoint, from the attempt's start until its response body is
/// done with: counted for least request and under the cluster's `max_requests`.
pub(crate) struct InFlight {
    cluster: Rc<ClusterRt>,
    endpoint: usize,
}

impl InFlight {
    fn start(cluster: &Rc<ClusterRt>, endpoint: usize) -> Result<InFlight, ProxyError> {
        cluster
            .breaker
            .try_acquire(Resource::Requests, &cluster.config.circuit_breakers)
            .map_err(|o| cluster.overflow(o))?;
        let active = &cluster.endpoints[endpoint].active;
        active.set(active.get() + 1);
        Ok(InFlight {
            cluster: Rc::clone(cluster),
            endpoint,
        })
    }

    pub(crate) fn cluster(&self) -> &Rc<ClusterRt> {
        &self.cluster
    }

    pub(crate) fn endpoint(&self) -> usize {
        self.endpoint
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let active = &self.cluster.endpoints[self.endpoint].active;
        active.set(active.get().saturating_sub(1));
        self.cluster.breaker.release(Resource::Requests);
    }
}

/// An upstream HTTP/2 response body, holding its request's place in flight until it ends.
pub(crate) struct H2Body {
    body: Incoming,
    _in_flight: InFlight,
}

impl http_body::Body for H2Body {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
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
    cluster_health: Arc<ClusterHealth>,
    breaker: Arc<CircuitBreaker>,
    tls: Option<Arc<super::UpstreamTls>>,
}

/// The body of an upstream response.
pub(crate) enum UpstreamBody {
    /// Read by RustNg's own HTTP/1.1 client; returns its connection to the pool at the end.
    Http1(H1Body),
    /// From hyper's HTTP/2 client.
    Http2(H2Body),
}

impl UpstreamBody {
    /// The whole body if it has already arrived, taken out; `None` while some of it is still
    /// to be read (or for HTTP/2, whose frames come through hyper).
    pub(crate) fn take_buffered(&mut self) -> Option<bytes::Bytes> {
        match self {
            UpstreamBody::Http1(body) => body.take_buffered(),
            UpstreamBody::Http2(_) => None,
        }
    }
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
    /// The route's hash key, hashed (`RING_HASH`, `MAGLEV`).
    pub(crate) hash: Option<u64>,
}

/// A response head from an upstream, with its body still to come.
pub(crate) struct UpstreamResponse {
    pub(crate) head: http::response::Parts,
    pub(crate) body: UpstreamBody,
    pub(crate) endpoint: SocketAddr,
}

impl ClusterRt {
    /// The cluster `config` on `worker`; `previous` (its version before, if any) hands over
    /// the pools of the endpoints both have, when the pool settings did not change.
    pub(crate) fn new(
        config: Cluster,
        shared: ClusterShared,
        worker: usize,
        previous: Option<&ClusterRt>,
    ) -> Self {
        let reusable = previous.filter(|p| {
            p.config.protocol == config.protocol
                && p.config.tls == config.tls
                && p.config.max_idle_connections == config.max_idle_connections
                && p.config.idle_timeout == config.idle_timeout
        });
        let endpoints = config
            .endpoints
            .iter()
            .map(|e| EndpointRt {
                address: e.address,
                pool: reusable
                    .and_then(|p| p.endpoints.iter().find(|old| old.address == e.address))
                    .map_or_else(
                        || {
                            Rc::new(EndpointPool::new(
                                config.max_idle_connections,
                                config.idle_timeout,
                            ))
                        },
                        |old| Rc::clone(&old.pool),
                    ),
                stats: shared
                    .endpoints
                    .get(&e.address)
                    .cloned()
                    .unwrap_or_else(|| RequestStats::new(1)),
                health: shared
                    .health
                    .get(&e.address)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(EndpointHealth::new(e.address))),
                active: std::cell::Cell::new(0),
            })
            .collect();
        let placed: Vec<(SocketAddr, u32)> = config
            .endpoints
            .iter()
            .map(|e| (e.address, e.weight))
            .collect();
        let balancer = Balancer::new(config.lb_policy, &placed, config.ring_size);
        ClusterRt {
            config,
            endpoints,
            balancer,
            stats: shared.stats,
            worker,
            drained: shared.drained,
            cluster_health: shared.cluster_health,
            breaker: shared.breaker,
            tls: shared.tls,
        }
    }

    /// The 503 for a circuit breaker that is open.
    fn overflow(&self, Overflow(resource): Overflow) -> ProxyError {
        tracing::debug!(cluster = %self.config.name, resource = resource.as_str(), "circuit breaker open");
        ProxyError::new(ErrorKind::Overflow)
    }

    /// Picks an endpoint in rotation that `tried` does not hold: drained and unhealthy ones
    /// are passed over, unless so few are healthy that health is ignored (panic mode).
    fn pick(
        &self,
        hash: Option<u64>,
        tried: &[usize],
        drained: &std::collections::HashSet<SocketAddr>,
    ) -> Option<usize> {
        let health = &*self.cluster_health;
        let check_health =
            health.any_out() && !health.panicking(self.config.healthy_panic_threshold);
        self.balancer.pick(
            hash,
            |i| self.endpoints[i].active.get(),
            |i| {
                tried.contains(&i)
                    || self.is_drained(drained, i)
                    || (check_health && !self.endpoints[i].health.is_healthy(health))
            },
        )
    }

    /// A place under `max_retries` for a retry about to start; `None` when none is left.
    pub(crate) fn retry_permit(&self) -> Option<Permit<'_>> {
        self.breaker
            .permit(Resource::Retries, &self.config.circuit_breakers)
            .map_err(|o| self.overflow(o))
            .ok()
    }

    /// Tells outlier detection how an exchange with endpoint `index` went.
    fn record_outcome(&self, index: usize, failed: bool) {
        if let Some(detector) = &self.config.outlier_detection {
            self.endpoints[index]
                .health
                .record(failed, detector, &self.cluster_health);
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
            let Some(index) = self.pick(req.hash, &tried, &drained) else {
                break;
            };
            tried[attempt] = index;
            let in_flight = InFlight::start(self, index)?;
            let result = match self.config.protocol {
                UpstreamProtocol::Http1 => self.send_http1(in_flight, req).await,
                // Boxed so HTTP/2's state does not grow the HTTP/1.1 request future.
                UpstreamProtocol::Http2 => Box::pin(self.send_http2(in_flight, req)).await,
            };
            let endpoint = &self.endpoints[index].stats;
            match &result {
                Ok(response) => {
                    let status = response.head.status.as_u16();
                    endpoint.count(self.worker, status);
                    self.record_outcome(index, status >= 500);
                }
                Err(error) => {
                    endpoint.count_failure(self.worker);
                    // The client's own faults and open breakers say nothing of the endpoint.
                    if !matches!(error.kind, ErrorKind::InvalidRequest | ErrorKind::Overflow) {
                        self.record_outcome(index, true);
                    }
                }
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
        in_flight: InFlight,
        req: &mut Outgoing,
    ) -> Result<UpstreamResponse, ProxyError> {
        let index = in_flight.endpoint();
        let endpoint = &self.endpoints[index];
        let address = endpoint.address;
        let mut in_flight = Some(in_flight);
        for _ in 0..=MAX_STALE_RETRIES {
            let (mut conn, reused) = match endpoint.pool.checkout_http1() {
                Some(conn) => (conn, true),
                // Boxed: connecting is the rare path, and inline its state would grow every
                // request future (moved into a Box per request).
                None => Box::pin(self.connect_http1(index)).await?,
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
                    let Some(in_flight) = in_flight.take() else {
                        return Err(ProxyError::new(ErrorKind::UpstreamProtocol).at(address));
                    };
                    return Ok(UpstreamResponse {
                        head: head_parts,
                        body: UpstreamBody::Http1(H1Body::new(conn, head.body, in_flight)),
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

    /// A new connection to `address`, under the cluster's `max_connections`, and counted as
    /// pending (`max_pending_requests`) while it is being opened.
    async fn connect_http1(&self, index: usize) -> Result<(H1Connection, bool), ProxyError> {
        let address = self.endpoints[index].address;
        let timeout = self.config.connect_timeout;
        let tls = self.tls.as_deref();
        self.new_connection(index, |slot| async move {
            Ok((
                H1Connection::new(connect::stream(address, timeout, tls).await?, slot),
                false,
            ))
        })
        .await
    }

    /// Opens a connection to endpoint `index` with `connect`, under the cluster's
    /// `max_connections` (the slot goes with the connection) and counted as pending while it
    /// opens.
    async fn new_connection<T, F>(
        &self,
        index: usize,
        connect: impl FnOnce(ConnectionSlot) -> F,
    ) -> Result<T, ProxyError>
    where
        F: std::future::Future<Output = Result<T, ProxyError>>,
    {
        let limits = &self.config.circuit_breakers;
        let slot = ConnectionSlot::acquire(&self.breaker, limits, &self.endpoints[index].health)
            .map_err(|o| self.overflow(o))?;
        let _pending = self
            .breaker
            .permit(Resource::Pending, limits)
            .map_err(|o| self.overflow(o))?;
        connect(slot).await
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
        in_flight: InFlight,
        req: &mut Outgoing,
    ) -> Result<UpstreamResponse, ProxyError> {
        let endpoint = &self.endpoints[in_flight.endpoint()];
        let address = endpoint.address;
        let mut sender = match endpoint.pool.http2() {
            Some(sender) => sender,
            None => {
                let timeout = self.config.connect_timeout;
                let tls = self.tls.as_deref();
                let sender = self
                    .new_connection(in_flight.endpoint(), |slot| {
                        connect::http2(address, timeout, tls, slot)
                    })
                    .await?;
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
                    body: UpstreamBody::Http2(H2Body {
                        body,
                        _in_flight: in_flight,
                    }),
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
        let tls = self.tls.as_deref();
        self.connect_any(|address| connect::http1_upgradable(address, timeout, tls))
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
            let Some(index) = self.pick(None, &tried, &drained) else {
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
