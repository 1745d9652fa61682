//! The serialized pairs format of header maps and gRPC metadata.
//!
//! Little-endian: a `u32` count, then a `u32` key length and a `u32` value length per pair,
//! then each key and each value followed by a NUL byte. An empty map is either zero bytes or
//! a single zero count. Everything here comes from guest memory, so decoding checks every
//! length against the buffer and never trusts the count for an allocation size.

/// Why a serialized map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    /// The buffer ends before what its header announces.
    #[error("serialized pairs truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the header announces.
        needed: usize,
        /// Bytes there are.
        have: usize,
    },
    /// A key or value is not followed by its NUL separator.
    #[error("serialized pairs: missing NUL after pair {index}")]
    MissingNul {
        /// The pair.
        index: usize,
    },
    /// Bytes remain after the last pair.
    #[error("serialized pairs: {extra} bytes after the last pair")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

const U32: usize = 4;

/// A key and its value, borrowed from the serialized buffer.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

fn read_u32(buf: &[u8], at: usize) -> Option<usize> {
    let bytes = buf.get(at..at + U32)?;
    let mut word = [0u8; U32];
    word.copy_from_slice(bytes);
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// Decodes serialized pairs into borrowed key/value slices of `buf`.
pub fn decode_pairs(buf: &[u8]) -> Result<Vec<Pair<'_>>, PairsError> {
    if buf.is_empty() || buf == [0] {
        return Ok(Vec::new());
    }
    let truncated = |needed: usize| PairsError::Truncated {
        needed,
        have: buf.len(),
    };
    let count = read_u32(buf, 0).ok_or_else(|| truncated(U32))?;
    // Each pair takes at least 8 header bytes and 2 NULs: bound the count by the buffer before
    // trusting it for anything, so a hostile count cannot make us allocate.
    let header_end = count
        .checked_mul(2 * U32)
        .and_then(|n| n.checked_add(U32))
        .ok_or_else(|| truncated(usize::MAX))?;
    if header_end > buf.len() || count.saturating_mul(2 * U32 + 2) > buf.len() {
        return Err(truncated(header_end.max(count.saturating_mul(10))));
    }
    let mut pairs = Vec::with_capacity(count);
    let mut data = header_end;
    for index in 0..count {
        let at = U32 + index * 2 * U32;
        let key_len = read_u32(buf, at).ok_or_else(|| truncated(at + U32))?;
        let value_len = read_u32(buf, at + U32).ok_or_else(|| truncated(at + 2 * U32))?;
        let key_end = data
            .checked_add(key_len)
            .filter(|&end| end < buf.len())
            .ok_or_else(|| truncated(data.saturating_add(key_len).saturating_add(1)))?;
        if buf[key_end] != 0 {
            return Err(PairsError::MissingNul { index });
        }
        let value_start = key_end + 1;
        let value_end = value_start
            .checked_add(value_len)
            .filter(|&end| end < buf.len())
            .ok_or_else(|| truncated(value_start.saturating_add(value_len).saturating_add(1)))?;
        if buf[value_end] != 0 {
            return Err(PairsError::MissingNul { index });
        }
        pairs.push((&buf[data..key_end], &buf[value_start..value_end]));
        data = value_end + 1;
    }
    if data != buf.len() {
        return Err(PairsError::TrailingBytes {
            extra: buf.len() - data,
        });
    }
    Ok(pairs)
}

/// Bytes [`encode_pairs`] will write for these pairs.
pub fn encoded_len<'a>(pairs: impl IntoIterator<Item = Pair<'a>>) -> usize {
    pairs
        .into_iter()
        .fold(U32, |n, (k, v)| n + 2 * U32 + k.len() + v.len() + 2)
}

/// Serializes pairs, appending to `out`. Lengths above `u32::MAX` cannot occur for header
/// maps (the proxy's limits are far lower); they are clamped rather than wrapped.
pub fn encode_pairs<'a>(pairs: impl IntoIterator<Item = Pair<'a>> + Clone, out: &mut Vec<u8>) {
    let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let count = pairs.clone().into_iter().count();
    out.reserve(encoded_len(pairs.clone()));
    out.extend_from_slice(&as_u32(count));
    for (k, v) in pairs.clone() {
        out.extend_from_slice(&as_u32(k.len()));
        out.extend_from_slice(&as_u32(v.len()));
    }
    for (k, v) in pairs {
        out.extend_from_slice(k);
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_pairs(
            pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
            &mut out,
        );
        out
    }

    #[test]
    fn the_spec_example() {
        // {"a": "1"}, {"b": "22"}
        let wire = encode(&[("a", "1"), ("b", "22")]);
        let expected: Vec<u8> = [
            &2u32.to_le_bytes()[..],
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &1u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            b"a\x001\x00b\x0022\x00",
        ]
        .concat();
        assert_eq!(wire, expected);
        assert_eq!(
            encoded_len([(&b"a"[..], &b"1"[..]), (b"b", b"22")]),
            wire.len()
        );
        let decoded = decode_pairs(&wire).expect("valid");
        assert_eq!(decoded, vec![(&b"a"[..], &b"1"[..]), (b"b", b"22")]);
    }

    #[test]
    fn empty_maps_in_all_their_spellings() {
        assert!(decode_pairs(&[]).expect("empty").is_empty());
        assert!(decode_pairs(&[0]).expect("one zero byte").is_empty());
        assert!(
            decode_pairs(&0u32.to_le_bytes())
                .expect("zero count")
                .is_empty()
        );
        assert_eq!(encode(&[]), 0u32.to_le_bytes());
    }

    #[test]
    fn values_may_hold_any_byte_and_be_empty() {
        let wire = encode(&[(":path", ""), ("x", "a\u{1}b")]);
        assert_eq!(
            decode_pairs(&wire).expect("valid"),
            vec![(&b":path"[..], &b""[..]), (b"x", b"a\x01b")]
        );
    }

    #[test]
    fn hostile_input_is_refused_without_allocating_or_panicking() {
        // A count of four billion with a tiny buffer.
        let wire = u32::MAX.to_le_bytes();
        assert!(matches!(
            decode_pairs(&wire),
            Err(PairsError::Truncated { .. })
        ));
        // Lengths that overflow.
        let mut wire = encode(&[("k", "v")]);
        wire[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_pairs(&wire),
            Err(PairsError::Truncated { .. })
        ));
        // Missing NUL.
        let mut wire = encode(&[("k", "v")]);
        let last = wire.len() - 1;
        wire[last] = b'!';
        assert_eq!(
            decode_pairs(&wire),
            Err(PairsError::MissingNul { index: 0 })
        );
        // Trailing garbage.
        let mut wire = encode(&[("k", "v")]);
        wire.extend_from_slice(b"xx");
        assert_eq!(
            decode_pairs(&wire),
            Err(PairsError::TrailingBytes { extra: 2 })
        );
        // Every truncation of a valid map fails cleanly.
        let wire = encode(&[("alpha", "1"), ("beta", "22"), ("gamma", "")]);
        for cut in 2..wire.len() {
            assert!(decode_pairs(&wire[..cut]).is_err(), "cut at {cut}");
        }
        // Deterministic junk never panics.
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..5000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let junk: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8 % 5).collect();
            let _ = decode_pairs(&junk);
        }
    }
}
