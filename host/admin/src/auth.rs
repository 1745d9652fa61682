//! Who is calling: bearer tokens from a file (compared by sha256, in constant time) or JWTs
//! (HS256 or RS256, issuer and audience checked), each carrying a role.

use std::path::Path;

use http::HeaderMap;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustng_runtime_config::{AdminAuth, AdminJwtKey};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// What a caller may do. `Admin` includes everything `Read` may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads: config, history, plugins, status, audit.
    Read,
    /// Reads and mutations.
    Admin,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, or the JWT's `sub`.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// Why a request is not authenticated (all answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("credentials required (Authorization: Bearer <token>)")]
    Missing,
    /// The API has no way to authenticate anyone.
    #[error("the admin API is closed: admin.auth is not configured")]
    NotConfigured,
    /// A token that matches nothing, or a JWT that does not verify.
    #[error("invalid credentials: {0}")]
    Invalid(String),
}

/// A problem with the auth files, found at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file's content is wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The tokens file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: String,
    token: Option<String>,
    token_sha256: Option<String>,
}

struct Token {
    name: String,
    role: Role,
    sha256: [u8; 32],
}

struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
    role_claim: String,
}

/// Checks credentials against the configured tokens and JWT settings.
#[derive(Default)]
pub struct Authenticator {
    tokens: Vec<Token>,
    jwt: Option<JwtVerifier>,
    configured: bool,
}

impl Authenticator {
    /// Reads the tokens file and the JWT key; `None` (no `admin.auth`) authenticates nobody.
    pub fn load(auth: Option<&AdminAuth>) -> Result<Authenticator, AuthSetupError> {
        let Some(auth) = auth else {
            return Ok(Authenticator::default());
        };
        let tokens = match &auth.tokens_file {
            Some(path) => read_tokens(path)?,
            None => Vec::new(),
        };
        let jwt = match &auth.jwt {
            Some(jwt) => {
                let (key, algorithm) = match &jwt.key {
                    AdminJwtKey::Hs256SecretFile(path) => {
                        let secret = read(path)?;
                        let secret = secret.trim_ascii_end();
                        if secret.is_empty() {
                            return Err(invalid(path, "the secret is empty"));
                        }
                        (DecodingKey::from_secret(secret), Algorithm::HS256)
                    }
                    AdminJwtKey::Rs256PublicKeyFile(path) => {
                        let key = DecodingKey::from_rsa_pem(&read(path)?)
                            .map_err(|e| invalid(path, &format!("not an RSA public key: {e}")))?;
                        (key, Algorithm::RS256)
                    }
                };
                let mut validation = Validation::new(algorithm);
                validation.set_issuer(&[&jwt.issuer]);
                validation.set_audience(&jwt.audiences);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                validation.leeway = 30;
                Some(JwtVerifier {
                    key,
                    validation,
                    role_claim: jwt.role_claim.clone(),
                })
            }
            None => None,
        };
        Ok(Authenticator {
            tokens,
            jwt,
            configured: true,
        })
    }

    /// The caller of a request with these headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        if !self.configured {
            return Err(AuthError::NotConfigured);
        }
        let bearer = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
        // Every entry is compared, and each comparison takes the same time, so the timing
        // says nothing about which token (or how much of one) matched.
        let mut found = None;
        for token in &self.tokens {
            if constant_time_eq(&token.sha256, &digest) {
                found = Some(token);
            }
        }
        if let Some(token) = found {
            return Ok(Principal {
                name: token.name.clone(),
                role: token.role,
            });
        }
        match &self.jwt {
            Some(jwt) if bearer.matches('.').count() == 2 => jwt.verify(bearer),
            _ => Err(AuthError::Invalid("unknown token".into())),
        }
    }
}

impl JwtVerifier {
    fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation)
            .map_err(|e| AuthError::Invalid(format!("JWT: {e}")))?;
        let claims = data.claims;
        let role = claims
            .get(&self.role_claim)
            .and_then(|r| r.as_str())
            .and_then(Role::parse)
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "JWT: claim \"{}\" must be \"read\" or \"admin\"",
                    self.role_claim
                ))
            })?;
        let name = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or("jwt")
            .to_owned();
        Ok(Principal { name, role })
    }
}

fn read_tokens(path: &Path) -> Result<Vec<Token>, AuthSetupError> {
    let text = read(path)?;
    let file: TokensFile =
        serde_yaml_ng::from_slice(&text).map_err(|e| invalid(path, &e.to_string()))?;
    let mut tokens = Vec::with_capacity(file.tokens.len());
    for (i, entry) in file.tokens.into_iter().enumerate() {
        let at = format!("tokens[{i}]");
        let role = Role::parse(&entry.role).ok_or_else(|| {
            invalid(
                path,
                &format!("{at}.role: \"{}\" is not read or admin", entry.role),
            )
        })?;
        let sha256 = match (entry.token, entry.token_sha256) {
            (Some(token), None) if !token.is_empty() => Sha256::digest(token.as_bytes()).into(),
            (None, Some(hex)) => parse_hex32(&hex)
                .ok_or_else(|| invalid(path, &format!("{at}.token_sha256: not 64 hex digits")))?,
            _ => {
                return Err(invalid(
                    path,
                    &format!("{at}: exactly one of token, token_sha256"),
                ));
            }
        };
        tokens.push(Token {
            name: entry.name,
            role,
            sha256,
        });
    }
    Ok(tokens)
}

fn read(path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    std::fs::read(path).map_err(|source| AuthSetupError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, message: &str) -> AuthSetupError {
    AuthSetupError::Invalid {
        path: path.display().to_string(),
        message: message.to_owned(),
    }
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.parse().expect("header"));
        headers
    }

    #[test]
    fn tokens_authenticate_by_digest_with_their_role() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.yaml");
        let digest: String = Sha256::digest(b"r3ad")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        std::fs::write(
            &file,
            format!(
                "tokens:\n  - {{ name: ci, role: admin, token: s3cret }}\n  - {{ name: grafana, role: read, token_sha256: {digest} }}\n"
            ),
        )
        .expect("write");
        let auth = Authenticator::load(Some(&AdminAuth {
            tokens_file: Some(file),
            jwt: None,
        }))
        .expect("load");
        let ci = auth.authenticate(&headers("Bearer s3cret")).expect("ci");
        assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Admin));
        let grafana = auth
            .authenticate(&headers("bearer  r3ad "))
            .expect("grafana");
        assert_eq!(grafana.role, Role::Read);
        assert!(matches!(
            auth.authenticate(&headers("Bearer nope")),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(&headers("Basic czNjcmV0")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            Authenticator::load(None)
                .expect("none")
                .authenticate(&headers("Bearer s3cret")),
            Err(AuthError::NotConfigured)
        );
    }

    #[test]
    fn bad_tokens_files_are_refused_with_the_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tokens.yaml");
        for (text, needle) in [
            (
                "tokens:\n  - { name: a, role: root, token: x }\n",
                "tokens[0].role",
            ),
            ("tokens:\n  - { name: a, role: read }\n", "exactly one"),
            (
                "tokens:\n  - { name: a, role: read, token_sha256: abc }\n",
                "64 hex",
            ),
            ("nonsense: 1\n", "unknown field"),
        ] {
            std::fs::write(&file, text).expect("write");
            let error = Authenticator::load(Some(&AdminAuth {
                tokens_file: Some(file.clone()),
                jwt: None,
            }))
            .err()
            .expect("refused")
            .to_string();
            assert!(error.contains(needle), "{error} / {needle}");
        }
    }
}
