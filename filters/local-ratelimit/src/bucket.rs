//! The token bucket: its configuration (Envoy's `local_ratelimit` `token_bucket`) and one
//! take from a stored state. Pure code; the filter stores the state in shared data.

use std::time::Duration;

use serde::Deserialize;

/// The plugin configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub token_bucket: TokenBucket,
    /// Names the bucket in shared data: plugins with the same key share one bucket.
    #[serde(default = "default_key")]
    pub stat_prefix: String,
}

fn default_key() -> String {
    "local_rate_limit".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub max_tokens: u64,
    /// Default 1.
    pub tokens_per_fill: Option<u64>,
    /// Envoy's duration text: `1s`, `100ms`.
    pub fill_interval: String,
}

/// The bucket, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub max_tokens: u64,
    pub tokens_per_fill: u64,
    pub fill_interval: Duration,
}

impl RateLimitConfig {
    pub fn parse(bytes: &[u8]) -> Result<(RateLimitConfig, Bucket), String> {
        let config: RateLimitConfig =
            serde_json::from_slice(bytes).map_err(|e| format!("local rate limit: {e}"))?;
        let b = &config.token_bucket;
        let fill_interval = rustng_sdk::duration::parse(&b.fill_interval).ok_or_else(|| {
            format!(
                "token_bucket.fill_interval: \"{}\" is not a duration like 1s or 100ms",
                b.fill_interval
            )
        })?;
        if fill_interval < Duration::from_millis(50) {
            // Envoy's lower bound, too.
            return Err("token_bucket.fill_interval: at least 50ms".into());
        }
        let tokens_per_fill = b.tokens_per_fill.unwrap_or(1);
        if b.max_tokens == 0 || tokens_per_fill == 0 {
            return Err("token_bucket: max_tokens and tokens_per_fill must be > 0".into());
        }
        let bucket = Bucket {
            max_tokens: b.max_tokens,
            tokens_per_fill,
            fill_interval,
        };
        Ok((config, bucket))
    }
}

/// The stored state: tokens left and when the bucket was last filled (nanoseconds since the
/// epoch), as 16 bytes in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub tokens: u64,
    pub filled_at_ns: u64,
}

impl State {
    pub fn decode(bytes: &[u8]) -> Option<State> {
        let tokens = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let filled_at_ns = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(State {
            tokens,
            filled_at_ns,
        })
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.tokens.to_le_bytes());
        out[8..].copy_from_slice(&self.filled_at_ns.to_le_bytes());
        out
    }
}

/// The outcome of one take.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Allowed; store this state.
    Allowed(State),
    /// Refused; the next token comes in this many whole seconds (at least 1), for `retry-after`.
    Limited { retry_after_s: u64 },
}

impl Bucket {
    /// Takes one token at `now_ns` from `state` (`None`: a full, new bucket).
    pub fn take(&self, state: Option<State>, now_ns: u64) -> Take {
        let interval = u64::try_from(self.fill_interval.as_nanos()).unwrap_or(u64::MAX);
        let mut state = state.unwrap_or(State {
            tokens: self.max_tokens,
            filled_at_ns: now_ns,
        });
        let fills = now_ns.saturating_sub(state.filled_at_ns) / interval;
        if fills > 0 {
            state.tokens = state
                .tokens
                .saturating_add(fills.saturating_mul(self.tokens_per_fill))
                .min(self.max_tokens);
            state.filled_at_ns = state.filled_at_ns.saturating_add(fills * interval);
        }
        if state.tokens == 0 {
            let next_ns = state
                .filled_at_ns
                .saturating_add(interval)
                .saturating_sub(now_ns);
            return Take::Limited {
                retry_after_s: next_ns.div_ceil(1_000_000_000).max(1),
            };
        }
        state.tokens -= 1;
        Take::Allowed(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn bucket() -> Bucket {
        RateLimitConfig::parse(
            br#"{"token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "2s"}}"#,
        )
        .expect("valid")
        .1
    }

    #[test]
    fn a_full_bucket_empties_then_refills_per_interval() {
        let b = bucket();
        let Take::Allowed(s) = b.take(None, 100 * S) else {
            panic!("first")
        };
        assert_eq!(s.tokens, 1);
        let Take::Allowed(s) = b.take(Some(s), 100 * S) else {
            panic!("second")
        };
        assert_eq!(
            b.take(Some(s), 100 * S + S / 2),
            Take::Limited { retry_after_s: 2 }
        );
        assert_eq!(
            b.take(Some(s), 101 * S + S / 2),
            Take::Limited { retry_after_s: 1 }
        );
        let Take::Allowed(s) = b.take(Some(s), 102 * S) else {
            panic!("refilled")
        };
        assert_eq!(s.tokens, 0);
        // A long pause refills up to the maximum only.
        let Take::Allowed(s) = b.take(Some(s), 200 * S) else {
            panic!("full")
        };
        assert_eq!(s.tokens, 1);
        assert_eq!(State::decode(&s.encode()), Some(s));
    }

    #[test]
    fn bad_buckets_are_refused() {
        for (text, expected) in [
            (
                r#"{"token_bucket": {"max_tokens": 1, "fill_interval": "soon"}}"#,
                "token_bucket.fill_interval: \"soon\" is not a duration like 1s or 100ms",
            ),
            (
                r#"{"token_bucket": {"max_tokens": 1, "fill_interval": "10ms"}}"#,
                "token_bucket.fill_interval: at least 50ms",
            ),
            (
                r#"{"token_bucket": {"max_tokens": 0, "fill_interval": "1s"}}"#,
                "token_bucket: max_tokens and tokens_per_fill must be > 0",
            ),
        ] {
            assert_eq!(
                RateLimitConfig::parse(text.as_bytes()).err().as_deref(),
                Some(expected)
            );
        }
    }
}
