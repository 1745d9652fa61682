//! What a running server shows operators: the numbers behind `/metrics`.
//!
//! A cheap handle (two `Arc`s) the admin server keeps; it reads counters that the workers
//! update with relaxed atomics, so a scrape never waits on, or slows, traffic.

use std::fmt::Write;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustng_wasm::PluginHost;

use crate::filters::LoadedPlugin;
use crate::snapshot::Snapshot;
use crate::stats;

/// The server's metrics, readable from any thread.
#[derive(Clone)]
pub struct Telemetry {
    current: Arc<ArcSwap<Snapshot>>,
    host: Arc<PluginHost>,
}

impl Telemetry {
    pub(crate) fn new(current: Arc<ArcSwap<Snapshot>>, host: Arc<PluginHost>) -> Self {
        Telemetry { current, host }
    }

    /// Every metric in Prometheus' text exposition format (version 0.0.4): RustNg's own,
    /// then those plugins defined with `proxy_define_metric` (`rustng_wasmcustom_*`).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let snapshot = self.current.load();
        let _ = writeln!(
            out,
            "# HELP rustng_config_version The config version running.\n\
             # TYPE rustng_config_version gauge\n\
             rustng_config_version {}",
            snapshot.version
        );
        let mut plugins: Vec<&Arc<LoadedPlugin>> = snapshot.plugins.values().collect();
        plugins.sort_by(|a, b| a.name().cmp(b.name()));
        if !plugins.is_empty() {
            let per_plugin = |value: &dyn Fn(&LoadedPlugin) -> String| {
                plugins
                    .iter()
                    .map(|p| (p.name().to_owned(), value(p)))
                    .collect::<Vec<_>>()
            };
            family(
                &mut out,
                "rustng_wasm_plugin_generation",
                "gauge",
                "The generation (module and configuration) each plugin runs.",
                "plugin",
                per_plugin(&|p| p.generation().to_string()),
            );
            family(
                &mut out,
                "rustng_wasm_plugin_failures_total",
                "counter",
                "Plugin callbacks that trapped, ran past their deadline or ran out of memory (the \
                 failure policy then decided).",
                "plugin",
                per_plugin(&|p| p.failures().to_string()),
            );
            let usage: Vec<_> = plugins.iter().map(|p| (p.name(), p.usage())).collect();
            let per_usage = |value: &dyn Fn(&rustng_wasm::UsageTotals) -> String| {
                usage
                    .iter()
                    .map(|(name, totals)| ((*name).to_owned(), value(totals)))
                    .collect::<Vec<_>>()
            };
            family(
                &mut out,
                "rustng_wasm_plugin_calls_total",
                "counter",
                "Plugin callbacks run, on every worker and in every generation.",
                "plugin",
                per_usage(&|t| t.calls.to_string()),
            );
            family(
                &mut out,
                "rustng_wasm_plugin_call_seconds_total",
                "counter",
                &format!(
                    "Time spent in plugin callbacks, estimated from one callback in {}.",
                    rustng_wasm::SAMPLE_EVERY
                ),
                "plugin",
                per_usage(&|t| t.time.as_secs_f64().to_string()),
            );
            family(
                &mut out,
                "rustng_wasm_plugin_memory_bytes",
                "gauge",
                "Linear memory of the plugin's live instances (as of their last sampled callback).",
                "plugin",
                per_usage(&|t| t.memory_bytes.to_string()),
            );
        }
        self.render_listeners(&mut out, &snapshot);
        self.render_grpc(&mut out, &snapshot);
        if snapshot.listeners.iter().any(|l| l.config.http3.is_some()) {
            render_http3(&mut out);
        }
        if let Some(tracer) = &snapshot.tracer {
            render_tracing(&mut out, tracer.queue_counts());
        }
        self.render_clusters(&mut out, &snapshot);
        out.push_str(&self.host.metrics().render_prometheus());
        out
    }

    /// Connections and requests per listener.
    fn render_listeners(&self, out: &mut String, snapshot: &Snapshot) {
        if snapshot.listeners.is_empty() {
            return;
        }
        let connections = |pick: &dyn Fn((usize, u64, u64)) -> u64| {
            snapshot
                .listeners
                .iter()
                .map(|spec| (spec.config.name.clone(), pick(spec.limit.counts())))
                .collect::<Vec<_>>()
        };
        family(
            out,
            "rustng_downstream_connections_active",
            "gauge",
            "Open downstream connections.",
            "listener",
            connections(&|(open, _, _)| open as u64),
        );
        family(
            out,
            "rustng_downstream_connections_total",
            "counter",
            "Downstream connections accepted.",
            "listener",
            connections(&|(_, accepted, _)| accepted),
        );
        family(
            out,
            "rustng_downstream_connections_refused_total",
            "counter",
            "Downstream connections closed at once for the listener's max_connections.",
            "listener",
            connections(&|(_, _, refused)| refused),
        );
        stats::write_headers(
            out,
            "rustng_downstream",
            "Downstream",
            "to the end of the response",
            Some((
                "requests_unanswered",
                "Requests that ended without a response status (the client went away first).",
            )),
        );
        for spec in &snapshot.listeners {
            let labels = format!("listener=\"{}\"", label(&spec.config.name));
            spec.stats.render(
                out,
                "rustng_downstream",
                &labels,
                Some("requests_unanswered"),
            );
        }
    }

    /// gRPC calls per listener and method.
    fn render_grpc(&self, out: &mut String, snapshot: &Snapshot) {
        if snapshot.listeners.is_empty() {
            return;
        }
        crate::grpc_stats::write_header(out);
        for spec in &snapshot.listeners {
            spec.grpc.render(out, &spec.config.name);
        }
    }

    /// Requests per cluster.
    fn render_clusters(&self, out: &mut String, snapshot: &Snapshot) {
        if snapshot.cluster_state.is_empty() {
            return;
        }
        stats::write_headers(
            out,
            "rustng_upstream",
            "Upstream",
            "to the response head",
            Some((
                "request_failures",
                "Upstream requests that got no response head (connect failure, reset, timeout).",
            )),
        );
        let mut names: Vec<&String> = snapshot.cluster_state.keys().collect();
        names.sort();
        for name in names {
            let labels = format!("cluster=\"{}\"", label(name));
            snapshot.cluster_state[name].stats.render(
                out,
                "rustng_upstream",
                &labels,
                Some("request_failures"),
            );
        }
        let _ = writeln!(
            out,
            "# HELP rustng_upstream_endpoint_requests_total Upstream requests answered, by endpoint \
             and status class.\n\
             # TYPE rustng_upstream_endpoint_requests_total counter\n\
             # HELP rustng_upstream_endpoint_request_failures_total Upstream requests to the \
             endpoint that got no response head.\n\
             # TYPE rustng_upstream_endpoint_request_failures_total counter"
        );
        for cluster in &snapshot.config.clusters {
            let Some(shared) = snapshot.cluster_state.get(&cluster.name) else {
                continue;
            };
            for endpoint in &cluster.endpoints {
                if let Some(stats) = shared.endpoints.get(&endpoint.address) {
                    let labels = format!(
                        "cluster=\"{}\",endpoint=\"{}\"",
                        label(&cluster.name),
                        endpoint.address
                    );
                    stats.render_counts(
                        out,
                        "rustng_upstream_endpoint",
                        &labels,
                        "request_failures",
                    );
                }
            }
        }
        self.render_health(out, snapshot);
    }

    /// Endpoint health and circuit breakers.
    fn render_health(&self, out: &mut String, snapshot: &crate::snapshot::Snapshot) {
        let _ = writeln!(
            out,
            "# HELP rustng_upstream_endpoint_healthy 1 while the endpoint is in rotation; 0 when              its active health check fails or outlier detection ejected it (see `reason`).
             # TYPE rustng_upstream_endpoint_healthy gauge"
        );
        for cluster in &snapshot.config.clusters {
            let Some(shared) = snapshot.cluster_state.get(&cluster.name) else {
                continue;
            };
            for endpoint in &cluster.endpoints {
                if let Some(health) = shared.health.get(&endpoint.address) {
                    let status = health.status();
                    let _ = writeln!(
                        out,
                        "rustng_upstream_endpoint_healthy{{cluster=\"{}\",endpoint=\"{}\",reason=\"{}\"}} {}",
                        label(&cluster.name),
                        endpoint.address,
                        status.as_str(),
                        u8::from(status == crate::upstream::HealthStatus::Healthy)
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP rustng_upstream_endpoint_connections_active Upstream connections open to the \
             endpoint (all workers).\n\
             # TYPE rustng_upstream_endpoint_connections_active gauge\n\
             # HELP rustng_upstream_endpoint_connections_total Upstream connections opened to the \
             endpoint.\n\
             # TYPE rustng_upstream_endpoint_connections_total counter"
        );
        for cluster in &snapshot.config.clusters {
            let Some(shared) = snapshot.cluster_state.get(&cluster.name) else {
                continue;
            };
            for endpoint in &cluster.endpoints {
                if let Some(health) = shared.health.get(&endpoint.address) {
                    let (open, opened) = health.connections();
                    let labels = format!(
                        "cluster=\"{}\",endpoint=\"{}\"",
                        label(&cluster.name),
                        endpoint.address
                    );
                    let _ = writeln!(
                        out,
                        "rustng_upstream_endpoint_connections_active{{{labels}}} {open}\n\
                         rustng_upstream_endpoint_connections_total{{{labels}}} {opened}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP rustng_upstream_circuit_breaker_in_use What the cluster has in flight, by              circuit breaker resource.
             # TYPE rustng_upstream_circuit_breaker_in_use gauge
             # HELP rustng_upstream_circuit_breaker_overflows_total Requests, connections and              retries refused because a circuit breaker was open.
             # TYPE rustng_upstream_circuit_breaker_overflows_total counter"
        );
        let mut names: Vec<&String> = snapshot.cluster_state.keys().collect();
        names.sort();
        for name in names {
            let breaker = &snapshot.cluster_state[name].breaker;
            for resource in crate::upstream::Resource::ALL {
                let (in_use, overflows) = breaker.counts(resource);
                let labels = format!(
                    "cluster=\"{}\",resource=\"{}\"",
                    label(name),
                    resource.as_str()
                );
                let _ = writeln!(
                    out,
                    "rustng_upstream_circuit_breaker_in_use{{{labels}}} {in_use}\n\
                     rustng_upstream_circuit_breaker_overflows_total{{{labels}}} {overflows}"
                );
            }
        }
    }
}

/// One metric family: its HELP and TYPE lines, then a sample per `(label value, value)`.
/// QUIC datagrams the processes of a binary upgrade passed each other.
fn render_http3(out: &mut String) {
    use std::sync::atomic::Ordering;
    family(
        out,
        "rustng_http3_upgrade_datagrams_total",
        "counter",
        "QUIC datagrams passed to the other process of a binary upgrade (out: they belong to its \
         connections; in: it passed this process's) since this process started.",
        "direction",
        vec![
            (
                "out".to_owned(),
                crate::h3::PASSED_OUT.load(Ordering::Relaxed),
            ),
            (
                "in".to_owned(),
                crate::h3::PASSED_IN.load(Ordering::Relaxed),
            ),
        ],
    );
}

/// What became of the spans of sampled requests.
fn render_tracing(out: &mut String, counts: crate::trace::export::QueueCounts) {
    let _ = writeln!(
        out,
        "# HELP rustng_tracing_spans_exported_total Spans the collector accepted.\n\
         # TYPE rustng_tracing_spans_exported_total counter\n\
         rustng_tracing_spans_exported_total {}\n\
         # HELP rustng_tracing_spans_queued Spans waiting for export.\n\
         # TYPE rustng_tracing_spans_queued gauge\n\
         rustng_tracing_spans_queued {}",
        counts.exported, counts.queued
    );
    family(
        out,
        "rustng_tracing_spans_dropped_total",
        "counter",
        "Spans dropped: the queue was full (max_queue_size), or the collector failed or refused \
         them.",
        "reason",
        vec![
            ("queue_full".to_owned(), counts.dropped_queue_full),
            ("export_failed".to_owned(), counts.dropped_export_failed),
        ],
    );
}

fn family<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label_name: &str,
    samples: Vec<(String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (value_label, value) in samples {
        let _ = writeln!(
            out,
            "{name}{{{label_name}=\"{}\"}} {value}",
            label(&value_label)
        );
    }
}

/// Label values are escaped as the text format requires.
fn label(name: &str) -> String {
    stats::label(name)
}
