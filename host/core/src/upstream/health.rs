//! Endpoint health, shared by every worker: the active health checker's verdict and the
//! outlier detector's ejections, read on each endpoint pick with one relaxed atomic load.
//!
//! State lives per endpoint address and outlives config versions (a version that keeps an
//! address keeps its health). Ejections end lazily: the first pick that finds an ejection
//! past its time lifts it, so no timer runs per ejected endpoint.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use rustng_runtime_config::OutlierDetection;

/// The active health checker found the endpoint failing.
const CHECK_FAILED: u8 = 1;
/// Outlier detection ejected the endpoint.
const EJECTED: u8 = 2;
/// The discovery adapter's registry reports the endpoint unhealthy.
const REGISTRY_UNHEALTHY: u8 = 4;

/// Milliseconds on a process-wide monotonic clock (never 0, which means "not ejected").
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// One endpoint's health.
#[derive(Debug)]
pub(crate) struct EndpointHealth {
    address: SocketAddr,
    state: AtomicU8,
    /// When the current ejection ends, on [`now_ms`]'s clock.
    ejected_until: AtomicU64,
    /// Ejections so far: the n-th lasts n base ejection times.
    ejections: AtomicU32,
    /// 5xx answers and failed exchanges in a row.
    consecutive_failures: AtomicU32,
    /// Upstream connections to it open now (all workers), and opened so far: kept here, the
    /// one per-endpoint state every worker shares, for `/metrics`.
    open_connections: AtomicU64,
    opened_connections: AtomicU64,
}

/// What the endpoint's health looks like from outside (admin API, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// In rotation.
    Healthy,
    /// Out: the active health check fails.
    FailedCheck,
    /// Out: ejected by outlier detection.
    Ejected,
    /// Out: the service registry (through the discovery adapter) reports it unhealthy.
    RegistryUnhealthy,
}

impl HealthStatus {
    /// The name on `/metrics` and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::FailedCheck => "failed_check",
            HealthStatus::Ejected => "ejected",
            HealthStatus::RegistryUnhealthy => "registry_unhealthy",
        }
    }
}

impl EndpointHealth {
    pub(crate) fn new(address: SocketAddr) -> Self {
        EndpointHealth {
            address,
            state: AtomicU8::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            open_connections: AtomicU64::new(0),
            opened_connections: AtomicU64::new(0),
        }
    }

    /// A connection to the endpoint opened.
    pub(crate) fn connection_opened(&self) {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        self.opened_connections.fetch_add(1, Ordering::Relaxed);
    }

    /// A connection to the endpoint closed.
    pub(crate) fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// (open now, opened so far).
    pub(crate) fn connections(&self) -> (u64, u64) {
        (
            self.open_connections.load(Ordering::Relaxed),
            self.opened_connections.load(Ordering::Relaxed),
        )
    }

    /// Whether the endpoint takes traffic. `cluster` is told when an ejection ends here.
    pub(crate) fn is_healthy(&self, cluster: &ClusterHealth) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        if state == 0 {
            return true;
        }
        if state & EJECTED != 0 && now_ms() >= self.ejected_until.load(Ordering::Relaxed) {
            self.lift_ejection(cluster);
            return self.state.load(Ordering::Relaxed) == 0;
        }
        false
    }

    pub(crate) fn status(&self) -> HealthStatus {
        let state = self.state.load(Ordering::Relaxed);
        if state & CHECK_FAILED != 0 {
            HealthStatus::FailedCheck
        } else if state & REGISTRY_UNHEALTHY != 0 {
            HealthStatus::RegistryUnhealthy
        } else if state & EJECTED != 0 && now_ms() < self.ejected_until.load(Ordering::Relaxed) {
            HealthStatus::Ejected
        } else {
            HealthStatus::Healthy
        }
    }

    /// The active health checker's verdict; returns whether it changed anything.
    pub(crate) fn set_check_failed(&self, failed: bool, cluster: &ClusterHealth) -> bool {
        if failed {
            self.set(CHECK_FAILED, cluster)
        } else {
            self.clear(CHECK_FAILED, cluster)
        }
    }

    /// The registry's verdict, from the endpoint set a discovery adapter published.
    pub(crate) fn set_registry_unhealthy(&self, unhealthy: bool, cluster: &ClusterHealth) {
        if unhealthy {
            self.set(REGISTRY_UNHEALTHY, cluster);
        } else {
            self.clear(REGISTRY_UNHEALTHY, cluster);
        }
    }

    /// A finished exchange with the endpoint: `failed` for a 5xx answer, a refused or timed
    /// out connect, or a reset. Enough failures in a row eject it.
    pub(crate) fn record(
        &self,
        failed: bool,
        detector: &OutlierDetection,
        cluster: &ClusterHealth,
    ) {
        if !failed {
            // A load first: the common case (already zero) writes nothing shared.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= detector.consecutive_5xx {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.eject(detector, cluster);
        }
    }

    fn eject(&self, detector: &OutlierDetection, cluster: &ClusterHealth) {
        // At least one endpoint may always be ejected; beyond that, the cluster's share.
        let allowed = ((cluster.size() * detector.max_ejection_percent as usize) / 100).max(1);
        if self.state.load(Ordering::Relaxed) & EJECTED != 0
            || cluster.ejected.load(Ordering::Relaxed) >= allowed
        {
            return;
        }
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = detector
            .base_ejection_time
            .saturating_mul(ejections)
            .min(detector.max_ejection_time.max(detector.base_ejection_time));
        let until = now_ms().saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until.store(until, Ordering::Relaxed);
        if self.set(EJECTED, cluster) {
            cluster.ejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.address, ejection = ejections, seconds = length.as_secs_f64(), "endpoint ejected (outlier detection)");
        }
    }

    fn lift_ejection(&self, cluster: &ClusterHealth) {
        if self.clear(EJECTED, cluster) {
            cluster.ejected.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(endpoint = %self.address, "ejection over, endpoint back in rotation");
        }
    }

    /// Sets `bit`; true when it was not set. Keeps the cluster's count of endpoints out.
    fn set(&self, bit: u8, cluster: &ClusterHealth) -> bool {
        let before = self.state.fetch_or(bit, Ordering::Relaxed);
        if before & bit != 0 {
            return false;
        }
        if before == 0 {
            cluster.out.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Clears `bit`; true when it was set.
    fn clear(&self, bit: u8, cluster: &ClusterHealth) -> bool {
        let before = self.state.fetch_and(!bit, Ordering::Relaxed);
        if before & bit == 0 {
            return false;
        }
        if before == bit {
            cluster.out.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }
}

/// A cluster's health totals, for the panic threshold and the ejection cap.
#[derive(Debug, Default)]
pub(crate) struct ClusterHealth {
    /// Endpoints in the cluster (set per config version).
    size: AtomicUsize,
    /// Endpoints out of rotation, for any reason.
    out: AtomicUsize,
    /// Endpoints ejected by outlier detection.
    ejected: AtomicUsize,
}

impl ClusterHealth {
    /// Counts anew for a version's endpoint set (endpoints that left took their state along).
    pub(crate) fn recount<'a>(&self, endpoints: impl Iterator<Item = &'a EndpointHealth>) {
        let (mut size, mut out, mut ejected) = (0, 0, 0);
        for endpoint in endpoints {
            let state = endpoint.state.load(Ordering::Relaxed);
            size += 1;
            out += usize::from(state != 0);
            ejected += usize::from(state & EJECTED != 0);
        }
        self.size.store(size, Ordering::Relaxed);
        self.out.store(out, Ordering::Relaxed);
        self.ejected.store(ejected, Ordering::Relaxed);
    }

    #[cfg(test)]
    fn set_size(&self, size: usize) {
        self.size.store(size, Ordering::Relaxed);
    }

    fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Whether so few endpoints are healthy that health is ignored (Envoy's panic mode):
    /// fewer than `threshold` (0.0–1.0) of them.
    pub(crate) fn panicking(&self, threshold: f64) -> bool {
        let out = self.out.load(Ordering::Relaxed);
        if out == 0 {
            return false;
        }
        let size = self.size();
        let healthy = size.saturating_sub(out);
        (healthy as f64) < threshold * size as f64
    }

    /// Whether any endpoint is out (a pick must then look at each candidate's health).
    pub(crate) fn any_out(&self) -> bool {
        self.out.load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
// A unit test's own thread waits out a 50 ms ejection; no runtime runs here.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn detector(base: Duration) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 3,
            base_ejection_time: base,
            max_ejection_time: base * 3,
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn failures_in_a_row_eject_and_the_ejection_ends() {
        let cluster = ClusterHealth::default();
        cluster.set_size(2);
        let e = EndpointHealth::new("127.0.0.1:1".parse().expect("addr"));
        let d = detector(Duration::from_millis(50));
        e.record(true, &d, &cluster);
        e.record(true, &d, &cluster);
        e.record(false, &d, &cluster);
        e.record(true, &d, &cluster);
        e.record(true, &d, &cluster);
        assert!(
            e.is_healthy(&cluster),
            "a success in between resets the count"
        );
        e.record(true, &d, &cluster);
        assert!(!e.is_healthy(&cluster));
        assert_eq!(e.status(), HealthStatus::Ejected);
        assert!(cluster.any_out());
        std::thread::sleep(Duration::from_millis(60));
        assert!(e.is_healthy(&cluster));
        assert!(!cluster.any_out());
    }

    #[test]
    fn ejections_are_capped_and_checks_count_once() {
        let cluster = ClusterHealth::default();
        cluster.set_size(4);
        let d = detector(Duration::from_secs(60));
        let endpoints: Vec<EndpointHealth> = (1..=4)
            .map(|p| EndpointHealth::new(format!("127.0.0.1:{p}").parse().expect("addr")))
            .collect();
        for e in &endpoints {
            for _ in 0..3 {
                e.record(true, &d, &cluster);
            }
        }
        let ejected = endpoints
            .iter()
            .filter(|e| e.status() == HealthStatus::Ejected)
            .count();
        assert_eq!(ejected, 2, "50 % of 4");
        assert!(!cluster.panicking(0.5));
        assert!(endpoints[3].set_check_failed(true, &cluster));
        assert!(!endpoints[3].set_check_failed(true, &cluster), "no change");
        assert!(cluster.panicking(0.5), "one of four healthy");
        assert!(endpoints[0].set_check_failed(true, &cluster));
        assert_eq!(endpoints[0].status(), HealthStatus::FailedCheck);
        assert!(endpoints[0].set_check_failed(false, &cluster));
        assert_eq!(
            endpoints[0].status(),
            HealthStatus::Ejected,
            "still ejected"
        );
    }
}
