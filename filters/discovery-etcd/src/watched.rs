//! One cluster's view of its etcd prefix, as a state machine free of hostcalls: a full read,
//! then a watch from the revision after it; after a disconnect, the watch resumes from the
//! revision after the last one seen, and only a compaction (events lost) forces a new read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use rustng_sdk::discovery::{Endpoint, Publisher};

use crate::proto::{DELETE, KeyValue, RangeResponse, WatchResponse};

/// Where the cluster's connection to etcd stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing in flight; the next step starts at `until`.
    Waiting { until: Duration },
    /// The range read `token` is in flight.
    Reading { token: u32 },
    /// The watch stream `token` is open.
    Watching { token: u32 },
}

/// What to start when the cluster is due.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Read,
    Watch { start_revision: i64 },
}

/// What a watch response means for the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchOutcome {
    /// Events applied (or none); the stream goes on.
    Continue,
    /// The stream is over: cancel it and start again after the retry interval; `reread`
    /// when the watched revisions were compacted away.
    Restart { reason: String, reread: bool },
}

#[derive(Debug)]
pub struct Watched {
    pub cluster: String,
    pub prefix: Vec<u8>,
    pub phase: Phase,
    pub publisher: Publisher,
    /// Each key's endpoint; keys whose value is not an endpoint are left out (and logged).
    entries: BTreeMap<Vec<u8>, Endpoint>,
    /// The last revision the view reflects.
    revision: i64,
    loaded: bool,
}

impl Watched {
    pub fn new(cluster: String, prefix: String) -> Watched {
        Watched {
            cluster,
            prefix: prefix.into_bytes(),
            phase: Phase::Waiting {
                until: Duration::ZERO,
            },
            publisher: Publisher::default(),
            entries: BTreeMap::new(),
            revision: 0,
            loaded: false,
        }
    }

    /// What to start at `now`, if anything.
    pub fn due(&self, now: Duration) -> Option<Step> {
        match self.phase {
            Phase::Waiting { until } if now >= until => Some(if self.loaded {
                Step::Watch {
                    start_revision: self.revision + 1,
                }
            } else {
                Step::Read
            }),
            _ => None,
        }
    }

    /// Takes a full read of the prefix; the warnings name the keys left out.
    pub fn read(&mut self, response: RangeResponse) -> Vec<String> {
        let mut warnings = Vec::new();
        self.entries.clear();
        for kv in response.kvs {
            self.put(kv, &mut warnings);
        }
        self.revision = response.header.map_or(0, |h| h.revision);
        self.loaded = true;
        warnings
    }

    /// Applies a watch response.
    pub fn watched(&mut self, response: WatchResponse, warnings: &mut Vec<String>) -> WatchOutcome {
        if response.compact_revision > 0 {
            self.loaded = false;
            return WatchOutcome::Restart {
                reason: format!(
                    "revision {} was compacted (etcd keeps from {}); reading the prefix again",
                    self.revision + 1,
                    response.compact_revision
                ),
                reread: true,
            };
        }
        if response.canceled {
            return WatchOutcome::Restart {
                reason: format!("etcd canceled the watch: {}", response.cancel_reason),
                reread: false,
            };
        }
        for event in response.events {
            let Some(kv) = event.kv else { continue };
            self.revision = self.revision.max(kv.mod_revision);
            if event.kind == DELETE {
                self.entries.remove(&kv.key);
            } else {
                self.put(kv, warnings);
            }
        }
        WatchOutcome::Continue
    }

    fn put(&mut self, kv: KeyValue, warnings: &mut Vec<String>) {
        self.revision = self.revision.max(kv.mod_revision);
        match endpoint_of(&kv.value) {
            Ok(endpoint) => {
                self.entries.insert(kv.key, endpoint);
            }
            Err(reason) => {
                warnings.push(format!(
                    "key {}: {reason}; left out",
                    String::from_utf8_lossy(&kv.key)
                ));
                self.entries.remove(&kv.key);
            }
        }
    }

    /// The cluster's set, once read: every key's endpoint, an address held by two keys once,
    /// in address order.
    pub fn set(&self) -> Option<Vec<Endpoint>> {
        if !self.loaded {
            return None;
        }
        let mut set: Vec<Endpoint> = Vec::with_capacity(self.entries.len());
        for endpoint in self.entries.values() {
            if !set.iter().any(|known| known.address == endpoint.address) {
                set.push(endpoint.clone());
            }
        }
        set.sort_by(|a, b| a.address.cmp(&b.address));
        Some(set)
    }
}

/// A key's value: an endpoint as JSON (`{"address": "10.0.0.7:8080", "weight": 2, ...}`, the
/// shape `rustng.set_endpoints` takes), or just `ip:port`.
fn endpoint_of(value: &[u8]) -> Result<Endpoint, String> {
    let text = std::str::from_utf8(value).map_err(|_| "value is not UTF-8".to_owned())?;
    let endpoint = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Endpoint>(text)
            .map_err(|e| format!("value is not an endpoint: {e}"))?
    } else {
        Endpoint {
            address: text.trim().to_owned(),
            weight: 1,
            zone: String::new(),
            metadata: serde_json::Value::Null,
            healthy: true,
        }
    };
    endpoint
        .address
        .parse::<SocketAddr>()
        .map_err(|_| format!("\"{}\" is not ip:port", endpoint.address))?;
    if endpoint.weight == 0 {
        return Err("weight must be at least 1".to_owned());
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Event, ResponseHeader};

    fn kv(key: &str, value: &str, revision: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            mod_revision: revision,
            value: value.as_bytes().to_vec(),
        }
    }

    fn addresses(watched: &Watched) -> Vec<(String, u32)> {
        watched
            .set()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.address, e.weight))
            .collect()
    }

    fn watch(events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            header: None,
            created: false,
            canceled: false,
            compact_revision: 0,
            cancel_reason: String::new(),
            events,
        }
    }

    #[test]
    fn read_then_watch_from_the_next_revision_and_resume_after_the_last_event() {
        let mut w = Watched::new("b".into(), "/svc/b/".into());
        assert_eq!(w.due(Duration::ZERO), Some(Step::Read));
        assert_eq!(w.set(), None, "nothing to publish before the first read");
        let warnings = w.read(RangeResponse {
            header: Some(ResponseHeader { revision: 10 }),
            kvs: vec![
                kv(
                    "/svc/b/1",
                    r#"{"address": "127.0.0.1:8001", "weight": 2}"#,
                    4,
                ),
                kv("/svc/b/2", "127.0.0.1:8002", 5),
                kv("/svc/b/3", "not an address", 6),
            ],
            more: false,
        });
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("/svc/b/3"), "{warnings:?}");
        assert_eq!(
            addresses(&w),
            [("127.0.0.1:8001".into(), 2), ("127.0.0.1:8002".into(), 1)]
        );
        assert_eq!(
            w.due(Duration::ZERO),
            Some(Step::Watch { start_revision: 11 })
        );

        let mut warnings = Vec::new();
        let outcome = w.watched(
            watch(vec![
                Event {
                    kind: DELETE,
                    kv: Some(kv("/svc/b/1", "", 12)),
                },
                Event {
                    kind: 0,
                    kv: Some(kv("/svc/b/4", "127.0.0.1:8004", 13)),
                },
            ]),
            &mut warnings,
        );
        assert_eq!(outcome, WatchOutcome::Continue);
        assert_eq!(
            addresses(&w),
            [("127.0.0.1:8002".into(), 1), ("127.0.0.1:8004".into(), 1)]
        );
        // A disconnect: the next watch starts after the last event seen.
        w.phase = Phase::Waiting {
            until: Duration::ZERO,
        };
        assert_eq!(
            w.due(Duration::ZERO),
            Some(Step::Watch { start_revision: 14 })
        );
    }

    #[test]
    fn compaction_forces_a_new_read_and_cancel_a_new_watch() {
        let mut w = Watched::new("b".into(), "/svc/b/".into());
        w.read(RangeResponse {
            header: Some(ResponseHeader { revision: 3 }),
            kvs: vec![],
            more: false,
        });
        assert_eq!(w.set(), Some(vec![]), "an empty prefix is an empty set");
        let mut warnings = Vec::new();
        let canceled = w.watched(
            WatchResponse {
                canceled: true,
                cancel_reason: "shutting down".into(),
                ..watch(vec![])
            },
            &mut warnings,
        );
        assert!(matches!(
            canceled,
            WatchOutcome::Restart { reread: false, .. }
        ));
        let compacted = w.watched(
            WatchResponse {
                canceled: true,
                compact_revision: 50,
                ..watch(vec![])
            },
            &mut warnings,
        );
        assert!(matches!(
            compacted,
            WatchOutcome::Restart { reread: true, .. }
        ));
        assert_eq!(w.due(Duration::ZERO), Some(Step::Read));
    }
}
