//! The adapter's configuration: how to reach the API server (a RustNg cluster, with its TLS;
//! a bearer token file) and the Service each cluster follows, checked whole at
//! `on_configure`.

use std::time::Duration;

use rustng_sdk::discovery::{AdapterConfig, FollowSettings, Window};
use serde::Deserialize;

/// Each watch's `timeoutSeconds`, which counts whole seconds.
const WATCH_WINDOW: Window = Window {
    field: "watch_window",
    default: Duration::from_secs(2),
    limit: |window| {
        (window < Duration::from_secs(1))
            .then_some("watch_window: at least 1s (timeoutSeconds counts whole seconds)")
    },
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// The RustNg cluster that reaches the API server (with `tls` and its CA).
    cluster: String,
    /// A file holding the bearer token (a service account's, which the kubelet rotates: it
    /// is read for every request).
    #[serde(default)]
    token_file: String,
    /// How long each watch request stays open (`timeoutSeconds`); its events reach RustNg
    /// when it ends. Default `2s`.
    watch_window: Option<String>,
    /// Wait before asking again after a failure. Default `1s`.
    retry_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default = "default_namespace")]
    namespace: String,
    service: String,
    /// The Service port: its name, or its number; may be left out when the Service has one.
    port: Option<serde_json::Value>,
}

fn default_namespace() -> String {
    "default".to_owned()
}

/// Which of a slice's ports the endpoints are reached on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSelector {
    /// The slice's only port.
    Only,
    Named(String),
    Number(u16),
}

/// The Service a cluster follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
    pub port: PortSelector,
}

#[derive(Debug)]
pub struct Config {
    /// The cluster that reaches the API server, `watch_window` as the window, `retry_interval`.
    pub follow: FollowSettings,
    pub token_file: String,
    pub clusters: Vec<(String, ServiceRef)>,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        let raw = AdapterConfig::<RawSettings, RawCluster>::parse(bytes)?;
        let settings = raw.settings.ok_or(
            "configuration: cluster (the cluster that reaches the API server) is required",
        )?;
        let mut errors = Vec::new();
        let follow = FollowSettings::check(
            &mut errors,
            &WATCH_WINDOW,
            settings.cluster,
            settings.watch_window.as_deref(),
            settings.retry_interval.as_deref(),
        );
        let mut clusters = Vec::new();
        for (cluster, section) in raw.clusters {
            if section.service.is_empty() {
                errors.push(format!("clusters.{cluster}.service: empty"));
            }
            let port = match section.port {
                None => PortSelector::Only,
                Some(serde_json::Value::String(name)) if !name.is_empty() => {
                    PortSelector::Named(name)
                }
                Some(serde_json::Value::Number(n)) => {
                    match n
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                        .filter(|n| *n > 0)
                    {
                        Some(n) => PortSelector::Number(n),
                        None => {
                            errors.push(format!("clusters.{cluster}.port: {n} is not a port"));
                            PortSelector::Only
                        }
                    }
                }
                Some(other) => {
                    errors.push(format!(
                        "clusters.{cluster}.port: {other} is neither a port name nor a number"
                    ));
                    PortSelector::Only
                }
            };
            clusters.push((
                cluster,
                ServiceRef {
                    namespace: section.namespace,
                    name: section.service,
                    port,
                },
            ));
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Config {
            follow,
            token_file: settings.token_file,
            clusters,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_parses_and_errors_are_listed() {
        let config = Config::parse(
            br#"{"settings": {"cluster": "kube", "token_file": "/t", "watch_window": "5s"},
                 "clusters": {"b": {"service": "web", "port": "http"},
                              "c": {"namespace": "shop", "service": "api", "port": 8080},
                              "d": {"service": "one"}}}"#,
        )
        .expect("valid");
        assert_eq!(config.follow.cluster, "kube");
        assert_eq!(config.follow.window, Duration::from_secs(5));
        assert_eq!(config.clusters[0].1.namespace, "default");
        assert_eq!(
            config.clusters[0].1.port,
            PortSelector::Named("http".into())
        );
        assert_eq!(config.clusters[1].1.port, PortSelector::Number(8080));
        assert_eq!(config.clusters[2].1.port, PortSelector::Only);

        let error = Config::parse(
            br#"{"settings": {"cluster": "", "watch_window": "500ms"},
                 "clusters": {"b": {"service": "", "port": 0}, "c": {"service": "x", "port": true}}}"#,
        )
        .expect_err("invalid");
        for part in [
            "cluster: empty",
            "watch_window: at least 1s",
            "clusters.b.service: empty",
            "clusters.b.port: 0 is not a port",
            "clusters.c.port: true is neither",
        ] {
            assert!(error.contains(part), "{part} in {error}");
        }
    }
}
