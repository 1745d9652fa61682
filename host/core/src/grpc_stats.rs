//! Per-method gRPC counters of a listener: `rustng_grpc_requests_total{listener, service,
//! method, grpc_status}`, as Envoy's gRPC statistics filter keeps them per method.
//!
//! Methods are learned as requests name them, so the table only grows on a method's first
//! request: readers (every gRPC request, and /metrics) load it lock-free, and a new method
//! copies it once. A client can name any path, so the table is bounded: past
//! [`MAX_METHODS`], new paths count under `other`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::stats::label;

/// Most distinct methods counted per listener.
pub(crate) const MAX_METHODS: usize = 1000;

/// gRPC status codes 0–16, and a slot for calls that ended without one (reset, cancelled).
const STATUSES: usize = 18;
const NO_STATUS: usize = 17;

#[derive(Default)]
struct MethodCounts {
    by_status: [AtomicU64; STATUSES],
}

#[derive(Default)]
pub(crate) struct GrpcStats {
    methods: ArcSwap<HashMap<Box<str>, Arc<MethodCounts>>>,
}

impl GrpcStats {
    /// Counts a finished call to `path` (`/package.Service/Method`) with its status.
    pub(crate) fn record(&self, path: &str, status: Option<u32>) {
        let slot = status
            .and_then(|s| usize::try_from(s).ok())
            .filter(|s| *s < NO_STATUS)
            .unwrap_or(NO_STATUS);
        if let Some(counts) = self.methods.load().get(path) {
            counts.by_status[slot].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut counts = None;
        self.methods.rcu(|methods| {
            let key = if methods.len() >= MAX_METHODS {
                "other"
            } else {
                path
            };
            let mut next = HashMap::clone(methods);
            counts = Some(Arc::clone(next.entry(key.into()).or_default()));
            next
        });
        if let Some(counts) = counts {
            counts.by_status[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Appends this listener's lines (the family's HELP and TYPE are written once, by the
    /// caller, with [`write_header`]).
    pub(crate) fn render(&self, out: &mut String, listener: &str) {
        let methods = self.methods.load();
        let mut paths: Vec<&Box<str>> = methods.keys().collect();
        paths.sort();
        for path in paths {
            let (service, method) = split(path);
            for (code, count) in methods[path].by_status.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let status = if code == NO_STATUS {
                    "none".to_owned()
                } else {
                    code.to_string()
                };
                let _ = writeln!(
                    out,
                    "rustng_grpc_requests_total{{listener=\"{}\",service=\"{}\",method=\"{}\",grpc_status=\"{status}\"}} {count}",
                    label(listener),
                    label(service),
                    label(method)
                );
            }
        }
    }
}

/// The family's HELP and TYPE lines.
pub(crate) fn write_header(out: &mut String) {
    out.push_str(
        "# HELP rustng_grpc_requests_total gRPC calls finished, by method and grpc-status \
         (\"none\": the call ended without one).\n# TYPE rustng_grpc_requests_total counter\n",
    );
}

/// `/package.Service/Method` → (`package.Service`, `Method`); anything else is all service.
fn split(path: &str) -> (&str, &str) {
    path.strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or((path, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_per_method_and_status() {
        let stats = GrpcStats::default();
        stats.record("/shop.Cart/Add", Some(0));
        stats.record("/shop.Cart/Add", Some(0));
        stats.record("/shop.Cart/Add", Some(14));
        stats.record("/shop.Cart/Get", None);
        stats.record("/shop.Cart/Get", Some(99));
        let mut out = String::new();
        stats.render(&mut out, "main");
        assert_eq!(
            out,
            "rustng_grpc_requests_total{listener=\"main\",service=\"shop.Cart\",method=\"Add\",grpc_status=\"0\"} 2\n\
             rustng_grpc_requests_total{listener=\"main\",service=\"shop.Cart\",method=\"Add\",grpc_status=\"14\"} 1\n\
             rustng_grpc_requests_total{listener=\"main\",service=\"shop.Cart\",method=\"Get\",grpc_status=\"none\"} 2\n"
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let stats = GrpcStats::default();
        for i in 0..MAX_METHODS + 50 {
            stats.record(&format!("/s/m{i}"), Some(0));
        }
        let methods = stats.methods.load();
        assert_eq!(methods.len(), MAX_METHODS + 1);
        assert_eq!(methods["other"].by_status[0].load(Ordering::Relaxed), 50);
    }
}
