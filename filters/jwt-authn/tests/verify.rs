//! The filter's pure parts natively: configuration checks, token locations, verification with
//! each algorithm family, claims to headers, and the requirement logic.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use jwt_authn::config::Settings;
use jwt_authn::outcome::Failure;
use jwt_authn::provider::{KeySource, TokenLocation, claim_text};
use jwt_authn::requirement::{Requirement, Verdict};

const RSA: &str = include_str!("../testdata/rsa-2048.pem");
const EC: &str = include_str!("../testdata/ec-p256.pem");
const SECRET: &[u8] = b"a-shared-secret-of-32-bytes-long";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA.as_bytes()).expect("rsa"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC.as_bytes()).expect("ec"),
        _ => EncodingKey::from_secret(SECRET),
    }
}

fn jwk(alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&key(alg), alg).expect("jwk");
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn jwks(keys: &[(Algorithm, &str)]) -> String {
    let set = JwkSet {
        keys: keys.iter().map(|(alg, kid)| jwk(*alg, kid)).collect(),
    };
    serde_json::to_string(&set).expect("jwks")
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key(alg)).expect("sign")
}

fn settings(provider: Value, rules: Value) -> Settings {
    let config = json!({ "providers": { "p": provider }, "rules": rules });
    Settings::parse(config.to_string().as_bytes()).expect("settings")
}

fn local(jwks: &str) -> Value {
    json!({ "issuer": "https://issuer.test", "audiences": ["api"], "local_jwks": { "inline_string": jwks } })
}

fn claims() -> Value {
    json!({ "iss": "https://issuer.test", "aud": "api", "sub": "alice", "exp": now() + 60,
            "groups": ["a", "b"], "tenant": { "id": 7 } })
}

fn verify(settings: &Settings, token: &str) -> Result<Value, Failure> {
    settings.providers[0].verify(token, None)
}

#[test]
fn rs256_es256_and_hs256_tokens_verify_with_their_jwks() {
    let set = jwks(&[
        (Algorithm::RS256, "r"),
        (Algorithm::ES256, "e"),
        (Algorithm::HS256, "h"),
    ]);
    let settings = settings(local(&set), json!([]));
    for (alg, kid) in [
        (Algorithm::RS256, "r"),
        (Algorithm::ES256, "e"),
        (Algorithm::HS256, "h"),
    ] {
        let verified = verify(&settings, &sign(alg, Some(kid), &claims())).expect("verified");
        assert_eq!(verified["sub"], "alice", "{alg:?}");
        // Without a kid, every key of the algorithm's family is tried.
        assert!(
            verify(&settings, &sign(alg, None, &claims())).is_ok(),
            "{alg:?}"
        );
    }
}

#[test]
fn bad_tokens_fail_with_envoys_reasons() {
    let set = jwks(&[(Algorithm::RS256, "r"), (Algorithm::HS256, "h")]);
    let settings = settings(local(&set), json!([]));
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let mut early = claims();
    early["nbf"] = json!(now() + 3600);
    let mut foreign = claims();
    foreign["aud"] = json!("other");
    let mut unknown = claims();
    unknown["iss"] = json!("https://elsewhere.test");
    let cases = [
        (
            sign(Algorithm::RS256, Some("r"), &expired),
            Failure::Expired,
        ),
        (
            sign(Algorithm::RS256, Some("r"), &early),
            Failure::NotYetValid,
        ),
        (
            sign(Algorithm::RS256, Some("r"), &foreign),
            Failure::AudienceNotAllowed,
        ),
        (
            sign(Algorithm::RS256, Some("r"), &unknown),
            Failure::UnknownIssuer,
        ),
        (
            sign(Algorithm::RS256, Some("nope"), &claims()),
            Failure::NoMatchingKey,
        ),
        (
            sign(Algorithm::ES256, None, &claims()),
            Failure::NoMatchingKey,
        ),
        ("not-a-jwt".to_owned(), Failure::BadFormat),
        ("a.b.c".to_owned(), Failure::BadFormat),
    ];
    for (token, failure) in cases {
        assert_eq!(
            verify(&settings, &token).map(|_| ()),
            Err(failure),
            "{token}"
        );
    }
    // A valid token with one changed signature byte.
    let token = sign(Algorithm::RS256, Some("r"), &claims());
    let (head, signature) = token.rsplit_once('.').expect("dots");
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{head}.{flipped}{}", &signature[1..]);
    assert_eq!(
        verify(&settings, &tampered).map(|_| ()),
        Err(Failure::VerificationFails)
    );
    // The RSA public key offered as an HMAC secret (the classic confusion) is never tried.
    let public = set.clone();
    let only_rsa = settings_with(&public.replace("\"h\"", "\"h-unused\""));
    let confused = sign(Algorithm::HS256, Some("r"), &claims());
    assert!(verify(&only_rsa, &confused).is_err());
    assert_eq!(Failure::AudienceNotAllowed.status(), 403);
    assert_eq!(Failure::Missing.status(), 401);
}

fn settings_with(jwks: &str) -> Settings {
    settings(local(jwks), json!([]))
}

#[test]
fn clock_skew_lets_a_just_expired_token_pass() {
    let set = jwks(&[(Algorithm::HS256, "h")]);
    let mut just = claims();
    just["exp"] = json!(now() - 30);
    let token = sign(Algorithm::HS256, Some("h"), &just);
    assert!(verify(&settings(local(&set), json!([])), &token).is_ok());
    let mut strict = local(&set);
    strict["clock_skew_seconds"] = json!(0);
    assert_eq!(
        verify(&settings(strict, json!([])), &token).map(|_| ()),
        Err(Failure::Expired)
    );
}

#[test]
fn tokens_are_found_where_the_provider_looks() {
    let set = jwks(&[(Algorithm::HS256, "h")]);
    let default = settings(local(&set), json!([]));
    let headers = |auth: Option<&'static str>| {
        move |name: &str| {
            (name == "authorization")
                .then(|| auth.map(str::to_owned))
                .flatten()
        }
    };
    let found = default.providers[0].find_token(&headers(Some("bearer abc")), "/");
    assert_eq!(found.map(|f| f.token), Some("abc".to_owned()));
    let found = default.providers[0].find_token(&headers(None), "/x?a=1&access_token=xyz");
    assert_eq!(found.map(|f| f.token), Some("xyz".to_owned()));
    assert!(
        default.providers[0]
            .find_token(&headers(Some("Basic abc")), "/")
            .is_none()
    );

    let mut custom = local(&set);
    custom["from_headers"] = json!([{ "name": "X-Jwt" }]);
    custom["from_cookies"] = json!(["session"]);
    let custom = settings(custom, json!([]));
    let p = &custom.providers[0];
    let cookie = |name: &str| (name == "cookie").then(|| "a=1; session=tok; b=2".to_owned());
    let found = p
        .find_token(&cookie, "/?access_token=ignored")
        .expect("cookie");
    assert_eq!(
        (found.token.as_str(), found.location),
        ("tok", TokenLocation::Cookie("session".into()))
    );
    let header = |name: &str| (name == "x-jwt").then(|| "tok2".to_owned());
    assert_eq!(
        p.find_token(&header, "/").map(|f| f.token),
        Some("tok2".to_owned())
    );
}

#[test]
fn claims_become_header_text() {
    let claims = claims();
    assert_eq!(claim_text(&claims, "sub").as_deref(), Some("alice"));
    assert_eq!(claim_text(&claims, "groups").as_deref(), Some("a,b"));
    assert_eq!(claim_text(&claims, "tenant.id").as_deref(), Some("7"));
    assert_eq!(claim_text(&claims, "tenant"), None);
    assert_eq!(claim_text(&claims, "nope"), None);
}

#[test]
fn requirements_combine_as_in_envoy() {
    let verdicts = [
        Verdict::Verified,
        Verdict::Missing,
        Verdict::Failed(Failure::Expired),
    ];
    let verdict = |i: usize| verdicts[i];
    let ok = |r: Requirement| r.evaluate(&verdict, 3);
    assert_eq!(ok(Requirement::Provider(0)), Ok(()));
    assert_eq!(ok(Requirement::Provider(1)), Err(Failure::Missing));
    assert_eq!(ok(Requirement::Provider(2)), Err(Failure::Expired));
    assert_eq!(
        ok(Requirement::Any(vec![
            Requirement::Provider(1),
            Requirement::Provider(0)
        ])),
        Ok(())
    );
    assert_eq!(
        ok(Requirement::Any(vec![
            Requirement::Provider(1),
            Requirement::Provider(2)
        ])),
        Err(Failure::Expired)
    );
    assert_eq!(
        ok(Requirement::All(vec![
            Requirement::Provider(0),
            Requirement::Provider(1)
        ])),
        Err(Failure::Missing)
    );
    // allow_missing: a present token must still verify.
    assert_eq!(ok(Requirement::AllowMissing), Err(Failure::Expired));
    let fine = |i: usize| [Verdict::Verified, Verdict::Missing][i];
    assert_eq!(Requirement::AllowMissing.evaluate(&fine, 2), Ok(()));
    assert_eq!(ok(Requirement::AllowMissingOrFailed), Ok(()));
}

#[test]
fn configurations_are_checked_with_the_field_named() {
    let set = jwks(&[(Algorithm::HS256, "h")]);
    let parse = |config: Value| Settings::parse(config.to_string().as_bytes()).map(|_| ());
    let cases = [
        (json!({ "providers": {} }), "providers"),
        (
            json!({ "providers": { "p": { "issuer": "x" } } }),
            "providers.p: one of local_jwks or remote_jwks",
        ),
        (
            json!({ "providers": { "p": { "local_jwks": { "filename": "/etc/jwks" } } } }),
            "local_jwks.filename",
        ),
        (
            json!({ "providers": { "p": { "local_jwks": { "inline_string": "{}" } } } }),
            "local_jwks.inline_string",
        ),
        (
            json!({ "providers": { "p": { "remote_jwks": { "http_uri": { "uri": "ftp://x", "cluster": "c" } } } } }),
            "http_uri.uri",
        ),
        (
            json!({ "providers": { "p": local(&set) }, "rules": [{ "match": { "prefix": "/" }, "requires": { "provider_name": "q" } }] }),
            "rules[0].requires.provider_name: no provider \"q\"",
        ),
        (
            json!({ "providers": { "p": local(&set) }, "rules": [{ "match": {} }] }),
            "rules[0].match",
        ),
        (
            json!({ "providers": { "p": local(&set) }, "rules": [{ "match": { "prefix": "/" }, "requires": { "provider_name": "p", "allow_missing": {} } }] }),
            "exactly one",
        ),
        (
            json!({ "providers": { "p": local(&set) }, "surprise": 1 }),
            "unknown field",
        ),
    ];
    for (config, needle) in cases {
        let error = parse(config.clone()).expect_err(&config.to_string());
        assert!(error.contains(needle), "{error} / {needle}");
    }
    let remote = json!({ "providers": { "p": { "remote_jwks": {
        "http_uri": { "uri": "http://auth.test:8080/keys", "cluster": "auth", "timeout": "2s" },
        "cache_duration": "5m" } } },
        "rules": [{ "match": { "path": "/x" }, "requires": { "requires_any": { "requirements": [
            { "provider_name": "p" }, { "allow_missing": {} } ] } } }] });
    let settings = Settings::parse(remote.to_string().as_bytes()).expect("remote");
    let KeySource::Remote(remote) = &settings.providers[0].keys else {
        panic!("remote");
    };
    assert_eq!(
        (remote.authority.as_str(), remote.path.as_str()),
        ("auth.test:8080", "/keys")
    );
    assert_eq!(remote.timeout, std::time::Duration::from_secs(2));
}
