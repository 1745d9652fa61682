//! Connection IDs that say which process owns a connection, so that during a binary upgrade,
//! when the old and the new process read the same UDP sockets, each packet can be passed to
//! the process that knows its connection ([`super::handover`]).
//!
//! A RustNg connection ID is 8 bytes: the process's 2-byte tag, then 6 random bytes. The tag
//! changes with every upgrade (the successor takes the next one). It tells an observer which
//! process generation a connection belongs to and nothing else, as QUIC-LB's plaintext
//! server IDs do.

use std::time::Duration;

use quinn::{ConnectionId, ConnectionIdGenerator};

/// Length of RustNg's connection IDs (quinn's default too).
pub(crate) const CID_LEN: usize = 8;

/// Issues tagged connection IDs.
pub(crate) struct TaggedCids {
    pub(crate) tag: u16,
}

impl ConnectionIdGenerator for TaggedCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes[..2].copy_from_slice(&self.tag.to_be_bytes());
        fill_random(&mut bytes[2..]);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// QUIC wants connection IDs an observer cannot link to each other: the operating system's
/// generator, with fastrand only if that fails (it does not on Linux).
fn fill_random(out: &mut [u8]) {
    use ring::rand::SecureRandom as _;
    if ring::rand::SystemRandom::new().fill(out).is_err() {
        fastrand::fill(out);
    }
}

/// Which process a datagram is for, read from its header without decrypting anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Addressee {
    /// A connection whose ID carries this tag.
    Tagged(u16),
    /// A client starting a connection (its first Initial or 0-RTT packets carry an ID it
    /// chose), or something no process can place: the process accepting new connections
    /// takes it.
    Newcomer,
}

/// Reads the destination connection ID of a QUIC packet (RFC 9000, 17.2 and 17.3): a short
/// header's is [`CID_LEN`] bytes after the first; a long header's has its length before it.
pub(crate) fn addressee(datagram: &[u8]) -> Addressee {
    let Some(&first) = datagram.first() else {
        return Addressee::Newcomer;
    };
    let tag = |cid: &[u8]| match cid {
        [a, b, ..] if cid.len() == CID_LEN => Addressee::Tagged(u16::from_be_bytes([*a, *b])),
        _ => Addressee::Newcomer,
    };
    if first & 0x80 == 0 {
        return datagram
            .get(1..1 + CID_LEN)
            .map_or(Addressee::Newcomer, tag);
    }
    // Long header: version (4 bytes), DCID length, DCID. A client's later Initial packets
    // already use the ID the server chose, and so do Handshake packets: the tag places them.
    let Some(&len) = datagram.get(5) else {
        return Addressee::Newcomer;
    };
    datagram
        .get(6..6 + usize::from(len))
        .map_or(Addressee::Newcomer, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_the_tag_and_differ() {
        let mut cids = TaggedCids { tag: 0xbeef };
        let a = cids.generate_cid();
        let b = cids.generate_cid();
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(&a[..2], &[0xbe, 0xef]);
        assert_ne!(&a[..], &b[..]);
    }

    #[test]
    fn packets_are_placed_by_their_destination_id() {
        // Short header: flags, then the 8-byte DCID.
        let short = [0x40, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 0xff, 0xff];
        assert_eq!(addressee(&short), Addressee::Tagged(0x1234));
        // Long header (Handshake) with an 8-byte DCID.
        let mut long = vec![0xe0, 0, 0, 0, 1, 8, 0xab, 0xcd, 1, 2, 3, 4, 5, 6, 8];
        long.extend_from_slice(&[9; 8]);
        assert_eq!(addressee(&long), Addressee::Tagged(0xabcd));
        // A client's first Initial: a 16-byte DCID it chose.
        let mut initial = vec![0xc0, 0, 0, 0, 1, 16];
        initial.extend_from_slice(&[7; 16]);
        assert_eq!(addressee(&initial), Addressee::Newcomer);
        // Truncated or empty datagrams belong to nobody in particular.
        assert_eq!(addressee(&[]), Addressee::Newcomer);
        assert_eq!(addressee(&[0x40, 1, 2]), Addressee::Newcomer);
        assert_eq!(addressee(&[0xc0, 0, 0, 0, 1, 8, 1]), Addressee::Newcomer);
    }
}
