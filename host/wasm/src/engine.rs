//! The process's one wasmtime engine, and the ticker that gives guest calls their deadlines.

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use crate::error::WasmError;
use crate::limits::EPOCH_TICK;

/// The wasmtime engine every module is compiled with. Cheap to clone.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
}

/// How many instances the engine's pool holds, and how large their memories may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Instances alive at once (every worker's instance of every plugin, plus the ones a
    /// reload or a load test starts).
    pub instance_slots: u32,
    /// The largest memory any plugin may grow to (each plugin's own limit is enforced per
    /// store; this sizes the pool's slots).
    pub max_memory_bytes: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            instance_slots: 64,
            max_memory_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Go's runtime declares function tables larger than wasmtime's pooling default (20,000).
const TABLE_ELEMENTS: usize = 100_000;

impl WasmEngine {
    /// An engine with the default limits (tests, tools).
    pub fn new() -> Result<WasmEngine, WasmError> {
        WasmEngine::with_limits(EngineLimits::default())
    }

    /// Creates the engine and starts its epoch ticker.
    ///
    /// Epoch interruption (not fuel) bounds guest calls: a load and a compare per loop
    /// back-edge against fuel's counting of every instruction. Instances come from a pool:
    /// their memories are reserved once and reused (a reload or a fresh instance costs no
    /// `mmap`), and a freed slot is reset with `madvise`, returning its pages to the system.
    pub fn with_limits(limits: EngineLimits) -> Result<WasmEngine, WasmError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(limits.instance_slots)
            .total_memories(limits.instance_slots)
            .total_tables(limits.instance_slots)
            .max_memory_size(limits.max_memory_bytes)
            .table_elements(TABLE_ELEMENTS);
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| WasmError::Runtime(format!("{e:#}")))?;
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("rustng-wasm-epoch".into())
            .spawn(move || {
                // Ends when the last engine handle is gone.
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    // A dedicated thread, not a worker: sleeping blocks nothing else.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| WasmError::Runtime(format!("epoch thread: {e}")))?;
        Ok(WasmEngine { engine })
    }

    pub(crate) fn inner(&self) -> &Engine {
        &self.engine
    }
}
