//! The plugin configuration: Envoy's `JwtAuthentication` message (`providers`, `rules`,
//! `bypass_cors_preflight`) as JSON, checked whole and turned into [`Settings`] once.

use std::collections::BTreeMap;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use crate::provider::{KeySource, Provider, RemoteJwks, TokenLocation};
use crate::requirement::{Requirement, Rule};

/// Envoy's default lifetime of fetched keys (`cache_duration`).
const DEFAULT_CACHE_DURATION: Duration = Duration::from_secs(600);
/// Envoy's default wait for the JWKS server (`http_uri.timeout`).
const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(1);
/// Envoy's default `clock_skew_seconds`.
const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;

/// What the filter runs with: providers by name, the rules in order.
#[derive(Debug)]
pub struct Settings {
    pub providers: Vec<Provider>,
    pub rules: Vec<Rule>,
    pub bypass_cors_preflight: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtAuthentication {
    providers: BTreeMap<String, JwtProvider>,
    #[serde(default)]
    rules: Vec<RequirementRule>,
    #[serde(default)]
    bypass_cors_preflight: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtProvider {
    issuer: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    local_jwks: Option<DataSource>,
    remote_jwks: Option<RemoteJwksConfig>,
    #[serde(default)]
    forward: bool,
    forward_payload_header: Option<String>,
    #[serde(default)]
    from_headers: Vec<JwtHeader>,
    #[serde(default)]
    from_params: Vec<String>,
    #[serde(default)]
    from_cookies: Vec<String>,
    #[serde(default)]
    claim_to_headers: Vec<ClaimToHeader>,
    clock_skew_seconds: Option<u64>,
}

/// Envoy's `DataSource`; a module has no filesystem, so only the inline forms.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSource {
    inline_string: Option<String>,
    filename: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoteJwksConfig {
    http_uri: HttpUri,
    cache_duration: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpUri {
    uri: String,
    cluster: String,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtHeader {
    name: String,
    #[serde(default)]
    value_prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimToHeader {
    header_name: String,
    claim_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementRule {
    #[serde(rename = "match")]
    matcher: PathMatch,
    requires: Option<JwtRequirement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathMatch {
    prefix: Option<String>,
    path: Option<String>,
}

/// Envoy's `JwtRequirement`: exactly one of its fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtRequirement {
    provider_name: Option<String>,
    requires_any: Option<RequirementList>,
    requires_all: Option<RequirementList>,
    allow_missing: Option<Empty>,
    allow_missing_or_failed: Option<Empty>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequirementList {
    requirements: Vec<JwtRequirement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

impl Settings {
    /// Parses and checks the configuration; the error names the field.
    pub fn parse(bytes: &[u8]) -> Result<Settings, String> {
        let config: JwtAuthentication =
            serde_json::from_slice(bytes).map_err(|e| format!("jwt_authn: {e}"))?;
        if config.providers.is_empty() {
            return Err("jwt_authn: providers: at least one provider is needed".into());
        }
        let names: Vec<&str> = config.providers.keys().map(String::as_str).collect();
        let mut providers = Vec::with_capacity(config.providers.len());
        for (name, provider) in &config.providers {
            providers.push(compile_provider(name, provider)?);
        }
        let mut rules = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            let matcher = match (&rule.matcher.prefix, &rule.matcher.path) {
                (Some(prefix), None) => crate::requirement::PathMatch::Prefix(prefix.clone()),
                (None, Some(path)) => crate::requirement::PathMatch::Exact(path.clone()),
                _ => return Err(format!("jwt_authn: {at}.match: one of prefix or path")),
            };
            let requirement = match &rule.requires {
                Some(requires) => Some(compile_requirement(
                    requires,
                    &names,
                    &format!("{at}.requires"),
                )?),
                None => None,
            };
            rules.push(Rule {
                matcher,
                requirement,
            });
        }
        Ok(Settings {
            providers,
            rules,
            bypass_cors_preflight: config.bypass_cors_preflight,
        })
    }

    pub fn provider_index(&self, name: &str) -> Option<usize> {
        self.providers.iter().position(|p| p.name == name)
    }
}

fn compile_provider(name: &str, config: &JwtProvider) -> Result<Provider, String> {
    let at = format!("jwt_authn: providers.{name}");
    let keys = match (&config.local_jwks, &config.remote_jwks) {
        (Some(local), None) => {
            if local.filename.is_some() {
                return Err(format!(
                    "{at}.local_jwks.filename: a module cannot read files; use inline_string"
                ));
            }
            let text = local
                .inline_string
                .as_deref()
                .ok_or_else(|| format!("{at}.local_jwks: inline_string is needed"))?;
            let set: JwkSet = serde_json::from_str(text)
                .map_err(|e| format!("{at}.local_jwks.inline_string: not a JWKS: {e}"))?;
            KeySource::Local(
                crate::keys::KeySet::from_jwks(&set)
                    .map_err(|e| format!("{at}.local_jwks.inline_string: {e}"))?,
            )
        }
        (None, Some(remote)) => {
            let (authority, path) = split_uri(&remote.http_uri.uri).ok_or_else(|| {
                format!(
                    "{at}.remote_jwks.http_uri.uri: \"{}\" is not an http(s) URL",
                    remote.http_uri.uri
                )
            })?;
            let timeout = duration(remote.http_uri.timeout.as_deref(), DEFAULT_FETCH_TIMEOUT)
                .ok_or_else(|| {
                    format!("{at}.remote_jwks.http_uri.timeout: not a duration like 1s")
                })?;
            let cache_duration = duration(remote.cache_duration.as_deref(), DEFAULT_CACHE_DURATION)
                .ok_or_else(|| {
                    format!("{at}.remote_jwks.cache_duration: not a duration like 300s")
                })?;
            KeySource::Remote(RemoteJwks::new(
                remote.http_uri.cluster.clone(),
                authority,
                path,
                timeout,
                cache_duration,
            ))
        }
        _ => return Err(format!("{at}: one of local_jwks or remote_jwks")),
    };
    let mut locations: Vec<TokenLocation> = config
        .from_headers
        .iter()
        .map(|h| TokenLocation::Header {
            name: h.name.to_ascii_lowercase(),
            value_prefix: h.value_prefix.clone(),
        })
        .collect();
    locations.extend(config.from_params.iter().cloned().map(TokenLocation::Param));
    locations.extend(
        config
            .from_cookies
            .iter()
            .cloned()
            .map(TokenLocation::Cookie),
    );
    if locations.is_empty() {
        // Envoy's default when none is configured.
        locations.push(TokenLocation::Header {
            name: "authorization".into(),
            value_prefix: "Bearer ".into(),
        });
        locations.push(TokenLocation::Param("access_token".into()));
    }
    for (i, claim) in config.claim_to_headers.iter().enumerate() {
        if claim.header_name.is_empty() || claim.claim_name.is_empty() {
            return Err(format!(
                "{at}.claim_to_headers[{i}]: header_name and claim_name are needed"
            ));
        }
    }
    Ok(Provider {
        name: name.to_owned(),
        issuer: config.issuer.clone(),
        audiences: config.audiences.clone(),
        keys,
        locations,
        forward: config.forward,
        forward_payload_header: config
            .forward_payload_header
            .as_ref()
            .map(|h| h.to_ascii_lowercase()),
        claim_to_headers: config
            .claim_to_headers
            .iter()
            .map(|c| (c.header_name.to_ascii_lowercase(), c.claim_name.clone()))
            .collect(),
        clock_skew_seconds: config
            .clock_skew_seconds
            .unwrap_or(DEFAULT_CLOCK_SKEW_SECONDS),
    })
}

fn compile_requirement(
    config: &JwtRequirement,
    providers: &[&str],
    at: &str,
) -> Result<Requirement, String> {
    let list = |list: &RequirementList, key: &str| -> Result<Vec<Requirement>, String> {
        if list.requirements.len() < 2 {
            return Err(format!("jwt_authn: {at}.{key}.requirements: at least two"));
        }
        list.requirements
            .iter()
            .enumerate()
            .map(|(i, r)| {
                compile_requirement(r, providers, &format!("{at}.{key}.requirements[{i}]"))
            })
            .collect()
    };
    let chosen = [
        config.provider_name.is_some(),
        config.requires_any.is_some(),
        config.requires_all.is_some(),
        config.allow_missing.is_some(),
        config.allow_missing_or_failed.is_some(),
    ];
    if chosen.iter().filter(|set| **set).count() != 1 {
        return Err(format!(
            "jwt_authn: {at}: exactly one of provider_name, requires_any, requires_all, allow_missing, allow_missing_or_failed"
        ));
    }
    if let Some(name) = &config.provider_name {
        let index = providers
            .iter()
            .position(|p| p == name)
            .ok_or_else(|| format!("jwt_authn: {at}.provider_name: no provider \"{name}\""))?;
        return Ok(Requirement::Provider(index));
    }
    if let Some(any) = &config.requires_any {
        return Ok(Requirement::Any(list(any, "requires_any")?));
    }
    if let Some(all) = &config.requires_all {
        return Ok(Requirement::All(list(all, "requires_all")?));
    }
    if config.allow_missing.is_some() {
        return Ok(Requirement::AllowMissing);
    }
    Ok(Requirement::AllowMissingOrFailed)
}

fn duration(text: Option<&str>, default: Duration) -> Option<Duration> {
    match text {
        None => Some(default),
        Some(text) => rustng_sdk::duration::parse(text).filter(|d| !d.is_zero()),
    }
}

/// `http://host[:port]/path` → (`host[:port]`, `/path`); the cluster decides where it goes,
/// the URL gives the request its authority and path.
fn split_uri(uri: &str) -> Option<(String, String)> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then(|| (authority.to_owned(), path.to_owned()))
}
