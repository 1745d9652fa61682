//! The ABI's enumerations with their wire values. Every `TryFrom<u32>` rejects unknown values,
//! so a hostcall can answer `BAD_ARGUMENT` instead of guessing.

/// A value the guest sent that the enumeration does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} value {value}")]
pub struct UnknownValue {
    /// The enumeration.
    pub kind: &'static str,
    /// What the guest sent.
    pub value: u32,
}

macro_rules! abi_enum {
    ($(#[$meta:meta])* $name:ident ($kind:literal) { $($(#[$vmeta:meta])* $variant:ident = $value:literal),+ $(,)? }) => {
        $(#[$meta])*
        /// Variants order by wire value (for log levels: by severity).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u32)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value),+
        }

        impl TryFrom<u32> for $name {
            type Error = UnknownValue;
            fn try_from(value: u32) -> Result<Self, UnknownValue> {
                match value {
                    $($value => Ok($name::$variant),)+
                    _ => Err(UnknownValue { kind: $kind, value }),
                }
            }
        }

        impl From<$name> for u32 {
            fn from(v: $name) -> u32 {
                v as u32
            }
        }

        impl $name {
            /// Every variant, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
        }
    };
}

abi_enum! {
    /// `proxy_status_t`: what every proxy-wasm hostcall returns.
    Status ("proxy_status_t") {
        /// Success.
        Ok = 0,
        /// The key, buffer, queue or context does not exist.
        NotFound = 1,
        /// An argument is out of range (unknown map or buffer type, …).
        BadArgument = 2,
        /// A value could not be serialized.
        SerializationFailure = 3,
        /// A value from the guest could not be parsed.
        ParseFailure = 4,
        /// A pointer or length from the guest is outside its memory.
        InvalidMemoryAccess = 6,
        /// Nothing to dequeue.
        Empty = 7,
        /// Compare-and-swap value did not match.
        CasMismatch = 8,
        /// The host failed.
        InternalFailure = 10,
        /// The host does not implement this.
        Unimplemented = 12,
    }
}

abi_enum! {
    /// `proxy_log_level_t`.
    LogLevel ("proxy_log_level_t") {
        /// Trace.
        Trace = 0,
        /// Debug.
        Debug = 1,
        /// Info.
        Info = 2,
        /// Warn.
        Warn = 3,
        /// Error.
        Error = 4,
        /// Critical.
        Critical = 5,
    }
}

abi_enum! {
    /// `proxy_action_t`: what a stream callback returns.
    Action ("proxy_action_t") {
        /// Go on with the stream.
        Continue = 0,
        /// Stop iterating until the plugin resumes the stream.
        Pause = 1,
    }
}

abi_enum! {
    /// `proxy_buffer_type_t`.
    BufferType ("proxy_buffer_type_t") {
        /// Request body, in `proxy_on_request_body`.
        HttpRequestBody = 0,
        /// Response body, in `proxy_on_response_body`.
        HttpResponseBody = 1,
        /// TCP data from downstream.
        DownstreamData = 2,
        /// TCP data from upstream.
        UpstreamData = 3,
        /// Body of an HTTP callout's response.
        HttpCallResponseBody = 4,
        /// A received gRPC message.
        GrpcReceiveBuffer = 5,
        /// VM configuration, in `proxy_on_vm_start`.
        VmConfiguration = 6,
        /// Plugin configuration, in `proxy_on_configure`.
        PluginConfiguration = 7,
        /// Arguments of a foreign function call.
        CallData = 8,
    }
}

abi_enum! {
    /// `proxy_map_type_t`.
    MapType ("proxy_map_type_t") {
        /// Request headers.
        HttpRequestHeaders = 0,
        /// Request trailers.
        HttpRequestTrailers = 1,
        /// Response headers.
        HttpResponseHeaders = 2,
        /// Response trailers.
        HttpResponseTrailers = 3,
        /// gRPC initial metadata of a gRPC callout.
        GrpcReceiveInitialMetadata = 4,
        /// gRPC trailing metadata of a gRPC callout.
        GrpcReceiveTrailingMetadata = 5,
        /// Headers of an HTTP callout's response.
        HttpCallResponseHeaders = 6,
        /// Trailers of an HTTP callout's response.
        HttpCallResponseTrailers = 7,
    }
}

abi_enum! {
    /// `proxy_peer_type_t`: who closed a connection.
    PeerType ("proxy_peer_type_t") {
        /// Unknown.
        Unknown = 0,
        /// This proxy.
        Local = 1,
        /// The other side.
        Remote = 2,
    }
}

abi_enum! {
    /// `proxy_stream_type_t`.
    StreamType ("proxy_stream_type_t") {
        /// The HTTP request.
        HttpRequest = 0,
        /// The HTTP response.
        HttpResponse = 1,
        /// The downstream TCP connection.
        Downstream = 2,
        /// The upstream TCP connection.
        Upstream = 3,
    }
}

abi_enum! {
    /// `proxy_metric_type_t`.
    MetricType ("proxy_metric_type_t") {
        /// Only goes up.
        Counter = 0,
        /// Goes up and down.
        Gauge = 1,
        /// Distribution of recorded values.
        Histogram = 2,
    }
}

abi_enum! {
    /// The WASI errno values proxy-wasm hosts return.
    WasiErrno ("wasi_errno_t") {
        /// Success.
        Success = 0,
        /// Bad file descriptor.
        Badf = 8,
        /// Bad address (pointer outside guest memory).
        Fault = 21,
        /// Invalid argument.
        Inval = 28,
        /// Not supported.
        Notsup = 58,
    }
}

abi_enum! {
    /// The file descriptors `fd_write` accepts: both become log lines.
    WasiFd ("wasi_fd_id_t") {
        /// Logged at info.
        Stdout = 1,
        /// Logged at error.
        Stderr = 2,
    }
}

abi_enum! {
    /// `clock_time_get` clocks.
    WasiClock ("wasi_clock_id_t") {
        /// Wall clock.
        Realtime = 0,
        /// Monotonic clock.
        Monotonic = 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_values_round_trip_and_unknown_values_are_refused() {
        for s in Status::ALL {
            assert_eq!(Status::try_from(u32::from(*s)), Ok(*s));
        }
        assert_eq!(u32::from(Status::InvalidMemoryAccess), 6);
        assert_eq!(u32::from(Status::Unimplemented), 12);
        assert_eq!(
            Status::try_from(5),
            Err(UnknownValue {
                kind: "proxy_status_t",
                value: 5
            })
        );
        assert_eq!(MapType::ALL.len(), 8);
        assert_eq!(BufferType::try_from(8), Ok(BufferType::CallData));
        assert!(BufferType::try_from(9).is_err());
        assert_eq!(LogLevel::try_from(5), Ok(LogLevel::Critical));
        assert!(LogLevel::try_from(6).is_err());
        assert_eq!(u32::from(WasiErrno::Notsup), 58);
    }
}
