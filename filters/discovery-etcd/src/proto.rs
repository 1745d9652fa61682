//! The few etcd v3 messages the adapter speaks (`etcdserverpb` in etcd's `rpc.proto`, and
//! `mvccpb` in `kv.proto`), with etcd's field numbers. Fields the adapter never reads are left
//! out; protobuf skips them on decode.

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    /// The store's revision when the response was made.
    #[prost(int64, tag = "3")]
    pub revision: i64,
}

/// `etcdserverpb.RangeRequest`: the keys in `[key, range_end)`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
    /// More keys than were returned (a `limit`; the adapter sets none).
    #[prost(bool, tag = "3")]
    pub more: bool,
}

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.WatchRequest`, create form only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchRequest {
    #[prost(message, optional, tag = "1")]
    pub create_request: Option<WatchCreateRequest>,
}

/// `etcdserverpb.WatchCreateRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchCreateRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// First revision to send events from (inclusive); 0 for "now".
    #[prost(int64, tag = "3")]
    pub start_revision: i64,
    /// Periodic empty responses while nothing changes.
    #[prost(bool, tag = "4")]
    pub progress_notify: bool,
}

/// `etcdserverpb.WatchResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WatchResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(bool, tag = "3")]
    pub created: bool,
    #[prost(bool, tag = "4")]
    pub canceled: bool,
    /// Set when `start_revision` was compacted away: the events are lost, read again.
    #[prost(int64, tag = "5")]
    pub compact_revision: i64,
    #[prost(string, tag = "6")]
    pub cancel_reason: String,
    #[prost(message, repeated, tag = "11")]
    pub events: Vec<Event>,
}

/// `mvccpb.Event`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// 0 `PUT`, 1 `DELETE`.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

/// `mvccpb.Event.EventType.DELETE`.
pub const DELETE: i32 = 1;

/// The end of the range that holds every key starting with `prefix` (etcd's `GetPrefixRangeEnd`:
/// the prefix with its last byte below 0xff incremented, what follows it dropped).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or no prefix): every key from `prefix` on.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn prefix_ends_as_etcd_computes_them() {
        assert_eq!(prefix_end(b"/svc/"), b"/svc0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn messages_use_etcds_field_numbers() {
        // WatchRequest{create_request{key "k", range_end "l", start_revision 7}}, as etcd's
        // generated Go code encodes it.
        let bytes = WatchRequest {
            create_request: Some(WatchCreateRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                start_revision: 7,
                progress_notify: false,
            }),
        }
        .encode_to_vec();
        assert_eq!(
            bytes,
            [0x0a, 0x08, 0x0a, 0x01, b'k', 0x12, 0x01, b'l', 0x18, 0x07]
        );
        // An event: type DELETE (field 1), kv (field 2) with key and mod_revision.
        let event = Event::decode(&[0x08, 0x01, 0x12, 0x05, 0x0a, 0x01, b'k', 0x18, 0x09][..])
            .expect("decodes");
        assert_eq!(event.kind, DELETE);
        assert_eq!(event.kv.expect("kv").mod_revision, 9);
    }
}
