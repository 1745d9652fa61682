//! `proxy_get_property` and `proxy_set_property`: Envoy's attributes, addressed by a path of
//! NUL-separated segments and encoded as Envoy encodes them (strings as bytes, integers as
//! 8-byte little-endian, booleans as one byte, maps as serialized pairs).
//!
//! Paths RustNg does not know fall through to what filters stored with `proxy_set_property`
//! on the same stream (Envoy's filter state), and are otherwise `NOT_FOUND`.

use http::header::{self, HeaderMap};
use http::uri::PathAndQuery;
use rustng_abi::table::Module;
use rustng_abi::{Status, encode_pairs};
use wasmtime::{Caller, Linker};

use super::status;
use crate::memory::{read_guest, return_bytes};
use crate::state::HostState;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_get_property"),
    (Module::Env, "proxy_set_property"),
];

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut caller: Caller<'_, HostState>,
         path: i32,
         path_size: i32,
         return_data: i32,
         return_size: i32|
         -> i32 {
            status((|| {
                let path = read_guest(&caller, path, path_size)?;
                let value = lookup(caller.data(), &path)?;
                return_bytes(&mut caller, &value, return_data, return_size)
            })())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut caller: Caller<'_, HostState>,
         path: i32,
         path_size: i32,
         value: i32,
         value_size: i32|
         -> i32 {
            status((|| {
                let path = read_guest(&caller, path, path_size)?;
                let value = read_guest(&caller, value, value_size)?;
                let stream = caller
                    .data_mut()
                    .http
                    .stream
                    .as_mut()
                    .ok_or(Status::NotFound)?;
                match stream.properties.iter_mut().find(|(key, _)| *key == path) {
                    Some(entry) => entry.1 = value,
                    None => stream.properties.push((path, value)),
                }
                Ok(())
            })())
        },
    )?;
    Ok(())
}

/// An empty string (an unset root id, no query) is still a value: `OK` with no bytes, which
/// reaches the guest as a null pointer (SDKs that cannot tell read it as absent; the
/// AssemblyScript SDK would fail its start on a `NOT_FOUND`, as Envoy never gives one).
fn string(value: impl AsRef<[u8]>) -> Result<Vec<u8>, Status> {
    Ok(value.as_ref().to_vec())
}

fn int(value: i64) -> Result<Vec<u8>, Status> {
    Ok(value.to_le_bytes().to_vec())
}

/// A header map as a property: the whole map as pairs, or one field by (lowercase) name.
fn headers(map: &HeaderMap, key: Option<&[u8]>) -> Result<Vec<u8>, Status> {
    match key {
        Some(name) => map
            .get(header::HeaderName::from_bytes(name).map_err(|_| Status::NotFound)?)
            .map(|v| v.as_bytes().to_vec())
            .ok_or(Status::NotFound),
        None => {
            let pairs: Vec<(&[u8], &[u8])> = map
                .iter()
                .map(|(name, value)| (name.as_str().as_bytes(), value.as_bytes()))
                .collect();
            let mut out = Vec::new();
            encode_pairs(pairs.iter().copied(), &mut out);
            Ok(out)
        }
    }
}

fn lookup(state: &HostState, path: &[u8]) -> Result<Vec<u8>, Status> {
    let mut segments = path.split(|b| *b == 0);
    let first = segments.next().unwrap_or_default();
    let second = segments.next();
    let third = segments.next();
    let config = &state.config;
    let stream = state.http.stream.as_ref();
    let known = match (first, second) {
        (b"plugin_name", None) => Some(string(&config.name)),
        (b"plugin_root_id", None) => Some(string(&config.root_id)),
        (b"plugin_vm_id", None) => Some(string(&config.vm_id)),
        (b"request", Some(field)) => state
            .http
            .request
            .get()
            .map(|request| request_field(request, stream, field, third)),
        (b"response", Some(field)) => state.http.response.get().map(|response| match field {
            b"code" => int(i64::from(response.status.as_u16())),
            b"headers" => headers(&response.headers, third),
            _ => Err(Status::NotFound),
        }),
        (b"source" | b"destination", Some(field)) => stream.map(|stream| {
            let address = if first == b"source" {
                stream.source
            } else {
                stream.destination
            };
            let address = address.ok_or(Status::NotFound)?;
            match field {
                b"address" => string(address.to_string()),
                b"port" => int(i64::from(address.port())),
                _ => Err(Status::NotFound),
            }
        }),
        (b"connection", Some(b"mtls")) => stream.map(|_| Ok(vec![0])),
        _ => stream
            .and_then(|stream| stream.trace.as_ref())
            .and_then(|trace| trace_field(trace, path)),
    };
    match known {
        Some(value) => value,
        None => stream
            .and_then(|stream| stream.property(path))
            .map(<[u8]>::to_vec)
            .ok_or(Status::NotFound),
    }
}

/// The `rustng.trace.*` properties, in either spelling of their path.
fn trace_field(
    trace: &rustng_abi::trace::TraceIds,
    path: &[u8],
) -> Option<Result<Vec<u8>, Status>> {
    use rustng_abi::extensions::{
        TRACE_PARENT_SPAN_ID, TRACE_SAMPLED, TRACE_SPAN_ID, TRACE_TRACE_ID, TRACE_TRACEPARENT,
        property_is,
    };
    use rustng_abi::trace::Hex;
    let is = |name| property_is(path, name);
    Some(if is(TRACE_TRACE_ID) {
        string(Hex(&trace.trace_id).to_string())
    } else if is(TRACE_SPAN_ID) {
        string(Hex(&trace.span_id).to_string())
    } else if is(TRACE_PARENT_SPAN_ID) {
        match &trace.parent_span_id {
            Some(parent) => string(Hex(parent).to_string()),
            None => Err(Status::NotFound),
        }
    } else if is(TRACE_SAMPLED) {
        Ok(vec![u8::from(trace.sampled)])
    } else if is(TRACE_TRACEPARENT) {
        Ok(trace.traceparent().to_vec())
    } else {
        return None;
    })
}

fn request_field(
    request: &crate::http::RequestHead,
    stream: Option<&crate::http::StreamInfo>,
    field: &[u8],
    key: Option<&[u8]>,
) -> Result<Vec<u8>, Status> {
    let path_and_query = request
        .uri
        .path_and_query()
        .map_or("/", PathAndQuery::as_str);
    let header = |name: header::HeaderName| {
        request
            .headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .ok_or(Status::NotFound)
    };
    match field {
        b"path" => string(path_and_query),
        b"url_path" => string(request.uri.path()),
        b"query" => string(request.uri.query().unwrap_or_default()),
        b"method" => string(request.method.as_str()),
        b"scheme" => string(request.scheme),
        b"host" => request
            .uri
            .authority()
            .map(|a| a.as_str().as_bytes().to_vec())
            .ok_or(Status::NotFound)
            .or_else(|_| header(header::HOST)),
        b"protocol" => string(stream.map_or("", crate::http::StreamInfo::protocol)),
        b"id" => header(header::HeaderName::from_static("x-request-id")),
        b"referer" => header(header::REFERER),
        b"useragent" => header(header::USER_AGENT),
        b"headers" => headers(&request.headers, key),
        _ => Err(Status::NotFound),
    }
}
