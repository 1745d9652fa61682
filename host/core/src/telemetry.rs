//! What a running server shows operators: the numbers behind `/metrics`.
//!
//! A cheap handle (two `Arc`s) the admin server keeps; it reads counters that the workers
//! update with relaxed atomics, so a scrape never waits on, or slows, traffic.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

use rustng_wasm::PluginHost;

use crate::filters::LoadedPlugin;

/// The server's metrics, readable from any thread.
#[derive(Clone)]
pub struct Telemetry {
    plugins: Arc<HashMap<String, Arc<LoadedPlugin>>>,
    host: Option<Arc<PluginHost>>,
}

impl Telemetry {
    pub(crate) fn new(
        plugins: Arc<HashMap<String, Arc<LoadedPlugin>>>,
        host: Option<Arc<PluginHost>>,
    ) -> Self {
        Telemetry { plugins, host }
    }

    /// Every metric in Prometheus' text exposition format (version 0.0.4): RustNg's own,
    /// then those plugins defined with `proxy_define_metric` (`rustng_wasmcustom_*`).
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut plugins: Vec<&Arc<LoadedPlugin>> = self.plugins.values().collect();
        plugins.sort_by(|a, b| a.name().cmp(b.name()));
        if !plugins.is_empty() {
            out.push_str(
                "# HELP rustng_wasm_plugin_failures_total Plugin callbacks that trapped, ran past \
                 their deadline or ran out of memory (the failure policy then decided).\n\
                 # TYPE rustng_wasm_plugin_failures_total counter\n",
            );
            for plugin in plugins {
                // Plugin names are validated config names; quotes and backslashes are escaped
                // all the same, as the format requires for label values.
                let label = plugin.name().replace('\\', "\\\\").replace('"', "\\\"");
                let _ = writeln!(
                    out,
                    "rustng_wasm_plugin_failures_total{{plugin=\"{label}\"}} {}",
                    plugin.failures()
                );
            }
        }
        if let Some(host) = &self.host {
            out.push_str(&host.metrics().render_prometheus());
        }
        out
    }
}
