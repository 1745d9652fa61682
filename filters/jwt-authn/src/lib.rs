//! JWT authentication, configured as Envoy's `jwt_authn` filter (`providers`, `rules`):
//! tokens from headers, query parameters or cookies, verified with RS/PS/ES/HS/EdDSA keys from
//! a JWKS given inline or fetched from a cluster (cached per worker), issuer, audiences and
//! time claims checked, claims copied into request headers. A request that fails its rule's
//! requirement is answered 401 (403 for a foreign audience) with Envoy's messages.

// The proxy-wasm glue is reachable only from the wasm entry point; native builds are for the
// unit tests of the pure parts.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

pub mod config;
pub mod keys;
pub mod outcome;
pub mod provider;
pub mod requirement;

use std::rc::Rc;

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde_json::Value;

use config::Settings;
use keys::KeySet;
use outcome::Failure;
use provider::{FoundToken, KeySource, TokenLocation};
use requirement::{Requirement, Verdict};

rustng_sdk::configured_http_filter!(Settings::parse, |settings| {
    Box::new(JwtAuthn {
        settings,
        pending: None,
    })
});

struct JwtAuthn {
    settings: Rc<Settings>,
    pending: Option<Pending>,
}

/// A request being checked: the providers its requirement reads, their tokens, and the keys
/// of remote providers as they arrive.
struct Pending {
    requirement: Requirement,
    providers: Vec<Check>,
    /// The provider whose JWKS is being fetched, with the call's token.
    fetching: Option<(u32, usize)>,
    realm: String,
}

/// One provider the requirement reads, for this request.
struct Check {
    provider: usize,
    token: Option<FoundToken>,
    /// A remote provider's keys once known: `Some(None)` when the fetch failed.
    keys: Option<Option<Rc<KeySet>>>,
}

impl Context for JwtAuthn {
    fn on_http_call_response(&mut self, token_id: u32, headers: usize, body_size: usize, _: usize) {
        let Some(pending) = self.pending.as_mut() else {
            return;
        };
        let Some((expected, slot)) = pending.fetching.take() else {
            return;
        };
        if expected != token_id {
            return;
        }
        let settings = Rc::clone(&self.settings);
        let provider = &settings.providers[pending.providers[slot].provider];
        // A failed call has no response headers, and a host answers BAD_ARGUMENT (which the
        // SDK panics on) to reading them: Envoy does.
        let status = if headers == 0 {
            None
        } else {
            self.get_http_call_response_header(":status")
        };
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        let fetched = match (status.as_deref(), &provider.keys) {
            (Some("200"), KeySource::Remote(remote)) => {
                match serde_json::from_slice::<JwkSet>(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|set| KeySet::from_jwks(&set))
                {
                    Ok(set) => Some(remote.store(set, self.get_current_time())),
                    Err(error) => {
                        log_warn(&format!(
                            "jwt_authn: provider {}: JWKS refused: {error}",
                            provider.name
                        ));
                        None
                    }
                }
            }
            (status, _) => {
                log_warn(&format!(
                    "jwt_authn: provider {}: JWKS fetch answered {}",
                    provider.name,
                    status.unwrap_or("nothing (timeout or connection failure)")
                ));
                None
            }
        };
        if let Some(pending) = self.pending.as_mut() {
            pending.providers[slot].keys = Some(fetched);
        }
        if let Action::Continue = self.advance() {
            self.resume_http_request();
        }
    }
}

impl HttpContext for JwtAuthn {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let settings = Rc::clone(&self.settings);
        if settings.bypass_cors_preflight && self.is_cors_preflight() {
            return Action::Continue;
        }
        let Some(requirement) = settings
            .rules
            .iter()
            .find(|rule| rule.matcher.matches(&path))
            .and_then(|rule| rule.requirement.clone())
        else {
            return Action::Continue;
        };
        let mut indices = Vec::new();
        requirement.providers(settings.providers.len(), &mut indices);
        let header = |name: &str| self.get_http_request_header(name);
        let providers = indices
            .into_iter()
            .map(|provider| Check {
                provider,
                token: settings.providers[provider].find_token(&header, &path),
                keys: None,
            })
            .collect();
        let authority = self
            .get_http_request_header(":authority")
            .unwrap_or_default();
        let scheme = self
            .get_http_request_header(":scheme")
            .unwrap_or_else(|| "http".into());
        let realm_path = path.split('?').next().unwrap_or(&path);
        self.pending = Some(Pending {
            requirement,
            providers,
            fetching: None,
            realm: format!("{scheme}://{authority}{realm_path}"),
        });
        self.advance()
    }
}

impl JwtAuthn {
    fn is_cors_preflight(&self) -> bool {
        self.get_http_request_header(":method").as_deref() == Some("OPTIONS")
            && self.get_http_request_header("origin").is_some()
            && self
                .get_http_request_header("access-control-request-method")
                .is_some()
    }

    /// Fetches the next missing JWKS (pausing), or decides: `Continue` with the claims' headers
    /// added, or `Pause` with the local reply sent.
    fn advance(&mut self) -> Action {
        let settings = Rc::clone(&self.settings);
        let now = self.get_current_time();
        let Some(pending) = self.pending.as_mut() else {
            return Action::Continue;
        };
        for slot in 0..pending.providers.len() {
            let Check {
                provider,
                token,
                keys,
            } = &mut pending.providers[slot];
            let provider = &settings.providers[*provider];
            let KeySource::Remote(remote) = &provider.keys else {
                continue;
            };
            if token.is_none() || keys.is_some() {
                continue;
            }
            if let Some(current) = remote.current(now) {
                *keys = Some(Some(current));
                continue;
            }
            let headers = vec![
                (":method", "GET"),
                (":path", remote.path.as_str()),
                (":authority", remote.authority.as_str()),
            ];
            match self.dispatch_http_call(&remote.cluster, headers, None, vec![], remote.timeout) {
                Ok(call) => {
                    // `self.pending` is still `Some`: re-borrow after the hostcall.
                    if let Some(pending) = self.pending.as_mut() {
                        pending.fetching = Some((call, slot));
                    }
                    return Action::Pause;
                }
                Err(status) => {
                    log_warn(&format!(
                        "jwt_authn: provider {}: cannot call cluster {}: {status:?}",
                        provider.name, remote.cluster
                    ));
                    if let Some(pending) = self.pending.as_mut() {
                        pending.providers[slot].keys = Some(None);
                    }
                    return self.advance();
                }
            }
        }
        let Some(pending) = self.pending.take() else {
            return Action::Continue;
        };
        // Each provider verified once, whatever the requirement's shape.
        let results: Vec<(usize, Option<&FoundToken>, Result<Value, Failure>)> = pending
            .providers
            .iter()
            .map(
                |Check {
                     provider: index,
                     token,
                     keys,
                 }| {
                    let provider = &settings.providers[*index];
                    let result = match token {
                        None => Err(Failure::Missing),
                        Some(found) => {
                            provider.verify(&found.token, keys.as_ref().and_then(|k| k.as_deref()))
                        }
                    };
                    (*index, token.as_ref(), result)
                },
            )
            .collect();
        let verdict = |i: usize| {
            results.iter().find(|(index, _, _)| *index == i).map_or(
                Verdict::Missing,
                |(_, _, result)| match result {
                    Ok(_) => Verdict::Verified,
                    Err(Failure::Missing) => Verdict::Missing,
                    Err(failure) => Verdict::Failed(*failure),
                },
            )
        };
        match pending
            .requirement
            .evaluate(&verdict, settings.providers.len())
        {
            Ok(()) => {
                for (index, token, result) in &results {
                    if let (Some(token), Ok(claims)) = (token, result) {
                        self.forward(*index, token, claims);
                    }
                }
                Action::Continue
            }
            Err(failure) => {
                let challenge = match failure {
                    Failure::Missing => format!("Bearer realm=\"{}\"", pending.realm),
                    _ => format!(
                        "Bearer realm=\"{}\", error=\"invalid_token\"",
                        pending.realm
                    ),
                };
                self.send_http_response(
                    failure.status(),
                    vec![
                        ("www-authenticate", &challenge),
                        ("content-type", "text/plain"),
                    ],
                    Some(failure.message().as_bytes()),
                );
                Action::Pause
            }
        }
    }

    /// What a verified token gives the request going upstream.
    fn forward(&self, index: usize, token: &FoundToken, claims: &Value) {
        let provider = &self.settings.providers[index];
        for (header, value) in provider.claim_headers(claims) {
            self.set_http_request_header(&header, Some(&value));
        }
        if let Some(header) = &provider.forward_payload_header {
            let payload = token.token.split('.').nth(1).unwrap_or_default();
            // Envoy forwards the payload base64url-encoded without padding, as in the token.
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .map(|raw| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
                .unwrap_or_default();
            self.set_http_request_header(header, Some(&payload));
        }
        if let (false, TokenLocation::Header { name, .. }) = (provider.forward, &token.location) {
            self.set_http_request_header(name, None);
        }
    }
}

fn log_warn(message: &str) {
    let _ = proxy_wasm::hostcalls::log(LogLevel::Warn, message);
}
