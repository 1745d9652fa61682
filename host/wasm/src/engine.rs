//! The process's one wasmtime engine, and the ticker that gives guest calls their deadlines.

use wasmtime::{Config, Engine, OptLevel};

use crate::error::WasmError;
use crate::limits::EPOCH_TICK;

/// The wasmtime engine every module is compiled with. Cheap to clone.
#[derive(Clone)]
pub struct WasmEngine {
    engine: Engine,
}

impl WasmEngine {
    /// Creates the engine and starts its epoch ticker.
    ///
    /// Epoch interruption (not fuel) bounds guest calls: a load and a compare per loop
    /// back-edge against fuel's counting of every instruction.
    pub fn new() -> Result<WasmEngine, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
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
