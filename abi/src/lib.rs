//! The proxy-wasm ABI as data: the numeric types every hostcall speaks, the serialized pairs
//! format of header maps, ABI version detection, the table of hostcalls and callbacks, and
//! RustNg's extension names ([`extensions`]).
//!
//! Shared by the wasm host, the Rust SDK helpers and the tests, so it depends on nothing
//! heavier than `thiserror`. Source: the proxy-wasm ABI specification, v0.2.1 (with the
//! v0.2.0 and v0.1.0 differences recorded in [`table`] as they are implemented).

pub mod extensions;
mod pairs;
pub mod table;
pub mod trace;
mod types;
mod version;

pub use pairs::{Pair, PairsError, decode_pairs, encode_pairs, encoded_len};
pub use types::{
    Action, BufferType, LogLevel, MapType, MetricType, PeerType, Status, StreamType, UnknownValue,
    WasiClock, WasiErrno, WasiFd,
};
pub use version::{AbiVersion, VersionError};
