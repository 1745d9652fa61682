//! One cluster's Service, followed through the API server as client-go's reflector does, as a
//! state machine free of hostcalls: list the Service's EndpointSlices (by the
//! `kubernetes.io/service-name` label), then watch from the list's `resourceVersion`, each
//! watch resuming from the last version seen; a `410 Gone` (the version is too old) lists
//! again.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustng_sdk::discovery::{Endpoint, percent_encode};
use serde::Deserialize;

use crate::config::{PortSelector, ServiceRef};

#[derive(Debug)]
pub struct Followed {
    pub service: ServiceRef,
    slices: BTreeMap<String, EndpointSlice>,
    resource_version: String,
    listed: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    name: String,
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Debug, Clone, Deserialize)]
struct EndpointSlice {
    metadata: ObjectMeta,
    #[serde(rename = "addressType", default)]
    address_type: String,
    #[serde(default)]
    endpoints: Option<Vec<SliceEndpoint>>,
    #[serde(default)]
    ports: Option<Vec<SlicePort>>,
}

#[derive(Debug, Clone, Deserialize)]
struct SliceEndpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
    #[serde(rename = "nodeName")]
    node_name: Option<String>,
    zone: Option<String>,
    #[serde(rename = "targetRef")]
    target_ref: Option<TargetRef>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
struct TargetRef {
    #[serde(default)]
    name: String,
}

#[derive(Debug, Clone, Deserialize)]
struct SlicePort {
    name: Option<String>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
struct SliceList {
    metadata: ObjectMeta,
    #[serde(default)]
    items: Vec<EndpointSlice>,
}

#[derive(Debug, Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// The API server's `Status`, for errors.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    message: String,
}

impl Followed {
    pub fn new(service: ServiceRef) -> Followed {
        Followed {
            service,
            slices: BTreeMap::new(),
            resource_version: String::new(),
            listed: false,
        }
    }

    /// The next request's path: the list, or a watch from the last version seen.
    pub fn path(&self, window: Duration) -> String {
        let base = format!(
            "/apis/discovery.k8s.io/v1/namespaces/{}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{}",
            percent_encode(&self.service.namespace),
            percent_encode(&self.service.name)
        );
        if self.listed {
            format!(
                "{base}&watch=1&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}",
                percent_encode(&self.resource_version),
                window.as_secs().max(1)
            )
        } else {
            base
        }
    }

    /// Takes an answer to [`Followed::path`]; an error leaves the set as it was (a 410 also
    /// makes the next request a list). Slices left out are named by [`Followed::set`].
    pub fn answered(&mut self, status: u16, body: &[u8]) -> Result<(), String> {
        if status == 410 {
            self.listed = false;
            return Err("resourceVersion too old (410 Gone): listing again".to_owned());
        }
        if status != 200 {
            let reason = serde_json::from_slice::<Status>(body)
                .map(|s| s.message)
                .unwrap_or_else(|_| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                });
            return Err(format!("API server answered {status}: {reason}"));
        }
        if !self.listed {
            let list: SliceList = serde_json::from_slice(body)
                .map_err(|e| format!("not an EndpointSliceList: {e}"))?;
            self.slices = list
                .items
                .into_iter()
                .map(|slice| (slice.metadata.name.clone(), slice))
                .collect();
            self.resource_version = list.metadata.resource_version;
            self.listed = true;
            return Ok(());
        }
        // A watch: one JSON event per line.
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let event: WatchEvent =
                serde_json::from_slice(line).map_err(|e| format!("not a watch event: {e}"))?;
            match event.kind.as_str() {
                "ADDED" | "MODIFIED" | "DELETED" => {
                    let slice: EndpointSlice = serde_json::from_value(event.object)
                        .map_err(|e| format!("not an EndpointSlice: {e}"))?;
                    self.resource_version = slice.metadata.resource_version.clone();
                    if event.kind == "DELETED" {
                        self.slices.remove(&slice.metadata.name);
                    } else {
                        self.slices.insert(slice.metadata.name.clone(), slice);
                    }
                }
                "BOOKMARK" => {
                    if let Ok(meta) = serde_json::from_value::<ObjectMeta>(
                        event.object.get("metadata").cloned().unwrap_or_default(),
                    ) {
                        self.resource_version = meta.resource_version;
                    }
                }
                "ERROR" => {
                    let status: Status = serde_json::from_value(event.object).unwrap_or(Status {
                        code: 0,
                        message: String::new(),
                    });
                    if status.code == 410 {
                        self.listed = false;
                        return Err(format!(
                            "watch expired (410: {}): listing again",
                            status.message
                        ));
                    }
                    return Err(format!("watch error {}: {}", status.code, status.message));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The cluster's set once listed, and warnings for slices without the wanted port.
    pub fn set(&self) -> Option<(Vec<Endpoint>, Vec<String>)> {
        if !self.listed {
            return None;
        }
        let mut set: Vec<Endpoint> = Vec::new();
        let mut warnings = Vec::new();
        for slice in self.slices.values() {
            // FQDN slices name hosts, not addresses.
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let Some(port) = pick_port(
                slice.ports.as_deref().unwrap_or_default(),
                &self.service.port,
            ) else {
                if !slice.endpoints.as_deref().unwrap_or_default().is_empty() {
                    warnings.push(format!(
                        "EndpointSlice {}: no port {:?}; left out",
                        slice.metadata.name, self.service.port
                    ));
                }
                continue;
            };
            for endpoint in slice.endpoints.iter().flatten() {
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else {
                        continue;
                    };
                    let address = SocketAddr::new(ip, port).to_string();
                    if set.iter().any(|known| known.address == address) {
                        continue;
                    }
                    set.push(Endpoint {
                        address,
                        weight: 1,
                        zone: endpoint.zone.clone().unwrap_or_default(),
                        metadata: serde_json::json!({
                            "node": endpoint.node_name,
                            "pod": endpoint.target_ref.as_ref().map(|t| t.name.clone()),
                            "slice": slice.metadata.name,
                        }),
                        // Kubernetes: an unknown readiness is to be taken as ready.
                        healthy: endpoint.conditions.ready.unwrap_or(true),
                    });
                }
            }
        }
        set.sort_by(|a, b| a.address.cmp(&b.address));
        Some((set, warnings))
    }
}

fn pick_port(ports: &[SlicePort], wanted: &PortSelector) -> Option<u16> {
    match wanted {
        PortSelector::Only => match ports {
            [only] => only.port,
            _ => None,
        },
        PortSelector::Named(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port),
        PortSelector::Number(number) => ports
            .iter()
            .find(|p| p.port == Some(*number))
            .map(|_| *number),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(port: PortSelector) -> ServiceRef {
        ServiceRef {
            namespace: "shop".into(),
            name: "web".into(),
            port,
        }
    }

    fn slice(name: &str, version: &str, ready: &[(&str, Option<bool>)]) -> serde_json::Value {
        serde_json::json!({
            "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": name, "namespace": "shop", "resourceVersion": version,
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": ready.iter().map(|(ip, ready)| serde_json::json!({
                "addresses": [ip], "conditions": {"ready": ready}, "nodeName": "n1", "zone": "z1",
                "targetRef": {"kind": "Pod", "name": format!("pod-{ip}")}})).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "admin", "port": 9090}]
        })
    }

    fn addresses(f: &Followed) -> Vec<(String, bool)> {
        f.set()
            .map(|(set, _)| set.into_iter().map(|e| (e.address, e.healthy)).collect())
            .unwrap_or_default()
    }

    #[test]
    fn list_then_watch_from_the_last_version() {
        let mut f = Followed::new(service(PortSelector::Named("http".into())));
        let window = Duration::from_secs(2);
        assert_eq!(
            f.path(window),
            "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb"
        );
        let list = serde_json::json!({"kind": "EndpointSliceList", "metadata": {"resourceVersion": "100"},
            "items": [slice("web-1", "90", &[("10.0.0.1", Some(true)), ("10.0.0.2", None)])]});
        f.answered(200, list.to_string().as_bytes()).expect("list");
        assert_eq!(
            addresses(&f),
            [
                ("10.0.0.1:8080".into(), true),
                ("10.0.0.2:8080".into(), true)
            ]
        );
        assert!(
            f.path(window).ends_with(
                "&watch=1&allowWatchBookmarks=true&resourceVersion=100&timeoutSeconds=2"
            )
        );

        let events = [
            serde_json::json!({"type": "MODIFIED", "object": slice("web-1", "101", &[("10.0.0.1", Some(false))])}),
            serde_json::json!({"type": "ADDED", "object": slice("web-2", "102", &[("10.0.0.3", Some(true))])}),
            serde_json::json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice", "metadata": {"resourceVersion": "105"}}}),
        ]
        .iter()
        .map(|e| e.to_string() + "\n")
        .collect::<String>();
        f.answered(200, events.as_bytes()).expect("watch");
        assert_eq!(
            addresses(&f),
            [
                ("10.0.0.1:8080".into(), false),
                ("10.0.0.3:8080".into(), true)
            ]
        );
        assert!(f.path(window).contains("resourceVersion=105&"));

        let deleted = serde_json::json!({"type": "DELETED", "object": slice("web-2", "106", &[])});
        f.answered(200, format!("{deleted}\n").as_bytes())
            .expect("watch");
        assert_eq!(addresses(&f), [("10.0.0.1:8080".into(), false)]);
    }

    #[test]
    fn gone_lists_again_and_errors_keep_the_set() {
        let mut f = Followed::new(service(PortSelector::Number(8080)));
        let list = serde_json::json!({"metadata": {"resourceVersion": "7"},
            "items": [slice("web-1", "7", &[("10.0.0.1", Some(true))])]});
        f.answered(200, list.to_string().as_bytes()).expect("list");
        let expired = serde_json::json!({"type": "ERROR", "object": {"kind": "Status", "code": 410,
            "reason": "Expired", "message": "too old resource version: 7 (50)"}});
        let error = f
            .answered(200, format!("{expired}\n").as_bytes())
            .expect_err("expired");
        assert!(error.contains("listing again"), "{error}");
        assert!(
            !f.path(Duration::from_secs(1)).contains("watch"),
            "lists again"
        );
        assert_eq!(addresses(&f).len(), 0, "no set until listed again");

        let mut f = Followed::new(service(PortSelector::Only));
        f.answered(200, list.to_string().as_bytes()).expect("list");
        let (_, warnings) = f.set().expect("set");
        assert_eq!(warnings.len(), 1, "two ports, none chosen: {warnings:?}");
        let denied = br#"{"kind": "Status", "code": 401, "message": "Unauthorized"}"#;
        assert_eq!(
            f.answered(401, denied).expect_err("denied"),
            "API server answered 401: Unauthorized"
        );
        assert!(f.path(Duration::from_secs(1)).contains("resourceVersion=7"));
    }
}
