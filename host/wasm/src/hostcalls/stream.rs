//! Stream control and callouts: `proxy_continue_stream`, `proxy_close_stream`,
//! `proxy_set_effective_context`, `proxy_done`, `proxy_http_call`.
//!
//! None of these acts during the hostcall: each is recorded in the store and the host applies
//! it once the callback has returned (a resumed request cannot run inside the guest call
//! that resumed it).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use rustng_abi::table::Module;
use rustng_abi::{Status, StreamType, decode_pairs};
use wasmtime::{Caller, Linker};

use super::status;
use crate::http::{HttpCallRequest, StreamAction};
use crate::memory::{read_guest, read_guest_str, write_u32};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_continue_stream"),
    (Module::Env, "proxy_close_stream"),
    (Module::Env, "proxy_set_effective_context"),
    (Module::Env, "proxy_done"),
    (Module::Env, "proxy_http_call"),
];

/// Envoy's default when a plugin passes no timeout.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut caller: Caller<'_, HostState>, stream: i32| -> i32 {
            status((|| {
                let action = match StreamType::try_from(stream as u32) {
                    Ok(StreamType::HttpRequest) => StreamAction::ContinueRequest,
                    Ok(StreamType::HttpResponse) => StreamAction::ContinueResponse,
                    Ok(StreamType::Downstream) => StreamAction::ContinueDownstream,
                    Ok(StreamType::Upstream) => StreamAction::ContinueUpstream,
                    Err(_) => return Err(Status::BadArgument),
                };
                let state = caller.data_mut();
                state.stream_actions.push((state.effective_context, action));
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut caller: Caller<'_, HostState>, stream: i32| -> i32 {
            status((|| {
                StreamType::try_from(stream as u32).map_err(|_| Status::BadArgument)?;
                let state = caller.data_mut();
                state
                    .stream_actions
                    .push((state.effective_context, StreamAction::Close));
                Ok(())
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut caller: Caller<'_, HostState>, context: i32| -> i32 {
            if context <= 0 {
                return Status::BadArgument as i32;
            }
            caller.data_mut().effective_context = context;
            Status::Ok as i32
        },
    )?;
    // A root context whose `proxy_on_done` answered false says it has finished. No root is
    // ever waiting so here (RustNg does not stop VMs yet), and stream contexts end with their
    // exchange: `NOT_FOUND`, Envoy's answer for a context with nothing pending (the Rust SDK
    // traps on it, in both hosts).
    linker.func_wrap("env", "proxy_done", |_: Caller<'_, HostState>| -> i32 {
        Status::NotFound as i32
    })?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut caller: Caller<'_, HostState>,
         upstream: i32,
         upstream_size: i32,
         headers: i32,
         headers_size: i32,
         body: i32,
         body_size: i32,
         trailers: i32,
         trailers_size: i32,
         timeout_ms: i32,
         return_token: i32|
         -> i32 {
            status((|| {
                let upstream = read_guest_str(&caller, upstream, upstream_size)?;
                let known = caller
                    .data()
                    .upstreams
                    .as_ref()
                    .is_some_and(|exists| exists(&upstream));
                if !known {
                    return Err(Status::BadArgument);
                }
                let headers = read_guest(&caller, headers, headers_size)?;
                let body = read_guest(&caller, body, body_size)?;
                let trailers = read_guest(&caller, trailers, trailers_size)?;
                let state = caller.data_mut();
                state.last_call_token = state.last_call_token.wrapping_add(1).max(1);
                let token = state.last_call_token;
                let mut call = call_request(&headers, &trailers)?;
                call.token = token;
                call.context_id = state.effective_context;
                call.upstream = upstream;
                call.body = body;
                call.timeout = match timeout_ms as u32 {
                    0 => DEFAULT_CALL_TIMEOUT,
                    ms => Duration::from_millis(u64::from(ms)),
                };
                state.pending_calls.push(call);
                write_u32(&mut caller, return_token, token)
            })())
        },
    )?;
    Ok(())
}

/// The call's head from its serialized fields: `:method`, `:path` and `:authority` are
/// required (Envoy refuses a call without them).
fn call_request(headers: &[u8], trailers: &[u8]) -> Result<HttpCallRequest, Status> {
    let mut method = None;
    let mut path = None;
    let mut authority = None;
    let mut fields = HeaderMap::new();
    for (name, value) in decode_pairs(headers).map_err(|_| Status::BadArgument)? {
        match name {
            b":method" => {
                method = Some(Method::from_bytes(value).map_err(|_| Status::BadArgument)?)
            }
            b":path" => path = Some(text(value)?),
            b":authority" => authority = Some(text(value)?),
            // `:scheme` and the like: the cluster decides how the call travels.
            _ if name.first() == Some(&b':') => {}
            _ => {
                fields.append(field_name(name)?, field_value(value)?);
            }
        }
    }
    let mut trailer_fields = HeaderMap::new();
    if !trailers.is_empty() {
        for (name, value) in decode_pairs(trailers).map_err(|_| Status::BadArgument)? {
            trailer_fields.append(field_name(name)?, field_value(value)?);
        }
    }
    Ok(HttpCallRequest {
        token: 0,
        context_id: 0,
        upstream: String::new(),
        method: method.ok_or(Status::BadArgument)?,
        path: path.ok_or(Status::BadArgument)?,
        authority: authority.ok_or(Status::BadArgument)?,
        headers: fields,
        body: Vec::new(),
        trailers: trailer_fields,
        timeout: DEFAULT_CALL_TIMEOUT,
    })
}

fn text(bytes: &[u8]) -> Result<String, Status> {
    String::from_utf8(bytes.to_vec()).map_err(|_| Status::BadArgument)
}

fn field_name(bytes: &[u8]) -> Result<HeaderName, Status> {
    HeaderName::from_bytes(&bytes.to_ascii_lowercase()).map_err(|_| Status::BadArgument)
}

fn field_value(bytes: &[u8]) -> Result<HeaderValue, Status> {
    HeaderValue::from_bytes(bytes).map_err(|_| Status::BadArgument)
}
