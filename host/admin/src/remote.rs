//! The other direction: RustNg subscribing to a remote control plane (`control_plane` in the
//! config). It opens `ControlPlane/Subscribe`, says which version it runs, applies every
//! document the server streams and answers each with an ACK or NACK. When the server goes
//! away the running version keeps serving, and the subscriber reconnects with exponential
//! backoff (with jitter, so a fleet does not reconnect in lockstep).

use std::time::Duration;

use rustng_core::{Controller, Origin};
use rustng_runtime_config::ControlPlane;
use tokio::sync::mpsc;
use tonic::metadata::MetadataValue;

use crate::proto::ApplyResult;
use crate::proto::control_plane_client::ControlPlaneClient;

const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberError {
    /// The token file could not be read.
    #[error("control_plane.token_file: {0}")]
    Token(std::io::Error),
    /// The thread or its runtime did not start.
    #[error("control plane subscriber: {0}")]
    Start(std::io::Error),
}

/// Subscribes to `config`'s control plane on a thread of its own, for the process's life.
pub fn start_subscriber(
    config: ControlPlane,
    controller: Controller,
) -> Result<(), SubscriberError> {
    let token = match &config.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(SubscriberError::Token)?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SubscriberError::Start)?;
    std::thread::Builder::new()
        .name("rustng-control-plane".into())
        .spawn(move || runtime.block_on(subscribe_forever(config, token, controller)))
        .map_err(SubscriberError::Start)?;
    Ok(())
}

async fn subscribe_forever(config: ControlPlane, token: Option<String>, controller: Controller) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match session(&config, token.as_deref(), &controller).await {
            Ok(answered) => {
                tracing::warn!(address = %config.address, answered, "control plane closed the stream; reconnecting");
                if answered > 0 {
                    backoff = FIRST_BACKOFF;
                }
            }
            Err(error) => {
                tracing::warn!(address = %config.address, %error, retry_in_ms = backoff.as_millis() as u64, "control plane unreachable; the running version keeps serving");
            }
        }
        let jitter = fastrand::u64(0..(backoff.as_millis() as u64 / 2).max(1));
        tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: hello, then documents in, ACK/NACK out, until the server ends it. Returns
/// how many documents it answered.
async fn session(
    config: &ControlPlane,
    token: Option<&str>,
    controller: &Controller,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from_shared(config.address.clone())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut client = ControlPlaneClient::new(channel);
    let (answers, outbound) = mpsc::channel::<ApplyResult>(16);
    answers
        .send(ApplyResult {
            applied: true,
            version: controller.version(),
            node: config.node.clone(),
            ..ApplyResult::default()
        })
        .await?;
    let outbound = futures_util::stream::unfold(outbound, |mut rx| async move {
        rx.recv().await.map(|answer| (answer, rx))
    });
    let mut request = tonic::Request::new(outbound);
    if let Some(token) = token {
        let value: MetadataValue<_> = format!("Bearer {token}").parse()?;
        request.metadata_mut().insert("authorization", value);
    }
    let mut documents = client.subscribe(request).await?.into_inner();
    tracing::info!(address = %config.address, node = %config.node, "subscribed to the control plane");
    let origin = Origin::ControlPlane {
        address: config.address.clone(),
    };
    let mut answered = 0;
    while let Some(document) = documents.message().await? {
        let result = crate::grpc::apply_document(controller, document, None, origin.clone()).await;
        if result.applied {
            tracing::info!(
                version = result.version,
                changed = result.changed,
                "control plane config applied"
            );
        } else {
            tracing::error!(error = %result.error, errors = result.errors.len(), "control plane config refused");
        }
        answers.send(result).await?;
        answered += 1;
    }
    Ok(answered)
}
