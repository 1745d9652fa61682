//! The ABI as one table: every hostcall a module may import and every callback it may export,
//! with their WebAssembly signatures. The host registers its implementations from this table
//! and tests check the implementation against it, so the code never silently becomes the spec.
//!
//! Source: the proxy-wasm ABI specifications. [`HOSTCALLS`] is v0.2.1; [`hostcalls`] gives
//! the table of any version: 0.1.0 and 0.2.0 modules import a few calls that 0.2.1 dropped
//! or changed (`proxy_get_configuration`, `proxy_continue_request`/`_response`,
//! `proxy_clear_route_cache`, and a `proxy_grpc_call` without initial metadata).

/// A WebAssembly value type in a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValType {
    /// 32-bit integer (pointers, sizes, ids, enums, booleans).
    I32,
    /// 64-bit integer (metric values, clock arguments).
    I64,
}

use ValType::{I32, I64};

/// The import module a hostcall lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Module {
    /// `env`: the `proxy_*` functions.
    Env,
    /// `wasi_snapshot_preview1`: the WASI subset SDKs need.
    WasiPreview1,
}

impl Module {
    /// The import module name.
    pub fn name(self) -> &'static str {
        match self {
            Module::Env => "env",
            Module::WasiPreview1 => "wasi_snapshot_preview1",
        }
    }
}

/// A function the host provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hostcall {
    /// Import module.
    pub module: Module,
    /// Function name.
    pub name: &'static str,
    /// Parameter types.
    pub params: &'static [ValType],
    /// Result types.
    pub results: &'static [ValType],
}

/// A function the module may export for the host to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Callback {
    /// Export name.
    pub name: &'static str,
    /// Parameter types.
    pub params: &'static [ValType],
    /// Result types.
    pub results: &'static [ValType],
}

const fn env(name: &'static str, params: &'static [ValType]) -> Hostcall {
    Hostcall {
        module: Module::Env,
        name,
        params,
        results: &[I32],
    }
}

const fn wasi(
    name: &'static str,
    params: &'static [ValType],
    results: &'static [ValType],
) -> Hostcall {
    Hostcall {
        module: Module::WasiPreview1,
        name,
        params,
        results,
    }
}

const fn cb(
    name: &'static str,
    params: &'static [ValType],
    results: &'static [ValType],
) -> Callback {
    Callback {
        name,
        params,
        results,
    }
}

/// Every hostcall of ABI v0.2.1. All `proxy_*` calls return a [`crate::Status`].
pub const HOSTCALLS: &[Hostcall] = &[
    // Context lifecycle.
    env("proxy_done", &[]),
    env("proxy_set_effective_context", &[I32]),
    // Logging, clocks, timers.
    env("proxy_log", &[I32, I32, I32]),
    env("proxy_get_log_level", &[I32]),
    env("proxy_get_current_time_nanoseconds", &[I32]),
    env("proxy_set_tick_period_milliseconds", &[I32]),
    // Buffers.
    env("proxy_set_buffer_bytes", &[I32, I32, I32, I32, I32]),
    env("proxy_get_buffer_bytes", &[I32, I32, I32, I32, I32]),
    env("proxy_get_buffer_status", &[I32, I32, I32]),
    // Header maps.
    env("proxy_get_header_map_size", &[I32, I32]),
    env("proxy_get_header_map_pairs", &[I32, I32, I32]),
    env("proxy_set_header_map_pairs", &[I32, I32, I32]),
    env("proxy_get_header_map_value", &[I32, I32, I32, I32, I32]),
    env("proxy_add_header_map_value", &[I32, I32, I32, I32, I32]),
    env("proxy_replace_header_map_value", &[I32, I32, I32, I32, I32]),
    env("proxy_remove_header_map_value", &[I32, I32, I32]),
    // Streams.
    env("proxy_continue_stream", &[I32]),
    env("proxy_close_stream", &[I32]),
    env("proxy_get_status", &[I32, I32, I32]),
    env(
        "proxy_send_local_response",
        &[I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    // Callouts.
    env(
        "proxy_http_call",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    env(
        "proxy_grpc_call",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    env(
        "proxy_grpc_stream",
        &[I32, I32, I32, I32, I32, I32, I32, I32, I32],
    ),
    env("proxy_grpc_send", &[I32, I32, I32, I32]),
    env("proxy_grpc_cancel", &[I32]),
    env("proxy_grpc_close", &[I32]),
    // Shared data and queues.
    env("proxy_set_shared_data", &[I32, I32, I32, I32, I32]),
    env("proxy_get_shared_data", &[I32, I32, I32, I32, I32]),
    env("proxy_register_shared_queue", &[I32, I32, I32]),
    env("proxy_resolve_shared_queue", &[I32, I32, I32, I32, I32]),
    env("proxy_enqueue_shared_queue", &[I32, I32, I32]),
    env("proxy_dequeue_shared_queue", &[I32, I32, I32]),
    // Metrics.
    env("proxy_define_metric", &[I32, I32, I32, I32]),
    env("proxy_record_metric", &[I32, I64]),
    env("proxy_increment_metric", &[I32, I64]),
    env("proxy_get_metric", &[I32, I32]),
    // Properties and foreign functions.
    env("proxy_get_property", &[I32, I32, I32, I32]),
    env("proxy_set_property", &[I32, I32, I32, I32]),
    env(
        "proxy_call_foreign_function",
        &[I32, I32, I32, I32, I32, I32],
    ),
    // WASI, as far as SDKs need it.
    wasi("fd_write", &[I32, I32, I32, I32], &[I32]),
    wasi("clock_time_get", &[I32, I64, I32], &[I32]),
    wasi("random_get", &[I32, I32], &[I32]),
    wasi("environ_sizes_get", &[I32, I32], &[I32]),
    wasi("environ_get", &[I32, I32], &[I32]),
    wasi("args_sizes_get", &[I32, I32], &[I32]),
    wasi("args_get", &[I32, I32], &[I32]),
    wasi("proc_exit", &[I32], &[]),
    // What Go's wasip1 runtime imports besides: stdio descriptors, no preopened
    // directories, yielding and polling that never block.
    wasi("sched_yield", &[], &[I32]),
    wasi("poll_oneoff", &[I32, I32, I32, I32], &[I32]),
    wasi("fd_close", &[I32], &[I32]),
    wasi("fd_fdstat_get", &[I32, I32], &[I32]),
    wasi("fd_fdstat_set_flags", &[I32, I32], &[I32]),
    wasi("fd_prestat_get", &[I32, I32], &[I32]),
    wasi("fd_prestat_dir_name", &[I32, I32, I32], &[I32]),
    wasi("fd_read", &[I32, I32, I32, I32], &[I32]),
    wasi("fd_seek", &[I32, I64, I32, I32], &[I32]),
];

/// Every callback of ABI v0.2.1 (all optional for a module).
pub const CALLBACKS: &[Callback] = &[
    // Integration and memory.
    cb("_initialize", &[], &[]),
    cb("_start", &[], &[]),
    cb("main", &[I32, I32], &[I32]),
    cb("proxy_on_memory_allocate", &[I32], &[I32]),
    cb("malloc", &[I32], &[I32]),
    // Context lifecycle.
    cb("proxy_on_context_create", &[I32, I32], &[]),
    cb("proxy_on_done", &[I32], &[I32]),
    cb("proxy_on_log", &[I32], &[]),
    cb("proxy_on_delete", &[I32], &[]),
    // Configuration and timers.
    cb("proxy_on_vm_start", &[I32, I32], &[I32]),
    cb("proxy_on_configure", &[I32, I32], &[I32]),
    cb("proxy_on_tick", &[I32], &[]),
    // TCP.
    cb("proxy_on_new_connection", &[I32], &[I32]),
    cb("proxy_on_downstream_data", &[I32, I32, I32], &[I32]),
    cb("proxy_on_downstream_connection_close", &[I32, I32], &[]),
    cb("proxy_on_upstream_data", &[I32, I32, I32], &[I32]),
    cb("proxy_on_upstream_connection_close", &[I32, I32], &[]),
    // HTTP.
    cb("proxy_on_request_headers", &[I32, I32, I32], &[I32]),
    cb("proxy_on_request_body", &[I32, I32, I32], &[I32]),
    cb("proxy_on_request_trailers", &[I32, I32], &[I32]),
    cb("proxy_on_response_headers", &[I32, I32, I32], &[I32]),
    cb("proxy_on_response_body", &[I32, I32, I32], &[I32]),
    cb("proxy_on_response_trailers", &[I32, I32], &[I32]),
    // Callouts, queues, foreign functions.
    cb(
        "proxy_on_http_call_response",
        &[I32, I32, I32, I32, I32],
        &[],
    ),
    cb(
        "proxy_on_grpc_receive_initial_metadata",
        &[I32, I32, I32],
        &[],
    ),
    cb("proxy_on_grpc_receive", &[I32, I32, I32], &[]),
    cb(
        "proxy_on_grpc_receive_trailing_metadata",
        &[I32, I32, I32],
        &[],
    ),
    cb("proxy_on_grpc_close", &[I32, I32, I32], &[]),
    cb("proxy_on_queue_ready", &[I32, I32], &[]),
    cb("proxy_on_foreign_function", &[I32, I32, I32], &[]),
];

/// 0.1.0's calls beyond the shared ones: configuration through one call, resuming by
/// direction, and the route cache.
pub const HOSTCALLS_0_1_0_EXTRA: &[Hostcall] = &[
    env("proxy_get_configuration", &[I32, I32]),
    env("proxy_continue_request", &[]),
    env("proxy_continue_response", &[]),
    env("proxy_clear_route_cache", &[]),
];

/// 0.2.0's calls beyond the shared ones.
pub const HOSTCALLS_0_2_0_EXTRA: &[Hostcall] = &[env("proxy_clear_route_cache", &[])];

/// `proxy_grpc_call` before 0.2.1: no initial metadata.
pub const GRPC_CALL_BEFORE_0_2_1: Hostcall = env(
    "proxy_grpc_call",
    &[I32, I32, I32, I32, I32, I32, I32, I32, I32, I32],
);

/// Every hostcall a module of `version` may import.
pub fn hostcalls(version: crate::AbiVersion) -> Vec<Hostcall> {
    use crate::AbiVersion::{V0_1_0, V0_2_0, V0_2_1};
    let extra = match version {
        V0_1_0 => HOSTCALLS_0_1_0_EXTRA,
        V0_2_0 => HOSTCALLS_0_2_0_EXTRA,
        V0_2_1 => &[],
    };
    HOSTCALLS
        .iter()
        .map(|h| match (version, h.name) {
            (V0_1_0 | V0_2_0, "proxy_grpc_call") => GRPC_CALL_BEFORE_0_2_1,
            _ => *h,
        })
        .chain(extra.iter().copied())
        .collect()
}

/// The hostcall called `name` in `module`.
pub fn hostcall(module: Module, name: &str) -> Option<&'static Hostcall> {
    HOSTCALLS
        .iter()
        .find(|h| h.module == module && h.name == name)
}

/// The callback called `name`.
pub fn callback(name: &str) -> Option<&'static Callback> {
    CALLBACKS.iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_signatures_follow_the_conventions() {
        let mut seen = HashSet::new();
        for h in HOSTCALLS {
            assert!(
                seen.insert((h.module, h.name)),
                "duplicate hostcall {}",
                h.name
            );
            match h.module {
                // Every proxy_* call returns a status; results travel through pointers.
                Module::Env => {
                    assert!(h.name.starts_with("proxy_"), "{}", h.name);
                    assert_eq!(h.results, &[I32], "{}", h.name);
                }
                Module::WasiPreview1 => {
                    assert!(h.results == [I32] || h.name == "proc_exit", "{}", h.name)
                }
            }
        }
        let mut seen = HashSet::new();
        for c in CALLBACKS {
            assert!(seen.insert(c.name), "duplicate callback {}", c.name);
            // Context callbacks take the context id first.
            if c.name.starts_with("proxy_on_") && c.name != "proxy_on_memory_allocate" {
                assert_eq!(c.params.first(), Some(&I32), "{}", c.name);
            }
        }
    }

    #[test]
    fn lookups_and_a_few_signatures_from_the_spec() {
        let local = hostcall(Module::Env, "proxy_send_local_response").expect("listed");
        assert_eq!(local.params.len(), 8);
        let http_call = hostcall(Module::Env, "proxy_http_call").expect("listed");
        assert_eq!(http_call.params.len(), 10);
        assert_eq!(
            hostcall(Module::Env, "proxy_record_metric")
                .expect("listed")
                .params,
            &[I32, I64]
        );
        assert_eq!(
            hostcall(Module::WasiPreview1, "clock_time_get")
                .expect("listed")
                .params,
            &[I32, I64, I32]
        );
        assert!(hostcall(Module::Env, "fd_write").is_none());
        assert_eq!(
            callback("proxy_on_http_call_response")
                .expect("listed")
                .params
                .len(),
            5
        );
        assert_eq!(Module::WasiPreview1.name(), "wasi_snapshot_preview1");
    }
}
