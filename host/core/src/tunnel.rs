//! Protocol switches (WebSocket): forward the handshake on a dedicated upstream connection, then
//! splice the two sockets together until either side closes.

use std::rc::Rc;

use http::{HeaderValue, Request, Response, StatusCode, Version, header};
use hyper_util::rt::TokioIo;

use crate::body::{Exchange, ProxyBody};
use crate::downstream_body::DownstreamBody;
use crate::error::{ErrorKind, ProxyError};
use crate::headers;
use crate::proxy::local_error;
use crate::upstream::ClusterRt;

/// Forwards an `Upgrade` request; on `101` both connections become one byte tunnel.
pub(crate) async fn forward(
    cluster: &Rc<ClusterRt>,
    mut req: Request<DownstreamBody>,
    protocol: HeaderValue,
    mut exchange: Exchange,
) -> Response<ProxyBody> {
    exchange.set_cluster(cluster);
    let Some(downstream) = req.body_mut().take_upgrade() else {
        // Only HTTP/1.1 requests can switch, and those carry the switch with their body.
        return local_error(
            ErrorKind::InvalidRequest.into_error(),
            exchange,
            Version::HTTP_11,
        );
    };
    req.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    req.headers_mut().insert(header::UPGRADE, protocol);
    let (address, mut sender) = match cluster.connect_for_upgrade().await {
        Ok(connected) => connected,
        Err(error) => return local_error(error, exchange, Version::HTTP_11),
    };
    let mut response = match tokio::time::timeout(cluster.timeout(), sender.send_request(req)).await
    {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            let error = ProxyError::new(ErrorKind::UpstreamProtocol)
                .at(address)
                .because(e);
            return local_error(error, exchange, Version::HTTP_11);
        }
        Err(_) => {
            let error = ProxyError::new(ErrorKind::UpstreamTimeout).at(address);
            return local_error(error, exchange, Version::HTTP_11);
        }
    };
    exchange.set_status(response.status().as_u16());
    exchange.set_upstream(Some(address));
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        return Response::from_parts(parts, ProxyBody::incoming(body, exchange));
    }

    let upstream = hyper::upgrade::on(&mut response);
    tokio::task::spawn_local(async move {
        let upstream = async { upstream.await.map_err(std::io::Error::other) };
        let (mut downstream, upstream) = match tokio::try_join!(downstream.wait(), upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut upstream = TokioIo::new(upstream);
        if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
            tracing::debug!(error = %e, "tunnel closed");
        }
    });
    // The 101 itself: keep the switch headers the hop-by-hop rule would otherwise remove.
    let (mut parts, body) = response.into_parts();
    let upgrade = parts.headers.get(header::UPGRADE).cloned();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(upgrade) = upgrade {
        parts.headers.insert(header::UPGRADE, upgrade);
    }
    Response::from_parts(parts, ProxyBody::incoming(body, exchange))
}
