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
            out.push_str(
                "# HELP rustng_wasm_plugin_generation The generation (module and configuration) \
                 each plugin runs.\n\
                 # TYPE rustng_wasm_plugin_generation gauge\n",
            );
            for plugin in &plugins {
                let _ = writeln!(
                    out,
                    "rustng_wasm_plugin_generation{{plugin=\"{}\"}} {}",
                    label(plugin.name()),
                    plugin.generation()
                );
            }
            out.push_str(
                "# HELP rustng_wasm_plugin_failures_total Plugin callbacks that trapped, ran past \
                 their deadline or ran out of memory (the failure policy then decided).\n\
                 # TYPE rustng_wasm_plugin_failures_total counter\n",
            );
            for plugin in &plugins {
                let _ = writeln!(
                    out,
                    "rustng_wasm_plugin_failures_total{{plugin=\"{}\"}} {}",
                    label(plugin.name()),
                    plugin.failures()
                );
            }
            let usage: Vec<_> = plugins
                .iter()
                .map(|p| (label(p.name()), p.usage()))
                .collect();
            out.push_str(
                "# HELP rustng_wasm_plugin_calls_total Plugin callbacks run, on every worker and \
                 in every generation.\n\
                 # TYPE rustng_wasm_plugin_calls_total counter\n",
            );
            for (name, totals) in &usage {
                let _ = writeln!(
                    out,
                    "rustng_wasm_plugin_calls_total{{plugin=\"{name}\"}} {}",
                    totals.calls
                );
            }
            let _ = writeln!(
                out,
                "# HELP rustng_wasm_plugin_call_seconds_total Time spent in plugin callbacks, \
                 estimated from one callback in {}.\n\
                 # TYPE rustng_wasm_plugin_call_seconds_total counter",
                rustng_wasm::SAMPLE_EVERY
            );
            for (name, totals) in &usage {
                let _ = writeln!(
                    out,
                    "rustng_wasm_plugin_call_seconds_total{{plugin=\"{name}\"}} {}",
                    totals.time.as_secs_f64()
                );
            }
            out.push_str(
                "# HELP rustng_wasm_plugin_memory_bytes Linear memory of the plugin's live \
                 instances (as of their last sampled callback).\n\
                 # TYPE rustng_wasm_plugin_memory_bytes gauge\n",
            );
            for (name, totals) in &usage {
                let _ = writeln!(
                    out,
                    "rustng_wasm_plugin_memory_bytes{{plugin=\"{name}\"}} {}",
                    totals.memory_bytes
                );
            }
        }
        self.render_listeners(&mut out, &snapshot);
        self.render_clusters(&mut out, &snapshot);
        out.push_str(&self.host.metrics().render_prometheus());
        out
    }

    /// Connections and requests per listener.
    fn render_listeners(&self, out: &mut String, snapshot: &Snapshot) {
        if snapshot.listeners.is_empty() {
            return;
        }
        let connections = |out: &mut String,
                           name: &str,
                           kind: &str,
                           help: &str,
                           pick: &dyn Fn((usize, u64, u64)) -> u64| {
            let _ = writeln!(
                out,
                "# HELP rustng_downstream_{name} {help}\n# TYPE rustng_downstream_{name} {kind}"
            );
            for spec in &snapshot.listeners {
                let _ = writeln!(
                    out,
                    "rustng_downstream_{name}{{listener=\"{}\"}} {}",
                    label(&spec.config.name),
                    pick(spec.limit.counts())
                );
            }
        };
        connections(
            out,
            "connections_active",
            "gauge",
            "Open downstream connections.",
            &|(open, _, _)| open as u64,
        );
        connections(
            out,
            "connections_total",
            "counter",
            "Downstream connections accepted.",
            &|(_, accepted, _)| accepted,
        );
        connections(
            out,
            "connections_refused_total",
            "counter",
            "Downstream connections closed at once for the listener's max_connections.",
            &|(_, _, refused)| refused,
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
    }
}

/// Label values are escaped as the text format requires.
fn label(name: &str) -> String {
    stats::label(name)
}
