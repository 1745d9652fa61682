//! The adapter's configuration: the plugin's `configuration` (resolvers, refresh bounds) and
//! each cluster's `discovery` section (names to resolve), checked whole at `on_configure`.

use std::net::IpAddr;
use std::time::Duration;

use rustng_sdk::discovery::AdapterConfig;
use rustng_sdk::duration;
use serde::Deserialize;

/// The plugin's own `configuration`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Name servers (`ip` or `ip:port`); the system's (`/etc/resolv.conf`) when empty.
    #[serde(default)]
    pub resolvers: Vec<String>,
    /// Lower bound on the re-resolve interval: a record TTL below it waits this long
    /// (Envoy's `dns_min_refresh_rate`). Default `5s`.
    pub dns_min_refresh_rate: Option<String>,
    /// Upper bound on the re-resolve interval, whatever the TTL. Default `300s`.
    pub dns_max_refresh_rate: Option<String>,
    /// Wait before retrying a failed lookup. Default `5s`.
    pub dns_failure_refresh_rate: Option<String>,
    /// How long a lookup may take before it counts as failed. Default `5s`.
    pub dns_query_timeout: Option<String>,
}

/// A cluster's `discovery` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `host:port` names, each resolved to every address it has (Envoy's `STRICT_DNS`).
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    /// SRV names (`_http._tcp.backend.example.com`): each record's target, port and weight.
    #[serde(default)]
    pub srv: Vec<String>,
    /// `AUTO` (default: AAAA, else A), `V4_PREFERRED` (A, else AAAA), `V4_ONLY`, `V6_ONLY`,
    /// `ALL` (both), as Envoy's `dns_lookup_family`.
    #[serde(default)]
    pub dns_lookup_family: Family,
}

/// One `host:port` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub address: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Envoy's `dns_lookup_family`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Family {
    #[default]
    Auto,
    V4Preferred,
    V4Only,
    V6Only,
    All,
}

/// How often names are re-resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    pub min: Duration,
    pub max: Duration,
    pub failure: Duration,
}

impl Refresh {
    /// When to ask again after an answer valid for `ttl` seconds.
    pub fn after_ttl(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl)).clamp(self.min, self.max)
    }
}

/// What a cluster resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A name (or an address literal, used as is) with the port and weight of its endpoints.
    Host {
        host: String,
        port: u16,
        weight: u32,
        family: Family,
    },
    /// A SRV name.
    Srv { name: String },
}

/// The checked configuration.
#[derive(Debug)]
pub struct Config {
    pub resolvers: Vec<String>,
    pub query_timeout: Duration,
    pub refresh: Refresh,
    /// Each cluster with its sources, by name.
    pub clusters: Vec<(String, Vec<Source>)>,
}

impl Config {
    /// Parses the adapter configuration RustNg hands over; every problem in one message.
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        let raw = AdapterConfig::<RawSettings, RawCluster>::parse(bytes)?;
        let settings = raw.settings.unwrap_or(RawSettings {
            resolvers: Vec::new(),
            dns_min_refresh_rate: None,
            dns_max_refresh_rate: None,
            dns_failure_refresh_rate: None,
            dns_query_timeout: None,
        });
        let mut errors = Vec::new();
        let refresh = Refresh {
            min: duration::positive(
                &mut errors,
                "dns_min_refresh_rate",
                settings.dns_min_refresh_rate.as_deref(),
                Duration::from_secs(5),
            ),
            max: duration::positive(
                &mut errors,
                "dns_max_refresh_rate",
                settings.dns_max_refresh_rate.as_deref(),
                Duration::from_secs(300),
            ),
            failure: duration::positive(
                &mut errors,
                "dns_failure_refresh_rate",
                settings.dns_failure_refresh_rate.as_deref(),
                Duration::from_secs(5),
            ),
        };
        let query_timeout = duration::positive(
            &mut errors,
            "dns_query_timeout",
            settings.dns_query_timeout.as_deref(),
            Duration::from_secs(5),
        );
        if refresh.max < refresh.min {
            errors.push("dns_max_refresh_rate: below dns_min_refresh_rate".to_owned());
        }
        let mut clusters = Vec::new();
        for (cluster, section) in raw.clusters {
            let mut sources = Vec::new();
            for (i, endpoint) in section.endpoints.iter().enumerate() {
                match split_host_port(&endpoint.address) {
                    Ok((host, port)) if endpoint.weight > 0 => sources.push(Source::Host {
                        host,
                        port,
                        weight: endpoint.weight,
                        family: section.dns_lookup_family,
                    }),
                    Ok(_) => errors.push(format!(
                        "clusters.{cluster}.endpoints[{i}].weight: must be at least 1"
                    )),
                    Err(reason) => errors.push(format!(
                        "clusters.{cluster}.endpoints[{i}].address: {reason}"
                    )),
                }
            }
            for (i, name) in section.srv.iter().enumerate() {
                if name.trim().is_empty() {
                    errors.push(format!("clusters.{cluster}.srv[{i}]: empty name"));
                } else {
                    sources.push(Source::Srv { name: name.clone() });
                }
            }
            if sources.is_empty() {
                errors.push(format!(
                    "clusters.{cluster}: no endpoints or srv names to resolve"
                ));
            }
            clusters.push((cluster, sources));
        }
        if errors.is_empty() {
            Ok(Config {
                resolvers: settings.resolvers,
                query_timeout,
                refresh,
                clusters,
            })
        } else {
            Err(errors.join("; "))
        }
    }
}

/// `host:port`, `[v6]:port`.
fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{address}\" is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("\"{address}\": bad port"))?;
    if host.is_empty() || (host.contains(':') && host.parse::<IpAddr>().is_err()) {
        return Err(format!("\"{address}\" is not host:port"));
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_parses_with_defaults() {
        let config = Config::parse(
            br#"{"settings": {"resolvers": ["127.0.0.1:5353"], "dns_min_refresh_rate": "1s"},
                 "clusters": {"b": {"endpoints": [{"address": "a.test:80", "weight": 2},
                                                  {"address": "[::1]:81"}],
                                    "srv": ["_http._tcp.s.test"], "dns_lookup_family": "V4_ONLY"}}}"#,
        )
        .expect("valid");
        assert_eq!(config.resolvers, ["127.0.0.1:5353"]);
        assert_eq!(config.refresh.min, Duration::from_secs(1));
        assert_eq!(config.refresh.max, Duration::from_secs(300));
        assert_eq!(config.refresh.after_ttl(0), Duration::from_secs(1));
        assert_eq!(config.refresh.after_ttl(30), Duration::from_secs(30));
        assert_eq!(config.refresh.after_ttl(86_400), Duration::from_secs(300));
        let (name, sources) = &config.clusters[0];
        assert_eq!(name, "b");
        assert_eq!(
            sources[0],
            Source::Host {
                host: "a.test".into(),
                port: 80,
                weight: 2,
                family: Family::V4Only
            }
        );
        assert!(matches!(&sources[1], Source::Host { host, port: 81, .. } if host == "::1"));
        assert_eq!(
            sources[2],
            Source::Srv {
                name: "_http._tcp.s.test".into()
            }
        );
        let defaults = Config::parse(br#"{"clusters": {}}"#).expect("valid");
        assert_eq!(defaults.refresh.min, Duration::from_secs(5));
    }

    #[test]
    fn every_error_is_reported() {
        let error = Config::parse(
            br#"{"settings": {"dns_min_refresh_rate": "soon"},
                 "clusters": {"b": {"endpoints": [{"address": "a.test"}, {"address": "a.test:0"},
                                                  {"address": "a.test:80", "weight": 0}]},
                              "c": {}}}"#,
        )
        .expect_err("invalid");
        for part in [
            "dns_min_refresh_rate: \"soon\"",
            "clusters.b.endpoints[0].address: \"a.test\" is not host:port",
            "clusters.b.endpoints[1].address: \"a.test:0\": bad port",
            "clusters.b.endpoints[2].weight",
            "clusters.c: no endpoints",
        ] {
            assert!(error.contains(part), "{part} in {error}");
        }
    }
}
