//! The process's one wasmtime engine, the ticker that gives guest calls their deadlines, and
//! the cache of compiled modules.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
#[allow(
    clippy::disallowed_types,
    reason = "taken when a module is compiled (load, reload), never on a request"
)]
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, Module, OptLevel,
    PoolingAllocationConfig,
};

use crate::error::WasmError;
use crate::fused::FusedShape;
use crate::limits::EPOCH_TICK;

/// The wasmtime engine every module is compiled with. Cheap to clone.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
    compiled: Arc<CompiledModules>,
    max_memory_bytes: usize,
}

/// Modules compiled by this engine, by the sha256 of their bytes: the same module (in two
/// plugins, or pushed again) is compiled once per process. With a cache directory, wasmtime
/// also keeps the machine code on disk, keyed by the module and the compiler's settings, so a
/// restart (or the next binary, after an upgrade) skips compiling too.
///
/// Bounded to [`KEPT_MODULES`], the least recently used going first: a process that gets
/// module pushes for months must not keep every module it ever saw. Plugins hold their own
/// handle to their module, so eviction only costs a compile if an evicted module comes back.
#[derive(Default)]
struct CompiledModules {
    #[allow(clippy::disallowed_types, reason = "see the use above")]
    by_digest: Mutex<HashMap<[u8; 32], (Module, u64)>>,
    uses: AtomicU64,
    hits: AtomicUsize,
    misses: AtomicUsize,
    disk: Option<Cache>,
    /// The host's own modules that fuse back-to-back callbacks ([`crate::fused`]), one per
    /// shape of plugin module: a handful at most, kept for the engine's life.
    #[allow(clippy::disallowed_types, reason = "see the use above")]
    fused: Mutex<HashMap<FusedShape, Module>>,
}

/// How the module caches did so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Compilations answered from memory.
    pub memory_hits: usize,
    /// Modules compiled (or loaded from disk) in this process.
    pub memory_misses: usize,
    /// Of those, loaded from the disk cache instead of compiled.
    pub disk_hits: usize,
}

/// How many instances the engine's pool holds, and how large their memories may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineLimits {
    /// Instances alive at once (every worker's instance of every plugin, plus the ones a
    /// reload or a load test starts).
    pub instance_slots: u32,
    /// The largest memory any plugin may grow to (each plugin's own limit is enforced per
    /// store; this sizes the pool's slots).
    pub max_memory_bytes: usize,
    /// Where compiled machine code is kept across restarts; `None`: memory only.
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineLimits {
    fn default() -> Self {
        EngineLimits {
            instance_slots: 64,
            max_memory_bytes: 64 * 1024 * 1024,
            cache_dir: None,
        }
    }
}

/// Modules kept compiled in memory (see [`CompiledModules`]).
const KEPT_MODULES: usize = 64;

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
        // Each plugin instance may have the module fusing its callbacks beside it
        // ([`crate::fused`]): a second core instance, with no memory or table.
        pool.total_core_instances(limits.instance_slots.saturating_mul(2))
            .total_memories(limits.instance_slots)
            .total_tables(limits.instance_slots)
            .max_memory_size(limits.max_memory_bytes)
            .table_elements(TABLE_ELEMENTS);
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // `perf` cannot name JIT-compiled guest functions on its own; with a perf map
        // (`/tmp/perf-<pid>.map`) a profile shows which filter function the time goes to.
        if std::env::var_os("RUSTNG_WASM_PERFMAP").is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let disk = match &limits.cache_dir {
            Some(dir) => {
                let mut cache = CacheConfig::new();
                cache.with_directory(dir);
                let cache = Cache::new(cache).map_err(|e| {
                    WasmError::Runtime(format!("module cache {}: {e:#}", dir.display()))
                })?;
                config.cache(Some(cache.clone()));
                Some(cache)
            }
            None => None,
        };
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
        Ok(WasmEngine {
            engine,
            max_memory_bytes: limits.max_memory_bytes,
            compiled: Arc::new(CompiledModules {
                disk,
                ..CompiledModules::default()
            }),
        })
    }

    /// Compiles `bytes`, or returns the module compiled from the same bytes before.
    pub(crate) fn module(&self, bytes: &[u8]) -> Result<Module, WasmError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let compiled = &self.compiled;
        let tick = compiled.uses.fetch_add(1, Ordering::Relaxed);
        if let Some((module, last_use)) = compiled
            .by_digest
            .lock()
            .map_err(|_| WasmError::Runtime("module cache poisoned".into()))?
            .get_mut(&digest)
        {
            *last_use = tick;
            compiled.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(module.clone());
        }
        // Compiled outside the lock: it takes milliseconds to seconds.
        let module =
            Module::new(&self.engine, bytes).map_err(|e| WasmError::Invalid(format!("{e:#}")))?;
        compiled.misses.fetch_add(1, Ordering::Relaxed);
        let mut by_digest = compiled
            .by_digest
            .lock()
            .map_err(|_| WasmError::Runtime("module cache poisoned".into()))?;
        if by_digest.len() >= KEPT_MODULES
            && let Some(oldest) = by_digest
                .iter()
                .min_by_key(|(_, (_, last_use))| *last_use)
                .map(|(digest, _)| *digest)
        {
            by_digest.remove(&oldest);
        }
        by_digest.insert(digest, (module.clone(), tick));
        Ok(module)
    }

    /// The module fusing the callbacks of `shape`, compiled once per engine; `None` when
    /// nothing of that shape fuses.
    pub(crate) fn fused(&self, shape: FusedShape) -> Result<Option<Module>, WasmError> {
        let Some(bytes) = shape.encode() else {
            return Ok(None);
        };
        let mut fused = self
            .compiled
            .fused
            .lock()
            .map_err(|_| WasmError::Runtime("module cache poisoned".into()))?;
        if let Some(module) = fused.get(&shape) {
            return Ok(Some(module.clone()));
        }
        // Two small functions: compiled under the lock, in well under a millisecond.
        let module = Module::new(&self.engine, &bytes)
            .map_err(|e| WasmError::Runtime(format!("fused callbacks: {e:#}")))?;
        fused.insert(shape, module.clone());
        Ok(Some(module))
    }

    /// The most memory an instance can have in this engine's pool.
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// How the module caches did so far.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            memory_hits: self.compiled.hits.load(Ordering::Relaxed),
            memory_misses: self.compiled.misses.load(Ordering::Relaxed),
            disk_hits: self.compiled.disk.as_ref().map_or(0, Cache::cache_hits),
        }
    }

    pub(crate) fn inner(&self) -> &Engine {
        &self.engine
    }
}
