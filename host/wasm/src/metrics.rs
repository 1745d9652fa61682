//! Metrics that plugins define with `proxy_define_metric`: counters, gauges and histograms,
//! process-wide (every worker's instance of a plugin adds to the same series, as in Envoy) and
//! rendered in Prometheus' text format.
//!
//! Defining takes a lock (once per name and instance); recording is a relaxed atomic add on a
//! handle the instance keeps, so a filter that counts every request costs no lock.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "taken when a metric is defined or rendered, never when one is recorded"
)]
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rustng_abi::{MetricType, Status};

/// Upper bounds of histogram buckets: Envoy's defaults, so dashboards carry over.
const BUCKETS: [u64; 19] = [
    1, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000,
    1_800_000, 3_600_000, 7_200_000,
];

/// Every metric plugins defined in this process.
#[derive(Default)]
pub struct MetricRegistry {
    #[allow(clippy::disallowed_types, reason = "see the module comment")]
    inner: Mutex<Defined>,
}

#[derive(Default)]
struct Defined {
    /// By id. Every definition gets a new id (as in Envoy), pointing at the series of its
    /// name and kind.
    ids: Vec<Arc<Metric>>,
    series: HashMap<(String, MetricType), Arc<Metric>>,
}

/// One series.
pub(crate) struct Metric {
    name: String,
    kind: MetricType,
    /// Counter or gauge value; for histograms the sum of recorded values.
    value: AtomicI64,
    /// Histograms: one count per bucket, then the count above the last bucket.
    buckets: Vec<AtomicU64>,
}

impl MetricRegistry {
    /// A new id for the series `name` of `kind`, created on first use: every worker's
    /// instance of a plugin adds to the same series.
    pub(crate) fn define(&self, kind: MetricType, name: &str) -> Result<u32, Status> {
        let mut defined = self.inner.lock().map_err(|_| Status::InternalFailure)?;
        let id = u32::try_from(defined.ids.len()).map_err(|_| Status::InternalFailure)?;
        let series = defined
            .series
            .entry((name.to_owned(), kind))
            .or_insert_with(|| {
                let buckets = match kind {
                    MetricType::Histogram => {
                        (0..=BUCKETS.len()).map(|_| AtomicU64::new(0)).collect()
                    }
                    _ => Vec::new(),
                };
                Arc::new(Metric {
                    name: name.to_owned(),
                    kind,
                    value: AtomicI64::new(0),
                    buckets,
                })
            })
            .clone();
        defined.ids.push(series);
        Ok(id)
    }

    /// The metric with `id`, for an instance to keep.
    pub(crate) fn handle(&self, id: u32) -> Result<Arc<Metric>, Status> {
        let defined = self.inner.lock().map_err(|_| Status::InternalFailure)?;
        defined
            .ids
            .get(id as usize)
            .cloned()
            .ok_or(Status::NotFound)
    }

    /// Every metric in Prometheus' text exposition format, names prefixed with
    /// `rustng_wasmcustom_` (Envoy exports them as `envoy_wasmcustom_…`).
    pub fn render_prometheus(&self) -> String {
        let mut metrics: Vec<Arc<Metric>> = match self.inner.lock() {
            Ok(defined) => defined.series.values().cloned().collect(),
            Err(_) => return String::new(),
        };
        metrics.sort_by(|a, b| a.name.cmp(&b.name).then(a.kind.cmp(&b.kind)));
        let mut out = String::new();
        for metric in metrics {
            let name = format!("rustng_wasmcustom_{}", prometheus_name(&metric.name));
            let value = metric.value.load(Ordering::Relaxed);
            let _ = match metric.kind {
                MetricType::Counter => writeln!(out, "# TYPE {name} counter\n{name} {value}"),
                MetricType::Gauge => writeln!(out, "# TYPE {name} gauge\n{name} {value}"),
                MetricType::Histogram => metric.render_histogram(&name, &mut out),
            };
        }
        out
    }
}

impl Metric {
    /// `proxy_increment_metric`: counters go up only; histograms take records, not increments.
    pub(crate) fn increment(&self, offset: i64) -> Result<(), Status> {
        match self.kind {
            MetricType::Counter if offset < 0 => Err(Status::BadArgument),
            MetricType::Counter | MetricType::Gauge => {
                self.value.fetch_add(offset, Ordering::Relaxed);
                Ok(())
            }
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    /// `proxy_record_metric`: a counter adds, a gauge is set, a histogram records a sample.
    pub(crate) fn record(&self, value: u64) -> Result<(), Status> {
        let signed = i64::try_from(value).map_err(|_| Status::BadArgument)?;
        match self.kind {
            MetricType::Counter => {
                self.value.fetch_add(signed, Ordering::Relaxed);
            }
            MetricType::Gauge => self.value.store(signed, Ordering::Relaxed),
            MetricType::Histogram => {
                let bucket = BUCKETS
                    .iter()
                    .position(|bound| value <= *bound)
                    .unwrap_or(BUCKETS.len());
                if let Some(count) = self.buckets.get(bucket) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                self.value.fetch_add(signed, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// `proxy_get_metric`: counters and gauges have a value; a histogram has none.
    pub(crate) fn get(&self) -> Result<u64, Status> {
        match self.kind {
            MetricType::Counter | MetricType::Gauge => {
                Ok(self.value.load(Ordering::Relaxed) as u64)
            }
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    fn render_histogram(&self, name: &str, out: &mut String) -> std::fmt::Result {
        writeln!(out, "# TYPE {name} histogram")?;
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}")?;
        }
        if let Some(over) = self.buckets.last() {
            cumulative += over.load(Ordering::Relaxed);
        }
        writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}")?;
        writeln!(out, "{name}_sum {}", self.value.load(Ordering::Relaxed))?;
        writeln!(out, "{name}_count {cumulative}")
    }
}

/// Prometheus allows `[a-zA-Z0-9_:]`; Envoy-style dotted names become underscored.
fn prometheus_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_shared_by_name_and_kind() {
        let registry = MetricRegistry::default();
        let a = registry
            .define(MetricType::Counter, "requests.total")
            .expect("define");
        let again = registry
            .define(MetricType::Counter, "requests.total")
            .expect("define");
        assert_ne!(a, again, "a new id per definition, as in Envoy");
        registry
            .handle(again)
            .expect("handle")
            .increment(0)
            .expect("same series");
        let g = registry
            .define(MetricType::Gauge, "requests.total")
            .expect("define");
        assert_ne!(a, g);
        let counter = registry.handle(a).expect("handle");
        counter.increment(2).expect("inc");
        counter.record(3).expect("record adds");
        assert_eq!(counter.increment(-1), Err(Status::BadArgument));
        assert_eq!(counter.get(), Ok(5));
        let gauge = registry.handle(g).expect("handle");
        gauge.record(10).expect("set");
        gauge.increment(-4).expect("down");
        assert_eq!(gauge.get(), Ok(6));
        assert_eq!(registry.handle(99).err(), Some(Status::NotFound));
    }

    #[test]
    fn renders_prometheus_text() {
        let registry = MetricRegistry::default();
        let c = registry
            .define(MetricType::Counter, "hits")
            .expect("define");
        let h = registry
            .define(MetricType::Histogram, "size")
            .expect("define");
        registry.handle(c).expect("h").increment(3).expect("inc");
        let histogram = registry.handle(h).expect("h");
        histogram.record(7).expect("record");
        histogram.record(10_000_000).expect("record");
        assert_eq!(histogram.get(), Err(Status::BadArgument));
        let text = registry.render_prometheus();
        assert!(text.contains("# TYPE rustng_wasmcustom_hits counter\nrustng_wasmcustom_hits 3\n"));
        assert!(text.contains("rustng_wasmcustom_size_bucket{le=\"5\"} 0\n"));
        assert!(text.contains("rustng_wasmcustom_size_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("rustng_wasmcustom_size_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("rustng_wasmcustom_size_count 2\n"));
        assert!(text.contains("rustng_wasmcustom_size_sum 10000007\n"));
    }
}
