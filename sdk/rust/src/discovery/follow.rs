//! An adapter that follows its registry with HTTP calls that each wait at the registry for a
//! change (Consul's blocking queries, Kubernetes' watches). The schedule is the same whatever
//! the registry: a tick looks for clusters whose call is due, one call per cluster is in
//! flight, an answer makes the next call due at once (the registry itself does the waiting),
//! a failure makes it due after `retry_interval` and keeps the last set, and a set is
//! published only when it changed. [`Follower`] is that schedule, once; a [`Protocol`] is what
//! one registry adds: the request, reading the answer, and the set it gives.

use std::collections::HashMap;
use std::time::Duration;

use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::LogLevel;

use super::{Clock, Endpoint, FollowSettings, Publisher, log};

/// How often due calls are looked for; also the least time between two calls for a cluster,
/// should the registry answer a waiting call at once again and again.
const TICK: Duration = Duration::from_millis(100);

/// What one registry's adapter adds to a [`Follower`]: it builds requests and reads answers,
/// and leaves the schedule and every other hostcall to the follower (only
/// [`Protocol::credentials`] may read a file), so its state machine can be unit-tested natively.
pub trait Protocol: Sized + 'static {
    /// One cluster's state: what it follows and what the registry has said so far.
    type Cluster;

    /// The adapter's name in its log lines: `<ADAPTER> discovery: …`.
    const ADAPTER: &'static str;
    /// What the settings' `cluster` reaches, as messages name it (`cannot reach <UPSTREAM>
    /// through cluster …`).
    const UPSTREAM: &'static str;
    /// The answer headers [`Protocol::answered`] reads besides `:status`; the follower reads
    /// them while the answer is at hand. Default none.
    const HEADERS: &'static [&'static str] = &[];

    /// Parses the plugin configuration at `on_configure`. An error refuses the plugin; it is
    /// logged as `<ADAPTER> discovery: <error>`.
    fn configure(bytes: &[u8]) -> Result<Configured<Self>, String>;

    /// The credentials header of the next call, if any; called for every call, so a rotated
    /// credential is picked up. An error fails that call (logged, retried after
    /// `retry_interval`).
    fn credentials(&self) -> Result<Option<(&'static str, String)>, String>;

    /// The next call's `:path` for `cluster`; `window` is how long it may wait at the registry.
    fn path(cluster: &Self::Cluster, window: Duration) -> String;

    /// How long the host waits for an answer to a call that may wait `window` at the registry.
    fn timeout(window: Duration) -> Duration;

    /// Takes the registry's answer. An error is a failed call: it should leave the set as it
    /// was, since the last set is kept.
    fn answered(cluster: &mut Self::Cluster, answer: &Answer) -> Result<(), String>;

    /// The set to publish after a good answer; `None` while the cluster has none yet.
    fn published(cluster: &Self::Cluster) -> Option<Published>;

    /// The warning logged after `<ADAPTER> discovery: cluster <name>: ` for a failed call,
    /// given the reason; each adapter keeps the wording its operators already grep for.
    fn failure(reason: &str) -> String;
}

/// What [`Protocol::configure`] gives the follower.
pub struct Configured<P: Protocol> {
    /// Where the registry is and how calls are paced.
    pub settings: FollowSettings,
    /// The adapter-wide part of the protocol (credentials, say).
    pub protocol: P,
    /// Each cluster's name and state, in the order calls are started on a tick.
    pub clusters: Vec<(String, P::Cluster)>,
}

/// The registry's answer to one call.
#[derive(Debug, Default)]
pub struct Answer {
    /// `:status`; 0 when it is missing or not a number.
    pub status: u16,
    /// The [`Protocol::HEADERS`], as they came (`None` for one that did not).
    pub headers: Vec<(&'static str, Option<String>)>,
    /// The whole body: proxy-wasm hands a module the whole response, never a stream.
    pub body: Vec<u8>,
}

// === impl Answer ===

impl Answer {
    /// One of the [`Protocol::HEADERS`]; `None` when it did not come or was not asked for.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(name))
            .and_then(|(_, value)| value.as_deref())
    }
}

/// A cluster's set as [`Publisher::publish_if_changed`] takes it.
#[derive(Debug, Default)]
pub struct Published {
    /// The whole set.
    pub endpoints: Vec<Endpoint>,
    /// Appended to the log line of a published set, such as ` (service web)`.
    pub detail: String,
    /// Logged once each when the set is published (not when it is unchanged): parts of the
    /// registry's answer the set leaves out.
    pub warnings: Vec<String>,
}

/// The root context of a following adapter: `proxy_wasm::set_root_context(|_|
/// Box::<Follower<MyRegistry>>::default())`.
pub struct Follower<P: Protocol> {
    settings: FollowSettings,
    /// `None` until configured.
    protocol: Option<P>,
    clusters: Vec<Followed<P::Cluster>>,
    /// Calls in flight: token → index in `clusters`.
    calls: HashMap<u32, usize>,
    clock: Clock,
}

/// One cluster under a [`Follower`].
struct Followed<C> {
    name: String,
    phase: Phase,
    publisher: Publisher,
    state: C,
}

/// Where a cluster is in its schedule: at most one call in flight, so a slow registry is never
/// asked twice about the same cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next call is due at `until` (on the clock of [`Clock`]).
    Waiting { until: Duration },
    /// A call is in flight.
    Calling { token: u32 },
}

// === impl Phase ===

impl Phase {
    /// Due at once: the first call goes out on the first tick.
    const START: Phase = Phase::Waiting {
        until: Duration::ZERO,
    };

    fn is_due(self, now: Duration) -> bool {
        matches!(self, Phase::Waiting { until } if now >= until)
    }
}

// === impl Follower ===

impl<P: Protocol> Default for Follower<P> {
    fn default() -> Self {
        Follower {
            settings: FollowSettings::default(),
            protocol: None,
            clusters: Vec::new(),
            calls: HashMap::new(),
            clock: Clock::default(),
        }
    }
}

impl<P: Protocol> Context for Follower<P> {
    fn on_http_call_response(&mut self, token: u32, headers: usize, size: usize, _trailers: usize) {
        let Some(index) = self.calls.remove(&token) else {
            return;
        };
        // A failed call has no headers to read: a host answers BAD_ARGUMENT to reading them
        // (Envoy does), which the SDK panics on.
        let answer = if headers == 0 {
            Answer {
                status: 0,
                headers: P::HEADERS.iter().map(|name| (*name, None)).collect(),
                body: Vec::new(),
            }
        } else {
            Answer {
                status: self
                    .get_http_call_response_header(":status")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                headers: P::HEADERS
                    .iter()
                    .map(|name| (*name, self.get_http_call_response_header(name)))
                    .collect(),
                body: self
                    .get_http_call_response_body(0, size)
                    .unwrap_or_default(),
            }
        };
        let now = self.clock.now();
        let Some(followed) = self.clusters.get_mut(index) else {
            return;
        };
        match P::answered(&mut followed.state, &answer) {
            Ok(()) => {
                // The next call goes out on the next tick: the registry does the waiting.
                followed.phase = Phase::Waiting { until: now };
                self.publish_if_changed(index);
            }
            Err(reason) => self.failed(index, &reason, now),
        }
    }
}

impl<P: Protocol> RootContext for Follower<P> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let configured = match P::configure(&bytes) {
            Ok(configured) => configured,
            Err(error) => {
                log(
                    LogLevel::Error,
                    &format!("{} discovery: {error}", P::ADAPTER),
                );
                return false;
            }
        };
        self.settings = configured.settings;
        self.protocol = Some(configured.protocol);
        self.clusters = configured
            .clusters
            .into_iter()
            .map(|(name, state)| Followed {
                name,
                phase: Phase::START,
                publisher: Publisher::default(),
                state,
            })
            .collect();
        // Calls start on the first tick, never in the canary RustNg configures a new
        // generation on.
        self.set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        let now = self.clock.now();
        for index in 0..self.clusters.len() {
            if self.clusters[index].phase.is_due(now) {
                self.call(index, now);
            }
        }
    }
}

impl<P: Protocol> Follower<P> {
    /// Sends the cluster's next call; a call that cannot start is a failure like any other.
    fn call(&mut self, index: usize, now: Duration) {
        let (Some(protocol), Some(followed)) = (&self.protocol, self.clusters.get(index)) else {
            return;
        };
        let credentials = match protocol.credentials() {
            Ok(credentials) => credentials,
            Err(reason) => {
                self.failed(index, &reason, now);
                return;
            }
        };
        let window = self.settings.window;
        let path = P::path(&followed.state, window);
        let upstream = self.settings.cluster.as_str();
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", upstream),
            ("accept", "application/json"),
        ];
        if let Some((name, value)) = &credentials {
            headers.push((name, value.as_str()));
        }
        match self.dispatch_http_call(upstream, headers, None, vec![], P::timeout(window)) {
            Ok(token) => {
                self.calls.insert(token, index);
                self.clusters[index].phase = Phase::Calling { token };
            }
            Err(status) => {
                let reason = format!(
                    "cannot reach {} through cluster {}: {status:?}",
                    P::UPSTREAM,
                    self.settings.cluster
                );
                self.failed(index, &reason, now);
            }
        }
    }

    /// Keeps the last set and makes the next call due after `retry_interval`.
    fn failed(&mut self, index: usize, reason: &str, now: Duration) {
        let Some(followed) = self.clusters.get_mut(index) else {
            return;
        };
        followed.phase = Phase::Waiting {
            until: now + self.settings.retry_interval,
        };
        let message = format!(
            "{} discovery: cluster {}: {}",
            P::ADAPTER,
            followed.name,
            P::failure(reason)
        );
        log(LogLevel::Warn, &message);
    }

    fn publish_if_changed(&mut self, index: usize) {
        let Some(followed) = self.clusters.get_mut(index) else {
            return;
        };
        let Some(published) = P::published(&followed.state) else {
            return;
        };
        if followed.publisher.publish_if_changed(
            P::ADAPTER,
            &followed.name,
            published.endpoints,
            &published.detail,
        ) {
            for warning in published.warnings {
                let message = format!(
                    "{} discovery: cluster {}: {warning}",
                    P::ADAPTER,
                    followed.name
                );
                log(LogLevel::Warn, &message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_at_a_time_and_due_again_when_it_ends() {
        let second = Duration::from_secs(1);
        assert!(Phase::START.is_due(Duration::ZERO), "the first tick calls");
        assert!(
            !Phase::Calling { token: 1 }.is_due(second),
            "one call in flight"
        );
        let retry = Phase::Waiting { until: second };
        assert!(!retry.is_due(second / 2));
        assert!(retry.is_due(second));
    }

    #[test]
    fn answers_give_the_headers_asked_for() {
        let answer = Answer {
            status: 200,
            headers: vec![("x-consul-index", Some("42".into())), ("etag", None)],
            body: Vec::new(),
        };
        assert_eq!(answer.header("X-Consul-Index"), Some("42"));
        assert_eq!(answer.header("etag"), None);
        assert_eq!(answer.header("date"), None);
    }
}
