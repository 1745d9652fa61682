//! Header map hostcalls and `proxy_send_local_response`.
//!
//! Filters see request and response heads the way Envoy shows them: the request line as the
//! pseudo-headers `:method`, `:path`, `:authority`, `:scheme` (no `host` field), the status as
//! `:status`. Setting a pseudo-header changes the request line or status.

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, StatusCode};
use rustng_abi::table::Module;
use rustng_abi::{MapType, Status, decode_pairs, encode_pairs, encoded_len};
use wasmtime::{Caller, Linker};

use super::status;
use crate::http::{LocalResponse, RequestHead, StreamAction};
use crate::limits::{MAX_HEADER_MAP_BYTES, MAX_HEADER_MAP_FIELDS};
use crate::memory::{guest_memory, memory_and_state, read_guest, return_bytes, slice, write_u32};
use crate::state::HostState;

/// The answer for a map the current callback does not have (the request's headers once they
/// have left, the response's before it came, trailers the stream has not reached): Envoy's
/// `BAD_ARGUMENT`, not `NOT_FOUND`, which means a missing field of a map that is there. The
/// upstream SDKs' wrappers panic on it, as they do in Envoy. Listing the pairs of such a map
/// is the exception: Envoy answers with an empty list.
const UNAVAILABLE: Status = Status::BadArgument;

pub(super) const NAMES: &[(Module, &str)] = &[
    (Module::Env, "proxy_get_header_map_size"),
    (Module::Env, "proxy_get_header_map_pairs"),
    (Module::Env, "proxy_set_header_map_pairs"),
    (Module::Env, "proxy_get_header_map_value"),
    (Module::Env, "proxy_add_header_map_value"),
    (Module::Env, "proxy_replace_header_map_value"),
    (Module::Env, "proxy_remove_header_map_value"),
    (Module::Env, "proxy_send_local_response"),
];

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn map_type(raw: i32) -> Result<MapType, Status> {
    MapType::try_from(raw as u32).map_err(|_| Status::BadArgument)
}

/// The request line's pseudo-headers, in Envoy's order (see [`request_pseudo_header`]).
const REQUEST_PSEUDO_HEADERS: [&[u8]; 4] = [b":authority", b":path", b":method", b":scheme"];

/// The map's fields, pseudo-headers first, as Envoy orders them.
fn pairs(state: &HostState, map: MapType) -> Result<Pairs, Status> {
    let mut out = Vec::new();
    let fields = match map {
        MapType::HttpRequestHeaders => {
            let request = state.http.request.get().ok_or(UNAVAILABLE)?;
            for name in REQUEST_PSEUDO_HEADERS {
                // Only `:authority` can be missing: it lists as empty.
                let value = match request_pseudo_header(request, name) {
                    Some(Ok(value)) => value.as_bytes().to_vec(),
                    _ => Vec::new(),
                };
                out.push((name.to_vec(), value));
            }
            &request.headers
        }
        MapType::HttpResponseHeaders => {
            let response = state.http.response.get().ok_or(UNAVAILABLE)?;
            out.push((
                b":status".to_vec(),
                response.status.as_str().as_bytes().to_vec(),
            ));
            &response.headers
        }
        MapType::HttpCallResponseHeaders => {
            let response = state.http.call_response.as_ref().ok_or(UNAVAILABLE)?;
            out.push((
                b":status".to_vec(),
                response.status.as_str().as_bytes().to_vec(),
            ));
            &response.headers
        }
        other => plain_map(state, other)?,
    };
    for (name, value) in fields {
        if name == header::HOST && map == MapType::HttpRequestHeaders {
            continue;
        }
        out.push((name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    Ok(out)
}

enum Change<'a> {
    Add(&'a [u8]),
    Replace(&'a [u8]),
    Remove,
}

fn change(
    state: &mut HostState,
    map: MapType,
    key: &[u8],
    change: Change<'_>,
) -> Result<(), Status> {
    if key.first() == Some(&b':') {
        return change_pseudo(state, map, &key.to_ascii_lowercase(), change);
    }
    let name = match change {
        Change::Remove => None,
        Change::Add(_) | Change::Replace(_) => Some(
            state
                .header_names
                .name(key)
                .map_err(|_| Status::BadArgument)?,
        ),
    };
    let headers = writable_map(state, map)?;
    let Some(name) = name else {
        // By `&str`: parsed in place, no allocation for a name the map may not even hold.
        if let Ok(key) = std::str::from_utf8(key) {
            headers.remove(key);
        }
        return Ok(());
    };
    if let Change::Add(value) | Change::Replace(value) = change {
        room_for(headers, key.len() + value.len())?;
    }
    match change {
        Change::Add(value) => {
            let value = HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
            headers.append(name, value);
        }
        Change::Replace(value) => {
            let value = HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
            headers.insert(name, value);
        }
        Change::Remove => {}
    }
    Ok(())
}

fn change_pseudo(
    state: &mut HostState,
    map: MapType,
    key: &[u8],
    change: Change<'_>,
) -> Result<(), Status> {
    if state.http.logging {
        return Err(UNAVAILABLE);
    }
    let value = match change {
        Change::Add(v) | Change::Replace(v) => v,
        // Pseudo-headers cannot be absent; removing one is a no-op, as in Envoy.
        Change::Remove => return Ok(()),
    };
    match map {
        MapType::HttpRequestHeaders => {
            let request = state.http.request.get_mut().ok_or(UNAVAILABLE)?;
            match key {
                b":method" => {
                    request.method = Method::from_bytes(value).map_err(|_| Status::BadArgument)?
                }
                b":path" => {
                    let path = PathAndQuery::try_from(value).map_err(|_| Status::BadArgument)?;
                    let mut parts = std::mem::take(&mut request.uri).into_parts();
                    parts.path_and_query = Some(path);
                    request.uri = Uri::from_parts(parts).map_err(|_| Status::BadArgument)?;
                }
                b":authority" => {
                    let host = HeaderValue::from_bytes(value).map_err(|_| Status::BadArgument)?;
                    request.headers.insert(header::HOST, host);
                    if request.uri.authority().is_some() {
                        let mut parts = std::mem::take(&mut request.uri).into_parts();
                        parts.authority = Some(value.try_into().map_err(|_| Status::BadArgument)?);
                        request.uri = Uri::from_parts(parts).map_err(|_| Status::BadArgument)?;
                    }
                }
                b":scheme" => {}
                _ => return Err(Status::BadArgument),
            }
        }
        MapType::HttpResponseHeaders => {
            let response = state.http.response.get_mut().ok_or(UNAVAILABLE)?;
            match key {
                b":status" => {
                    response.status =
                        StatusCode::from_bytes(value).map_err(|_| Status::BadArgument)?
                }
                _ => return Err(Status::BadArgument),
            }
        }
        _ => return Err(UNAVAILABLE),
    }
    Ok(())
}

/// What reading a field of a map the callback does not have answers: in `proxy_on_log` a
/// head may be missing (a request that got no response), and Envoy says `NOT_FOUND` there.
fn unavailable(state: &HostState) -> Status {
    if state.http.logging {
        Status::NotFound
    } else {
        UNAVAILABLE
    }
}

/// A field's value as [`get_value`] finds it: shared with the head (a reference count on the
/// bytes it was parsed from), never a copy. A header read is the commonest hostcall.
enum FieldValue {
    Header(HeaderValue),
    Path(PathAndQuery),
    Authority(http::uri::Authority),
    Method(Method),
    Status(StatusCode),
    Static(&'static str),
}

impl FieldValue {
    fn as_bytes(&self) -> &[u8] {
        match self {
            FieldValue::Header(value) => value.as_bytes(),
            FieldValue::Path(path) => path.as_str().as_bytes(),
            FieldValue::Authority(authority) => authority.as_str().as_bytes(),
            FieldValue::Method(method) => method.as_str().as_bytes(),
            FieldValue::Status(status) => status.as_str().as_bytes(),
            FieldValue::Static(text) => text.as_bytes(),
        }
    }
}

/// A pseudo-header of the request line (`None`: `key` is not one). `:authority` is the URI's
/// authority or else the `host` field, missing when there is neither or it is empty.
fn request_pseudo_header(request: &RequestHead, key: &[u8]) -> Option<Result<FieldValue, Status>> {
    Some(match key {
        b":authority" => match request.uri.authority() {
            Some(authority) => Ok(FieldValue::Authority(authority.clone())),
            None => request
                .headers
                .get(header::HOST)
                .filter(|host| !host.is_empty())
                .map(|host| FieldValue::Header(host.clone()))
                .ok_or(Status::NotFound),
        },
        b":path" => Ok(request
            .uri
            .path_and_query()
            .map_or(FieldValue::Static("/"), |path| {
                FieldValue::Path(path.clone())
            })),
        b":method" => Ok(FieldValue::Method(request.method.clone())),
        b":scheme" => Ok(FieldValue::Static(request.scheme)),
        _ => return None,
    })
}

/// One field's value, looked up directly (no list of all fields is built).
fn get_value(state: &HostState, map: MapType, key: &[u8]) -> Result<FieldValue, Status> {
    match map {
        MapType::HttpRequestHeaders => {
            let request = state.http.request.get().ok_or_else(|| unavailable(state))?;
            // `host` is asked for by name too; filters see it as `:authority`.
            let key: &[u8] = if key.eq_ignore_ascii_case(b"host") {
                b":authority"
            } else {
                key
            };
            match request_pseudo_header(request, key) {
                Some(value) => value,
                None => lookup(&request.headers, key),
            }
        }
        MapType::HttpResponseHeaders => {
            let response = state
                .http
                .response
                .get()
                .ok_or_else(|| unavailable(state))?;
            match key {
                b":status" => Ok(FieldValue::Status(response.status)),
                _ => lookup(&response.headers, key),
            }
        }
        MapType::HttpCallResponseHeaders => {
            let response = state
                .http
                .call_response
                .as_ref()
                .ok_or_else(|| unavailable(state))?;
            match key {
                b":status" => Ok(FieldValue::Status(response.status)),
                _ => lookup(&response.headers, key),
            }
        }
        other => lookup(
            plain_map(state, other).map_err(|_| unavailable(state))?,
            key,
        ),
    }
}

/// Whether a map may take another `adding` bytes (see `MAX_HEADER_MAP_*`). Refused with
/// `INTERNAL_FAILURE`: the SDKs treat it as fatal, so a module adding without end traps and
/// meets its failure policy instead of exhausting the host.
fn room_for(headers: &http::HeaderMap, adding: usize) -> Result<(), Status> {
    if headers.len() >= MAX_HEADER_MAP_FIELDS || adding > MAX_HEADER_MAP_BYTES {
        return Err(Status::InternalFailure);
    }
    // Summing is O(fields): only worth it once a map is larger than any ordinary one.
    if headers.len() > 64 {
        let held: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if held + adding > MAX_HEADER_MAP_BYTES {
            return Err(Status::InternalFailure);
        }
    }
    Ok(())
}

/// A map without pseudo-headers: trailers, and the trailers of an HTTP call's response.
fn plain_map(state: &HostState, map: MapType) -> Result<&http::HeaderMap, Status> {
    let http = &state.http;
    match map {
        MapType::HttpRequestTrailers => http.request_trailers.get(),
        MapType::HttpResponseTrailers => http.response_trailers.get(),
        MapType::HttpCallResponseTrailers => http.call_response.as_ref().map(|r| &r.trailers),
        MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => http
            .grpc_metadata
            .as_ref()
            .filter(|(kind, _)| *kind == map)
            .map(|(_, fields)| fields),
        _ => None,
    }
    .ok_or(UNAVAILABLE)
}

/// The fields of a map the current callback may change (a call's response is read-only).
fn writable_map(state: &mut HostState, map: MapType) -> Result<&mut http::HeaderMap, Status> {
    let http = &mut state.http;
    if http.logging {
        return Err(UNAVAILABLE);
    }
    match map {
        MapType::HttpRequestHeaders => http.request.get_mut().map(|r| &mut r.headers),
        MapType::HttpResponseHeaders => http.response.get_mut().map(|r| &mut r.headers),
        MapType::HttpRequestTrailers => http.request_trailers.get_mut(),
        MapType::HttpResponseTrailers => http.response_trailers.get_mut(),
        _ => None,
    }
    .ok_or(UNAVAILABLE)
}

fn lookup(headers: &http::HeaderMap, key: &[u8]) -> Result<FieldValue, Status> {
    // `HeaderMap::get` with a `&str` lowercases and validates without allocating; a value is
    // `Bytes`-backed, so the clone is a reference count.
    let key = std::str::from_utf8(key).map_err(|_| Status::NotFound)?;
    headers
        .get(key)
        .map(|value| FieldValue::Header(value.clone()))
        .ok_or(Status::NotFound)
}

fn set_pairs(state: &mut HostState, map: MapType, serialized: &[u8]) -> Result<(), Status> {
    let pairs = decode_pairs(serialized).map_err(|_| Status::BadArgument)?;
    writable_map(state, map)?.clear();
    for (key, value) in pairs {
        change(state, map, key, Change::Add(value))?;
    }
    Ok(())
}

pub(super) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut caller: Caller<'_, HostState>, map: i32, return_size: i32| -> i32 {
            let result = (|| {
                if caller.data().http.logging {
                    return Err(UNAVAILABLE);
                }
                let fields = pairs(caller.data(), map_type(map)?)?;
                let size = encoded_len(fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
                write_u32(&mut caller, return_size, size as u32)
            })();
            status(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map: i32, return_data: i32, return_size: i32| -> i32 {
            let result = (|| {
                // A map the callback does not have lists as empty, as in Envoy.
                let fields = pairs(caller.data(), map_type(map)?).unwrap_or_default();
                let mut serialized = Vec::new();
                encode_pairs(
                    fields.iter().map(|(k, v)| (k.as_slice(), v.as_slice())),
                    &mut serialized,
                );
                return_bytes(&mut caller, &serialized, return_data, return_size)
            })();
            status(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut caller: Caller<'_, HostState>, map: i32, data: i32, size: i32| -> i32 {
            let result = (|| {
                let map = map_type(map)?;
                let serialized = read_guest(&caller, data, size)?;
                set_pairs(caller.data_mut(), map, &serialized)
            })();
            status(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut caller: Caller<'_, HostState>,
         map: i32,
         key: i32,
         key_size: i32,
         return_data: i32,
         return_size: i32|
         -> i32 {
            let result = (|| {
                let map = map_type(map)?;
                let value = {
                    let memory = guest_memory(&caller).ok_or(Status::InvalidMemoryAccess)?;
                    let key = slice(memory, key, key_size)?;
                    get_value(caller.data(), map, key)?
                };
                return_bytes(&mut caller, value.as_bytes(), return_data, return_size)
            })();
            status(result)
        },
    )?;
    for (name, replace) in [
        ("proxy_add_header_map_value", false),
        ("proxy_replace_header_map_value", true),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut caller: Caller<'_, HostState>,
                  map: i32,
                  key: i32,
                  key_size: i32,
                  value: i32,
                  value_size: i32|
                  -> i32 {
                let result = (|| {
                    let map = map_type(map)?;
                    let (memory, state) = memory_and_state(&mut caller)?;
                    let key = slice(memory, key, key_size)?;
                    let value = slice(memory, value, value_size)?;
                    let how = if replace {
                        Change::Replace(value)
                    } else {
                        Change::Add(value)
                    };
                    change(state, map, key, how)
                })();
                status(result)
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut caller: Caller<'_, HostState>, map: i32, key: i32, key_size: i32| -> i32 {
            let result = (|| {
                let map = map_type(map)?;
                let (memory, state) = memory_and_state(&mut caller)?;
                let key = slice(memory, key, key_size)?;
                change(state, map, key, Change::Remove)
            })();
            status(result)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut caller: Caller<'_, HostState>,
         status_code: i32,
         details: i32,
         details_size: i32,
         body: i32,
         body_size: i32,
         headers: i32,
         headers_size: i32,
         grpc_status: i32|
         -> i32 {
            let result = (|| {
                let status =
                    StatusCode::from_u16(status_code as u16).map_err(|_| Status::BadArgument)?;
                let details = read_guest(&caller, details, details_size)?;
                let body = read_guest(&caller, body, body_size)?;
                let serialized = read_guest(&caller, headers, headers_size)?;
                let mut fields = Vec::new();
                for (k, v) in decode_pairs(&serialized).map_err(|_| Status::BadArgument)? {
                    let name = String::from_utf8(k.to_ascii_lowercase())
                        .map_err(|_| Status::BadArgument)?;
                    let value = HeaderValue::from_bytes(v).map_err(|_| Status::BadArgument)?;
                    fields.push((name, value));
                }
                let local = LocalResponse {
                    status,
                    headers: fields,
                    body,
                    details: String::from_utf8_lossy(&details).into_owned(),
                    grpc_status: u32::try_from(grpc_status).ok(),
                };
                let state = caller.data_mut();
                // For the callback's own stream the callback's outcome carries it; a stream
                // answered from elsewhere (a call's response, a tick) gets it as an action.
                if state.effective_context == state.callback_context {
                    state.http.local_response = Some(local);
                    if let Some(stop) = state.fused_stop {
                        stop.set(&mut caller, wasmtime::Val::I32(1))
                            .map_err(|_| Status::InternalFailure)?;
                    }
                } else {
                    state
                        .stream_actions
                        .push((state.effective_context, StreamAction::LocalResponse(local)));
                }
                Ok(())
            })();
            status(result)
        },
    )?;
    Ok(())
}
