//! RustNg's own names on top of proxy-wasm: what filters tell the core through properties.
//!
//! A property path is a list of segments (`proxy_set_property` joins them with NUL bytes). The
//! core accepts these names either as their segments (`["rustng", "route", "cluster"]`) or as
//! one dotted segment (`["rustng.route.cluster"]`), since SDKs and filter authors write both.

/// The cluster a request goes to, decided by a routing filter (the `router` module); the
/// listener's `default_cluster` when no filter set it. A name the config does not know is
/// answered 503 (`cluster not found`), as Envoy answers a route to a missing cluster.
pub const ROUTE_CLUSTER: &str = "rustng.route.cluster";

/// How long the upstream may take to start its response, in milliseconds as decimal text
/// (`"2500"`), for this request instead of the cluster's `timeout`; past it, `504`. Zero or
/// text that is not a number leaves the cluster's timeout.
pub const ROUTE_TIMEOUT_MS: &str = "rustng.route.timeout_ms";

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
