//! RustNg's local rate limit: one token bucket per `stat_prefix`, kept in proxy-wasm shared
//! data, so every worker (each with its own instance) draws from the same bucket. Updates are
//! compare-and-swap: two workers never both take the last token. A request finding the bucket
//! empty gets `429` with `retry-after` and `x-ratelimit-limit`.

pub mod bucket;

use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};

use bucket::{Bucket, RateLimitConfig, State, Take};

/// Compare-and-swap attempts before a request is let through rather than spun on: contention
/// that high only happens with many workers hammering one bucket, and failing open there is
/// Envoy's choice for its local limit too (it never blocks a request on bookkeeping).
const CAS_ATTEMPTS: usize = 8;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { limit: None }) });
}}

struct Root {
    limit: Option<(String, Bucket)>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match RateLimitConfig::parse(&bytes) {
            Ok((config, bucket)) => {
                self.limit = Some((
                    format!("rustng.local_rate_limit.{}", config.stat_prefix),
                    bucket,
                ));
                true
            }
            Err(error) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &error).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let (key, bucket) = self.limit.clone()?;
        Some(Box::new(Limit { key, bucket }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Limit {
    key: String,
    bucket: Bucket,
}

impl Context for Limit {}

impl Limit {
    fn take(&self) -> Take {
        let now_ns = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        for _ in 0..CAS_ATTEMPTS {
            let (stored, cas) = self.get_shared_data(&self.key);
            let state = stored.as_deref().and_then(State::decode);
            let take = self.bucket.take(state, now_ns);
            let Take::Allowed(next) = take else {
                return take;
            };
            match self.set_shared_data(&self.key, Some(&next.encode()), cas) {
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
                let limit = self.bucket.max_tokens.to_string();
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
