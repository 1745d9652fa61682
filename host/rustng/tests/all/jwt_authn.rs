//! The JWT filter (filters/jwt-authn) in the real binary: tokens signed here with the filter's
//! test keys, JWKS inline and fetched from a cluster (a JWKS server in the test, counting its
//! fetches), claims forwarded as headers, Envoy's 401/403 answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::client::{self, Reply, send};
use crate::harness::Rustng;
use crate::origin::Origin;
use crate::stock_filters::module;

const RSA: &str = include_str!("../../../../filters/jwt-authn/testdata/rsa-2048.pem");
const EC: &str = include_str!("../../../../filters/jwt-authn/testdata/ec-p256.pem");
const SECRET: &[u8] = b"a-shared-secret-of-32-bytes-long";
const ISSUER: &str = "https://issuer.test";

fn key(alg: Algorithm) -> EncodingKey {
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA.as_bytes()).expect("rsa key"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC.as_bytes()).expect("ec key"),
        _ => EncodingKey::from_secret(SECRET),
    }
}

/// The public JWKS of the three test keys, kids `rsa`, `ec` and `hmac`.
pub(crate) fn jwks() -> String {
    let keys = [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec"),
        (Algorithm::HS256, "hmac"),
    ]
    .into_iter()
    .map(|(alg, kid)| {
        let mut jwk = Jwk::from_encoding_key(&key(alg), alg).expect("jwk");
        jwk.common.key_id = Some(kid.into());
        jwk
    })
    .collect();
    serde_json::to_string(&JwkSet { keys }).expect("jwks")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

pub(crate) fn token(alg: Algorithm, kid: &str, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, &key(alg)).expect("sign")
}

pub(crate) fn claims(sub: &str) -> Value {
    json!({ "iss": ISSUER, "aud": "api", "sub": sub, "exp": now() + 300,
            "groups": ["admin", "dev"] })
}

/// RustNg with the JWT filter (`keys` is its provider's JWKS source) and the router.
fn proxy(keys: &str, origin: &Origin, jwks_server: Option<SocketAddr>) -> Rustng {
    let auth_cluster = jwks_server
        .map(|addr| format!("  - name: auth\n    endpoints: [{{ address: '{addr}' }}]\n"))
        .unwrap_or_default();
    Rustng::start(&format!(
        "workers: 1
plugins:
  - name: jwt
    vm_config: {{ code: {{ local: {{ filename: {jwt} }} }} }}
    configuration:
      providers:
        example:
          issuer: {ISSUER}
          audiences: [api]
{keys}
          forward_payload_header: x-jwt-payload
          claim_to_headers:
            - {{ header_name: x-jwt-sub, claim_name: sub }}
            - {{ header_name: x-jwt-groups, claim_name: groups }}
      rules:
        - match: {{ prefix: /public }}
        - match: {{ prefix: / }}
          requires: {{ provider_name: example }}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [jwt]
clusters:
  - name: backend
    endpoints: [{{ address: {origin} }}]
{auth_cluster}",
        jwt = module("jwt_authn").display(),
        origin = origin.addr,
    ))
}

async fn request(proxy: &Rustng, path: &str, bearer: Option<&str>) -> Reply {
    let mut request = Request::get(proxy.url(path));
    if let Some(token) = bearer {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    send(
        &client::http1(),
        request.body(Full::new(Bytes::new())).expect("request"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_signed_with_each_algorithm_pass_and_forward_their_claims() {
    let origin = Origin::start("a").await;
    let inline = format!(
        "          local_jwks: {{ inline_string: '{}' }}",
        jwks().replace('\'', "''")
    );
    let proxy = proxy(&inline, &origin, None);
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::ES256, "ec"),
        (Algorithm::HS256, "hmac"),
    ] {
        let token = token(alg, kid, claims("alice"));
        let reply = request(&proxy, "/echo", Some(&token)).await;
        assert_eq!(reply.status, 200, "{alg:?}: {}", reply.text());
        let seen = &reply.json()["headers"];
        assert_eq!(seen["x-jwt-sub"][0], "alice", "{seen}");
        assert_eq!(seen["x-jwt-groups"][0], "admin,dev", "{seen}");
        // Envoy's default (`forward: false`): the token does not travel upstream.
        assert!(seen.get("authorization").is_none(), "{seen}");
        let payload = token.split('.').nth(1).expect("payload");
        assert_eq!(seen["x-jwt-payload"][0], payload, "{seen}");
    }
    // A client cannot smuggle a claim header past the filter.
    let token = token(Algorithm::HS256, "hmac", claims("bob"));
    let reply = send(
        &client::http1(),
        Request::get(proxy.url("/echo"))
            .header("authorization", format!("Bearer {token}"))
            .header("x-jwt-sub", "root")
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await;
    assert_eq!(reply.json()["headers"]["x-jwt-sub"], json!(["bob"]));

    // A rule without a requirement lets requests through without a token.
    assert_eq!(request(&proxy, "/public/echo", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_bad_tokens_are_refused_with_envoys_answers() {
    let origin = Origin::start("a").await;
    let inline = format!(
        "          local_jwks: {{ inline_string: '{}' }}",
        jwks().replace('\'', "''")
    );
    let proxy = proxy(&inline, &origin, None);
    let mut expired = claims("alice");
    expired["exp"] = json!(now() - 3600);
    let mut foreign = claims("alice");
    foreign["aud"] = json!("another-api");
    let mut other_issuer = claims("alice");
    other_issuer["iss"] = json!("https://elsewhere.test");
    let valid = token(Algorithm::RS256, "rsa", claims("alice"));
    let (signed, _) = valid.rsplit_once('.').expect("three parts");
    let hmac_signature = token(Algorithm::HS256, "hmac", claims("alice"));
    let forged = format!(
        "{signed}.{}",
        hmac_signature.rsplit_once('.').expect("three parts").1
    );
    let cases = [
        (None, 401, "Jwt is missing"),
        (Some("garbage".to_owned()), 401, "Jwt is not in the form"),
        (
            Some(token(Algorithm::RS256, "rsa", expired)),
            401,
            "Jwt is expired",
        ),
        (
            Some(token(Algorithm::ES256, "ec", foreign)),
            403,
            "Audiences in Jwt are not allowed",
        ),
        (
            Some(token(Algorithm::HS256, "hmac", other_issuer)),
            401,
            "Jwt issuer is not configured",
        ),
        (Some(forged), 401, "Jwt verification fails"),
    ];
    let before = origin.requests();
    for (bearer, status, message) in cases {
        let reply = request(&proxy, "/echo", bearer.as_deref()).await;
        assert_eq!(reply.status, status, "{bearer:?}: {}", reply.text());
        assert!(reply.text().contains(message), "{}", reply.text());
        let challenge = reply.headers["www-authenticate"].to_str().expect("ascii");
        assert!(
            challenge.starts_with("Bearer realm=\"http://"),
            "{challenge}"
        );
    }
    assert_eq!(
        origin.requests(),
        before,
        "refused requests never reach the origin"
    );
}

/// A JWKS server on 127.0.0.1 that counts its fetches.
pub(crate) struct JwksServer {
    pub(crate) addr: SocketAddr,
    pub(crate) fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub(crate) async fn start(body: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&fetches);
        let body = Bytes::from(body);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                let body = body.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        let found = req.uri().path() == "/.well-known/jwks.json";
                        if found {
                            counter.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = body.clone();
                        async move {
                            http::Response::builder()
                                .status(if found { 200 } else { 404 })
                                .header("content-type", "application/json")
                                .body(Full::new(if found { body } else { Bytes::new() }))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer {
            addr,
            fetches,
            task,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_jwks_is_fetched_through_a_cluster_once_and_cached() {
    let origin = Origin::start("a").await;
    let server = JwksServer::start(jwks()).await;
    let remote = "          remote_jwks:
            http_uri: { uri: 'http://auth.test/.well-known/jwks.json', cluster: auth, timeout: 2s }
            cache_duration: 300s";
    let proxy = proxy(remote, &origin, Some(server.addr));
    let token = token(Algorithm::RS256, "rsa", claims("carol"));
    // No token: nothing to verify, nothing fetched.
    assert_eq!(request(&proxy, "/echo", None).await.status, 401);
    assert_eq!(server.fetches.load(Ordering::SeqCst), 0);
    for _ in 0..5 {
        let reply = request(&proxy, "/echo", Some(&token)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["headers"]["x-jwt-sub"][0], "carol");
    }
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        1,
        "one fetch, then the cache"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_jwks_server_fails_verification_not_the_proxy() {
    let origin = Origin::start("a").await;
    // A port nothing listens on.
    let closed: SocketAddr = ([127, 0, 0, 1], crate::harness::free_port()).into();
    let remote = "          remote_jwks:
            http_uri: { uri: 'http://auth.test/.well-known/jwks.json', cluster: auth, timeout: 1s }";
    let proxy = proxy(remote, &origin, Some(closed));
    let token = token(Algorithm::RS256, "rsa", claims("dave"));
    for _ in 0..2 {
        let reply = request(&proxy, "/echo", Some(&token)).await;
        assert_eq!(reply.status, 401, "{}", reply.text());
        assert!(
            reply.text().contains("Jwks remote fetch is failed"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(request(&proxy, "/public/echo", None).await.status, 200);
}
