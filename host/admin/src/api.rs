//! The `/v1` API: routes, what each needs (role), and the handlers. Every handler answers
//! JSON; mutations are audited by the caller ([`crate::serve`]).

use std::path::PathBuf;

use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rustng_core::{ApplyError, ConfigDocument, Origin};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::AdminState;
use crate::auth::{Principal, Role};

/// Largest config document accepted.
const MAX_CONFIG_BYTES: usize = 4 << 20;
/// Largest push (a module as base64 in JSON).
const MAX_PUSH_BYTES: usize = 96 << 20;
/// Default and largest `limit` of `/v1/audit`.
const AUDIT_DEFAULT: usize = 100;
const AUDIT_MAX: usize = 1000;

/// An API route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Status,
    DebugVars,
    ConfigGet,
    ConfigValidate,
    ConfigDiff,
    ConfigApply,
    ConfigHistory,
    ConfigRollback,
    Plugins,
    Plugin(String),
    PluginPush(String),
    PluginRollback(String),
    LogLevelGet,
    LogLevelSet,
    Audit,
    Drain,
    Clusters,
    EndpointDrain(String),
    Upgrade,
}

/// Why a path did not give a route.
pub(crate) enum NoRoute {
    NotFound,
    /// The path exists with these methods.
    Method(&'static str),
}

impl Route {
    pub(crate) fn parse(method: &Method, path: &str) -> Result<Route, NoRoute> {
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        let (route, allowed) = match segments.as_slice() {
            ["debug", "vars"] => (get.then_some(Route::DebugVars), "GET"),
            ["v1", "status"] => (get.then_some(Route::Status), "GET"),
            ["v1", "config"] => match *method {
                Method::GET | Method::HEAD => (Some(Route::ConfigGet), ""),
                Method::PUT | Method::POST => (Some(Route::ConfigApply), ""),
                _ => (None, "GET, PUT"),
            },
            ["v1", "config", "validate"] => (post.then_some(Route::ConfigValidate), "POST"),
            ["v1", "config", "diff"] => (post.then_some(Route::ConfigDiff), "POST"),
            ["v1", "config", "history"] => (get.then_some(Route::ConfigHistory), "GET"),
            ["v1", "config", "rollback"] => (post.then_some(Route::ConfigRollback), "POST"),
            ["v1", "plugins"] => (get.then_some(Route::Plugins), "GET"),
            ["v1", "plugins", name] => (get.then(|| Route::Plugin((*name).to_owned())), "GET"),
            ["v1", "plugins", name, "push"] => {
                (post.then(|| Route::PluginPush((*name).to_owned())), "POST")
            }
            ["v1", "plugins", name, "rollback"] => (
                post.then(|| Route::PluginRollback((*name).to_owned())),
                "POST",
            ),
            ["v1", "log_level"] => match *method {
                Method::GET | Method::HEAD => (Some(Route::LogLevelGet), ""),
                Method::PUT | Method::POST => (Some(Route::LogLevelSet), ""),
                _ => (None, "GET, PUT"),
            },
            ["v1", "audit"] => (get.then_some(Route::Audit), "GET"),
            ["v1", "clusters"] => (get.then_some(Route::Clusters), "GET"),
            ["v1", "clusters", name, "drain"] => (
                post.then(|| Route::EndpointDrain((*name).to_owned())),
                "POST",
            ),
            ["v1", "drain"] => (post.then_some(Route::Drain), "POST"),
            ["v1", "upgrade"] => (post.then_some(Route::Upgrade), "POST"),
            _ => return Err(NoRoute::NotFound),
        };
        route.ok_or(NoRoute::Method(allowed))
    }

    /// The role a route needs.
    pub(crate) fn needs(&self) -> Role {
        if self.is_mutation() {
            Role::Admin
        } else {
            Role::Read
        }
    }

    /// Whether the route changes anything (and so is audited). Validating and diffing
    /// change nothing.
    pub(crate) fn is_mutation(&self) -> bool {
        matches!(
            self,
            Route::ConfigApply
                | Route::ConfigRollback
                | Route::PluginPush(_)
                | Route::PluginRollback(_)
                | Route::LogLevelSet
                | Route::Drain
                | Route::EndpointDrain(_)
                | Route::Upgrade
        )
    }

    /// What an audit entry names as acted on.
    pub(crate) fn target(&self) -> Option<String> {
        match self {
            Route::Plugin(name) | Route::PluginPush(name) | Route::PluginRollback(name) => {
                Some(format!("plugin {name}"))
            }
            Route::ConfigApply | Route::ConfigRollback => Some("config".into()),
            Route::LogLevelSet => Some("log level".into()),
            Route::Drain | Route::Upgrade => Some("process".into()),
            Route::EndpointDrain(name) => Some(format!("cluster {name}")),
            _ => None,
        }
    }
}

/// A handler's answer.
pub(crate) struct Outcome {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
    /// More precise than the status for the audit (`refused`, `failed`, ...).
    pub(crate) result: &'static str,
    pub(crate) target: Option<String>,
}

impl Outcome {
    fn ok(body: Value) -> Outcome {
        Outcome {
            status: StatusCode::OK,
            body,
            result: "ok",
            target: None,
        }
    }

    pub(crate) fn error(status: StatusCode, result: &'static str, message: &str) -> Outcome {
        Outcome {
            status,
            body: json!({ "error": message }),
            result,
            target: None,
        }
    }

    fn with_target(mut self, target: String) -> Outcome {
        self.target = Some(target);
        self
    }

    /// The error text, for the audit.
    pub(crate) fn detail(&self) -> Option<String> {
        self.body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
    }
}

/// Runs `route` for `principal`.
pub(crate) async fn run(
    state: &AdminState,
    route: Route,
    principal: &Principal,
    req: http::Request<Incoming>,
) -> Outcome {
    match route {
        Route::Status => Outcome::ok(status(state).await),
        Route::DebugVars => Outcome::ok(debug_vars(state).await),
        Route::ConfigGet => config_get(state).await,
        Route::ConfigValidate => match body_text(req, MAX_CONFIG_BYTES).await {
            Ok(text) => config_validate(state, &text).await,
            Err(outcome) => outcome,
        },
        Route::ConfigDiff => match body_text(req, MAX_CONFIG_BYTES).await {
            Ok(text) => config_diff(state, &text).await,
            Err(outcome) => outcome,
        },
        Route::ConfigApply => match body_text(req, MAX_CONFIG_BYTES).await {
            Ok(text) => config_apply(state, text, principal).await,
            Err(outcome) => outcome,
        },
        Route::ConfigHistory => config_history(state).await,
        Route::ConfigRollback => match body_json(req, MAX_CONFIG_BYTES).await {
            Ok(body) => match body.get("version").and_then(Value::as_u64) {
                Some(version) => applied(state.controller.rollback(version).await)
                    .with_target(format!("version {version}")),
                None => invalid("body: {\"version\": N} expected"),
            },
            Err(outcome) => outcome,
        },
        Route::Plugins => Outcome::ok(json!({ "plugins": plugins(state, None).await })),
        Route::Plugin(name) => match plugins(state, Some(&name)).await.into_iter().next() {
            Some(plugin) => Outcome::ok(plugin),
            None => Outcome::error(
                StatusCode::NOT_FOUND,
                "invalid",
                &format!("no plugin named \"{name}\""),
            ),
        },
        Route::PluginPush(name) => match body_json(req, MAX_PUSH_BYTES).await {
            Ok(body) => plugin_push(state, &name, &body, principal)
                .await
                .with_target(format!("plugin {name}")),
            Err(outcome) => outcome,
        },
        Route::PluginRollback(name) => match body_json(req, MAX_CONFIG_BYTES).await {
            Ok(body) => match body.get("generation").and_then(Value::as_u64) {
                Some(generation) => {
                    applied(state.controller.rollback_plugin(&name, generation).await)
                        .with_target(format!("plugin {name} generation {generation}"))
                }
                None => invalid("body: {\"generation\": N} expected"),
            },
            Err(outcome) => outcome,
        },
        Route::LogLevelGet => match &state.log_level {
            Some(control) => Outcome::ok(json!({ "level": control.current() })),
            None => Outcome::error(StatusCode::NOT_IMPLEMENTED, "failed", "no log control"),
        },
        Route::LogLevelSet => match body_json(req, MAX_CONFIG_BYTES).await {
            Ok(body) => log_level_set(state, &body),
            Err(outcome) => outcome,
        },
        Route::Audit => {
            let limit = query_value(req.uri().query(), "limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(AUDIT_DEFAULT)
                .min(AUDIT_MAX);
            Outcome::ok(json!({ "entries": state.audit.lock().await.recent(limit) }))
        }
        Route::Drain => {
            state.shutdown.shutdown();
            Outcome::ok(json!({ "draining": true }))
        }
        Route::Clusters => Outcome::ok(json!({ "clusters": state.controller.clusters() })),
        Route::EndpointDrain(cluster) => match body_json(req, MAX_CONFIG_BYTES).await {
            Ok(body) => endpoint_drain(state, &cluster, &body),
            Err(outcome) => outcome,
        },
        Route::Upgrade => upgrade(state).await,
    }
}

/// Replaces this process with its own executable (where a package update puts the new
/// binary). The API takes no binary path: an API token must not be a way to run any program
/// as the proxy's user; `rustng upgrade --binary` on the host can.
async fn upgrade(state: &AdminState) -> Outcome {
    let Some(settings) = &state.upgrade else {
        return Outcome::error(
            StatusCode::CONFLICT,
            "failed",
            "binary upgrades are off: set upgrade.socket (or state_dir) in the config",
        );
    };
    // The old process answers once the new one serves, or after its own ready timeout.
    let timeout = settings.ready_timeout + std::time::Duration::from_secs(15);
    match rustng_upgrade::request_upgrade(&settings.socket, None, timeout).await {
        Ok(upgraded) => Outcome::ok(json!(upgraded)),
        Err(error) => Outcome::error(StatusCode::BAD_GATEWAY, "failed", &error.to_string()),
    }
}

async fn status(state: &AdminState) -> Value {
    let active: Vec<Value> = state
        .controller
        .plugins()
        .await
        .into_iter()
        .filter(|g| g.active)
        .map(|g| json!({ "name": g.plugin, "generation": g.generation, "sha256": g.sha256 }))
        .collect();
    json!({
        "version": state.controller.version(),
        "pid": std::process::id(),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "workers": state.workers,
        "draining": state.shutdown.is_draining(),
        "build": env!("CARGO_PKG_VERSION"),
        "plugins": active,
    })
}

async fn debug_vars(state: &AdminState) -> Value {
    let mut vars = status(state).await;
    vars["memory"] = json!({ "rss_bytes": rss_bytes() });
    vars["generations"] = json!(state.controller.plugins().await);
    vars
}

/// VmRSS from `/proc/self/status`, when readable.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The running version's record (with its document).
async fn running(state: &AdminState) -> Option<rustng_core::VersionRecord> {
    let version = state.controller.version();
    state
        .controller
        .history()
        .await
        .into_iter()
        .rev()
        .find(|r| r.version == version)
}

async fn config_get(state: &AdminState) -> Outcome {
    match running(state).await {
        Some(record) => Outcome::ok(json!({
            "version": record.version,
            "origin": record.origin.to_string(),
            "applied_at": record.applied_at,
            "yaml": record.text,
        })),
        None => Outcome::ok(json!({ "version": state.controller.version(), "yaml": null })),
    }
}

/// Where relative paths in a document from the API resolve: the running config's directory.
pub(crate) async fn base_dir(state: &AdminState) -> Option<PathBuf> {
    running(state).await.and_then(|r| r.base_dir)
}

async fn config_validate(state: &AdminState, text: &str) -> Outcome {
    let base = base_dir(state).await;
    match rustng_runtime_config::from_yaml_at(text, base.as_deref()) {
        Ok(_) => Outcome::ok(json!({ "valid": true, "errors": [] })),
        Err(e) => Outcome::ok(json!({ "valid": false, "errors": field_errors(&e) })),
    }
}

fn field_errors(error: &rustng_runtime_config::ConfigError) -> Vec<Value> {
    let errors = error.field_errors();
    if errors.is_empty() {
        return vec![json!({ "path": "", "message": error.to_string() })];
    }
    errors
        .iter()
        .map(|e| json!({ "path": e.path, "message": e.message }))
        .collect()
}

async fn config_diff(state: &AdminState, text: &str) -> Outcome {
    let current = running(state)
        .await
        .and_then(|r| r.text)
        .unwrap_or_default();
    let diff = similar::TextDiff::from_lines(current.as_str(), text);
    let changed = diff.ratio() < 1.0 || current != text;
    let unified = diff
        .unified_diff()
        .context_radius(3)
        .header("running", "proposed")
        .to_string();
    Outcome::ok(json!({ "changed": changed, "diff": unified }))
}

async fn config_apply(state: &AdminState, text: String, principal: &Principal) -> Outcome {
    let document = ConfigDocument {
        text,
        base_dir: base_dir(state).await,
        origin: Origin::Api {
            principal: principal.name.clone(),
        },
    };
    applied(state.controller.apply(document).await)
}

/// The answer to an apply or rollback.
fn applied(result: Result<rustng_core::Applied, ApplyError>) -> Outcome {
    match result {
        Ok(applied) => Outcome::ok(json!({
            "version": applied.version,
            "changed": applied.changed,
            "restart_required": applied.restart_required,
        })),
        Err(ApplyError::Refused(errors)) => Outcome {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: json!({
                "error": "config refused",
                "errors": errors.iter().map(|e| json!({ "path": e.path, "message": e.message })).collect::<Vec<_>>(),
            }),
            result: "refused",
            target: None,
        },
        Err(
            e @ (ApplyError::UnknownVersion(_)
            | ApplyError::UnknownPlugin(_)
            | ApplyError::UnknownGeneration { .. }),
        ) => Outcome::error(StatusCode::NOT_FOUND, "invalid", &e.to_string()),
        Err(e @ ApplyError::Stopped) => {
            Outcome::error(StatusCode::SERVICE_UNAVAILABLE, "failed", &e.to_string())
        }
        Err(e) => Outcome::error(StatusCode::INTERNAL_SERVER_ERROR, "failed", &e.to_string()),
    }
}

async fn config_history(state: &AdminState) -> Outcome {
    let running = state.controller.version();
    let versions: Vec<Value> = state
        .controller
        .history()
        .await
        .into_iter()
        .map(|r| {
            json!({
                "version": r.version,
                "origin": r.origin.to_string(),
                "applied_at": r.applied_at,
                "running": r.version == running,
                "has_document": r.text.is_some(),
            })
        })
        .collect();
    Outcome::ok(json!({ "versions": versions }))
}

/// Plugins with their kept generations (`only`: just that one).
async fn plugins(state: &AdminState, only: Option<&str>) -> Vec<Value> {
    let mut by_name: Vec<(String, Vec<Value>, Option<u64>)> = Vec::new();
    for g in state.controller.plugins().await {
        if only.is_some_and(|name| name != g.plugin) {
            continue;
        }
        if by_name.last().is_none_or(|(name, _, _)| *name != g.plugin) {
            by_name.push((g.plugin.clone(), Vec::new(), None));
        }
        if let Some((_, generations, active)) = by_name.last_mut() {
            if g.active {
                *active = Some(g.generation);
            }
            generations.push(json!({
                "generation": g.generation,
                "sha256": g.sha256,
                "active": g.active,
            }));
        }
    }
    by_name
        .into_iter()
        .map(|(name, generations, active)| {
            json!({ "name": name, "generation": active, "generations": generations })
        })
        .collect()
}

/// A new module (and optionally configuration / root id) for one plugin: the module is
/// stored under `<state_dir>/modules/<sha256>.wasm`, the running document is edited to point
/// at it, and the result goes through the same path as any config change (compile, canary,
/// publish), as a new version.
async fn plugin_push(
    state: &AdminState,
    name: &str,
    body: &Value,
    principal: &Principal,
) -> Outcome {
    let Some(encoded) = body.get("module_base64").and_then(Value::as_str) else {
        return invalid("body: module_base64 (the .wasm file, base64) is required");
    };
    let module = match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
        Ok(module) => module,
        Err(e) => return invalid(&format!("module_base64: {e}")),
    };
    if !module.starts_with(b"\0asm") {
        return invalid("module_base64: not a wasm module (no \\0asm header)");
    }
    let Some(state_dir) = &state.state_dir else {
        return Outcome::error(
            StatusCode::CONFLICT,
            "failed",
            "pushing modules needs state_dir (where pushed modules are kept)",
        );
    };
    let Some(record) = running(state).await else {
        return Outcome::error(
            StatusCode::CONFLICT,
            "failed",
            "no running document to edit",
        );
    };
    let Some(text) = record.text else {
        return Outcome::error(
            StatusCode::CONFLICT,
            "failed",
            "no running document to edit",
        );
    };
    let sha256: String = Sha256::digest(&module)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = state_dir.join("modules");
    let path = dir.join(format!("{sha256}.wasm"));
    if let Err(e) = store_module(&dir, &path, &module) {
        return Outcome::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            &format!("cannot store the module in {}: {e}", dir.display()),
        );
    }
    let edited = match edit_plugin(&text, name, &path, body) {
        Ok(edited) => edited,
        Err(outcome) => return *outcome,
    };
    let document = ConfigDocument {
        text: edited,
        base_dir: record.base_dir,
        origin: Origin::Api {
            principal: principal.name.clone(),
        },
    };
    let mut outcome = applied(state.controller.apply(document).await);
    if outcome.status == StatusCode::OK {
        let generation = state
            .controller
            .plugins()
            .await
            .into_iter()
            .find(|g| g.active && g.plugin == name)
            .map(|g| g.generation);
        outcome.body["plugin"] = json!(name);
        outcome.body["generation"] = json!(generation);
        outcome.body["sha256"] = json!(sha256);
    }
    outcome
}

fn store_module(
    dir: &std::path::Path,
    path: &std::path::Path,
    module: &[u8],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if path.exists() {
        return Ok(());
    }
    let temporary = path.with_extension("wasm.tmp");
    std::fs::write(&temporary, module)?;
    std::fs::rename(&temporary, path)
}

/// The running YAML with plugin `name` pointed at `module` (and its configuration and root
/// id replaced when the push gives them).
fn edit_plugin(
    text: &str,
    name: &str,
    module: &std::path::Path,
    body: &Value,
) -> Result<String, Box<Outcome>> {
    use serde_yaml_ng::Value as Yaml;
    let failed =
        |message: String| Box::new(Outcome::error(StatusCode::CONFLICT, "failed", &message));
    let mut document: Yaml = serde_yaml_ng::from_str(text)
        .map_err(|e| failed(format!("the running document does not parse: {e}")))?;
    let plugin = document
        .get_mut("plugins")
        .and_then(Yaml::as_sequence_mut)
        .and_then(|plugins| {
            plugins
                .iter_mut()
                .find(|p| p.get("name").and_then(Yaml::as_str) == Some(name))
        })
        .ok_or_else(|| {
            Box::new(Outcome::error(
                StatusCode::NOT_FOUND,
                "invalid",
                &format!("no plugin named \"{name}\" in the running config"),
            ))
        })?;
    let Some(plugin) = plugin.as_mapping_mut() else {
        return Err(failed(format!("plugin \"{name}\" is not a mapping")));
    };
    let code = serde_yaml_ng::to_value(json!({
        "code": { "local": { "filename": module.display().to_string() } }
    }))
    .map_err(|e| failed(e.to_string()))?;
    let vm_config = plugin
        .entry(Yaml::from("vm_config"))
        .or_insert_with(|| Yaml::Mapping(Default::default()));
    if let (Some(vm_config), Yaml::Mapping(code)) = (vm_config.as_mapping_mut(), code) {
        for (key, value) in code {
            vm_config.insert(key, value);
        }
    }
    if let Some(configuration) = body.get("configuration") {
        let value = serde_yaml_ng::to_value(configuration).map_err(|e| failed(e.to_string()))?;
        plugin.insert(Yaml::from("configuration"), value);
    }
    if let Some(root_id) = body.get("root_id").and_then(Value::as_str) {
        plugin.insert(Yaml::from("root_id"), Yaml::from(root_id));
    }
    serde_yaml_ng::to_string(&document).map_err(|e| failed(e.to_string()))
}

/// `{"endpoint": "10.0.0.1:80", "drain": true}` (`drain` defaults to true; false restores).
fn endpoint_drain(state: &AdminState, cluster: &str, body: &Value) -> Outcome {
    let Some(endpoint) = body
        .get("endpoint")
        .and_then(Value::as_str)
        .and_then(|e| e.parse::<std::net::SocketAddr>().ok())
    else {
        return invalid("body: {\"endpoint\": \"address:port\", \"drain\": true} expected");
    };
    let drain = body.get("drain").and_then(Value::as_bool).unwrap_or(true);
    match state.controller.drain_endpoint(cluster, endpoint, drain) {
        Ok(changed) => Outcome::ok(json!({
            "cluster": cluster,
            "endpoint": endpoint.to_string(),
            "draining": drain,
            "changed": changed,
        }))
        .with_target(format!("cluster {cluster} endpoint {endpoint}")),
        Err(e) => Outcome::error(StatusCode::NOT_FOUND, "invalid", &e.to_string()),
    }
}

fn log_level_set(state: &AdminState, body: &Value) -> Outcome {
    let Some(level) = body.get("level").and_then(Value::as_str) else {
        return invalid("body: {\"level\": \"info,rustng_core=debug\"} expected");
    };
    let Some(control) = &state.log_level else {
        return Outcome::error(StatusCode::NOT_IMPLEMENTED, "failed", "no log control");
    };
    match control.set(level) {
        Ok(()) => Outcome::ok(json!({ "level": control.current() }))
            .with_target(format!("log level {level}")),
        Err(message) => invalid(&message),
    }
}

fn invalid(message: &str) -> Outcome {
    Outcome::error(StatusCode::BAD_REQUEST, "invalid", message)
}

async fn body_bytes(req: http::Request<Incoming>, limit: usize) -> Result<Bytes, Outcome> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Outcome::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid",
            &format!("body larger than {limit} bytes"),
        )),
        Err(e) => Err(invalid(&format!("body: {e}"))),
    }
}

async fn body_text(req: http::Request<Incoming>, limit: usize) -> Result<String, Outcome> {
    let bytes = body_bytes(req, limit).await?;
    String::from_utf8(bytes.to_vec()).map_err(|_| invalid("body: not UTF-8 text"))
}

async fn body_json(req: http::Request<Incoming>, limit: usize) -> Result<Value, Outcome> {
    let bytes = body_bytes(req, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| invalid(&format!("body: not JSON: {e}")))
}

fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_roles() {
        let route = |m: Method, p: &str| Route::parse(&m, p).ok();
        assert_eq!(route(Method::GET, "/v1/config"), Some(Route::ConfigGet));
        assert_eq!(route(Method::PUT, "/v1/config/"), Some(Route::ConfigApply));
        assert_eq!(
            route(Method::POST, "/v1/plugins/hdr/push"),
            Some(Route::PluginPush("hdr".into()))
        );
        assert!(route(Method::DELETE, "/v1/config").is_none());
        assert!(matches!(
            Route::parse(&Method::GET, "/v1/nothing"),
            Err(NoRoute::NotFound)
        ));
        assert_eq!(Route::ConfigApply.needs(), Role::Admin);
        assert_eq!(Route::ConfigDiff.needs(), Role::Read);
        assert!(!Route::ConfigValidate.is_mutation());
    }

    #[test]
    fn a_push_edits_only_its_plugin() {
        let text = "plugins:\n  - name: a\n    vm_config: { runtime: v8, code: { local: { filename: a.wasm } } }\n  - name: b\n    vm_config: { code: { local: { filename: b.wasm } } }\n    configuration: old\n";
        let edited = edit_plugin(
            text,
            "b",
            std::path::Path::new("/s/modules/x.wasm"),
            &json!({ "configuration": { "tag": "new" }, "root_id": "r" }),
        )
        .map_err(|_| "edit")
        .expect("edited");
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&edited).expect("yaml");
        let plugins = doc["plugins"].as_sequence().expect("plugins");
        assert_eq!(
            plugins[0]["vm_config"]["code"]["local"]["filename"],
            "a.wasm"
        );
        assert_eq!(plugins[0]["vm_config"]["runtime"], "v8");
        assert_eq!(
            plugins[1]["vm_config"]["code"]["local"]["filename"],
            "/s/modules/x.wasm"
        );
        assert_eq!(plugins[1]["configuration"]["tag"], "new");
        assert_eq!(plugins[1]["root_id"], "r");
        assert!(edit_plugin(text, "c", std::path::Path::new("x"), &json!({})).is_err());
    }
}
