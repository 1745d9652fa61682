//! RustNg's local rate limit: one token bucket per `stat_prefix`, kept in proxy-wasm shared
//! data, so every worker (each with its own instance) draws from the same bucket. Updates are
//! compare-and-swap: two workers never both take the last token. A request finding the bucket
//! empty gets `429` with `retry-after` and `x-ratelimit-limit`.

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod bucket;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, Status};

use bucket::{Bucket, RateLimitConfig, State, Take};

/// Compare-and-swap attempts before a request is let through rather than spun on: contention
/// that high only happens with many workers hammering one bucket, and failing open there is
/// Envoy's choice for its local limit too (it never blocks a request on bookkeeping).
const CAS_ATTEMPTS: usize = 8;

rustng_sdk::configured_http_filter!(Limiter::parse, |limiter| { Box::new(Limit { limiter }) });

/// A bucket and where it lives in shared data.
struct Limiter {
    key: String,
    bucket: Bucket,
}

impl Limiter {
    fn parse(bytes: &[u8]) -> Result<Limiter, String> {
        let (config, bucket) = RateLimitConfig::parse(bytes)?;
        Ok(Limiter {
            key: format!("rustng.local_rate_limit.{}", config.stat_prefix),
            bucket,
        })
    }
}

struct Limit {
    limiter: Rc<Limiter>,
}

impl Context for Limit {}

impl Limit {
    fn take(&self) -> Take {
        let now_ns = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        for _ in 0..CAS_ATTEMPTS {
            let (stored, cas) = self.get_shared_data(&self.limiter.key);
            let state = stored.as_deref().and_then(State::decode);
            let take = self.limiter.bucket.take(state, now_ns);
            let Take::Allowed(next) = take else {
                return take;
            };
            match self.set_shared_data(&self.limiter.key, Some(&next.encode()), cas) {
                Ok(()) => return take,
                Err(Status::CasMismatch) => continue,
                Err(_) => break,
            }
        }
        Take::Allowed(State {
            tokens: 0,
            filled_at_ns: now_ns,
        })
    }
}

impl HttpContext for Limit {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.take() {
            Take::Allowed(_) => Action::Continue,
            Take::Limited { retry_after_s } => {
                let retry_after = retry_after_s.to_string();
                let limit = self.limiter.bucket.max_tokens.to_string();
                self.send_http_response(
                    429,
                    vec![
                        ("retry-after", &retry_after),
                        ("x-ratelimit-limit", &limit),
                        ("content-type", "text/plain"),
                    ],
                    Some(b"local_rate_limited"),
                );
                Action::Pause
            }
        }
    }
}
