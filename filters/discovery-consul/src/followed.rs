//! One cluster's Consul service, followed with blocking queries, as a state machine free of
//! hostcalls: the query to send, and what an answer does to the index and the set.
//!
//! Consul's blocking-query rules (its "Blocking Queries" documentation): send the last
//! `X-Consul-Index` as `index`; the answer comes when the result changes or `wait` runs out;
//! an index that went backwards (a Consul restore, say) resets to 0; an index is never below 1.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustng_sdk::discovery::{Endpoint, percent_encode};
use serde::Deserialize;

use crate::config::Service;

#[derive(Debug)]
pub struct Followed {
    pub service: Service,
    index: u64,
    set: Option<Vec<Endpoint>>,
}

/// One entry of `/v1/health/service/<name>`; Consul sends far more, which is skipped.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "Node")]
    node: Node,
    #[serde(rename = "Service")]
    service: Instance,
    #[serde(rename = "Checks", default)]
    checks: Vec<Check>,
}

#[derive(Debug, Deserialize)]
struct Node {
    #[serde(rename = "Node", default)]
    name: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Datacenter", default)]
    datacenter: String,
}

#[derive(Debug, Deserialize)]
struct Instance {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Port")]
    port: u16,
    #[serde(rename = "Weights")]
    weights: Option<Weights>,
    #[serde(rename = "Tags", default)]
    tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Weights {
    #[serde(rename = "Passing", default = "one")]
    passing: u32,
    #[serde(rename = "Warning", default = "one")]
    warning: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
struct Check {
    #[serde(rename = "Status")]
    status: String,
}

impl Followed {
    pub fn new(service: Service) -> Followed {
        Followed {
            service,
            index: 0,
            set: None,
        }
    }

    /// The next query's path: blocking from the last index (the first one answers at once).
    pub fn path(&self, wait: Duration) -> String {
        let mut path = format!("/v1/health/service/{}?", percent_encode(&self.service.name));
        if self.service.only_passing {
            path.push_str("passing&");
        }
        if !self.service.tag.is_empty() {
            path.push_str(&format!("tag={}&", percent_encode(&self.service.tag)));
        }
        if !self.service.datacenter.is_empty() {
            path.push_str(&format!("dc={}&", percent_encode(&self.service.datacenter)));
        }
        path.push_str(&format!("index={}&wait={}ms", self.index, wait.as_millis()));
        path
    }

    /// Takes an answer; an error leaves the index and the set as they were.
    pub fn answered(
        &mut self,
        status: u16,
        index: Option<&str>,
        body: &[u8],
    ) -> Result<(), String> {
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("Consul answered {status}: {}", text.trim()));
        }
        let entries: Vec<Entry> =
            serde_json::from_slice(body).map_err(|e| format!("not a health list: {e}"))?;
        let index: u64 = index
            .and_then(|text| text.trim().parse().ok())
            .ok_or("no X-Consul-Index in the answer")?;
        let mut set: Vec<Endpoint> = Vec::with_capacity(entries.len());
        for entry in entries {
            let Some(endpoint) = endpoint_of(&entry) else {
                continue;
            };
            if !set.iter().any(|known| known.address == endpoint.address) {
                set.push(endpoint);
            }
        }
        set.sort_by(|a, b| a.address.cmp(&b.address));
        self.set = Some(set);
        self.index = if index < self.index { 0 } else { index.max(1) };
        Ok(())
    }

    /// The set, once Consul answered.
    pub fn set(&self) -> Option<&Vec<Endpoint>> {
        self.set.as_ref()
    }
}

/// An instance's endpoint: the service address, else the node's; weight by check state;
/// unhealthy when a check is critical (Consul's own DNS interface skips those).
fn endpoint_of(entry: &Entry) -> Option<Endpoint> {
    let host = if entry.service.address.is_empty() {
        &entry.node.address
    } else {
        &entry.service.address
    };
    let ip: IpAddr = host.parse().ok()?;
    let critical = entry.checks.iter().any(|c| c.status == "critical");
    let warning = entry.checks.iter().any(|c| c.status == "warning");
    let weights = entry.service.weights.as_ref();
    let weight = if warning {
        weights.map_or(1, |w| w.warning)
    } else {
        weights.map_or(1, |w| w.passing)
    };
    Some(Endpoint {
        address: SocketAddr::new(ip, entry.service.port).to_string(),
        weight: weight.max(1),
        zone: entry.node.datacenter.clone(),
        metadata: serde_json::json!({
            "node": entry.node.name,
            "service_id": entry.service.id,
            "tags": entry.service.tags.clone().unwrap_or_default(),
        }),
        healthy: !critical,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(only_passing: bool) -> Service {
        Service {
            name: "web api".into(),
            tag: "v2".into(),
            only_passing,
            datacenter: String::new(),
        }
    }

    const ANSWER: &str = r#"[
      {"Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
       "Service": {"ID": "web-1", "Service": "web", "Address": "", "Port": 8080,
                   "Weights": {"Passing": 3, "Warning": 1}, "Tags": ["v2"]},
       "Checks": [{"Status": "passing"}]},
      {"Node": {"Node": "n2", "Address": "10.0.0.2", "Datacenter": "dc1"},
       "Service": {"ID": "web-2", "Address": "10.0.1.2", "Port": 8081},
       "Checks": [{"Status": "warning"}, {"Status": "critical"}]}
    ]"#;

    #[test]
    fn queries_block_from_the_last_index() {
        let mut f = Followed::new(service(true));
        let wait = Duration::from_secs(30);
        assert_eq!(
            f.path(wait),
            "/v1/health/service/web%20api?passing&tag=v2&index=0&wait=30000ms"
        );
        f.answered(200, Some("42"), ANSWER.as_bytes())
            .expect("answer");
        assert!(f.path(wait).ends_with("index=42&wait=30000ms"));
        // Backwards: reset to 0. Zero: at least 1.
        f.answered(200, Some("7"), b"[]").expect("answer");
        assert!(f.path(wait).contains("index=0&"));
        f.answered(200, Some("0"), b"[]").expect("answer");
        assert!(f.path(wait).contains("index=1&"));
        assert!(!Followed::new(service(false)).path(wait).contains("passing"));
    }

    #[test]
    fn entries_become_endpoints() {
        let mut f = Followed::new(service(false));
        f.answered(200, Some("5"), ANSWER.as_bytes())
            .expect("answer");
        let set = f.set().expect("set");
        assert_eq!(set.len(), 2);
        assert_eq!(
            set[0].address, "10.0.0.1:8080",
            "the node's address when the service has none"
        );
        assert_eq!(set[0].weight, 3);
        assert!(set[0].healthy);
        assert_eq!(set[0].zone, "dc1");
        assert_eq!(set[0].metadata["service_id"], "web-1");
        assert_eq!(set[1].address, "10.0.1.2:8081");
        assert!(!set[1].healthy, "a critical check");
    }

    #[test]
    fn failures_keep_the_index_and_the_set() {
        let mut f = Followed::new(service(true));
        f.answered(200, Some("9"), ANSWER.as_bytes())
            .expect("answer");
        for (status, index, body, reason) in [
            (
                500,
                Some("10"),
                &b"rpc error"[..],
                "Consul answered 500: rpc error",
            ),
            (200, None, b"[]", "no X-Consul-Index"),
            (200, Some("10"), b"{}", "not a health list"),
        ] {
            let error = f.answered(status, index, body).expect_err("fails");
            assert!(error.contains(reason), "{error}");
        }
        assert!(f.path(Duration::from_secs(1)).contains("index=9&"));
        assert_eq!(f.set().map(Vec::len), Some(2));
    }
}
