//! Every limit a guest runs under, with the reason for its number.

use std::time::Duration;

/// How often the engine's epoch advances: the resolution of call deadlines. 10 ms keeps the
/// ticker thread's cost negligible while a runaway guest is stopped within one tick of its
/// deadline.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Longest log message taken from a guest; longer ones are cut, not refused.
pub(crate) const MAX_LOG_MESSAGE: usize = 64 * 1024;

/// Largest `random_get` request; the WASI call answers `INVAL` above it.
pub(crate) const MAX_RANDOM_BYTES: usize = 64 * 1024;

/// Most fields a guest may grow a header map to. A hostile module adding headers in a loop
/// fills host memory, not its own, so the host stops it: no real filter adds thousands.
pub(crate) const MAX_HEADER_MAP_FIELDS: usize = 1024;

/// Most bytes (names and values) a guest may grow a header map to, for the same reason;
/// far above any proxy's request-head limit (Envoy's default is 60 KiB).
pub(crate) const MAX_HEADER_MAP_BYTES: usize = 1024 * 1024;

/// Largest body a guest may make with `proxy_set_buffer_bytes` (host memory again).
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Limits of one plugin instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most linear memory an instance may grow to. Default 64 MiB: an order of magnitude over
    /// what the SDKs' filters use (~1–2 MiB), small enough that a bomb cannot hurt the host.
    pub max_memory_bytes: usize,
    /// Longest a single call into the guest may run. Default 100 ms: filters run in
    /// microseconds; anything near this is a loop, and it blocks a whole worker meanwhile.
    pub call_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_memory_bytes: 64 * 1024 * 1024,
            call_deadline: Duration::from_millis(100),
        }
    }
}

impl Limits {
    /// The deadline in epoch ticks (at least one).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        let ticks = self.call_deadline.as_millis() / EPOCH_TICK.as_millis().max(1);
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}
