//! What an HTTP stream context exposes to the guest during a callback: the request or response
//! head, moved into the store for the call and back out after it, and what the guest decided.

use std::net::SocketAddr;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use crate::lent::Lent;

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

/// The head a paused stream waits with: the answer of a call the stream made reads and
/// changes it, as in Envoy, where a paused phase's headers are still the filter's.
pub enum PausedHead<'a> {
    /// The request headers phase is paused.
    Request(&'a mut RequestHead),
    /// The response headers phase is paused.
    Response(&'a mut ResponseHead),
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
    /// The gRPC status to answer a gRPC request with (`grpc_status` ≥ 0), as Envoy does.
    pub grpc_status: Option<u32>,
}

/// What a headers callback decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadersOutcome {
    /// Go on to the next filter and the upstream.
    Continue,
    /// The plugin paused the stream (`Action::Pause`) without answering.
    Pause,
    /// The plugin answered locally. Boxed: answers are rare, and the outcome of every
    /// callback is moved out through a few calls (small, it moves in registers).
    LocalResponse(Box<LocalResponse>),
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
    /// The downstream request's version, for `request.protocol` ([`StreamInfo::protocol`]).
    /// A version, not its name: a name would make the struct 8 bytes larger than the
    /// 128 that the compiler moves inline, and it moves at every callback.
    pub version: http::Version,
    /// Whether the downstream connection is TLS.
    pub tls: bool,
    /// Values set by filters, by property path (segments joined by NUL, as the guest sent it).
    pub properties: Vec<(Vec<u8>, Vec<u8>)>,
    /// The request's trace context, while tracing is on (`rustng.trace.*` properties).
    pub trace: Option<rustng_abi::trace::TraceIds>,
}

impl StreamInfo {
    /// The request's protocol in Envoy's spelling (`HTTP/1.1`, `HTTP/2`), for the
    /// `request.protocol` property.
    pub fn protocol(&self) -> &'static str {
        match self.version {
            http::Version::HTTP_09 => "HTTP/0.9",
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_3 => "HTTP/3",
            _ => "HTTP/1.1",
        }
    }

    /// A property a filter set, if any.
    pub fn property(&self, path: &[u8]) -> Option<&[u8]> {
        self.properties
            .iter()
            .find(|(key, _)| key == path)
            .map(|(_, value)| value.as_slice())
    }
}

/// What a body or trailers callback decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Pass the data (as the plugin left it) on.
    Continue,
    /// Hold the data and call again with everything held so far when more arrives
    /// (Envoy's `StopIterationAndBuffer`).
    Buffer,
    /// The plugin answered locally. Boxed: answers are rare, and the outcome of every
    /// callback is moved out through a few calls (small, it moves in registers).
    LocalResponse(Box<LocalResponse>),
}

/// An HTTP call a plugin made with `proxy_http_call`, for the host to send.
#[derive(Debug, Clone)]
pub struct HttpCallRequest {
    /// Handed to the plugin; the answer comes back with it.
    pub token: u32,
    /// The context that made the call (the answer goes to it).
    pub context_id: i32,
    /// The cluster to send it to.
    pub upstream: String,
    /// Method, path and authority come from the `:method`, `:path`, `:authority` fields.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// Host.
    pub authority: String,
    /// The other fields.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: HeaderMap,
    /// How long the host waits for the whole response.
    pub timeout: std::time::Duration,
}

/// The answer to an HTTP call; `None` where it is delivered means the call failed (refused,
/// reset, timed out), which the plugin sees as a response with no headers.
#[derive(Debug, Clone, Default)]
pub struct HttpCallResponse {
    /// Status (`:status`).
    pub status: StatusCode,
    /// Header fields.
    pub headers: HeaderMap,
    /// Body.
    pub body: Vec<u8>,
    /// Trailer fields.
    pub trailers: HeaderMap,
}

/// A gRPC call or stream a plugin opened (`proxy_grpc_call`, `proxy_grpc_stream`).
#[derive(Debug, Clone)]
pub struct GrpcCall {
    /// Handed to the plugin; every event of the call comes back with it.
    pub token: u32,
    /// The context that opened it.
    pub context_id: i32,
    /// The cluster (HTTP/2) to send it to.
    pub upstream: String,
    /// Fully qualified service name (`package.Service`).
    pub service: String,
    /// Method name.
    pub method: String,
    /// Initial metadata (request headers).
    pub metadata: HeaderMap,
    /// The request message of a unary call; `None` for a stream (messages follow with
    /// [`GrpcAction::Send`]).
    pub message: Option<Vec<u8>>,
    /// Deadline of a unary call (`None`: none, as for streams).
    pub timeout: Option<std::time::Duration>,
}

/// What a plugin did to gRPC calls during a callback, for the host to carry out after it.
#[derive(Debug, Clone)]
pub enum GrpcAction {
    /// Open a call or stream.
    Open(GrpcCall),
    /// Send a message on a stream; `end_stream` half-closes it.
    Send {
        /// The stream.
        token: u32,
        /// The message (without gRPC framing).
        message: Vec<u8>,
        /// Whether this is the last message.
        end_stream: bool,
    },
    /// Half-close a stream, or let a call finish (`proxy_grpc_close`).
    Close(u32),
    /// Drop a call or stream without further callbacks (`proxy_grpc_cancel`).
    Cancel(u32),
}

/// Something that happened on a gRPC call or stream, for the plugin.
#[derive(Debug, Clone)]
pub enum GrpcEvent {
    /// The response headers (streams only, as in Envoy).
    InitialMetadata(HeaderMap),
    /// One response message (without framing).
    Message(Vec<u8>),
    /// The response trailers (streams only).
    TrailingMetadata(HeaderMap),
    /// The end: the `grpc-status` and its message (`proxy_get_status` reads them).
    Close {
        /// `grpc-status`.
        status: u32,
        /// `grpc-message`.
        message: String,
    },
}

/// `proxy_continue_stream` / `proxy_close_stream` (and a local response sent outside a
/// stream's own callback), addressed to a stream context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAction {
    /// Resume the request (after a pause).
    ContinueRequest,
    /// Resume the response.
    ContinueResponse,
    /// Let a TCP connection's held client data go on (`proxy_continue_stream(DOWNSTREAM)`).
    ContinueDownstream,
    /// Let a TCP connection's held upstream data go on.
    ContinueUpstream,
    /// Reset the stream.
    Close,
    /// Answer locally.
    LocalResponse(LocalResponse),
}

/// The HTTP state of the callback in progress.
#[derive(Debug, Default)]
pub(crate) struct HttpCallState {
    pub(crate) request: Lent<RequestHead>,
    pub(crate) response: Lent<ResponseHead>,
    /// The response head is hidden while a fused body callback runs: Envoy does not show the
    /// head in the body phase, nor the body in the headers phase (see [`crate::fused`]).
    pub(crate) response_hidden: bool,
    /// The whole body, held back from a fused headers callback until the body phase begins.
    pub(crate) body_aside: Option<(rustng_abi::BufferType, bytes::Bytes)>,
    pub(crate) local_response: Option<LocalResponse>,
    /// Present during stream callbacks.
    pub(crate) stream: Option<StreamInfo>,
    /// The body data a body callback works on (readable and writable as its buffer type).
    /// Shared bytes: a filter that only reads the body, or lets it pass, costs no copy of it;
    /// the first change makes it the filter's own.
    pub(crate) body: Option<(rustng_abi::BufferType, bytes::Bytes)>,
    pub(crate) request_trailers: Lent<HeaderMap>,
    pub(crate) response_trailers: Lent<HeaderMap>,
    /// During `proxy_on_http_call_response`.
    pub(crate) call_response: Option<HttpCallResponse>,
    /// During `proxy_on_foreign_function`.
    pub(crate) foreign_arguments: Option<Vec<u8>>,
    /// During a gRPC metadata callback: which map, and its fields.
    pub(crate) grpc_metadata: Option<(rustng_abi::MapType, HeaderMap)>,
    /// During `proxy_on_grpc_receive`.
    pub(crate) grpc_message: Option<Vec<u8>>,
    /// During `proxy_on_grpc_close`: what `proxy_get_status` answers.
    pub(crate) grpc_status: Option<(u32, String)>,
    /// During `proxy_on_log`: the heads are there to read, not to change (nor to size, as
    /// in Envoy).
    pub(crate) logging: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every callback moves the stream's info into the store and back; up to 128 bytes the
    /// compiler moves it inline instead of calling `memcpy`.
    #[test]
    fn stream_info_moves_inline() {
        assert!(std::mem::size_of::<Option<StreamInfo>>() <= 128);
    }

    #[test]
    fn protocol_is_spelled_as_envoy_does() {
        let stream = |version| StreamInfo {
            version,
            ..StreamInfo::default()
        };
        assert_eq!(stream(http::Version::HTTP_10).protocol(), "HTTP/1.0");
        assert_eq!(stream(http::Version::HTTP_11).protocol(), "HTTP/1.1");
        assert_eq!(stream(http::Version::HTTP_2).protocol(), "HTTP/2");
        assert_eq!(stream(http::Version::HTTP_3).protocol(), "HTTP/3");
    }
}
