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
            for plugin in plugins {
                let _ = writeln!(
                    out,
                    "rustng_wasm_plugin_failures_total{{plugin=\"{}\"}} {}",
                    label(plugin.name()),
                    plugin.failures()
                );
            }
        }
        out.push_str(&self.host.metrics().render_prometheus());
        out
    }
}

/// Plugin names are validated config names; quotes and backslashes are escaped all the same,
/// as the format requires for label values.
fn label(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}
