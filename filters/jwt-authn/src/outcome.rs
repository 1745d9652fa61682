//! Why a request was not let through, with the status and message Envoy's jwt_authn answers.

use jsonwebtoken::errors::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    BadFormat,
    Expired,
    NotYetValid,
    UnknownIssuer,
    AudienceNotAllowed,
    NoMatchingKey,
    VerificationFails,
    JwksFetchFailed,
}

impl Failure {
    /// 403 when the token is genuine but not for this audience; 401 otherwise.
    pub fn status(self) -> u32 {
        match self {
            Failure::AudienceNotAllowed => 403,
            _ => 401,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Failure::Missing => "Jwt is missing",
            Failure::BadFormat => "Jwt is not in the form of Header.Payload.Signature",
            Failure::Expired => "Jwt is expired",
            Failure::NotYetValid => "Jwt not yet valid",
            Failure::UnknownIssuer => "Jwt issuer is not configured",
            Failure::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Failure::NoMatchingKey => "Jwks doesn't have key to match kid or alg from Jwt",
            Failure::VerificationFails => "Jwt verification fails",
            Failure::JwksFetchFailed => "Jwks remote fetch is failed",
        }
    }

    /// The signature held, a claim did not.
    pub(crate) fn from_claims_error(kind: &ErrorKind) -> Failure {
        match kind {
            ErrorKind::ExpiredSignature => Failure::Expired,
            ErrorKind::ImmatureSignature => Failure::NotYetValid,
            ErrorKind::InvalidIssuer => Failure::UnknownIssuer,
            ErrorKind::InvalidAudience => Failure::AudienceNotAllowed,
            ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidToken => Failure::BadFormat,
            _ => Failure::VerificationFails,
        }
    }
}
