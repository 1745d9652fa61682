//! Plugin generations: which module and configuration each plugin runs, and which it ran.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use rustng_runtime_config::{Config, FieldError, Plugin};
use rustng_wasm::{PluginHost, UpstreamCheck, WasmEngine};
use sha2::{Digest, Sha256};

use crate::filters::{LoadedPlugin, PluginSource};

/// Generations kept per plugin for rollback (compiled modules, not instances: a kept
/// generation costs its machine code only).
const KEPT_GENERATIONS: usize = 10;

/// Every plugin's generations, owned by the control thread.
#[derive(Default)]
pub(crate) struct PluginGenerations {
    plugins: HashMap<String, PluginHistory>,
}

#[derive(Default)]
struct PluginHistory {
    /// Oldest first; the last one is current while the plugin is configured.
    kept: VecDeque<Arc<LoadedPlugin>>,
    last_generation: u64,
    failures: Arc<AtomicU64>,
    usage: Arc<rustng_wasm::PluginUsage>,
}

/// What the plugins of a config version will run: kept generations and new, canaried ones.
pub(crate) struct PreparedPlugins {
    pub(crate) chosen: HashMap<String, Arc<LoadedPlugin>>,
}

impl PluginGenerations {
    /// The generation each plugin of `config` runs: the current one where module bytes and
    /// settings are unchanged (its instances and state live on), a kept one that matches, else
    /// a new generation, compiled and canaried here. Nothing is recorded until [`PluginGenerations::commit`].
    pub(crate) fn prepare(
        &self,
        engine: &WasmEngine,
        host: &Arc<PluginHost>,
        upstreams: &UpstreamCheck,
        config: &Config,
    ) -> Result<PreparedPlugins, Vec<FieldError>> {
        let mut chosen = HashMap::with_capacity(config.plugins.len());
        let mut errors = Vec::new();
        for (index, plugin) in config.plugins.iter().enumerate() {
            let path = format!("plugins[{index}]");
            let bytes = match std::fs::read(&plugin.module) {
                Ok(bytes) => bytes,
                Err(e) => {
                    errors.push(FieldError::new(
                        format!("{path}.vm_config.code"),
                        format!("cannot read {}: {e}", plugin.module.display()),
                    ));
                    continue;
                }
            };
            let digest: [u8; 32] = Sha256::digest(&bytes).into();
            let history = self.plugins.get(&plugin.name);
            // The current generation when it matches (its instances and state live on), else
            // a kept one that matches (a rollback, or a push of what ran before): compiled and
            // canaried already.
            if let Some(kept) = history.and_then(|h| {
                h.kept
                    .iter()
                    .rev()
                    .find(|k| k.digest() == &digest && same_settings(k.spec(), plugin))
            }) {
                chosen.insert(plugin.name.clone(), Arc::clone(kept));
                continue;
            }
            let source = PluginSource {
                plugin,
                bytes: &bytes,
                digest,
                generation: history.map_or(0, |h| h.last_generation) + 1,
                failures: history.map_or_else(Arc::default, |h| Arc::clone(&h.failures)),
                usage: history.map_or_else(Arc::default, |h| Arc::clone(&h.usage)),
            };
            match LoadedPlugin::load(engine, host, upstreams, source) {
                Ok(loaded) => {
                    chosen.insert(plugin.name.clone(), Arc::new(loaded));
                }
                Err(message) => errors.push(FieldError::new(
                    path,
                    format!("plugin {}: {message}", plugin.name),
                )),
            }
        }
        if errors.is_empty() {
            Ok(PreparedPlugins { chosen })
        } else {
            Err(errors)
        }
    }

    /// Records the generations a published version runs.
    pub(crate) fn commit(&mut self, prepared: &PreparedPlugins) {
        for (name, loaded) in &prepared.chosen {
            // A plugin's first generation brings the counters every later one carries on.
            let history = self.plugins.entry(name.clone()).or_insert_with(|| {
                let (failures, usage) = loaded.counters();
                PluginHistory {
                    kept: VecDeque::new(),
                    last_generation: 0,
                    failures,
                    usage,
                }
            });
            if history.kept.back().is_some_and(|c| Arc::ptr_eq(c, loaded)) {
                continue;
            }
            history.last_generation = history.last_generation.max(loaded.generation());
            history.kept.retain(|kept| !Arc::ptr_eq(kept, loaded));
            history.kept.push_back(Arc::clone(loaded));
            while history.kept.len() > KEPT_GENERATIONS {
                history.kept.pop_front();
            }
        }
    }

    /// A kept generation of `name`.
    pub(crate) fn generation(&self, name: &str, generation: u64) -> Option<Arc<LoadedPlugin>> {
        self.plugins
            .get(name)?
            .kept
            .iter()
            .find(|g| g.generation() == generation)
            .cloned()
    }

    /// The kept generations of every plugin, oldest first.
    pub(crate) fn kept(&self) -> impl Iterator<Item = (&str, &VecDeque<Arc<LoadedPlugin>>)> {
        self.plugins.iter().map(|(n, h)| (n.as_str(), &h.kept))
    }
}

/// Whether two plugin entries differ in nothing but where the module file is (its bytes are
/// compared by digest).
fn same_settings(a: &Plugin, b: &Plugin) -> bool {
    let mut a = a.clone();
    a.module.clone_from(&b.module);
    &a == b
}
