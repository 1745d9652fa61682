//! `rustng.control.v1.ControlPlane` on the admin port (proto/rustng/control/v1/): config
//! documents applied one by one (`ApplyConfig`) or as a stream answered with ACK/NACK per
//! document (`StreamConfig`), and every applied version streamed to watchers (`WatchConfig`).
//! The same bearer tokens, roles and audit trail as the REST API.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use rustng_core::{ApplyError, ConfigDocument as CoreDocument, Origin};
use tonic::{Request, Response, Status, Streaming};

use crate::AdminState;
use crate::audit::AuditEntry;
use crate::auth::{Principal, Role};
use crate::proto::control_plane_server::ControlPlane;
use crate::proto::{ApplyResult, ConfigDocument, ConfigVersion, FieldError, WatchRequest};

type Answers<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The service, over the admin server's state.
pub(crate) struct ControlPlaneService {
    pub(crate) state: Arc<AdminState>,
}

impl ControlPlaneService {
    /// The caller, if it may call `method` with `needs`; a refusal is audited when the method
    /// mutates.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        method: &str,
        needs: Role,
    ) -> Result<Principal, Status> {
        let headers = request.metadata().clone().into_headers();
        let action = format!("gRPC {method}");
        let principal = match self.state.auth.authenticate(&headers) {
            Ok(principal) => principal,
            Err(error) => {
                if needs == Role::Admin {
                    self.audit(
                        "anonymous",
                        &action,
                        self.state.controller.version(),
                        "unauthorized",
                        401,
                        Some(error.to_string()),
                    )
                    .await;
                }
                return Err(Status::unauthenticated(error.to_string()));
            }
        };
        if principal.role < needs {
            let message = format!("{} has the read role; this needs admin", principal.name);
            self.audit(
                &principal.name,
                &action,
                self.state.controller.version(),
                "forbidden",
                403,
                Some(message.clone()),
            )
            .await;
            return Err(Status::permission_denied(message));
        }
        Ok(principal)
    }

    async fn audit(
        &self,
        principal: &str,
        action: &str,
        before: u64,
        result: &str,
        status: u16,
        detail: Option<String>,
    ) {
        self.state.audit.lock().await.record(AuditEntry {
            time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            principal: principal.to_owned(),
            action: action.to_owned(),
            target: Some("config".into()),
            version_before: before,
            version_after: self.state.controller.version(),
            result: result.to_owned(),
            status,
            detail,
        });
    }
}

/// Applies one document and says how it went (ACK or NACK), audited as `action`.
async fn apply_one(
    state: &AdminState,
    principal: &str,
    action: &str,
    document: ConfigDocument,
) -> ApplyResult {
    let before = state.controller.version();
    let base_dir = crate::api::base_dir(state).await;
    let result = apply_document(
        &state.controller,
        document,
        base_dir,
        Origin::Api {
            principal: principal.to_owned(),
        },
    )
    .await;
    let (outcome, status) = if result.applied {
        ("ok", 200)
    } else if result.errors.is_empty() {
        ("failed", 500)
    } else {
        ("refused", 422)
    };
    let detail = (!result.applied).then(|| result.error.clone());
    state.audit.lock().await.record(AuditEntry {
        time: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        principal: principal.to_owned(),
        action: action.to_owned(),
        target: Some("config".into()),
        version_before: before,
        version_after: state.controller.version(),
        result: outcome.to_owned(),
        status,
        detail,
    });
    result
}

/// Applies `document` through `controller`: the ACK or NACK for it.
pub(crate) async fn apply_document(
    controller: &rustng_core::Controller,
    document: ConfigDocument,
    base_dir: Option<std::path::PathBuf>,
    origin: Origin,
) -> ApplyResult {
    let nonce = document.nonce;
    let applied = controller
        .apply(CoreDocument {
            text: document.yaml,
            base_dir,
            origin,
        })
        .await;
    match applied {
        Ok(applied) => ApplyResult {
            applied: true,
            version: applied.version,
            changed: applied.changed,
            nonce,
            restart_required: applied.restart_required,
            ..ApplyResult::default()
        },
        Err(error) => {
            let errors = match &error {
                ApplyError::Refused(errors) => errors
                    .iter()
                    .map(|e| FieldError {
                        path: e.path.clone(),
                        message: e.message.clone(),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            ApplyResult {
                applied: false,
                version: controller.version(),
                errors,
                error: error.to_string(),
                nonce,
                ..ApplyResult::default()
            }
        }
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn apply_config(
        &self,
        request: Request<ConfigDocument>,
    ) -> Result<Response<ApplyResult>, Status> {
        let principal = self.authorize(&request, "ApplyConfig", Role::Admin).await?;
        let result = apply_one(
            &self.state,
            &principal.name,
            "gRPC ApplyConfig",
            request.into_inner(),
        )
        .await;
        Ok(Response::new(result))
    }

    type StreamConfigStream = Answers<ApplyResult>;

    async fn stream_config(
        &self,
        request: Request<Streaming<ConfigDocument>>,
    ) -> Result<Response<Self::StreamConfigStream>, Status> {
        let principal = self
            .authorize(&request, "StreamConfig", Role::Admin)
            .await?;
        let state = Arc::clone(&self.state);
        // Documents are answered in order, one at a time: each is applied before the next is
        // read, so an ACK always refers to a version that ran.
        let answers = request.into_inner().then(move |document| {
            let state = Arc::clone(&state);
            let principal = principal.name.clone();
            async move {
                let document = document?;
                Ok(apply_one(&state, &principal, "gRPC StreamConfig", document).await)
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    type WatchConfigStream = Answers<ConfigVersion>;

    async fn watch_config(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchConfigStream>, Status> {
        self.authorize(&request, "WatchConfig", Role::Read).await?;
        let state = Arc::clone(&self.state);
        let mut versions = state.controller.subscribe();
        // The running version first, then one message per change seen.
        versions.mark_changed();
        let stream =
            futures_util::stream::unfold((state, versions), |(state, mut versions)| async move {
                versions.changed().await.ok()?;
                let version = *versions.borrow_and_update();
                let record = state
                    .controller
                    .history()
                    .await
                    .into_iter()
                    .rev()
                    .find(|r| r.version == version);
                let message = ConfigVersion {
                    version,
                    origin: record
                        .as_ref()
                        .map(|r| r.origin.to_string())
                        .unwrap_or_default(),
                    applied_at: record
                        .as_ref()
                        .map(|r| r.applied_at.clone())
                        .unwrap_or_default(),
                    yaml: record.and_then(|r| r.text).unwrap_or_default(),
                };
                Some((Ok(message), (state, versions)))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type SubscribeStream = Answers<ConfigDocument>;

    async fn subscribe(
        &self,
        _request: Request<Streaming<ApplyResult>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented(
            "RustNg subscribes to control planes (control_plane in its config); it does not serve Subscribe",
        ))
    }
}
