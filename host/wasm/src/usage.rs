//! What plugin instances use, for `/metrics`: callbacks run, guest time, linear memory.
//!
//! Each instance has one writer (its worker thread), so counters are stored, not added (a
//! plain store on x86). Timing every callback would cost two clock reads per call, a few
//! percent of a request; one call in [`SAMPLE_EVERY`] is timed and counted for all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

/// One callback in this many is timed.
pub const SAMPLE_EVERY: u64 = 32;

/// One instance's usage.
#[derive(Debug, Default)]
pub struct InstanceUsage {
    pub(crate) calls: AtomicU64,
    /// Sampled callback time, scaled by [`SAMPLE_EVERY`].
    pub(crate) nanos: AtomicU64,
    pub(crate) memory_bytes: AtomicU64,
}

impl InstanceUsage {
    /// Callbacks run.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Time spent in guest code, estimated from the sampled callbacks.
    pub fn estimated_time(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Relaxed))
    }

    /// The instance's linear memory now (0 once it is gone).
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }
}

/// The usage of every instance of one plugin, across workers and generations.
#[derive(Debug, Default)]
pub struct PluginUsage {
    live: ArcSwap<Vec<Arc<InstanceUsage>>>,
    /// Calls and time of instances that are gone, folded in when new ones register.
    retired_calls: AtomicU64,
    retired_nanos: AtomicU64,
}

/// Totals over a plugin's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UsageTotals {
    /// Callbacks run.
    pub calls: u64,
    /// Guest time, estimated.
    pub time: Duration,
    /// Linear memory of the live instances.
    pub memory_bytes: u64,
}

impl PluginUsage {
    /// The usage record of a new instance (workers call this when they start one).
    pub fn register(&self) -> Arc<InstanceUsage> {
        let usage = Arc::new(InstanceUsage::default());
        self.live.rcu(|live| {
            let mut next = Vec::clone(live);
            next.push(Arc::clone(&usage));
            next
        });
        usage
    }

    /// Calls, time and memory over every instance this plugin has had. Records of instances
    /// that are gone (the list is their only holder) are folded into the retired totals first,
    /// so the list does not grow with every reload. Called by one thread (the admin
    /// server's), which is what makes the folding count each record once.
    pub fn totals(&self) -> UsageTotals {
        let dead: Vec<Arc<InstanceUsage>> = self
            .live
            .load()
            .iter()
            .filter(|i| Arc::strong_count(i) == 1)
            .cloned()
            .collect();
        if !dead.is_empty() {
            for gone in &dead {
                self.retired_calls
                    .fetch_add(gone.calls(), Ordering::Relaxed);
                self.retired_nanos
                    .fetch_add(gone.nanos.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            self.live.rcu(|live| {
                live.iter()
                    .filter(|i| !dead.iter().any(|d| Arc::ptr_eq(d, i)))
                    .cloned()
                    .collect::<Vec<_>>()
            });
        }
        let mut totals = UsageTotals {
            calls: self.retired_calls.load(Ordering::Relaxed),
            time: Duration::from_nanos(self.retired_nanos.load(Ordering::Relaxed)),
            memory_bytes: 0,
        };
        for instance in self.live.load().iter() {
            totals.calls += instance.calls();
            totals.time += instance.estimated_time();
            totals.memory_bytes += instance.memory_bytes();
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_instances_stay_counted_and_leave_the_list() {
        let usage = PluginUsage::default();
        let a = usage.register();
        let b = usage.register();
        a.calls.store(10, Ordering::Relaxed);
        a.memory_bytes.store(100, Ordering::Relaxed);
        b.calls.store(5, Ordering::Relaxed);
        b.memory_bytes.store(50, Ordering::Relaxed);
        assert_eq!(usage.totals().calls, 15);
        drop(a);
        let totals = usage.totals();
        assert_eq!((totals.calls, totals.memory_bytes), (15, 50));
        assert_eq!(usage.live.load().len(), 1);
        assert_eq!(usage.totals().calls, 15, "folded once");
    }
}
