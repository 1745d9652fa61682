//! Header rules of a proxy: hop-by-hop headers stop here, forwarding headers are added.

use std::io::Write;
use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1), plus `te`
/// (end-to-end only as `te: trailers`, which gRPC needs) and `expect` (answered here), as
/// bits: one scan of the names finds which of them a message has.
mod hop {
    pub(super) const CONNECTION: u8 = 1;
    pub(super) const TRANSFER_ENCODING: u8 = 1 << 1;
    pub(super) const UPGRADE: u8 = 1 << 2;
    pub(super) const TE: u8 = 1 << 3;
    pub(super) const EXPECT: u8 = 1 << 4;
    pub(super) const KEEP_ALIVE: u8 = 1 << 5;
    pub(super) const PROXY_CONNECTION: u8 = 1 << 6;
}

/// The [`hop`] bit of `name`, 0 for an end-to-end header. Standard names compare as enum tags.
fn hop_bit(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        hop::CONNECTION
    } else if name == header::TRANSFER_ENCODING {
        hop::TRANSFER_ENCODING
    } else if name == header::UPGRADE {
        hop::UPGRADE
    } else if name == header::TE {
        hop::TE
    } else if name == header::EXPECT {
        hop::EXPECT
    } else if name == KEEP_ALIVE {
        hop::KEEP_ALIVE
    } else if name == PROXY_CONNECTION {
        hop::PROXY_CONNECTION
    } else {
        0
    }
}

/// Whether a `connection` option is one [`strip_hop_by_hop`] handles without naming a header:
/// `close`, or a hop-by-hop name removed by its bit when present (not `te`: named here, it goes
/// even as `te: trailers`). Compared as text, before any `HeaderName` is made of it.
fn is_hop_token(token: &str) -> bool {
    [
        "keep-alive",
        "close",
        "transfer-encoding",
        "proxy-connection",
        "expect",
    ]
    .iter()
    .any(|hop| token.eq_ignore_ascii_case(hop))
}

/// What [`strip_hop_by_hop`] took out that the proxy still needs.
#[derive(Debug, Default)]
pub(crate) struct Removed {
    /// The `upgrade` header, when the message asked for a protocol switch (`Connection: upgrade`).
    pub(crate) upgrade: Option<HeaderValue>,
}

/// Removes hop-by-hop headers, including every header the `connection` header names, and
/// `expect` (the HTTP/1.1 connection answers `100-continue` itself when the body is first read, which is when the
/// upstream starts taking it, so the upstream must not see the expectation again).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) -> Removed {
    // One scan with cheap comparisons instead of a hashed lookup per name: most messages have
    // none of these, and most of the rest only `connection` (an upstream's `keep-alive`).
    let present = headers.keys().fold(0, |bits, name| bits | hop_bit(name));
    let mut removed = Removed::default();
    if present == 0 {
        return removed;
    }
    if present & hop::CONNECTION != 0
        && let Entry::Occupied(slot) = headers.entry(header::CONNECTION)
    {
        let mut named = Vec::new();
        let mut upgrade = false;
        // Taken out with all its values in one lookup.
        for value in slot.remove_entry_mult().1 {
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                } else if is_hop_token(token) {
                    // `keep-alive` (every nginx upstream's answer) and `close` name no header
                    // to take out beyond the bits' own: no name to parse (an allocation each).
                } else if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    // The hop-by-hop names go below, when present; `te` named here goes even
                    // as `te: trailers`.
                    if hop_bit(&name) & !hop::TE == 0 {
                        named.push(name);
                    }
                }
            }
        }
        if upgrade && present & hop::UPGRADE != 0 {
            removed.upgrade = headers.get(header::UPGRADE).cloned();
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (bit, name) in [
        (hop::KEEP_ALIVE, &KEEP_ALIVE),
        (hop::PROXY_CONNECTION, &PROXY_CONNECTION),
        (hop::TRANSFER_ENCODING, &header::TRANSFER_ENCODING),
        (hop::UPGRADE, &header::UPGRADE),
        (hop::EXPECT, &header::EXPECT),
    ] {
        if present & bit != 0 {
            headers.remove(name);
        }
    }
    if present & hop::TE != 0
        && let Some(te) = headers.get(header::TE)
    {
        let trailers = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
    removed
}

/// The client address as a header value, made once per connection: formatting an address is
/// the costliest part of the forwarding headers, and every request on the connection shares it.
pub(crate) fn client_address_value(client: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // An IPv6 address with scope fits in 64 bytes, and its text is always a valid value.
    let len = match write!(cursor, "{client}") {
        Ok(()) => cursor.position() as usize,
        Err(_) => 0,
    };
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Appends the client address (from [`client_address_value`]) to `x-forwarded-for`, as nginx's
/// `$proxy_add_x_forwarded_for` does, and sets `x-forwarded-proto` to the scheme the client used.
pub(crate) fn add_forwarding(headers: &mut HeaderMap, client: &HeaderValue, tls: bool) {
    // One hashed lookup per header (`entry`), not a `get` and an `insert`.
    match headers.entry(X_FORWARDED_FOR.clone()) {
        Entry::Vacant(slot) => {
            slot.insert(client.clone());
        }
        Entry::Occupied(mut slot) => {
            let prior = slot.get().as_bytes();
            let mut value = Vec::with_capacity(prior.len() + 2 + client.len());
            value.extend_from_slice(prior);
            value.extend_from_slice(b", ");
            value.extend_from_slice(client.as_bytes());
            if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
                slot.insert(value);
            }
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
}

/// The request's `x-request-id`, generated (UUID v4) and set when the client sent none.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    match headers.entry(X_REQUEST_ID.clone()) {
        Entry::Occupied(slot) => slot.get().clone(),
        Entry::Vacant(slot) => slot.insert(crate::request_id::generate()).clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret, Upgrade"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("te", HeaderValue::from_static("gzip, trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert("expect", HeaderValue::from_static("100-continue"));
        let removed = strip_hop_by_hop(&mut h);
        assert_eq!(removed.upgrade, Some(HeaderValue::from_static("websocket")));
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["te", "x-keep"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn te_named_by_connection_is_dropped_even_as_trailers() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("te"));
        h.append("connection", HeaderValue::from_static("x-a"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("2"));
        let removed = strip_hop_by_hop(&mut h);
        assert!(removed.upgrade.is_none());
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-b"]);
    }

    #[test]
    fn connection_options_that_name_no_other_header_are_taken_out_alone() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Keep-Alive, close"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["te", "x-keep"]);
        assert!(is_hop_token("KEEP-ALIVE") && is_hop_token("close"));
        assert!(!is_hop_token("te") && !is_hop_token("x-secret"));
    }

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn forwarding_headers_append_and_set() {
        let mut h = HeaderMap::new();
        add_forwarding(
            &mut h,
            &client_address_value("10.0.0.1".parse().expect("ip")),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        add_forwarding(
            &mut h,
            &client_address_value("::1".parse().expect("ip")),
            true,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, ::1");
        assert_eq!(h["x-forwarded-proto"], "https");
        let long = "1.2.3.4, ".repeat(100);
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_str(&long).expect("value"),
        );
        add_forwarding(
            &mut h,
            &client_address_value("5.6.7.8".parse().expect("ip")),
            false,
        );
        assert!(
            h["x-forwarded-for"]
                .to_str()
                .expect("ascii")
                .ends_with(", 5.6.7.8")
        );
    }
}
