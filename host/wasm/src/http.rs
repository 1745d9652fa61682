//! What an HTTP stream context exposes to the guest during a callback: the request or response
//! head, moved into the store for the call and back out after it, and what the guest decided.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

/// A request head as filters see it: Envoy's pseudo-headers (`:method`, `:path`,
/// `:authority`, `:scheme`) come from the request line.
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    /// Method.
    pub method: Method,
    /// Target (path and query, or absolute form).
    pub uri: Uri,
    /// Header fields.
    pub headers: HeaderMap,
    /// `http` or `https`, for `:scheme`.
    pub scheme: &'static str,
}

/// A response head as filters see it, with `:status`.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    /// Status.
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
}

/// A response the plugin asked the host to send instead of proxying
/// (`proxy_send_local_response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// Status code.
    pub status: StatusCode,
    /// Extra headers.
    pub headers: Vec<(String, HeaderValue)>,
    /// Body.
    pub body: Vec<u8>,
    /// `status_code_details`, for the access log.
    pub details: String,
}

/// What a headers callback decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadersOutcome {
    /// Go on to the next filter and the upstream.
    Continue,
    /// The plugin paused the stream (`Action::Pause`) without answering.
    Pause,
    /// The plugin answered locally.
    LocalResponse(LocalResponse),
}

/// What the host knows about a stream besides its heads: where it came from and what its
/// filters stored with `proxy_set_property`. One per request, shared by all its filters
/// (Envoy's filter state), so a value one plugin sets another can read.
#[derive(Debug, Clone, Default)]
pub struct StreamInfo {
    /// The downstream peer.
    pub source: Option<SocketAddr>,
    /// The local address the request arrived on.
    pub destination: Option<SocketAddr>,
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2` (Envoy's spelling, for `request.protocol`).
    pub protocol: &'static str,
    /// Whether the downstream connection is TLS.
    pub tls: bool,
    /// Values set by filters, by property path (segments joined by NUL, as the guest sent it).
    pub properties: Vec<(Vec<u8>, Vec<u8>)>,
}

impl StreamInfo {
    /// A property a filter set, if any.
    pub fn property(&self, path: &[u8]) -> Option<&[u8]> {
        self.properties
            .iter()
            .find(|(key, _)| key == path)
            .map(|(_, value)| value.as_slice())
    }
}

/// The HTTP state of the callback in progress.
#[derive(Debug, Default)]
pub(crate) struct HttpCallState {
    pub(crate) request: Option<RequestHead>,
    pub(crate) response: Option<ResponseHead>,
    pub(crate) local_response: Option<LocalResponse>,
    /// Present during stream callbacks.
    pub(crate) stream: Option<StreamInfo>,
}
