//! The verification keys of one provider, built once from its JWKS, and token verification
//! against them.

use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;

use crate::outcome::Failure;

/// One usable key: its id and algorithm when the JWKS names them.
struct Key {
    kid: Option<String>,
    algorithm: Option<Algorithm>,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The keys of a JWKS that can verify signatures.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// What a provider checks besides the signature.
pub struct Checks<'a> {
    pub issuer: Option<&'a str>,
    pub audiences: &'a [String],
    pub clock_skew_seconds: u64,
}

impl KeySet {
    /// Keys the JWKS marks for encryption, or of kinds the crate cannot verify with, are
    /// skipped, as Envoy skips them; a set with no usable key at all is an error.
    pub fn from_jwks(set: &JwkSet) -> Result<KeySet, String> {
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let algorithm = match jwk.common.key_algorithm {
                    Some(alg) => Some(Algorithm::try_from(alg).ok()?),
                    None => None,
                };
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    algorithm,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err("the JWKS has no key that can verify a signature".into());
        }
        Ok(KeySet { keys })
    }

    /// Verifies `token` and returns its claims. The token's header picks the algorithm and,
    /// with `kid`, the key; a key of another family than the algorithm's is never tried, so
    /// an RSA public key cannot be used as an HMAC secret.
    pub fn verify(&self, token: &str, checks: &Checks<'_>) -> Result<Value, Failure> {
        if token.split('.').count() != 3 {
            return Err(Failure::BadFormat);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::BadFormat)?;
        let alg = header.alg;
        let mut validation = Validation::new(alg);
        validation.leeway = checks.clock_skew_seconds;
        validation.required_spec_claims.clear();
        validation.validate_nbf = true;
        match checks.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        if checks.audiences.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(checks.audiences);
        }
        let candidates = self.keys.iter().filter(|k| {
            header
                .kid
                .as_ref()
                .is_none_or(|kid| k.kid.as_ref() == Some(kid))
                && k.algorithm.is_none_or(|a| a == alg)
                && k.key.family() == alg.family()
        });
        let mut tried = false;
        for candidate in candidates {
            tried = true;
            match jsonwebtoken::decode::<Value>(token, &candidate.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => continue,
                    kind => return Err(Failure::from_claims_error(kind)),
                },
            }
        }
        Err(if tried {
            Failure::VerificationFails
        } else {
            Failure::NoMatchingKey
        })
    }
}
