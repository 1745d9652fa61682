//! Which HTTP version a cleartext client speaks, decided once per connection.
//!
//! HTTP/2 with prior knowledge starts with a fixed 24-byte preface; anything else is HTTP/1.x.
//! Peeking (not reading) leaves the bytes for the codec, so the connection is then served by
//! hyper's HTTP/1 or HTTP/2 codec directly, with no rewind layer under every later read.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Pause between peeks while a client sends its preface in pieces (rare: it fits one packet).
const PARTIAL_PREFACE_PAUSE: Duration = Duration::from_millis(5);

/// The protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

/// Waits for the client's first bytes and tells the protocol; `Ok(None)` if the client closed
/// or sent nothing within `first_byte_timeout`, or dawdled over the preface past `head_timeout`.
pub(crate) async fn sniff(
    stream: &TcpStream,
    first_byte_timeout: Duration,
    head_timeout: Duration,
) -> io::Result<Option<Protocol>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let Ok(first) = tokio::time::timeout(first_byte_timeout, stream.peek(&mut buf)).await else {
        return Ok(None);
    };
    let mut n = first?;
    let deadline = Instant::now() + head_timeout;
    loop {
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(Protocol::Http1));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Protocol::Http2));
        }
        // A strict prefix of the preface: the socket stays readable with the same bytes, so
        // wait a little instead of peeking in a tight loop.
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(PARTIAL_PREFACE_PAUSE).await;
        n = stream.peek(&mut buf).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    // A unit test's own runtime, not a worker: spawning a plain task is fine here.
    #[allow(clippy::disallowed_methods)]
    async fn sniff_bytes(chunks: &[&[u8]]) -> Option<Protocol> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
        let writer = tokio::spawn(async move {
            for chunk in chunks {
                client.write_all(&chunk).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            client
        });
        let found = sniff(&server, Duration::from_secs(1), Duration::from_millis(500))
            .await
            .expect("sniff");
        drop(writer.await);
        found
    }

    #[tokio::test]
    async fn tells_http1_from_http2() {
        assert_eq!(
            sniff_bytes(&[b"GET / HTTP/1.1\r\n"]).await,
            Some(Protocol::Http1)
        );
        assert_eq!(sniff_bytes(&[H2_PREFACE]).await, Some(Protocol::Http2));
        assert_eq!(
            sniff_bytes(&[b"PRI * HT", b"TP/2.0\r\n\r\nSM\r\n\r\n"]).await,
            Some(Protocol::Http2)
        );
        // "PR" then something else: HTTP/1 (a method named PRX, say), decided once it differs.
        assert_eq!(
            sniff_bytes(&[b"PR", b"X / HTTP/1.1\r\n"]).await,
            Some(Protocol::Http1)
        );
        assert_eq!(sniff_bytes(&[]).await, None);
    }
}
