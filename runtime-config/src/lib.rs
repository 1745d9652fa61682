//! RustNg configuration: the YAML schema, its validation and the typed config the core runs on.
//!
//! Parsing happens in two stages so that a user sees every mistake at once:
//! [`raw`] mirrors the file with `deny_unknown_fields` (a typo is an error, not a silently
//! ignored key), then [`validate`] turns it into a [`Config`] and collects every semantic error
//! with the path of the field it is about (`clusters[0].endpoints[1].address: ...`).

mod error;
pub mod raw;
mod types;
mod validate;

pub use error::{ConfigError, FieldError, render_errors};
pub use types::{
    Admin, AdminAuth, AdminJwt, AdminJwtKey, AdminTls, CertificateConfig, CircuitBreakers, Cluster,
    Config, ControlPlane, DEFAULT_ADMIN_ADDRESS, Discovery, Endpoint, FailurePolicy,
    GRPC_WEB_FILTER, HealthCheck, HealthCheckKind, Http3, HttpOptions, LbPolicy, Listener,
    ListenerProtocol, LogConfig, LogFormat, Otlp, OtlpProtocol, OutlierDetection, Plugin,
    TlsConfig, Tracing, Upgrade, UpstreamProtocol, UpstreamTls,
};
pub use validate::validate;

use std::path::Path;

/// Parses and validates a YAML document.
pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
    let raw = raw::parse(text)?;
    validate(raw)
}

/// Parses and validates a YAML document whose relative paths (modules, certificates, state
/// directory) are relative to `base_dir`, as they are in a file in that directory.
pub fn from_yaml_at(text: &str, base_dir: Option<&Path>) -> Result<Config, ConfigError> {
    let mut raw = raw::parse(text)?;
    if let Some(dir) = base_dir {
        raw.resolve_relative_paths(dir);
    }
    validate(raw)
}

/// Reads, parses and validates the config file at `path`.
///
/// Relative paths inside the file (certificates) are resolved against the file's directory, so
/// a config can be moved together with its certificates.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_yaml_at(&text, path.parent())
}
