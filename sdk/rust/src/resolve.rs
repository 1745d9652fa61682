//! Resolving DNS names from a discovery adapter (`rustng.resolve`, docs/EXTENSIONS.md).
//!
//! [`resolve`] returns a token at once; the answer comes later to the root context's
//! `on_foreign_function(token, size)`, where [`Answer::read`] takes it from the call-data
//! buffer. An answer whose token the adapter did not issue (one meant for a replaced
//! generation of the adapter) should be ignored.

use std::net::IpAddr;
use std::time::Duration;

use proxy_wasm::types::{BufferType, Status};
use serde::{Deserialize, Serialize};

pub use rustng_abi::extensions::RESOLVE;

/// The record type to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    AAAA,
    /// Services: target, port, priority, weight (RFC 2782), targets' addresses resolved.
    SRV,
}

#[derive(Serialize)]
struct Question<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    record_type: RecordType,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    resolvers: &'a [String],
    timeout_ms: u64,
}

/// Starts a lookup of `name` for `record_type`, at `resolvers` (`ip` or `ip:port`; empty for
/// the system's), answered within `timeout` (an `Error` answer past it). The token names the
/// answer.
pub fn resolve(
    name: &str,
    record_type: RecordType,
    resolvers: &[String],
    timeout: Duration,
) -> Result<u32, Status> {
    let question = Question {
        name,
        record_type,
        resolvers,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let json = serde_json::to_vec(&question).map_err(|_| Status::BadArgument)?;
    let token = proxy_wasm::hostcalls::call_foreign_function(RESOLVE, Some(&json))?
        .ok_or(Status::InternalFailure)?;
    let bytes: [u8; 4] = token.try_into().map_err(|_| Status::InternalFailure)?;
    Ok(u32::from_le_bytes(bytes))
}

/// How a lookup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Records found.
    Ok,
    /// The name or the record type does not exist: the set is empty.
    NotFound,
    /// The lookup failed (timeout, server failure): keep what you had.
    Error,
}

/// A lookup's answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Answer {
    /// The name asked for.
    pub name: String,
    /// How the lookup ended.
    pub status: Outcome,
    /// Why it failed, for `Error`.
    #[serde(default)]
    pub error: String,
    /// Seconds the answer stays valid.
    pub ttl: u32,
    /// The records, in the server's order.
    pub records: Vec<Record>,
}

/// One record of an answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Record {
    /// An A or AAAA record.
    Address {
        /// The address.
        address: IpAddr,
    },
    /// A SRV record.
    Service {
        /// The target host.
        target: String,
        /// The port to connect to.
        port: u16,
        /// Lower first (RFC 2782).
        priority: u16,
        /// Share among records of the same priority.
        weight: u16,
        /// The target's addresses.
        addresses: Vec<IpAddr>,
    },
}

impl Answer {
    /// Parses answer bytes.
    pub fn parse(bytes: &[u8]) -> Result<Answer, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("rustng.resolve answer: {e}"))
    }

    /// Reads the answer in `on_foreign_function(_, size)`.
    pub fn read(size: usize) -> Result<Answer, String> {
        let bytes = proxy_wasm::hostcalls::get_buffer(BufferType::CallData, 0, size)
            .map_err(|status| format!("rustng.resolve answer: {status:?}"))?
            .unwrap_or_default();
        Answer::parse(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let answer = Answer::parse(
            br#"{"name": "s.test", "type": "SRV", "status": "ok", "ttl": 5, "records": [
                {"address": "127.0.0.1"},
                {"target": "a.test.", "port": 80, "priority": 1, "weight": 2, "addresses": ["::1"]}]}"#,
        )
        .expect("parses");
        assert_eq!(answer.status, Outcome::Ok);
        assert_eq!(
            answer.records[1],
            Record::Service {
                target: "a.test.".into(),
                port: 80,
                priority: 1,
                weight: 2,
                addresses: vec!["::1".parse().expect("ip")],
            }
        );
        let failed = Answer::parse(
            br#"{"name": "x", "type": "A", "status": "error", "error": "timed out", "ttl": 0, "records": []}"#,
        )
        .expect("parses");
        assert_eq!(failed.status, Outcome::Error);
        assert_eq!(failed.error, "timed out");
    }
}
