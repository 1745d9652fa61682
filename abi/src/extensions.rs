//! RustNg's own names on top of proxy-wasm: what filters tell the core through properties.
//!
//! A property path is a list of segments (`proxy_set_property` joins them with NUL bytes). The
//! core accepts these names either as their segments (`["rustng", "route", "cluster"]`) or as
//! one dotted segment (`["rustng.route.cluster"]`), since SDKs and filter authors write both.

/// The cluster a request goes to, decided by a routing filter (the `router` module); the
/// listener's `default_cluster` when no filter set it. A name the config does not know is
/// answered 503 (`cluster not found`), as Envoy answers a route to a missing cluster.
pub const ROUTE_CLUSTER: &str = "rustng.route.cluster";

/// The name of the route a routing filter chose (Envoy's route `name`), for observability:
/// the request's span carries it as `route_name`.
pub const ROUTE_NAME: &str = "rustng.route.name";

/// How long the upstream may take to start its response, in milliseconds as decimal text
/// (`"2500"`), for this request instead of the cluster's `timeout`; past it, `504`. Zero or
/// text that is not a number leaves the cluster's timeout.
pub const ROUTE_TIMEOUT_MS: &str = "rustng.route.timeout_ms";

/// Retries for this request (Envoy's `RetryPolicy.retry_on`): a comma-separated list of
/// `5xx`, `gateway-error`, `reset`, `connect-failure`, `refused-stream`, `retriable-4xx`,
/// `retriable-status-codes`. Set, it turns retries on; unknown names are skipped.
pub const ROUTE_RETRY_ON: &str = "rustng.route.retry_on";

/// How many retries at most (decimal text, default 1, at most 10).
pub const ROUTE_NUM_RETRIES: &str = "rustng.route.num_retries";

/// How long each attempt may wait for the response head, in milliseconds; the route's timeout
/// (`rustng.route.timeout_ms`, else the cluster's) still bounds all attempts together.
pub const ROUTE_PER_TRY_TIMEOUT_MS: &str = "rustng.route.per_try_timeout_ms";

/// The statuses `retriable-status-codes` retries, comma-separated (`"503,429"`).
pub const ROUTE_RETRIABLE_STATUS_CODES: &str = "rustng.route.retriable_status_codes";

/// The back-off's base interval in milliseconds (default 25): the wait before retry `n` is
/// random in `[0, base * 2^(n-1))`, capped by the max interval.
pub const ROUTE_RETRY_BASE_INTERVAL_MS: &str = "rustng.route.retry_base_interval_ms";

/// The back-off's cap in milliseconds (default ten times the base interval).
pub const ROUTE_RETRY_MAX_INTERVAL_MS: &str = "rustng.route.retry_max_interval_ms";

/// The request's hash key for the cluster's consistent hashing (`RING_HASH`, `MAGLEV`): any
/// bytes (a header's value, a cookie, the client's address), hashed by the core with
/// xxHash64. Requests with the same key go to the same endpoint while it is in rotation.
pub const ROUTE_HASH_KEY: &str = "rustng.route.hash_key";

/// The foreign function a discovery adapter publishes a cluster's whole endpoint set with
/// (`proxy_call_foreign_function`). Its argument is JSON:
/// `{"cluster": "backend", "endpoints": [{"address": "10.0.0.7:8080", "weight": 1,
/// "zone": "eu-1a", "metadata": {...}, "healthy": true}]}` (`weight` defaults to 1, `healthy`
/// to true; an endpoint the registry reports unhealthy stays listed but out of rotation).
/// A malformed set is refused (`BAD_ARGUMENT`, with the reason in RustNg's log) and the
/// cluster keeps its last good set.
pub const SET_ENDPOINTS: &str = "rustng.set_endpoints";

/// Most endpoints one published set may hold.
pub const MAX_PUBLISHED_ENDPOINTS: usize = 10_000;

/// The foreign function a discovery adapter resolves a DNS name with, through the host's
/// asynchronous resolver (a module has no sockets). Its argument is JSON:
/// `{"name": "backend.example.com", "type": "A", "resolvers": ["127.0.0.1:53"]}` (`type` is
/// `A`, `AAAA` or `SRV`, default `A`; `resolvers` are `ip` or `ip:port`, default the system's
/// from `/etc/resolv.conf`; `timeout_ms` bounds the whole lookup, default 5000, at most
/// 60000). It returns at once with a token, four bytes little-endian.
///
/// The answer arrives later as `proxy_on_foreign_function(root_context, token, size)`, with
/// `size` bytes of JSON in the call-data buffer (`BufferType::CallData`):
/// `{"name": ..., "type": ..., "status": "ok", "ttl": 30, "records": [...]}`. `status` is
/// `ok`; `not_found` (no such name or no such record: the set is empty); or `error` (timeout,
/// server failure, with `error` saying which: keep the last good set). `ttl` is the seconds
/// the answer stays valid, the smallest of its records'. A record is `{"address": "10.0.0.7"}`
/// for A and AAAA, and `{"target": "a.example.com.", "port": 8080, "priority": 0, "weight":
/// 5, "addresses": ["10.0.0.7"]}` for SRV, with the target's addresses already resolved.
///
/// Only discovery adapters may call it (`UNIMPLEMENTED` elsewhere); a malformed question is
/// `BAD_ARGUMENT`, and past [`MAX_RESOLVES_IN_FLIGHT`] lookups at once, `INTERNAL_FAILURE`.
pub const RESOLVE: &str = "rustng.resolve";

/// Most `rustng.resolve` lookups in flight at once, for all adapters together.
pub const MAX_RESOLVES_IN_FLIGHT: usize = 1024;

/// The foreign function a discovery adapter reads a file with (a module has no filesystem):
/// the argument is the path, the result the file's bytes. Only paths that appear as strings
/// in the adapter's own configuration may be read (`BAD_ARGUMENT` otherwise, logged); a file
/// that cannot be read is `NOT_FOUND`; only discovery adapters may call it (`UNIMPLEMENTED`
/// elsewhere). For credentials that rotate, such as a Kubernetes service-account token.
pub const READ_FILE: &str = "rustng.read_file";

/// Largest file `rustng.read_file` returns.
pub const MAX_READ_FILE_BYTES: usize = 1024 * 1024;

/// The request's trace (read-only, present while tracing is configured): `trace_id` (32 hex
/// digits), `span_id` (RustNg's span, 16 hex digits), `parent_span_id` (the caller's span,
/// absent for a trace RustNg started), `sampled` (a bool, one byte as Envoy encodes bools) and
/// `traceparent` (the W3C header value the upstream receives).
pub const TRACE_TRACE_ID: &str = "rustng.trace.trace_id";
/// See [`TRACE_TRACE_ID`].
pub const TRACE_SPAN_ID: &str = "rustng.trace.span_id";
/// See [`TRACE_TRACE_ID`].
pub const TRACE_PARENT_SPAN_ID: &str = "rustng.trace.parent_span_id";
/// See [`TRACE_TRACE_ID`].
pub const TRACE_SAMPLED: &str = "rustng.trace.sampled";
/// See [`TRACE_TRACE_ID`].
pub const TRACE_TRACEPARENT: &str = "rustng.trace.traceparent";

/// Whether the property `path` (segments joined by NUL, as the guest sent it) names `name`
/// (dotted), in either spelling.
pub fn property_is(path: &[u8], name: &str) -> bool {
    path.len() == name.len()
        && path
            .iter()
            .zip(name.as_bytes())
            .all(|(&p, &n)| p == n || (p == 0 && n == b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_name_the_property() {
        assert!(property_is(b"rustng\0route\0cluster", ROUTE_CLUSTER));
        assert!(property_is(b"rustng.route.cluster", ROUTE_CLUSTER));
        assert!(!property_is(b"rustng\0route\0clusters", ROUTE_CLUSTER));
        assert!(!property_is(b"rustng\0route", ROUTE_CLUSTER));
    }
}
