//! A request's place in a distributed trace, in W3C Trace Context terms, and its text forms.
//!
//! The host propagates it (`traceparent`) and shows it to filters through the
//! `rustng.trace.*` properties ([`crate::extensions`]); both sides format it here so that
//! the two cannot disagree on a digit.

use std::fmt;

/// The trace a request belongs to and the span RustNg opened for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace, 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// RustNg's span for this request: the parent of whatever the upstream records.
    pub span_id: [u8; 8],
    /// The span of whoever sent the request, if it carried a trace context.
    pub parent_span_id: Option<[u8; 8]>,
    /// Whether the trace is recorded (W3C's `sampled` flag).
    pub sampled: bool,
}

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

impl TraceIds {
    /// The `traceparent` header value that carries this context to the next hop:
    /// `00-<trace-id>-<span-id>-<flags>`.
    pub fn traceparent(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = [b'-'; TRACEPARENT_LEN];
        out[0] = b'0';
        out[1] = b'0';
        write_hex(&mut out[3..35], &self.trace_id);
        write_hex(&mut out[36..52], &self.span_id);
        out[53] = b'0';
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }
}

/// Bytes as lower-case hex, the only spelling W3C Trace Context allows.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buffer = [0u8; 32];
        for chunk in self.0.chunks(16) {
            let text = &mut buffer[..chunk.len() * 2];
            write_hex(text, chunk);
            // Hex digits are ASCII.
            f.write_str(std::str::from_utf8(text).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_w3c_version_00() {
        let ids = TraceIds {
            trace_id: [
                0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e,
                0x47, 0x36,
            ],
            span_id: [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7],
            parent_span_id: None,
            sampled: true,
        };
        assert_eq!(
            &ids.traceparent()[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let unsampled = TraceIds {
            sampled: false,
            ..ids
        };
        assert!(unsampled.traceparent().ends_with(b"-00"));
        assert_eq!(Hex(&ids.span_id).to_string(), "00f067aa0ba902b7");
        assert_eq!(
            Hex(&ids.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
