//! A whole request to a cluster and its whole answer, for RustNg's own calls (plugins' HTTP
//! calls, span exports): through the cluster's pool, balancing and breakers like traffic.

use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderMap, request, response};
use http_body_util::{BodyExt as _, Limited};

use super::{BoxError, ClusterRt, Outgoing, RequestBody, UpstreamBody};

/// A collected answer.
pub(crate) struct Answer {
    pub(crate) head: response::Parts,
    pub(crate) body: Bytes,
    pub(crate) trailers: HeaderMap,
}

/// Sends `head` with `body` and reads the answer, at most `limit` body bytes of it.
pub(crate) async fn call(
    cluster: &Rc<ClusterRt>,
    head: request::Parts,
    body: Bytes,
    limit: usize,
) -> Result<Answer, BoxError> {
    let mut outgoing = Outgoing {
        head,
        body: Some(RequestBody::full(body)),
        timeout: None,
        hash: None,
    };
    let upstream = cluster.send(&mut outgoing).await?;
    let collected = match upstream.body {
        UpstreamBody::Http1(body) => Limited::new(body, limit).collect().await?,
        UpstreamBody::Http2(body) => Limited::new(body, limit).collect().await?,
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    Ok(Answer {
        head: upstream.head,
        body: collected.to_bytes(),
        trailers,
    })
}
