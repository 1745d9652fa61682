//! RustNg's header filter: adds, sets and removes request and response headers, configured
//! with Envoy's header manipulation fields (see [`rules`]). Request rules run before the
//! request leaves (so a router after this filter sees them), response rules before the
//! response goes out.

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod format;
pub mod rules;

use std::borrow::Cow;

use rustng_guest::{Action, Headers, Request, RequestFilter, Response, ResponseFilter};

use format::{AddressPart, Command, Header, Side, ValueFormat, address_part, truncated};
use rules::{Edit, HeaderRules, HeaderValueOption, edits};

// Header edits need no per-request state: built on `rustng-guest`, the host enters it twice
// per request (the two header phases) instead of seven times.
rustng_guest::http_filter!(HeaderEdits);

struct HeaderEdits {
    rules: HeaderRules,
}

impl RequestFilter for HeaderEdits {
    fn configure(configuration: &[u8]) -> Result<HeaderEdits, String> {
        HeaderRules::parse(configuration).map(|rules| HeaderEdits { rules })
    }

    fn on_request_headers(&self, request: &mut Request<'_>, _end_of_stream: bool) -> Action {
        let rules = &self.rules;
        let headers = request.headers();
        let read = |command: &Command| match command {
            Command::RequestHeader(header) => header_value(&headers, header),
            other => connection_value(other, |path| request.property(path)),
        };
        apply(
            request.headers(),
            &rules.request_headers_to_add,
            &rules.request_headers_to_remove,
            read,
        );
        Action::Continue
    }
}

impl ResponseFilter for HeaderEdits {
    fn on_response_headers(&self, response: &mut Response<'_>, _end_of_stream: bool) -> Action {
        let rules = &self.rules;
        let headers = response.headers();
        let read = |command: &Command| match command {
            Command::ResponseHeader(header) => header_value(&headers, header),
            Command::ResponseCode => headers.get(":status"),
            other => connection_value(other, |path| response.property(path)),
        };
        apply(
            response.headers(),
            &rules.response_headers_to_add,
            &rules.response_headers_to_remove,
            read,
        );
        Action::Continue
    }
}

/// `%REQ(X?Y):Z%` / `%RESP(X?Y):Z%`: the header, else its fallback, cut to the length.
fn header_value<'a>(headers: &Headers<'a>, header: &Header) -> Option<&'a str> {
    let value = headers
        .get(&header.name)
        .or_else(|| headers.get(header.fallback.as_deref()?))?;
    Some(truncated(value, header.max_length))
}

/// A command both phases serve: the connection's addresses and protocol, from properties.
fn connection_value<'a>(
    command: &Command,
    property: impl Fn(&[&str]) -> Option<&'a [u8]>,
) -> Option<&'a str> {
    let text = |path: &[&str]| property(path).and_then(|v| std::str::from_utf8(v).ok());
    match command {
        Command::Protocol => text(&["request", "protocol"]),
        Command::Address(side, part) => {
            let path = match side {
                Side::Remote => ["source", "address"],
                Side::Local => ["destination", "address"],
            };
            let address = text(&path)?;
            Some(match part {
                AddressPart::Whole => address,
                part => address_part(address, *part),
            })
        }
        // Headers of the other phase were refused when the plugin was configured.
        _ => None,
    }
}

/// Makes one message's edits.
fn apply<'a>(
    mut headers: Headers<'a>,
    add: &'a [HeaderValueOption],
    remove: &'a [String],
    read: impl Fn(&Command) -> Option<&'a str>,
) {
    let planned = {
        let lookup = &headers;
        let value = |format: &'a ValueFormat| -> Cow<'a, str> { format.render(&read) };
        edits(add, remove, |name| lookup.get_bytes(name).is_some(), value)
    };
    for edit in planned {
        let _ = match edit {
            Edit::Remove(name) => headers.remove(name),
            Edit::Set(name, value) => headers.set(name, &value),
            Edit::Add(name, value) => headers.add(name, &value),
        };
    }
}
