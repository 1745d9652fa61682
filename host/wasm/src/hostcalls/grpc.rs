//! gRPC callouts: `proxy_grpc_call` (unary), `proxy_grpc_stream`, `proxy_grpc_send`,
//! `proxy_grpc_close`, `proxy_grpc_cancel`, and `proxy_get_status` for the status a call
//! ended with. As with HTTP calls, each is recorded and carried out by the host after the
//! callback; the call's events come back on the root context (see `PluginInstance::on_grpc`).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use rustng_abi::table::Module;
use rustng_abi::{AbiVersion, Status, decode_pairs};
use wasmtime::{Caller, Linker};

use super::status;
use crate::http::{GrpcAction, GrpcCall};
use crate::memory::{read_guest, read_guest_str, return_bytes, write_u32};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_grpc_call"),
    (Module::Env, "proxy_grpc_stream"),
    (Module::Env, "proxy_grpc_send"),
    (Module::Env, "proxy_grpc_close"),
    (Module::Env, "proxy_grpc_cancel"),
    (Module::Env, "proxy_get_status"),
];

/// Where the call goes and what it says, read from the guest.
struct Target {
    upstream: String,
    service: String,
    method: String,
    metadata: HeaderMap,
}

#[allow(
    clippy::too_many_arguments,
    reason = "the ABI's parameters, in its order"
)]
fn target(
    caller: &Caller<'_, HostState>,
    upstream: (i32, i32),
    service: (i32, i32),
    method: (i32, i32),
    metadata: (i32, i32),
) -> Result<Target, Status> {
    let upstream = read_guest_str(caller, upstream.0, upstream.1)?;
    let known = caller
        .data()
        .upstreams
        .as_ref()
        .is_some_and(|exists| exists(&upstream));
    if !known {
        // Envoy's answer: the name parsed neither as a GrpcService nor as a cluster.
        return Err(Status::ParseFailure);
    }
    let service = read_guest_str(caller, service.0, service.1)?;
    let method = read_guest_str(caller, method.0, method.1)?;
    let serialized = read_guest(caller, metadata.0, metadata.1)?;
    let mut fields = HeaderMap::new();
    if !serialized.is_empty() {
        for (name, value) in decode_pairs(&serialized).map_err(|_| Status::BadArgument)? {
            fields.append(
                HeaderName::from_bytes(name).map_err(|_| Status::BadArgument)?,
                HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?,
            );
        }
    }
    Ok(Target {
        upstream,
        service,
        method,
        metadata: fields,
    })
}

/// Records the call and returns its token.
fn open(
    caller: &mut Caller<'_, HostState>,
    target: Target,
    message: Option<Vec<u8>>,
    timeout: Option<Duration>,
) -> u32 {
    let state = caller.data_mut();
    state.last_call_token = state.last_call_token.wrapping_add(1).max(1);
    let token = state.last_call_token;
    state.grpc_actions.push(GrpcAction::Open(GrpcCall {
        token,
        context_id: state.effective_context,
        upstream: target.upstream,
        service: target.service,
        method: target.method,
        metadata: target.metadata,
        message,
        timeout,
    }));
    token
}

pub(super) fn add_to_linker(
    linker: &mut Linker<HostState>,
    version: AbiVersion,
) -> wasmtime::Result<()> {
    if version == AbiVersion::V0_2_1 {
        add_grpc_call(linker)?;
    } else {
        add_grpc_call_without_metadata(linker)?;
    }
    add_the_rest(linker)
}

/// Before 0.2.1, `proxy_grpc_call` took no initial metadata.
fn add_grpc_call_without_metadata(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Caller<'_, HostState>,
         upstream: i32,
         upstream_size: i32,
         service: i32,
         service_size: i32,
         method: i32,
         method_size: i32,
         message: i32,
         message_size: i32,
         timeout_ms: i32,
         return_token: i32|
         -> i32 {
            status((|| {
                let target = target(
                    &caller,
                    (upstream, upstream_size),
                    (service, service_size),
                    (method, method_size),
                    (0, 0),
                )?;
                let message = read_guest(&caller, message, message_size)?;
                let token = open(&mut caller, target, Some(message), timeout(timeout_ms));
                write_u32(&mut caller, return_token, token)
            })())
        },
    )?;
    Ok(())
}

fn timeout(ms: i32) -> Option<Duration> {
    match ms as u32 {
        0 => None,
        ms => Some(Duration::from_millis(u64::from(ms))),
    }
}

fn add_grpc_call(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |mut caller: Caller<'_, HostState>,
         upstream: i32,
         upstream_size: i32,
         service: i32,
         service_size: i32,
         method: i32,
         method_size: i32,
         metadata: i32,
         metadata_size: i32,
         message: i32,
         message_size: i32,
         timeout_ms: i32,
         return_token: i32|
         -> i32 {
            status((|| {
                let target = target(
                    &caller,
                    (upstream, upstream_size),
                    (service, service_size),
                    (method, method_size),
                    (metadata, metadata_size),
                )?;
                let message = read_guest(&caller, message, message_size)?;
                let token = open(&mut caller, target, Some(message), timeout(timeout_ms));
                write_u32(&mut caller, return_token, token)
            })())
        },
    )?;
    Ok(())
}

fn add_the_rest(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |mut caller: Caller<'_, HostState>,
         upstream: i32,
         upstream_size: i32,
         service: i32,
         service_size: i32,
         method: i32,
         method_size: i32,
         metadata: i32,
         metadata_size: i32,
         return_token: i32|
         -> i32 {
            status((|| {
                let target = target(
                    &caller,
                    (upstream, upstream_size),
                    (service, service_size),
                    (method, method_size),
                    (metadata, metadata_size),
                )?;
                let token = open(&mut caller, target, None, None);
                write_u32(&mut caller, return_token, token)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |mut caller: Caller<'_, HostState>,
         token: i32,
         message: i32,
         message_size: i32,
         end_stream: i32|
         -> i32 {
            status((|| {
                let message = read_guest(&caller, message, message_size)?;
                caller.data_mut().grpc_actions.push(GrpcAction::Send {
                    token: token as u32,
                    message,
                    end_stream: end_stream != 0,
                });
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_close",
        |mut caller: Caller<'_, HostState>, token: i32| -> i32 {
            caller
                .data_mut()
                .grpc_actions
                .push(GrpcAction::Close(token as u32));
            Status::Ok as i32
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_cancel",
        |mut caller: Caller<'_, HostState>, token: i32| -> i32 {
            caller
                .data_mut()
                .grpc_actions
                .push(GrpcAction::Cancel(token as u32));
            Status::Ok as i32
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |mut caller: Caller<'_, HostState>,
         return_code: i32,
         return_message: i32,
         return_message_size: i32|
         -> i32 {
            status((|| {
                let (code, message) = caller
                    .data()
                    .http
                    .grpc_status
                    .clone()
                    .ok_or(Status::NotFound)?;
                write_u32(&mut caller, return_code, code)?;
                return_bytes(
                    &mut caller,
                    message.as_bytes(),
                    return_message,
                    return_message_size,
                )
            })())
        },
    )?;
    Ok(())
}
