//! Active health checking (Envoy's cluster `health_checks`): one task per checked endpoint,
//! on a thread of its own so checks never take time from a worker. A verdict flips the
//! endpoint's shared [`EndpointHealth`], which every worker's picks read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes};
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustng_runtime_config::{HealthCheck, HealthCheckKind, UpstreamProtocol};
use tokio::net::TcpStream;

use super::io::UpstreamIo;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::health::{ClusterHealth, EndpointHealth};
use crate::local_exec::LocalExec;
use crate::snapshot::Snapshot;

/// Most of a health check response read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// `grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING`.
const GRPC_SERVING: u64 = 1;

/// What one endpoint's check task is started with; a changed one restarts the task.
#[derive(Clone)]
struct Target {
    check: HealthCheck,
    protocol: UpstreamProtocol,
    cluster: String,
    address: SocketAddr,
    /// Checks go over the cluster's TLS, as its traffic does.
    tls: Option<Arc<super::UpstreamTls>>,
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        self.check == other.check
            && self.protocol == other.protocol
            && self.cluster == other.cluster
            && self.address == other.address
            && match (&self.tls, &other.tls) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// Starts the health checker thread: it follows every published snapshot (through
/// `applied`) and checks the endpoints of clusters that configure `health_checks`. It ends
/// when the control side goes away.
pub(crate) fn start(
    current: Arc<ArcSwap<Snapshot>>,
    mut applied: watch::Receiver<u64>,
) -> std::io::Result<()> {
    crate::local_exec::spawn_thread("rustng-health", move || async move {
        let mut tasks: HashMap<(String, SocketAddr), (Target, JoinHandle<()>)> = HashMap::new();
        loop {
            sync(&current.load(), &mut tasks);
            if applied.changed().await.is_err() {
                break;
            }
        }
        for (_, (_, task)) in tasks {
            task.abort();
        }
    })
}

/// Starts, restarts and stops check tasks to match `snapshot`.
fn sync(snapshot: &Snapshot, tasks: &mut HashMap<(String, SocketAddr), (Target, JoinHandle<()>)>) {
    let mut wanted = HashMap::new();
    for cluster in &snapshot.config.clusters {
        let (Some(check), Some(shared)) = (
            &cluster.health_check,
            snapshot.cluster_state.get(&cluster.name),
        ) else {
            continue;
        };
        for endpoint in &cluster.endpoints {
            let Some(health) = shared.health.get(&endpoint.address) else {
                continue;
            };
            let target = Target {
                check: check.clone(),
                protocol: cluster.protocol,
                cluster: cluster.name.clone(),
                address: endpoint.address,
                tls: shared.tls.clone(),
            };
            wanted.insert(
                (cluster.name.clone(), endpoint.address),
                (
                    target,
                    Arc::clone(health),
                    Arc::clone(&shared.cluster_health),
                ),
            );
        }
    }
    tasks.retain(|key, (target, task)| {
        let keep = wanted.get(key).is_some_and(|(t, _, _)| t == target);
        if !keep {
            task.abort();
        }
        keep
    });
    for (key, (target, health, cluster)) in wanted {
        if tasks.contains_key(&key) {
            continue;
        }
        let task = tokio::task::spawn_local(check_forever(target.clone(), health, cluster));
        tasks.insert(key, (target, task));
    }
}

/// Checks one endpoint every interval (plus jitter) and flips its health after enough
/// results in a row.
async fn check_forever(target: Target, health: Arc<EndpointHealth>, cluster: Arc<ClusterHealth>) {
    let check = &target.check;
    let (mut passes, mut failures) = (0u32, 0u32);
    loop {
        let outcome = tokio::time::timeout(check.timeout, probe(&target))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)));
        match outcome {
            Ok(()) => {
                failures = 0;
                passes = passes.saturating_add(1);
                if passes >= check.healthy_threshold && health.set_check_failed(false, &cluster) {
                    tracing::info!(cluster = %target.cluster, endpoint = %target.address, "health check passes: endpoint back in rotation");
                }
            }
            Err(reason) => {
                passes = 0;
                failures = failures.saturating_add(1);
                if failures >= check.unhealthy_threshold && health.set_check_failed(true, &cluster)
                {
                    tracing::warn!(cluster = %target.cluster, endpoint = %target.address, %reason, "health check fails: endpoint out of rotation");
                } else {
                    tracing::debug!(cluster = %target.cluster, endpoint = %target.address, %reason, "health check failed");
                }
            }
        }
        let jitter = if check.interval_jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_micros(fastrand::u64(
                0..u64::try_from(check.interval_jitter.as_micros()).unwrap_or(u64::MAX),
            ))
        };
        tokio::time::sleep(check.interval + jitter).await;
    }
}

/// One check; the reason when it fails.
async fn probe(target: &Target) -> Result<(), String> {
    let tcp = TcpStream::connect(target.address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = match &target.tls {
        None => UpstreamIo::Plain(tcp),
        Some(tls) => UpstreamIo::Tls(Box::new(
            tls.handshake(target.address, tcp, target.check.timeout)
                .await
                .map_err(|e| e.to_string())?,
        )),
    };
    match &target.check.kind {
        HealthCheckKind::Tcp => Ok(()),
        HealthCheckKind::Http {
            path,
            host,
            expected_statuses,
        } => {
            let request = Request::get(path.as_str())
                .header(header::HOST, host.as_str())
                .header(header::USER_AGENT, "rustng-health-check")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            let (status, _, _) = exchange(stream, target.protocol, request, host).await?;
            if expected_statuses
                .iter()
                .any(|(start, end)| (*start..*end).contains(&status.as_u16()))
            {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        }
        HealthCheckKind::Grpc {
            service_name,
            authority,
        } => {
            let request = Request::post("/grpc.health.v1.Health/Check")
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(header::TE, "trailers")
                .header(header::USER_AGENT, "rustng-health-check")
                .body(Full::new(grpc_check_request(service_name)))
                .map_err(|e| e.to_string())?;
            let (status, body, grpc_status) =
                exchange(stream, UpstreamProtocol::Http2, request, authority).await?;
            if status != 200 {
                return Err(format!("status {status}"));
            }
            match grpc_status.as_deref() {
                Some("0") => {}
                other => return Err(format!("grpc-status {}", other.unwrap_or("missing"))),
            }
            match grpc_serving_status(&body) {
                Some(GRPC_SERVING) => Ok(()),
                Some(other) => Err(format!("serving status {other}")),
                None => Err("malformed HealthCheckResponse".to_owned()),
            }
        }
    }
}

/// Sends `request` over `stream` with `protocol`; the status, the body, and `grpc-status`
/// (from the trailers, or the head of a trailers-only answer).
async fn exchange(
    stream: UpstreamIo,
    protocol: UpstreamProtocol,
    mut request: Request<Full<Bytes>>,
    authority: &str,
) -> Result<(http::StatusCode, Bytes, Option<String>), String> {
    let response = match protocol {
        UpstreamProtocol::Http1 => {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::task::spawn_local(connection);
            sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?
        }
        UpstreamProtocol::Http2 => {
            let uri = format!("http://{authority}{}", request.uri());
            *request.uri_mut() = uri
                .parse()
                .map_err(|e: http::uri::InvalidUri| e.to_string())?;
            request.headers_mut().remove(header::HOST);
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(LocalExec, TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::task::spawn_local(connection);
            sender
                .send_request(request)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let (head, body) = response.into_parts();
    let header_status = head
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let collected = Limited::new(body, MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailer_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((
        head.status,
        collected.to_bytes(),
        trailer_status.or(header_status),
    ))
}

/// A gRPC message (uncompressed, length-prefixed) holding `HealthCheckRequest { service }`.
fn grpc_check_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 3);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        push_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    Bytes::from(framed)
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `HealthCheckResponse.status` from a length-prefixed gRPC message (0, UNKNOWN, when the
/// field is absent, as proto3 leaves defaults out).
fn grpc_serving_status(mut body: &[u8]) -> Option<u64> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let length = body.get_u32() as usize;
    let mut message = body.get(..length)?;
    let mut status = 0;
    while !message.is_empty() {
        let key = read_varint(&mut message)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = read_varint(&mut message)?,
            (_, 0) => {
                read_varint(&mut message)?;
            }
            (_, 2) => {
                let skip = usize::try_from(read_varint(&mut message)?).ok()?;
                message = message.get(skip..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_round_trip() {
        assert_eq!(&grpc_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_check_request("svc")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b's', b'v', b'c']
        );
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08]), None);
        assert_eq!(grpc_serving_status(&[1, 0, 0, 0, 0]), None);
    }
}
