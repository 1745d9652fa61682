//! Each source's resolution, as a state machine free of hostcalls (so it is tested natively):
//! when it is due, which lookups a round makes, and what the round leaves as the source's
//! endpoints.

use std::net::IpAddr;
use std::time::Duration;

use rustng_sdk::discovery::Endpoint;
use rustng_sdk::resolve::{Answer, Outcome, Record, RecordType};

use crate::config::{Family, Refresh, Source};

/// A source and where its resolution stands.
#[derive(Debug)]
pub struct Resolution {
    pub source: Source,
    /// The endpoints of the last round that did not fail; `None` before the first.
    pub last_good: Option<Vec<Endpoint>>,
    /// Whether a round ended at all (failed or not): a cluster publishes once every source
    /// has had its first say.
    pub settled: bool,
    /// When the next round starts (the adapter's clock, since its start).
    pub due: Duration,
    round: Option<Round>,
}

/// A round in progress: the record types still to ask, and what the answers gave.
#[derive(Debug)]
struct Round {
    steps: Vec<RecordType>,
    next_step: usize,
    /// Union (`ALL`): every step is asked. Otherwise the first step with records ends it.
    union: bool,
    found: Vec<Endpoint>,
    ttl: Option<u32>,
    failure: Option<String>,
}

/// What to do after an answer.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Ask `name` for this type.
    Lookup(String, RecordType),
    /// The round ended; `failure` says why it kept the last good endpoints.
    Ended { failure: Option<String> },
}

impl Resolution {
    pub fn new(source: Source) -> Resolution {
        // An address literal needs no lookup: it is its own, final, answer.
        let last_good = match &source {
            Source::Host {
                host, port, weight, ..
            } => host
                .parse::<IpAddr>()
                .ok()
                .map(|ip| vec![endpoint(ip, *port, *weight, host)]),
            Source::Srv { .. } => None,
        };
        Resolution {
            settled: last_good.is_some(),
            last_good,
            source,
            due: Duration::ZERO,
            round: None,
        }
    }

    /// Whether a round should start at `now`.
    pub fn is_due(&self, now: Duration) -> bool {
        self.round.is_none() && now >= self.due && !self.is_literal()
    }

    fn is_literal(&self) -> bool {
        matches!(&self.source, Source::Host { host, .. } if host.parse::<IpAddr>().is_ok())
    }

    /// Starts a round: the first lookup to make.
    pub fn begin(&mut self) -> (String, RecordType) {
        let (name, steps, union) = match &self.source {
            Source::Host { host, family, .. } => {
                let (steps, union) = match family {
                    Family::Auto => (vec![RecordType::AAAA, RecordType::A], false),
                    Family::V4Preferred => (vec![RecordType::A, RecordType::AAAA], false),
                    Family::V4Only => (vec![RecordType::A], false),
                    Family::V6Only => (vec![RecordType::AAAA], false),
                    Family::All => (vec![RecordType::A, RecordType::AAAA], true),
                };
                (host.clone(), steps, union)
            }
            Source::Srv { name } => (name.clone(), vec![RecordType::SRV], false),
        };
        let first = steps[0];
        self.round = Some(Round {
            steps,
            next_step: 1,
            union,
            found: Vec::new(),
            ttl: None,
            failure: None,
        });
        (name, first)
    }

    /// Takes a lookup's answer.
    pub fn answered(&mut self, answer: &Answer, now: Duration, refresh: &Refresh) -> Next {
        let Some(round) = self.round.as_mut() else {
            return Next::Ended { failure: None };
        };
        match answer.status {
            Outcome::Ok => {
                let before = round.found.len();
                round.found.extend(endpoints_of(&self.source, answer));
                if round.found.len() > before {
                    round.ttl = Some(round.ttl.map_or(answer.ttl, |t| t.min(answer.ttl)));
                }
            }
            Outcome::NotFound => {}
            Outcome::Error => {
                round.failure = Some(format!("{}: {}", answer.name, answer.error));
            }
        }
        let more = round.next_step < round.steps.len();
        let go_on = more && (round.union || (round.found.is_empty() && round.failure.is_none()));
        if go_on {
            let step = round.steps[round.next_step];
            round.next_step += 1;
            return Next::Lookup(answer.name.clone(), step);
        }
        self.end(now, refresh)
    }

    /// The lookup could not even start (the host refused it): the round failed.
    pub fn refused(&mut self, reason: String, now: Duration, refresh: &Refresh) -> Next {
        if let Some(round) = self.round.as_mut() {
            round.failure = Some(reason);
        }
        self.end(now, refresh)
    }

    fn end(&mut self, now: Duration, refresh: &Refresh) -> Next {
        let Some(round) = self.round.take() else {
            return Next::Ended { failure: None };
        };
        self.settled = true;
        // A union with a failed half, or a round that found nothing and failed, is not the
        // whole truth: keep what was known.
        let failed = round.failure.is_some() && (round.union || round.found.is_empty());
        if failed {
            self.due = now + refresh.failure;
            return Next::Ended {
                failure: round.failure,
            };
        }
        self.due = now + round.ttl.map_or(refresh.min, |ttl| refresh.after_ttl(ttl));
        self.last_good = Some(round.found);
        Next::Ended { failure: None }
    }
}

fn endpoint(ip: IpAddr, port: u16, weight: u32, name: &str) -> Endpoint {
    Endpoint {
        address: std::net::SocketAddr::new(ip, port).to_string(),
        weight,
        zone: String::new(),
        metadata: serde_json::json!({ "dns_name": name }),
        healthy: true,
    }
}

/// The endpoints an answer gives this source: every address with the configured port, or,
/// for SRV, every address of the targets of the lowest priority present.
fn endpoints_of(source: &Source, answer: &Answer) -> Vec<Endpoint> {
    match source {
        Source::Host {
            host, port, weight, ..
        } => answer
            .records
            .iter()
            .filter_map(|record| match record {
                Record::Address { address } => Some(endpoint(*address, *port, *weight, host)),
                Record::Service { .. } => None,
            })
            .collect(),
        Source::Srv { name } => {
            let usable = |record: &&Record| matches!(record, Record::Service { addresses, .. } if !addresses.is_empty());
            let lowest = answer
                .records
                .iter()
                .filter(usable)
                .filter_map(|record| match record {
                    Record::Service { priority, .. } => Some(*priority),
                    Record::Address { .. } => None,
                })
                .min();
            let mut endpoints = Vec::new();
            for record in answer.records.iter().filter(usable) {
                if let Record::Service {
                    port,
                    priority,
                    weight,
                    addresses,
                    ..
                } = record
                    && Some(*priority) == lowest
                {
                    // SRV weight 0 means "rarely"; the balancers' smallest share is 1.
                    let weight = u32::from(*weight).max(1);
                    endpoints.extend(
                        addresses
                            .iter()
                            .map(|ip| endpoint(*ip, *port, weight, name)),
                    );
                }
            }
            endpoints
        }
    }
}

/// A cluster's set: every source's last good endpoints, an address listed by two sources
/// once (with the first one's weight), in address order (servers rotate records; the set
/// is the same).
pub fn cluster_set<'a>(resolutions: impl Iterator<Item = &'a Resolution>) -> Vec<Endpoint> {
    let mut set: Vec<Endpoint> = Vec::new();
    for endpoint in resolutions.filter_map(|r| r.last_good.as_ref()).flatten() {
        if !set.iter().any(|known| known.address == endpoint.address) {
            set.push(endpoint.clone());
        }
    }
    set.sort_by(|a, b| a.address.cmp(&b.address));
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFRESH: Refresh = Refresh {
        min: Duration::from_secs(1),
        max: Duration::from_secs(60),
        failure: Duration::from_secs(2),
    };

    fn host(family: Family) -> Source {
        Source::Host {
            host: "a.test".into(),
            port: 8080,
            weight: 2,
            family,
        }
    }

    fn answer(status: Outcome, ttl: u32, records: Vec<Record>) -> Answer {
        Answer {
            name: "a.test".into(),
            status,
            error: if status == Outcome::Error {
                "timed out".into()
            } else {
                String::new()
            },
            ttl,
            records,
        }
    }

    fn address(ip: &str) -> Record {
        Record::Address {
            address: ip.parse().expect("ip"),
        }
    }

    fn addresses(resolution: &Resolution) -> Vec<String> {
        resolution
            .last_good
            .iter()
            .flatten()
            .map(|e| e.address.clone())
            .collect()
    }

    #[test]
    fn auto_falls_back_to_a_and_the_ttl_sets_the_next_round() {
        let mut r = Resolution::new(host(Family::Auto));
        assert!(r.is_due(Duration::ZERO));
        assert_eq!(r.begin(), ("a.test".into(), RecordType::AAAA));
        assert!(!r.is_due(Duration::ZERO), "a round is in flight");
        let now = Duration::from_secs(10);
        assert_eq!(
            r.answered(&answer(Outcome::NotFound, 0, vec![]), now, &REFRESH),
            Next::Lookup("a.test".into(), RecordType::A)
        );
        assert_eq!(
            r.answered(
                &answer(Outcome::Ok, 30, vec![address("127.0.0.1")]),
                now,
                &REFRESH
            ),
            Next::Ended { failure: None }
        );
        assert_eq!(addresses(&r), ["127.0.0.1:8080"]);
        assert_eq!(r.due, now + Duration::from_secs(30));
        assert!(!r.is_due(now + Duration::from_secs(29)));
        assert!(r.is_due(now + Duration::from_secs(30)));
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_good_set_and_retries_sooner() {
        let mut r = Resolution::new(host(Family::V4Only));
        r.begin();
        r.answered(
            &answer(Outcome::Ok, 0, vec![address("127.0.0.1")]),
            Duration::ZERO,
            &REFRESH,
        );
        assert_eq!(r.due, REFRESH.min, "a zero TTL waits the minimum");
        r.begin();
        let next = r.answered(&answer(Outcome::Error, 0, vec![]), Duration::ZERO, &REFRESH);
        assert_eq!(
            next,
            Next::Ended {
                failure: Some("a.test: timed out".into())
            }
        );
        assert_eq!(addresses(&r), ["127.0.0.1:8080"]);
        assert_eq!(r.due, REFRESH.failure);
        // A name that is gone is an answer, not a failure: the set empties.
        r.begin();
        r.answered(
            &answer(Outcome::NotFound, 0, vec![]),
            Duration::ZERO,
            &REFRESH,
        );
        assert!(addresses(&r).is_empty());
        assert!(r.last_good.is_some());
    }

    #[test]
    fn all_asks_both_families_and_a_failed_half_keeps_the_last_set() {
        let mut r = Resolution::new(host(Family::All));
        assert_eq!(r.begin().1, RecordType::A);
        assert_eq!(
            r.answered(
                &answer(Outcome::Ok, 5, vec![address("127.0.0.1")]),
                Duration::ZERO,
                &REFRESH
            ),
            Next::Lookup("a.test".into(), RecordType::AAAA)
        );
        r.answered(
            &answer(Outcome::Ok, 3, vec![address("::1")]),
            Duration::ZERO,
            &REFRESH,
        );
        assert_eq!(addresses(&r), ["127.0.0.1:8080", "[::1]:8080"]);
        assert_eq!(r.due, Duration::from_secs(3));
        r.begin();
        r.answered(
            &answer(Outcome::Ok, 5, vec![address("127.0.0.2")]),
            Duration::ZERO,
            &REFRESH,
        );
        let next = r.answered(&answer(Outcome::Error, 0, vec![]), Duration::ZERO, &REFRESH);
        assert!(matches!(next, Next::Ended { failure: Some(_) }));
        assert_eq!(addresses(&r), ["127.0.0.1:8080", "[::1]:8080"]);
    }

    #[test]
    fn srv_uses_the_lowest_priority_with_addresses() {
        let mut r = Resolution::new(Source::Srv {
            name: "_http._tcp.s.test".into(),
        });
        assert_eq!(r.begin().1, RecordType::SRV);
        let service = |priority, weight, port, ips: &[&str]| Record::Service {
            target: "t.test.".into(),
            port,
            priority,
            weight,
            addresses: ips.iter().map(|ip| ip.parse().expect("ip")).collect(),
        };
        r.answered(
            &answer(
                Outcome::Ok,
                5,
                vec![
                    service(0, 1, 9000, &[]),
                    service(1, 0, 8001, &["127.0.0.1"]),
                    service(1, 3, 8002, &["127.0.0.1"]),
                    service(2, 1, 8003, &["127.0.0.1"]),
                ],
            ),
            Duration::ZERO,
            &REFRESH,
        );
        let set = r.last_good.clone().expect("set");
        assert_eq!(
            set.iter()
                .map(|e| (e.address.as_str(), e.weight))
                .collect::<Vec<_>>(),
            [("127.0.0.1:8001", 1), ("127.0.0.1:8002", 3)]
        );
    }

    #[test]
    fn literals_need_no_lookup_and_sets_merge_without_duplicates() {
        let literal = Resolution::new(Source::Host {
            host: "127.0.0.1".into(),
            port: 80,
            weight: 1,
            family: Family::Auto,
        });
        assert!(literal.settled && !literal.is_due(Duration::ZERO));
        let mut named = Resolution::new(Source::Host {
            host: "a.test".into(),
            port: 80,
            weight: 5,
            family: Family::V4Only,
        });
        named.begin();
        named.answered(
            &answer(
                Outcome::Ok,
                5,
                vec![address("127.0.0.1"), address("127.0.0.2")],
            ),
            Duration::ZERO,
            &REFRESH,
        );
        let set = cluster_set([&literal, &named].into_iter());
        assert_eq!(
            set.iter()
                .map(|e| (e.address.as_str(), e.weight))
                .collect::<Vec<_>>(),
            [("127.0.0.1:80", 1), ("127.0.0.2:80", 5)]
        );
    }
}
