//! The adapter's configuration: where etcd is (a RustNg cluster, in Envoy's `grpc_service`
//! shape) and each cluster's key prefix, checked whole at `on_configure`.

use std::time::Duration;

use rustng_sdk::discovery::AdapterConfig;
use rustng_sdk::duration;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    grpc_service: GrpcService,
    /// Wait before reading or watching again after a failure or a disconnect. Default `1s`.
    retry_interval: Option<String>,
}

/// Envoy's `GrpcService`, the `envoy_grpc` form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcService {
    envoy_grpc: EnvoyGrpc,
    /// Deadline of the initial read. Default `5s`.
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvoyGrpc {
    cluster_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    /// The key prefix whose keys hold this cluster's endpoints.
    prefix: String,
}

/// The checked configuration.
#[derive(Debug)]
pub struct Config {
    /// The RustNg cluster that reaches etcd (HTTP/2).
    pub etcd_cluster: String,
    pub timeout: Duration,
    pub retry_interval: Duration,
    /// (cluster, prefix).
    pub clusters: Vec<(String, String)>,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        let raw = AdapterConfig::<RawSettings, RawCluster>::parse(bytes)?;
        let settings = raw.settings.ok_or(
            "configuration: grpc_service.envoy_grpc.cluster_name (the cluster that reaches etcd) is required",
        )?;
        let mut errors = Vec::new();
        let timeout = duration::positive(
            &mut errors,
            "grpc_service.timeout",
            settings.grpc_service.timeout.as_deref(),
            Duration::from_secs(5),
        );
        let retry_interval = duration::positive(
            &mut errors,
            "retry_interval",
            settings.retry_interval.as_deref(),
            Duration::from_secs(1),
        );
        if settings.grpc_service.envoy_grpc.cluster_name.is_empty() {
            errors.push("grpc_service.envoy_grpc.cluster_name: empty".to_owned());
        }
        let mut clusters = Vec::new();
        for (cluster, section) in raw.clusters {
            if section.prefix.is_empty() {
                // An empty prefix would watch the whole keyspace.
                errors.push(format!("clusters.{cluster}.prefix: empty"));
            }
            clusters.push((cluster, section.prefix));
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Config {
            etcd_cluster: settings.grpc_service.envoy_grpc.cluster_name,
            timeout,
            retry_interval,
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
            br#"{"settings": {"grpc_service": {"envoy_grpc": {"cluster_name": "etcd"}, "timeout": "2s"}},
                 "clusters": {"b": {"prefix": "/svc/b/"}}}"#,
        )
        .expect("valid");
        assert_eq!(config.etcd_cluster, "etcd");
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.retry_interval, Duration::from_secs(1));
        assert_eq!(config.clusters, [("b".to_owned(), "/svc/b/".to_owned())]);

        let error = Config::parse(
            br#"{"settings": {"grpc_service": {"envoy_grpc": {"cluster_name": ""}}, "retry_interval": "never"},
                 "clusters": {"b": {"prefix": ""}}}"#,
        )
        .expect_err("invalid");
        for part in [
            "cluster_name: empty",
            "retry_interval: \"never\"",
            "clusters.b.prefix: empty",
        ] {
            assert!(error.contains(part), "{part} in {error}");
        }
        assert!(
            Config::parse(br#"{"clusters": {}}"#)
                .expect_err("no etcd")
                .contains("is required")
        );
    }
}
