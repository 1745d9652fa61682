//! Span export: workers hand finished spans to a queue without waiting, and the exporter
//! thread sends them to the collector cluster in batches over OTLP (gRPC or HTTP).
//!
//! The queue is bounded by a count, not by blocking: a worker that finds it full drops the
//! span and counts it, so a slow or dead collector costs traffic nothing. One export is in
//! flight at a time; spans that arrive meanwhile wait in the queue, within the bound. The
//! exporter is woken once per full batch or by its schedule, not per span.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, header};
use prost::Message as _;
use rustng_runtime_config::{OtlpProtocol, Tracing};
use tokio::sync::{mpsc, watch};

use super::encode::{self, EncodedSpan};
use super::otlp;
use crate::snapshot::Snapshot;
use crate::upstream::ClusterTable;

/// What the OpenTelemetry SDKs queue, and send at once, before the exporter thread first
/// reads a config.
const INITIAL_CAPACITY: usize = 2048;
const INITIAL_BATCH_SIZE: usize = 512;

/// A collector's answer is small; anything bigger is not one.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The gRPC method of OTLP trace export.
const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Finished spans on their way to the exporter thread, and what became of them.
pub(crate) struct SpanQueue {
    sender: mpsc::UnboundedSender<EncodedSpan>,
    /// Spans submitted and not yet exported or dropped.
    queued: AtomicUsize,
    capacity: AtomicUsize,
    /// Spans per export: every this many submitted, the exporter is woken.
    batch_size: AtomicUsize,
    full_batch: tokio::sync::Notify,
    exported: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_export_failed: AtomicU64,
}

/// [`SpanQueue`]'s counters, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueCounts {
    pub(crate) queued: usize,
    pub(crate) exported: u64,
    pub(crate) dropped_queue_full: u64,
    pub(crate) dropped_export_failed: u64,
}

impl SpanQueue {
    pub(crate) fn new() -> (Arc<SpanQueue>, mpsc::UnboundedReceiver<EncodedSpan>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let queue = SpanQueue {
            sender,
            queued: AtomicUsize::new(0),
            capacity: AtomicUsize::new(INITIAL_CAPACITY),
            batch_size: AtomicUsize::new(INITIAL_BATCH_SIZE),
            full_batch: tokio::sync::Notify::new(),
            exported: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            dropped_export_failed: AtomicU64::new(0),
        };
        (Arc::new(queue), receiver)
    }

    pub(crate) fn submit(&self, span: EncodedSpan) {
        // Relaxed: the count is a bound, not a synchronisation point.
        let before = self.queued.fetch_add(1, Ordering::Relaxed);
        if before >= self.capacity.load(Ordering::Relaxed) || self.sender.send(span).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        } else if (before + 1).is_multiple_of(self.batch_size.load(Ordering::Relaxed).max(1)) {
            self.full_batch.notify_one();
        }
    }

    /// `spans` left the queue: `exported` of them accepted, the rest dropped.
    fn settled(&self, spans: usize, exported: usize) {
        self.queued.fetch_sub(spans, Ordering::Relaxed);
        let exported = exported.min(spans);
        self.exported.fetch_add(exported as u64, Ordering::Relaxed);
        self.dropped_export_failed
            .fetch_add((spans - exported) as u64, Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> QueueCounts {
        QueueCounts {
            queued: self.queued.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
            dropped_export_failed: self.dropped_export_failed.load(Ordering::Relaxed),
        }
    }
}

/// Why an export failed (logged; its spans are dropped and counted).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("cluster \"{0}\" is not configured")]
    NoCluster(String),
    #[error("the collector did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the collector: {0}")]
    Send(#[source] crate::upstream::BoxError),
    #[error("the collector answered HTTP {0}")]
    Status(http::StatusCode),
    #[error("the collector answered gRPC status {code}: {message}")]
    Grpc { code: String, message: String },
}

/// Starts the exporter thread; it follows every published snapshot (the tracing settings
/// and the collector cluster) and ends with the control side.
pub(crate) fn start(
    current: Arc<ArcSwap<Snapshot>>,
    mut published: watch::Receiver<u64>,
    queue: Arc<SpanQueue>,
    mut spans: mpsc::UnboundedReceiver<EncodedSpan>,
) -> std::io::Result<()> {
    crate::local_exec::spawn_thread("rustng-tracing", move || async move {
        let clusters = Rc::new(ClusterTable::default());
        let mut settings = follow(&current.load(), &clusters, &queue);
        let mut closed = false;
        while !closed {
            let tick = settings
                .as_ref()
                .map_or(Duration::from_secs(1), |s| s.schedule_delay);
            // Woken by a full batch or the schedule, never per span: a wake-up per span was a
            // futex call on the worker for every sampled request.
            tokio::select! {
                changed = published.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    settings = follow(&current.load(), &clusters, &queue);
                    continue;
                }
                () = queue.full_batch.notified() => {}
                () = tokio::time::sleep(tick) => {}
            }
            loop {
                let limit = settings
                    .as_ref()
                    .map_or(usize::MAX, |s| s.max_export_batch_size);
                let mut batch = Vec::new();
                while batch.len() < limit {
                    match spans.try_recv() {
                        Ok(span) => batch.push(span),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                let count = batch.len();
                if count == 0 {
                    break;
                }
                let exported = match &settings {
                    Some(settings) => match export(batch, settings, &clusters).await {
                        Ok(rejected) => {
                            if let Some(rejected) = &rejected {
                                tracing::warn!(spans = count, rejected = rejected.rejected_spans, reason = %rejected.error_message, "the collector refused some spans");
                            }
                            let refused = rejected.map_or(0, |r| r.rejected_spans);
                            count.saturating_sub(usize::try_from(refused).unwrap_or(count))
                        }
                        Err(error) => {
                            tracing::warn!(spans = count, cluster = %settings.otlp.cluster, %error, "span export failed; the spans are dropped");
                            0
                        }
                    },
                    // Tracing was turned off after the spans were made.
                    None => 0,
                };
                queue.settled(count, exported);
                if count < limit {
                    break;
                }
            }
        }
    })
}

/// Takes a snapshot's tracing settings and clusters.
fn follow(snapshot: &Snapshot, clusters: &ClusterTable, queue: &SpanQueue) -> Option<Tracing> {
    clusters.update(&snapshot.config.clusters, &snapshot.cluster_state, 0);
    let settings = snapshot.config.tracing.clone()?;
    queue
        .capacity
        .store(settings.max_queue_size, Ordering::Relaxed);
    queue
        .batch_size
        .store(settings.max_export_batch_size, Ordering::Relaxed);
    Some(settings)
}

/// Sends one batch; what the collector refused of it, if anything (OTLP's partial success).
async fn export(
    spans: Vec<EncodedSpan>,
    settings: &Tracing,
    clusters: &ClusterTable,
) -> Result<Option<otlp::ExportTracePartialSuccess>, ExportError> {
    let otlp_settings = &settings.otlp;
    let cluster = clusters
        .get(&otlp_settings.cluster)
        .ok_or_else(|| ExportError::NoCluster(otlp_settings.cluster.clone()))?;
    let message = encode::export_request(&spans, &settings.service_name);
    let (path, content_type, body) = match otlp_settings.protocol {
        OtlpProtocol::Grpc => (GRPC_EXPORT_PATH, "application/grpc", grpc_frame(&message)),
        OtlpProtocol::Http => (
            otlp_settings.path.as_str(),
            "application/x-protobuf",
            Bytes::from(message),
        ),
    };
    let (mut head, ()) = Request::builder()
        .method(Method::POST)
        .uri(path)
        .body(())
        .map_err(|e| ExportError::Send(Box::new(e)))?
        .into_parts();
    let headers = &mut head.headers;
    // The authority is the cluster's name, as Envoy sends it for its own gRPC calls.
    if let Ok(host) = HeaderValue::from_str(&otlp_settings.cluster) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if otlp_settings.protocol == OtlpProtocol::Grpc {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let answer = tokio::time::timeout(
        otlp_settings.timeout,
        crate::upstream::call::call(&cluster, head, body, MAX_ANSWER_BYTES),
    )
    .await
    .map_err(|_| ExportError::Timeout(otlp_settings.timeout))?
    .map_err(ExportError::Send)?;
    if !answer.head.status.is_success() {
        return Err(ExportError::Status(answer.head.status));
    }
    if otlp_settings.protocol == OtlpProtocol::Grpc {
        // Trailers, or the head of a trailers-only answer.
        let fields = if answer.trailers.contains_key("grpc-status") {
            &answer.trailers
        } else {
            &answer.head.headers
        };
        let field = |name| {
            fields
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let code = field("grpc-status");
        if code != "0" {
            return Err(ExportError::Grpc {
                code,
                message: field("grpc-message"),
            });
        }
    }
    let message = match otlp_settings.protocol {
        // One length-prefixed message, or none (an empty answer is all accepted).
        OtlpProtocol::Grpc => answer.body.get(5..).unwrap_or_default(),
        OtlpProtocol::Http => &answer.body[..],
    };
    // An answer that does not decode (a JSON one, say) still said success.
    Ok(otlp::ExportTraceServiceResponse::decode(message)
        .ok()
        .and_then(|r| r.partial_success)
        .filter(|p| p.rejected_spans > 0))
}

/// A gRPC message frame: uncompressed flag, big-endian length, the message.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(message);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> EncodedSpan {
        encode::SpanWriter::new(&encode::SpanHead {
            trace_id: &[1; 16],
            span_id: &[2; 8],
            parent_span_id: None,
            trace_state: "",
            name: "GET",
            kind: encode::SPAN_KIND_SERVER,
            start_unix_nano: 1,
            end_unix_nano: 2,
            flags: 1,
        })
        .finish()
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (queue, mut receiver) = SpanQueue::new();
        queue.capacity.store(2, Ordering::Relaxed);
        for _ in 0..5 {
            queue.submit(span());
        }
        let counts = queue.counts();
        assert_eq!((counts.queued, counts.dropped_queue_full), (2, 3));
        assert!(receiver.try_recv().is_ok());
        queue.settled(2, 2);
        queue.submit(span());
        assert_eq!(queue.counts().queued, 1, "room again once exported");
        assert_eq!(queue.counts().exported, 2);
    }

    #[tokio::test]
    async fn the_exporter_is_woken_per_full_batch_not_per_span() {
        let (queue, _receiver) = SpanQueue::new();
        queue.batch_size.store(3, Ordering::Relaxed);
        let woken = |queue: &SpanQueue| {
            futures_util::FutureExt::now_or_never(queue.full_batch.notified()).is_some()
        };
        queue.submit(span());
        queue.submit(span());
        assert!(!woken(&queue), "two of three");
        queue.submit(span());
        assert!(woken(&queue), "a full batch");
        queue.submit(span());
        assert!(!woken(&queue));
    }

    #[test]
    fn batches_are_framed_for_grpc() {
        let message = encode::export_request(&[span()], "svc");
        let frame = grpc_frame(&message);
        assert_eq!(frame[0], 0);
        assert_eq!(
            u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize,
            message.len()
        );
        let decoded = otlp::ExportTraceServiceRequest::decode(&frame[5..]).expect("decodes");
        assert_eq!(
            decoded.resource_spans[0].scope_spans[0].spans[0].name,
            "GET"
        );
    }
}
