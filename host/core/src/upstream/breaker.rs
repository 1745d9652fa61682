//! Circuit breaking (Envoy's cluster `circuit_breakers`): process-wide counts of what a
//! cluster has in flight, checked against its limits before more is started. Past a limit the
//! request is answered 503 with `x-envoy-overloaded: true` at once, instead of piling onto an
//! upstream that is already behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use rustng_runtime_config::CircuitBreakers;

use super::health::EndpointHealth;

/// What a breaker limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// Upstream connections open.
    Connections = 0,
    /// Requests waiting for a connection.
    Pending = 1,
    /// Requests in flight.
    Requests = 2,
    /// Retries in flight.
    Retries = 3,
}

impl Resource {
    pub(crate) const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::Pending,
        Resource::Requests,
        Resource::Retries,
    ];

    /// The label on `/metrics`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Resource::Connections => "connections",
            Resource::Pending => "pending_requests",
            Resource::Requests => "requests",
            Resource::Retries => "retries",
        }
    }

    fn limit(self, limits: &CircuitBreakers) -> u32 {
        match self {
            Resource::Connections => limits.max_connections,
            Resource::Pending => limits.max_pending_requests,
            Resource::Requests => limits.max_requests,
            Resource::Retries => limits.max_retries,
        }
    }
}

/// A cluster's counts, kept across config versions for the same cluster name (what is in
/// flight stays in flight when limits change).
#[derive(Debug, Default)]
pub(crate) struct CircuitBreaker {
    in_use: [AtomicU32; 4],
    overflows: [AtomicU64; 4],
}

impl CircuitBreaker {
    /// Takes one unit of `resource` if `limits` leave room; counts an overflow otherwise.
    pub(crate) fn try_acquire(
        &self,
        resource: Resource,
        limits: &CircuitBreakers,
    ) -> Result<(), Overflow> {
        let counter = &self.in_use[resource as usize];
        let limit = resource.limit(limits);
        // Relaxed: a limit, not a synchronisation point; a race lets one more through.
        if counter.fetch_add(1, Ordering::Relaxed) >= limit {
            counter.fetch_sub(1, Ordering::Relaxed);
            self.overflows[resource as usize].fetch_add(1, Ordering::Relaxed);
            return Err(Overflow(resource));
        }
        Ok(())
    }

    /// [`CircuitBreaker::try_acquire`], given back when the permit is dropped (also when
    /// the future holding it is cancelled).
    pub(crate) fn permit(
        &self,
        resource: Resource,
        limits: &CircuitBreakers,
    ) -> Result<Permit<'_>, Overflow> {
        self.try_acquire(resource, limits)?;
        Ok(Permit {
            breaker: self,
            resource,
        })
    }

    pub(crate) fn release(&self, resource: Resource) {
        self.in_use[resource as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// (in use, overflows so far) of `resource`.
    pub(crate) fn counts(&self, resource: Resource) -> (u32, u64) {
        (
            self.in_use[resource as usize].load(Ordering::Relaxed),
            self.overflows[resource as usize].load(Ordering::Relaxed),
        )
    }
}

/// One unit of a resource, held until dropped.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    resource: Resource,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.breaker.release(self.resource);
    }
}

/// A limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overflow(pub(crate) Resource);

/// An open upstream connection's place under `max_connections`, given back when the
/// connection is dropped; it also keeps the endpoint's connection count.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    breaker: Arc<CircuitBreaker>,
    endpoint: Arc<EndpointHealth>,
}

impl ConnectionSlot {
    pub(crate) fn acquire(
        breaker: &Arc<CircuitBreaker>,
        limits: &CircuitBreakers,
        endpoint: &Arc<EndpointHealth>,
    ) -> Result<ConnectionSlot, Overflow> {
        breaker.try_acquire(Resource::Connections, limits)?;
        endpoint.connection_opened();
        Ok(ConnectionSlot {
            breaker: Arc::clone(breaker),
            endpoint: Arc::clone(endpoint),
        })
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.breaker.release(Resource::Connections);
        self.endpoint.connection_closed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_at_the_limit_and_closes_when_released() {
        let breaker = Arc::new(CircuitBreaker::default());
        let limits = CircuitBreakers {
            max_connections: 1,
            max_pending_requests: 1,
            max_requests: 2,
            max_retries: 0,
        };
        assert!(breaker.try_acquire(Resource::Requests, &limits).is_ok());
        assert!(breaker.try_acquire(Resource::Requests, &limits).is_ok());
        assert_eq!(
            breaker.try_acquire(Resource::Requests, &limits),
            Err(Overflow(Resource::Requests))
        );
        breaker.release(Resource::Requests);
        assert!(breaker.try_acquire(Resource::Requests, &limits).is_ok());
        assert_eq!(breaker.counts(Resource::Requests), (2, 1));
        assert!(breaker.try_acquire(Resource::Retries, &limits).is_err());
        let pending = breaker.permit(Resource::Pending, &limits).expect("pending");
        assert!(breaker.permit(Resource::Pending, &limits).is_err());
        drop(pending);
        assert_eq!(breaker.counts(Resource::Pending), (0, 1));

        let endpoint = Arc::new(EndpointHealth::new("127.0.0.1:1".parse().expect("addr")));
        let slot = ConnectionSlot::acquire(&breaker, &limits, &endpoint).expect("first");
        assert!(ConnectionSlot::acquire(&breaker, &limits, &endpoint).is_err());
        assert_eq!(endpoint.connections(), (1, 1));
        drop(slot);
        assert_eq!(endpoint.connections(), (0, 1));
        assert!(ConnectionSlot::acquire(&breaker, &limits, &endpoint).is_ok());
    }
}
