//! The adapter's configuration: how to reach Consul (a RustNg cluster, an ACL token) and the
//! service each cluster follows, checked whole at `on_configure`.

use std::time::Duration;

use rustng_sdk::discovery::{AdapterConfig, FollowSettings, Window};
use serde::Deserialize;

/// The blocking query's `wait`; Consul refuses a longer one than 10m.
const WAIT: Window = Window {
    field: "wait",
    default: Duration::from_secs(30),
    limit: |wait| (wait > Duration::from_secs(600)).then_some("wait: at most 10m (Consul's limit)"),
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    /// The RustNg cluster that reaches Consul's HTTP API (its agents, port 8500).
    cluster: String,
    /// ACL token, sent as `X-Consul-Token`.
    #[serde(default)]
    token: String,
    /// The datacenter to ask about (`dc`); default the agent's.
    #[serde(default)]
    datacenter: String,
    /// How long a blocking query may wait for a change (`wait`). Default `30s`, at most `10m`.
    wait: Option<String>,
    /// Wait before asking again after a failed query. Default `1s`.
    retry_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    service: String,
    /// Only instances with this tag.
    #[serde(default)]
    tag: String,
    /// Ask Consul for passing instances only (`?passing`); otherwise every instance is
    /// listed, and one with a critical check is listed unhealthy. Default true.
    #[serde(default = "yes")]
    only_passing: bool,
    /// This cluster's datacenter, instead of the adapter's.
    #[serde(default)]
    datacenter: String,
}

fn yes() -> bool {
    true
}

/// The service a cluster follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub tag: String,
    pub only_passing: bool,
    pub datacenter: String,
}

#[derive(Debug)]
pub struct Config {
    /// The cluster that reaches Consul, `wait` as the window, `retry_interval`.
    pub follow: FollowSettings,
    pub token: String,
    /// (cluster, service).
    pub clusters: Vec<(String, Service)>,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        let raw = AdapterConfig::<RawSettings, RawCluster>::parse(bytes)?;
        let settings = raw
            .settings
            .ok_or("configuration: cluster (the cluster that reaches Consul) is required")?;
        let mut errors = Vec::new();
        let follow = FollowSettings::check(
            &mut errors,
            &WAIT,
            settings.cluster,
            settings.wait.as_deref(),
            settings.retry_interval.as_deref(),
        );
        let mut clusters = Vec::new();
        for (cluster, section) in raw.clusters {
            if section.service.is_empty() {
                errors.push(format!("clusters.{cluster}.service: empty"));
            }
            let datacenter = if section.datacenter.is_empty() {
                settings.datacenter.clone()
            } else {
                section.datacenter
            };
            clusters.push((
                cluster,
                Service {
                    name: section.service,
                    tag: section.tag,
                    only_passing: section.only_passing,
                    datacenter,
                },
            ));
        }
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        Ok(Config {
            follow,
            token: settings.token,
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
            br#"{"settings": {"cluster": "consul", "datacenter": "dc1", "wait": "5s"},
                 "clusters": {"b": {"service": "web", "tag": "v2"},
                              "c": {"service": "api", "only_passing": false, "datacenter": "dc2"}}}"#,
        )
        .expect("valid");
        assert_eq!(config.follow.cluster, "consul");
        assert_eq!(config.follow.window, Duration::from_secs(5));
        assert_eq!(config.follow.retry_interval, Duration::from_secs(1));
        assert_eq!(
            config.clusters[0].1,
            Service {
                name: "web".into(),
                tag: "v2".into(),
                only_passing: true,
                datacenter: "dc1".into()
            }
        );
        assert_eq!(config.clusters[1].1.datacenter, "dc2");
        assert!(!config.clusters[1].1.only_passing);

        let error = Config::parse(
            br#"{"settings": {"cluster": "", "wait": "11m", "retry_interval": "x"},
                 "clusters": {"b": {"service": ""}}}"#,
        )
        .expect_err("invalid");
        for part in [
            "cluster: empty",
            "wait: at most 10m",
            "retry_interval: \"x\"",
            "clusters.b.service: empty",
        ] {
            assert!(error.contains(part), "{part} in {error}");
        }
    }
}
