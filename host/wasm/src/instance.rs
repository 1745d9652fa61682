//! One running copy of a plugin: its store, its root context, and the start sequence Envoy
//! runs (`_initialize`/`_start`, then `proxy_on_context_create`, `proxy_on_vm_start`,
//! `proxy_on_configure`), each call under the deadline.

use std::sync::Arc;
use std::time::Duration;

use rustng_abi::{BufferType, LogLevel};
use wasmtime::{Instance, Store, StoreLimitsBuilder, Trap, TypedFunc, WasmParams, WasmResults};

use crate::error::WasmError;
use crate::limits::Limits;
use crate::module::PluginModule;
use crate::state::{GuestExports, HostState, LogSink, PluginConfig, tracing_sink};

/// The root (plugin) context's id. Stream contexts will count up from here.
const ROOT_CONTEXT_ID: i32 = 1;

/// A started plugin instance.
pub struct PluginInstance {
    store: Store<HostState>,
    instance: Instance,
    limits: Limits,
}

impl PluginInstance {
    /// Instantiates `module` and runs the start sequence. Any failure (trap, deadline, memory
    /// limit, a plugin refusing its configuration) is an error with the reason, and the
    /// instance is gone.
    pub fn start(
        module: &PluginModule,
        config: Arc<PluginConfig>,
        limits: Limits,
        log: Option<LogSink>,
    ) -> Result<PluginInstance, WasmError> {
        let state = HostState {
            config,
            limits: StoreLimitsBuilder::new()
                .memory_size(limits.max_memory_bytes)
                .instances(1)
                .build(),
            log: log.unwrap_or_else(tracing_sink),
            log_level: LogLevel::Trace,
            exports: None,
            readable_buffer: None,
            tick_period_ms: 0,
        };
        let mut store = Store::new(module.engine.inner(), state);
        store.limiter(|state| &mut state.limits);
        // Start functions run during instantiation: they get a deadline too.
        store.set_epoch_deadline(limits.deadline_ticks());
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| classify("instantiate", e, &limits))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| WasmError::Abi("exports no memory".into()))?;
        let allocate = instance
            .get_typed_func::<i32, i32>(&mut store, module.allocator)
            .map_err(|e| WasmError::Abi(format!("{}: {e:#}", module.allocator)))?;
        store.data_mut().exports = Some(GuestExports { memory, allocate });

        let mut plugin = PluginInstance {
            store,
            instance,
            limits,
        };
        if plugin.has("_initialize") {
            plugin.call::<(), ()>("_initialize", ())?;
            if plugin.has("main") {
                plugin.call::<(i32, i32), i32>("main", (0, 0))?;
            }
        } else if plugin.has("_start") {
            plugin.call::<(), ()>("_start", ())?;
        }
        if plugin.has("proxy_on_context_create") {
            plugin.call::<(i32, i32), ()>("proxy_on_context_create", (ROOT_CONTEXT_ID, 0))?;
        }
        let config = Arc::clone(&plugin.store.data().config);
        if plugin.has("proxy_on_vm_start") {
            let size = config.vm_configuration.len() as i32;
            plugin.store.data_mut().readable_buffer = Some(BufferType::VmConfiguration);
            let ok = plugin.call::<(i32, i32), i32>("proxy_on_vm_start", (ROOT_CONTEXT_ID, size));
            plugin.store.data_mut().readable_buffer = None;
            if ok? == 0 {
                return Err(WasmError::Refused("proxy_on_vm_start"));
            }
        }
        if plugin.has("proxy_on_configure") {
            let size = config.plugin_configuration.len() as i32;
            plugin.store.data_mut().readable_buffer = Some(BufferType::PluginConfiguration);
            let ok = plugin.call::<(i32, i32), i32>("proxy_on_configure", (ROOT_CONTEXT_ID, size));
            plugin.store.data_mut().readable_buffer = None;
            if ok? == 0 {
                return Err(WasmError::Refused("proxy_on_configure"));
            }
        }
        Ok(plugin)
    }

    fn has(&mut self, name: &str) -> bool {
        self.instance.get_func(&mut self.store, name).is_some()
    }

    /// Calls an export under the deadline.
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        args: P,
    ) -> Result<R, WasmError> {
        let func: TypedFunc<P, R> = self
            .instance
            .get_typed_func(&mut self.store, name)
            .map_err(|e| WasmError::Abi(format!("{name}: {e:#}")))?;
        self.store.set_epoch_deadline(self.limits.deadline_ticks());
        func.call(&mut self.store, args)
            .map_err(|e| classify(name, e, &self.limits))
    }

    /// Bytes of linear memory the instance holds.
    pub fn memory_bytes(&mut self) -> usize {
        match self.store.data().exports.as_ref() {
            Some(exports) => exports.memory.data_size(&self.store),
            None => 0,
        }
    }

    /// The tick period the plugin asked for, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        match self.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        }
    }
}

fn classify(callback: &'static str, error: wasmtime::Error, limits: &Limits) -> WasmError {
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => WasmError::Deadline {
            callback,
            limit_ms: limits.call_deadline.as_millis(),
        },
        _ => WasmError::Trap {
            callback,
            message: format!("{error:#}"),
        },
    }
}
