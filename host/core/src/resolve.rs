//! `rustng.resolve`: the host's asynchronous DNS resolver, offered to discovery adapters as a
//! foreign function (a wasm module has no sockets of its own to query DNS with).
//!
//! The call returns at once with a token; the answer comes later as
//! `proxy_on_foreign_function(root_context, token, size)` with the answer readable as the
//! call-data buffer, the way an HTTP call's answer comes as `proxy_on_http_call_response`.
//! The wire formats are in `rustng_abi::extensions::RESOLVE`.
//!
//! Lookups run on the thread that asked, which must have called [`answer_here`] first (the
//! discovery thread does): answers go back to that thread's adapters, by plugin name. On any
//! other thread the function says `UNIMPLEMENTED`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{TokioResolver, lookup::Lookup};
use rustng_abi::Status;
use rustng_abi::extensions::MAX_RESOLVES_IN_FLIGHT;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// An answer for a plugin's root context: `proxy_on_foreign_function(token)` with `bytes`.
#[derive(Debug)]
pub(crate) struct ForeignAnswer {
    pub(crate) plugin: String,
    pub(crate) token: u32,
    pub(crate) bytes: Vec<u8>,
}

/// `rustng.resolve`'s argument.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Question {
    name: String,
    #[serde(rename = "type", default = "a")]
    record_type: String,
    /// Name servers (`ip` or `ip:port`) instead of the system's (`/etc/resolv.conf`).
    #[serde(default)]
    resolvers: Vec<String>,
    /// How long the whole lookup may take (default 5 s, at most a minute).
    #[serde(default = "five_seconds")]
    timeout_ms: u64,
}

fn five_seconds() -> u64 {
    5_000
}

fn a() -> String {
    "A".to_owned()
}

/// What the plugin reads in `proxy_on_foreign_function`.
#[derive(Debug, Serialize, PartialEq)]
struct Answer {
    name: String,
    #[serde(rename = "type")]
    record_type: String,
    /// `ok`, `not_found` (the name or the record type does not exist: an empty set), or
    /// `error` (the lookup failed: timeout, server failure; keep what you had).
    status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
    /// Seconds the answer stays valid (the smallest record TTL; 0 for errors).
    ttl: u32,
    records: Vec<AnswerRecord>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(untagged)]
enum AnswerRecord {
    Address {
        address: IpAddr,
    },
    Service {
        target: String,
        port: u16,
        priority: u16,
        weight: u16,
        /// The target's addresses (A and AAAA), resolved by the host.
        addresses: Vec<IpAddr>,
    },
}

/// The per-thread side: where answers go and the resolvers made so far.
struct Resolving {
    answers: mpsc::UnboundedSender<ForeignAnswer>,
    /// One resolver per list of name servers (the empty list: the system's) and timeout, so
    /// each keeps its cache and connections.
    resolvers: RefCell<HashMap<(Vec<SocketAddr>, Duration), TokioResolver>>,
    in_flight: Rc<Cell<usize>>,
}

thread_local! {
    static RESOLVING: RefCell<Option<Rc<Resolving>>> = const { RefCell::new(None) };
}

static NEXT_TOKEN: AtomicU32 = AtomicU32::new(1);

/// Lets plugins on this thread resolve names; their answers arrive on the returned channel,
/// for the caller to hand to each plugin's root context. Call inside the thread's `LocalSet`.
pub(crate) fn answer_here() -> mpsc::UnboundedReceiver<ForeignAnswer> {
    let (answers, receiver) = mpsc::unbounded_channel();
    RESOLVING.with(|slot| {
        *slot.borrow_mut() = Some(Rc::new(Resolving {
            answers,
            resolvers: RefCell::default(),
            in_flight: Rc::default(),
        }));
    });
    receiver
}

/// The `rustng.resolve` foreign function.
pub(crate) fn resolve_function() -> rustng_wasm::ForeignFunction {
    Arc::new(|plugin: &str, argument: &[u8]| {
        let Some(resolving) = RESOLVING.with(|slot| slot.borrow().clone()) else {
            return Err(Status::Unimplemented);
        };
        let question: Question = serde_json::from_slice(argument).map_err(|error| {
            tracing::warn!(plugin, %error, "rustng.resolve: not a question");
            Status::BadArgument
        })?;
        let record_type = match question.record_type.as_str() {
            "A" => RecordType::A,
            "AAAA" => RecordType::AAAA,
            "SRV" => RecordType::SRV,
            other => {
                tracing::warn!(
                    plugin,
                    record_type = other,
                    "rustng.resolve: type must be A, AAAA or SRV"
                );
                return Err(Status::BadArgument);
            }
        };
        let servers = name_servers(&question.resolvers).map_err(|reason| {
            tracing::warn!(plugin, %reason, "rustng.resolve: bad resolvers");
            Status::BadArgument
        })?;
        if resolving.in_flight.get() >= MAX_RESOLVES_IN_FLIGHT {
            tracing::warn!(
                plugin,
                "rustng.resolve: {MAX_RESOLVES_IN_FLIGHT} lookups already in flight"
            );
            return Err(Status::InternalFailure);
        }
        let timeout = Duration::from_millis(question.timeout_ms.clamp(1, 60_000));
        let resolver = resolving.resolver(servers, timeout).map_err(|error| {
            tracing::warn!(plugin, %error, "rustng.resolve: no resolver");
            Status::InternalFailure
        })?;
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let plugin = plugin.to_owned();
        resolving.in_flight.set(resolving.in_flight.get() + 1);
        tokio::task::spawn_local(async move {
            let name = question.name;
            // The resolver's own timeout is per attempt; this bounds the SRV targets' lookups
            // and any retries too.
            let answer =
                match tokio::time::timeout(timeout, lookup(&resolver, name.clone(), record_type))
                    .await
                {
                    Ok(answer) => answer,
                    Err(_) => Answer::failed(name, record_type, "timed out".to_owned()),
                };
            resolving.in_flight.set(resolving.in_flight.get() - 1);
            let bytes = serde_json::to_vec(&answer).unwrap_or_default();
            // The thread's adapters may be gone (shutdown): nobody to tell.
            let _ = resolving.answers.send(ForeignAnswer {
                plugin,
                token,
                bytes,
            });
        });
        Ok(token.to_le_bytes().to_vec())
    })
}

impl Resolving {
    fn resolver(
        &self,
        servers: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<TokioResolver, NetError> {
        let key = (servers, timeout);
        if let Some(known) = self.resolvers.borrow().get(&key) {
            return Ok(known.clone());
        }
        let servers = &key.0;
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let mut builder = builder;
        let options = builder.options_mut();
        options.timeout = timeout;
        options.attempts = 1;
        let resolver = builder.build()?;
        self.resolvers.borrow_mut().insert(key, resolver.clone());
        Ok(resolver)
    }
}

/// `ip` or `ip:port` (port 53 by default).
fn name_servers(listed: &[String]) -> Result<Vec<SocketAddr>, String> {
    listed
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| format!("\"{text}\" is not ip or ip:port"))
        })
        .collect()
}

impl Answer {
    fn failed(name: String, record_type: RecordType, error: String) -> Answer {
        Answer {
            record_type: record_type.to_string(),
            name,
            status: "error",
            error,
            ttl: 0,
            records: Vec::new(),
        }
    }
}

async fn lookup(resolver: &TokioResolver, name: String, record_type: RecordType) -> Answer {
    let mut answer = Answer {
        status: "ok",
        ..Answer::failed(name, record_type, String::new())
    };
    let found = match resolver.lookup(answer.name.as_str(), record_type).await {
        Ok(found) => found,
        Err(error) => {
            record_failure(&mut answer, &error);
            return answer;
        }
    };
    let mut valid_until = found.valid_until();
    for record in found.answers() {
        match &record.data {
            RData::A(a) => answer.records.push(AnswerRecord::Address {
                address: IpAddr::V4(a.0),
            }),
            RData::AAAA(aaaa) => answer.records.push(AnswerRecord::Address {
                address: IpAddr::V6(aaaa.0),
            }),
            RData::SRV(srv) => {
                let target = srv.target.to_utf8();
                // A target of "." means "not offered here" (RFC 2782).
                if srv.target.is_root() {
                    continue;
                }
                let (addresses, until) = target_addresses(resolver, &found, &target).await;
                valid_until = valid_until.min(until);
                answer.records.push(AnswerRecord::Service {
                    target,
                    port: srv.port,
                    priority: srv.priority,
                    weight: srv.weight,
                    addresses,
                });
            }
            // CNAMEs on the way, and anything else the server added.
            _ => {}
        }
    }
    answer.ttl = seconds_left(valid_until);
    if answer.records.is_empty() {
        answer.status = "not_found";
    }
    answer
}

/// A SRV target's addresses: from the additional section when the server sent them, else
/// looked up (A and AAAA).
async fn target_addresses(
    resolver: &TokioResolver,
    found: &Lookup,
    target: &str,
) -> (Vec<IpAddr>, Instant) {
    let additional: Vec<IpAddr> = found
        .additionals()
        .iter()
        .filter(|record| record.name.to_utf8().eq_ignore_ascii_case(target))
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
            _ => None,
        })
        .collect();
    if !additional.is_empty() {
        return (additional, found.valid_until());
    }
    match resolver.lookup_ip(target).await {
        Ok(ips) => (ips.iter().collect(), ips.valid_until()),
        // The target's address failing is the target being unusable for now: no addresses,
        // and asked again soon.
        Err(_) => (Vec::new(), Instant::now() + Duration::from_secs(1)),
    }
}

fn record_failure(answer: &mut Answer, error: &NetError) {
    if error.is_no_records_found() {
        answer.status = "not_found";
    } else {
        answer.status = "error";
        answer.error = error.to_string();
    }
}

fn seconds_left(valid_until: Instant) -> u32 {
    let left = valid_until.saturating_duration_since(Instant::now());
    u32::try_from(left.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_servers_default_to_port_53() {
        assert_eq!(
            name_servers(&["127.0.0.1".into(), "127.0.0.1:5353".into(), "::1".into()]),
            Ok(vec![
                "127.0.0.1:53".parse().expect("addr"),
                "127.0.0.1:5353".parse().expect("addr"),
                "[::1]:53".parse().expect("addr"),
            ])
        );
        assert!(name_servers(&["dns.example".into()]).is_err());
    }

    #[test]
    fn answers_serialize_as_documented() {
        let answer = Answer {
            name: "b.test".into(),
            record_type: "SRV".into(),
            status: "ok",
            error: String::new(),
            ttl: 5,
            records: vec![
                AnswerRecord::Address {
                    address: "127.0.0.1".parse().expect("ip"),
                },
                AnswerRecord::Service {
                    target: "a.test.".into(),
                    port: 80,
                    priority: 1,
                    weight: 2,
                    addresses: vec!["::1".parse().expect("ip")],
                },
            ],
        };
        assert_eq!(
            serde_json::to_value(&answer).expect("json"),
            serde_json::json!({"name": "b.test", "type": "SRV", "status": "ok", "ttl": 5,
                "records": [{"address": "127.0.0.1"},
                    {"target": "a.test.", "port": 80, "priority": 1, "weight": 2, "addresses": ["::1"]}]})
        );
    }
}
