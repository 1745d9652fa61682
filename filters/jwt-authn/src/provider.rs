//! One JWT provider: where its tokens are, which keys verify them, and what a verified token
//! adds to the request.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::keys::{Checks, KeySet};
use crate::outcome::Failure;

#[derive(Debug)]
pub struct Provider {
    pub name: String,
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub keys: KeySource,
    pub locations: Vec<TokenLocation>,
    /// Keep the token in the request going upstream (Envoy's default removes it).
    pub forward: bool,
    pub forward_payload_header: Option<String>,
    /// (header, claim) pairs; a claim name may be dotted for nested claims.
    pub claim_to_headers: Vec<(String, String)>,
    pub clock_skew_seconds: u64,
}

#[derive(Debug)]
pub enum KeySource {
    Local(KeySet),
    Remote(RemoteJwks),
}

/// A JWKS fetched from a cluster, kept for `cache_duration` in this worker's instance (Envoy
/// keeps one cache per worker thread too).
#[derive(Debug)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout: Duration,
    cache_duration: Duration,
    cached: RefCell<Option<(Rc<KeySet>, SystemTime)>>,
}

impl RemoteJwks {
    pub fn new(
        cluster: String,
        authority: String,
        path: String,
        timeout: Duration,
        cache_duration: Duration,
    ) -> RemoteJwks {
        RemoteJwks {
            cluster,
            authority,
            path,
            timeout,
            cache_duration,
            cached: RefCell::new(None),
        }
    }

    /// The cached keys if they have not expired at `now`.
    pub fn current(&self, now: SystemTime) -> Option<Rc<KeySet>> {
        match &*self.cached.borrow() {
            Some((keys, expires)) if now < *expires => Some(Rc::clone(keys)),
            _ => None,
        }
    }

    /// Keeps a freshly fetched set until `now + cache_duration`.
    pub fn store(&self, keys: KeySet, now: SystemTime) -> Rc<KeySet> {
        let keys = Rc::new(keys);
        *self.cached.borrow_mut() = Some((Rc::clone(&keys), now + self.cache_duration));
        keys
    }
}

/// Where a provider looks for its token, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header (lowercase name), its value starting with `value_prefix`.
    Header { name: String, value_prefix: String },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// A token found in the request, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundToken {
    pub token: String,
    pub location: TokenLocation,
}

impl Provider {
    /// The first token in the provider's locations.
    pub fn find_token(
        &self,
        header: &dyn Fn(&str) -> Option<String>,
        path: &str,
    ) -> Option<FoundToken> {
        self.locations.iter().find_map(|location| {
            let token = match location {
                TokenLocation::Header { name, value_prefix } => {
                    let value = header(name)?;
                    let rest = strip_prefix_ignore_case(value.trim(), value_prefix)?;
                    rest.trim().to_owned()
                }
                TokenLocation::Param(name) => query_parameter(path, name)?,
                TokenLocation::Cookie(name) => cookie(&header("cookie")?, name)?,
            };
            (!token.is_empty()).then(|| FoundToken {
                token,
                location: location.clone(),
            })
        })
    }

    pub fn checks(&self) -> Checks<'_> {
        Checks {
            issuer: self.issuer.as_deref(),
            audiences: &self.audiences,
            clock_skew_seconds: self.clock_skew_seconds,
        }
    }

    /// Verifies with local keys, or with `remote` (the cached or fetched set); `None` keys for
    /// a remote provider means the fetch failed.
    pub fn verify(&self, token: &str, keys: Option<&KeySet>) -> Result<Value, Failure> {
        let keys = match (&self.keys, keys) {
            (KeySource::Local(local), _) => local,
            (KeySource::Remote(_), Some(fetched)) => fetched,
            (KeySource::Remote(_), None) => return Err(Failure::JwksFetchFailed),
        };
        keys.verify(token, &self.checks())
    }

    /// The headers a verified token's claims give the request.
    pub fn claim_headers(&self, claims: &Value) -> Vec<(String, String)> {
        self.claim_to_headers
            .iter()
            .filter_map(|(header, claim)| Some((header.clone(), claim_text(claims, claim)?)))
            .collect()
    }
}

/// A claim as header text: strings as they are, numbers and booleans printed, arrays of those
/// joined with commas. Objects and missing claims give nothing.
pub fn claim_text(claims: &Value, name: &str) -> Option<String> {
    let mut value = claims;
    for part in name.split('.') {
        value = value.get(part)?;
    }
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
    match value {
        Value::Array(items) => {
            let items: Option<Vec<String>> = items.iter().map(scalar).collect();
            items.map(|items| items.join(","))
        }
        other => scalar(other),
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn query_parameter(path: &str, name: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn cookie(header: &str, name: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"').to_owned())
}
