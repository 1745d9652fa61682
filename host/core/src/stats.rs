//! Request counts by status class and latency histograms, per listener (downstream) and per
//! cluster (upstream), for `/metrics`.
//!
//! Each worker writes only its own shard, padded to its own cache lines, with relaxed atomic
//! adds: no lock, no allocation and no cache line bouncing between cores per request. A scrape
//! (the admin thread) sums the shards; a reading may mix two requests' halves, which a
//! monotonic counter tolerates.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds (Prometheus' `le`).
pub(crate) const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One worker's counters.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// By status class: 1xx (index 0) … 5xx (index 4).
    classes: [AtomicU64; 5],
    /// Failures that produced no status (upstream side: connect failure, reset, timeout).
    failures: AtomicU64,
    /// Counts per bucket (not cumulative; the last slot is past every bound).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// Requests of one listener or cluster, sharded by worker.
pub(crate) struct RequestStats {
    shards: Box<[Shard]>,
}

impl RequestStats {
    pub(crate) fn new(workers: usize) -> Arc<RequestStats> {
        Arc::new(RequestStats {
            shards: (0..workers.max(1)).map(|_| Shard::default()).collect(),
        })
    }

    fn shard(&self, worker: usize) -> &Shard {
        &self.shards[worker % self.shards.len()]
    }

    /// A request answered with `status` after `elapsed`.
    pub(crate) fn record(&self, worker: usize, status: u16, elapsed: Duration) {
        let shard = self.shard(worker);
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        shard.classes[class].fetch_add(1, Ordering::Relaxed);
        self.observe(shard, elapsed);
    }

    /// A request answered with `status`, counted without its time.
    pub(crate) fn count(&self, worker: usize, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.shard(worker).classes[class].fetch_add(1, Ordering::Relaxed);
    }

    /// A request that got no status, counted without its time.
    pub(crate) fn count_failure(&self, worker: usize) {
        self.shard(worker).failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A request that got no status (its time still counts in the histogram).
    pub(crate) fn record_failure(&self, worker: usize, elapsed: Duration) {
        let shard = self.shard(worker);
        shard.failures.fetch_add(1, Ordering::Relaxed);
        self.observe(shard, elapsed);
    }

    fn observe(&self, shard: &Shard, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        shard.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn sum(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Requests by status class (1xx … 5xx) and failures, summed over the workers.
    pub(crate) fn totals(&self) -> ([u64; 5], u64) {
        let classes = std::array::from_fn(|i| self.sum(|s| &s.classes[i]));
        (classes, self.sum(|s| &s.failures))
    }

    /// Only the counts of [`Self::render`] (no histogram).
    pub(crate) fn render_counts(
        &self,
        out: &mut String,
        prefix: &str,
        labels: &str,
        failures: &str,
    ) {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let count = self.sum(|s| &s.classes[i]);
            let _ = writeln!(
                out,
                "{prefix}_requests_total{{{labels},code_class=\"{class}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "{prefix}_{failures}_total{{{labels}}} {}",
            self.sum(|s| &s.failures)
        );
    }

    /// `<prefix>_requests_total{<labels>,code_class}` and, when `failures` names it,
    /// `<prefix>_<failures>_total`, then the `<prefix>_request_duration_seconds` histogram.
    /// `labels` is the `key="value"` list without braces. The HELP/TYPE lines are written by
    /// [`write_headers`], once per metric family.
    pub(crate) fn render(
        &self,
        out: &mut String,
        prefix: &str,
        labels: &str,
        failures: Option<&str>,
    ) {
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let count = self.sum(|s| &s.classes[i]);
            let _ = writeln!(
                out,
                "{prefix}_requests_total{{{labels},code_class=\"{class}\"}} {count}"
            );
        }
        if let Some(failures) = failures {
            let _ = writeln!(
                out,
                "{prefix}_{failures}_total{{{labels}}} {}",
                self.sum(|s| &s.failures)
            );
        }
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.sum(|s| &s.buckets[i]);
            let _ = writeln!(
                out,
                "{prefix}_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.sum(|s| &s.buckets[LATENCY_BUCKETS.len()]);
        let sum = self.sum(|s| &s.sum_micros) as f64 / 1e6;
        let _ = writeln!(
            out,
            "{prefix}_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}\n\
             {prefix}_request_duration_seconds_sum{{{labels}}} {sum}\n\
             {prefix}_request_duration_seconds_count{{{labels}}} {cumulative}"
        );
    }
}

/// The HELP and TYPE lines of the families [`RequestStats::render`] writes under `prefix`.
pub(crate) fn write_headers(
    out: &mut String,
    prefix: &str,
    what: &str,
    until: &str,
    failures: Option<(&str, &str)>,
) {
    let _ = writeln!(
        out,
        "# HELP {prefix}_requests_total {what} requests answered, by status class.\n\
         # TYPE {prefix}_requests_total counter"
    );
    if let Some((name, help)) = failures {
        let _ = writeln!(
            out,
            "# HELP {prefix}_{name}_total {help}\n# TYPE {prefix}_{name}_total counter"
        );
    }
    let _ = writeln!(
        out,
        "# HELP {prefix}_request_duration_seconds {what} request time, {until}.\n\
         # TYPE {prefix}_request_duration_seconds histogram"
    );
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub(crate) fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_and_buckets_are_cumulative() {
        let stats = RequestStats::new(2);
        stats.record(0, 200, Duration::from_micros(300));
        stats.record(1, 204, Duration::from_millis(30));
        stats.record(1, 503, Duration::from_secs(20));
        stats.record_failure(0, Duration::from_millis(2));
        let mut out = String::new();
        stats.render(&mut out, "x", "listener=\"m\"", Some("failures"));
        assert!(
            out.contains("x_requests_total{listener=\"m\",code_class=\"2xx\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_requests_total{listener=\"m\",code_class=\"5xx\"} 1\n"));
        assert!(out.contains("x_failures_total{listener=\"m\"} 1\n"));
        assert!(
            out.contains("x_request_duration_seconds_bucket{listener=\"m\",le=\"0.0005\"} 1\n")
        );
        assert!(
            out.contains("x_request_duration_seconds_bucket{listener=\"m\",le=\"0.0025\"} 2\n")
        );
        assert!(out.contains("x_request_duration_seconds_bucket{listener=\"m\",le=\"10\"} 3\n"));
        assert!(out.contains("x_request_duration_seconds_bucket{listener=\"m\",le=\"+Inf\"} 4\n"));
        assert!(out.contains("x_request_duration_seconds_count{listener=\"m\"} 4\n"));
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
