//! The admin API and `rustng-ctl` against the real binary: the auth matrix (no credentials,
//! bad token, read and admin tokens, HS256 and RS256 JWTs, expired, wrong audience), every
//! endpoint, the audit trail (one line per mutation, none for reads), and every ctl
//! subcommand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::client::{self, Reply, send};
use crate::harness::{Rustng, free_port};
use crate::origin::Origin;
use crate::stock_filters::module;

pub(crate) const ADMIN_TOKEN: &str = "adm1n-t0ken";
pub(crate) const READ_TOKEN: &str = "r3ad-t0ken";
const JWT_SECRET: &[u8] = b"an-admin-jwt-secret-32-bytes-long";
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "rustng-admin";
const RSA: &str = include_str!("../../../../filters/jwt-authn/testdata/rsa-2048.pem");
const RSA_PUBLIC: &str = include_str!("../../../../filters/jwt-authn/testdata/rsa-2048.pub.pem");

/// RustNg with the headers filter (`x-gen: one`) and an admin server with tokens and JWTs.
pub(crate) struct Admin {
    pub(crate) proxy: Rustng,
    pub(crate) url: String,
    state: PathBuf,
    _files: tempfile::TempDir,
}

fn headers_plugin(tag: &str) -> String {
    format!(
        "  - name: hdr
    vm_config: {{ code: {{ local: {{ filename: {} }} }} }}
    configuration:
      response_headers_to_add:
        - header: {{ key: x-gen, value: {tag} }}
",
        module("headers").display()
    )
}

fn config(origin: &Origin, tag: &str, admin_port: u16, files: &Path, jwt_key: &str) -> String {
    format!(
        "workers: 1
state_dir: {state}
plugins:
{plugin}listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
    http_filters: [hdr]
clusters:
  - name: backend
    endpoints: [{{ address: {origin} }}]
admin:
  address: 127.0.0.1:{admin_port}
  auth:
    tokens_file: {tokens}
    jwt: {{ issuer: '{ISSUER}', audiences: [{AUDIENCE}], {jwt_key} }}
",
        state = files.join("state").display(),
        plugin = headers_plugin(tag),
        origin = origin.addr,
        tokens = files.join("tokens.yaml").display(),
    )
}

/// `dir/tokens.yaml`: `ops` with the admin role, `dashboards` with the read role.
pub(crate) fn write_tokens(dir: &Path) {
    std::fs::write(
        dir.join("tokens.yaml"),
        format!(
            "tokens:\n  - {{ name: ops, role: admin, token: {ADMIN_TOKEN} }}\n  - {{ name: dashboards, role: read, token: {READ_TOKEN} }}\n"
        ),
    )
    .expect("tokens");
}

pub(crate) fn start(origin: &Origin, rs256: bool) -> Admin {
    let files = tempfile::tempdir().expect("tempdir");
    write_tokens(files.path());
    std::fs::write(files.path().join("jwt-secret"), JWT_SECRET).expect("secret");
    std::fs::write(files.path().join("jwt.pub.pem"), RSA_PUBLIC).expect("public key");
    let key = if rs256 {
        format!(
            "rs256_public_key_file: {}",
            files.path().join("jwt.pub.pem").display()
        )
    } else {
        format!(
            "hs256_secret_file: {}",
            files.path().join("jwt-secret").display()
        )
    };
    let port = free_port();
    let proxy = Rustng::start(&config(origin, "one", port, files.path(), &key));
    Admin {
        proxy,
        url: format!("http://127.0.0.1:{port}"),
        state: files.path().join("state"),
        _files: files,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn jwt(alg: Algorithm, claims: Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA.as_bytes()).expect("rsa"),
        _ => EncodingKey::from_secret(JWT_SECRET),
    };
    jsonwebtoken::encode(&Header::new(alg), &claims, &key).expect("sign")
}

fn claims(role: &str) -> Value {
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "role": role, "exp": now() + 300 })
}

impl Admin {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: &str) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        send(&client::http1(), request).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(Method::GET, path, token, "").await
    }

    async fn admin(&self, method: Method, path: &str, body: Value) -> Reply {
        self.call(method, path, Some(ADMIN_TOKEN), &body.to_string())
            .await
    }

    /// The audit file's entries.
    pub(crate) fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state.join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    /// Waits (up to ten seconds) for the process to exit after a drain, and checks it exited
    /// cleanly.
    pub(crate) async fn exits_cleanly(self) {
        let status = tokio::task::spawn_blocking(move || {
            let Admin { proxy, .. } = self;
            proxy.wait_exit(Duration::from_secs(10))
        })
        .await
        .expect("join");
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
    }

    /// Each audit entry as `"<action> <result>"`.
    pub(crate) fn audit_actions(&self) -> Vec<String> {
        self.audit_lines()
            .iter()
            .map(|l| {
                format!(
                    "{} {}",
                    l["action"].as_str().unwrap_or(""),
                    l["result"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    /// The `x-gen` header traffic carries now.
    pub(crate) async fn generation_tag(&self) -> String {
        let reply = client::get(&client::http1(), &self.proxy.url("/echo")).await;
        reply
            .headers
            .get("x-gen")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_right_credentials_reach_the_api() {
    let origin = Origin::start("o").await;
    let admin = start(&origin, false);
    let level = |level: &str| json!({ "level": level }).to_string();
    // Probes and scrapes need no credentials.
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(admin.get(path, None).await.status, 200, "{path}");
    }
    let none = admin.get("/v1/status", None).await;
    assert_eq!(none.status, 401);
    assert!(
        none.headers["www-authenticate"]
            .to_str()
            .expect("ascii")
            .starts_with("Bearer")
    );
    assert_eq!(admin.get("/v1/status", Some("wrong")).await.status, 401);
    assert_eq!(admin.get("/debug/vars", None).await.status, 401);
    let read = admin.get("/v1/status", Some(READ_TOKEN)).await;
    assert_eq!(read.status, 200, "{}", read.text());
    assert_eq!(read.json()["version"], 1);
    let vars = admin.get("/debug/vars", Some(READ_TOKEN)).await.json();
    assert!(
        vars["memory"]["rss_bytes"].as_u64().unwrap_or(0) > 1 << 20,
        "{vars}"
    );

    // Mutations: the read role is refused, the admin role and an admin JWT may.
    let attempts = [
        (None, 401),
        (Some("wrong".to_owned()), 401),
        (Some(READ_TOKEN.to_owned()), 403),
        (Some(ADMIN_TOKEN.to_owned()), 200),
        (Some(jwt(Algorithm::HS256, claims("admin"))), 200),
        (Some(jwt(Algorithm::HS256, claims("read"))), 403),
        (
            Some(jwt(Algorithm::HS256, {
                let mut c = claims("admin");
                c["exp"] = json!(now() - 3600);
                c
            })),
            401,
        ),
        (
            Some(jwt(Algorithm::HS256, {
                let mut c = claims("admin");
                c["aud"] = json!("someone-else");
                c
            })),
            401,
        ),
        (
            Some(jwt(Algorithm::HS256, {
                let mut c = claims("admin");
                c["iss"] = json!("https://elsewhere.test");
                c
            })),
            401,
        ),
        // Signed with the RSA key while the server expects HS256.
        (Some(jwt(Algorithm::RS256, claims("admin"))), 401),
    ];
    for (i, (token, status)) in attempts.iter().enumerate() {
        let reply = admin
            .call(
                Method::PUT,
                "/v1/log_level",
                token.as_deref(),
                &level("info"),
            )
            .await;
        assert_eq!(reply.status, *status, "attempt {i}: {}", reply.text());
    }
    // A JWT reads too.
    let reply = admin
        .get("/v1/config", Some(&jwt(Algorithm::HS256, claims("read"))))
        .await;
    assert_eq!(reply.status, 200);

    // Every mutation attempt is one audit line, reads none; the principal is named.
    let lines = admin.audit_lines();
    assert_eq!(lines.len(), attempts.len(), "{lines:#?}");
    let results: Vec<&str> = lines
        .iter()
        .map(|l| l["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        results,
        [
            "unauthorized",
            "unauthorized",
            "forbidden",
            "ok",
            "ok",
            "forbidden",
            "unauthorized",
            "unauthorized",
            "unauthorized",
            "unauthorized"
        ]
    );
    assert_eq!(lines[3]["principal"], "ops");
    assert_eq!(lines[4]["principal"], "alice");
    assert_eq!(lines[2]["principal"], "dashboards");
    assert_eq!(lines[3]["action"], "PUT /v1/log_level");
    let api = admin
        .get("/v1/audit?limit=3", Some(READ_TOKEN))
        .await
        .json();
    assert_eq!(api["entries"].as_array().map(Vec::len), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rs256_identity_provider_is_trusted_through_its_public_key() {
    let origin = Origin::start("o").await;
    let admin = start(&origin, true);
    let token = jwt(Algorithm::RS256, claims("admin"));
    assert_eq!(admin.get("/v1/status", Some(&token)).await.status, 200);
    // An HS256 token, even one "signed" with the public key's text, is refused.
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims("admin"),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    )
    .expect("sign");
    assert_eq!(admin.get("/v1/status", Some(&forged)).await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_and_plugins_change_through_the_api() {
    let origin = Origin::start("o").await;
    let admin = start(&origin, false);
    assert_eq!(admin.generation_tag().await, "one");
    let running = admin.get("/v1/config", Some(READ_TOKEN)).await.json();
    let yaml = running["yaml"].as_str().expect("yaml").to_owned();
    assert!(yaml.contains("name: hdr"), "{yaml}");

    // Validate and diff change nothing.
    let changed = yaml.replace("value: one", "value: two");
    let broken = yaml.replace("default_cluster: backend", "default_cluster: nowhere");
    let valid = admin
        .call(
            Method::POST,
            "/v1/config/validate",
            Some(READ_TOKEN),
            &changed,
        )
        .await
        .json();
    assert_eq!(valid["valid"], true, "{valid}");
    let invalid = admin
        .call(
            Method::POST,
            "/v1/config/validate",
            Some(READ_TOKEN),
            &broken,
        )
        .await
        .json();
    assert_eq!(invalid["valid"], false);
    assert_eq!(invalid["errors"][0]["path"], "listeners[0].default_cluster");
    let diff = admin
        .call(Method::POST, "/v1/config/diff", Some(READ_TOKEN), &changed)
        .await
        .json();
    assert_eq!(diff["changed"], true);
    assert!(
        diff["diff"]
            .as_str()
            .unwrap_or("")
            .contains("+        - header: { key: x-gen, value: two }"),
        "{diff}"
    );

    // Apply: refused with the path, then applied.
    let refused = admin
        .call(Method::PUT, "/v1/config", Some(ADMIN_TOKEN), &broken)
        .await;
    assert_eq!(refused.status, 422);
    assert_eq!(
        refused.json()["errors"][0]["path"],
        "listeners[0].default_cluster"
    );
    let applied = admin
        .call(Method::PUT, "/v1/config", Some(ADMIN_TOKEN), &changed)
        .await;
    assert_eq!(applied.status, 200, "{}", applied.text());
    assert_eq!(applied.json()["version"], 2);
    assert_eq!(admin.generation_tag().await, "two");
    let history = admin
        .get("/v1/config/history", Some(READ_TOKEN))
        .await
        .json();
    let versions = history["versions"].as_array().expect("versions");
    assert_eq!(versions.len(), 2);
    assert!(
        versions[1]["origin"]
            .as_str()
            .unwrap_or("")
            .contains("api (ops)"),
        "{history}"
    );

    // Rollback to version 1: a new version with the old document.
    let back = admin
        .admin(Method::POST, "/v1/config/rollback", json!({ "version": 1 }))
        .await;
    assert_eq!(back.json()["version"], 3, "{}", back.text());
    assert_eq!(admin.generation_tag().await, "one");
    assert_eq!(
        admin
            .admin(
                Method::POST,
                "/v1/config/rollback",
                json!({ "version": 99 })
            )
            .await
            .status,
        404
    );

    // A module push: the module and a new configuration, as a new generation.
    let module = std::fs::read(module("headers")).expect("module");
    let push = admin
        .admin(
            Method::POST,
            "/v1/plugins/hdr/push",
            json!({
                "module_base64": base64::engine::general_purpose::STANDARD.encode(&module),
                "configuration": { "response_headers_to_add": [ { "header": { "key": "x-gen", "value": "pushed" } } ] },
            }),
        )
        .await;
    assert_eq!(push.status, 200, "{}", push.text());
    let pushed = push.json();
    // Generation 1 came back with the rollback (kept, not rebuilt): the push is the third.
    assert_eq!(pushed["generation"], 3);
    assert_eq!(admin.generation_tag().await, "pushed");
    // Garbage after a wasm header is refused by the compile; traffic is untouched.
    let garbage = admin
        .admin(
            Method::POST,
            "/v1/plugins/hdr/push",
            json!({ "module_base64": base64::engine::general_purpose::STANDARD.encode(b"\0asm\x01\0\0\0junk") }),
        )
        .await;
    assert_eq!(garbage.status, 422, "{}", garbage.text());
    let not_base64 = admin
        .admin(
            Method::POST,
            "/v1/plugins/hdr/push",
            json!({ "module_base64": "%%%" }),
        )
        .await;
    assert_eq!(not_base64.status, 400);
    let unknown = admin
        .admin(
            Method::POST,
            "/v1/plugins/nope/push",
            json!({ "module_base64": base64::engine::general_purpose::STANDARD.encode(&module) }),
        )
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(admin.generation_tag().await, "pushed");

    // Plugin rollback to generation 1.
    let listed = admin.get("/v1/plugins/hdr", Some(READ_TOKEN)).await.json();
    assert_eq!(listed["generation"], 3, "{listed}");
    assert_eq!(listed["generations"].as_array().map(Vec::len), Some(3));
    let rolled = admin
        .admin(
            Method::POST,
            "/v1/plugins/hdr/rollback",
            json!({ "generation": 1 }),
        )
        .await;
    assert_eq!(rolled.status, 200, "{}", rolled.text());
    assert_eq!(admin.generation_tag().await, "one");
    let all = admin.get("/v1/plugins", Some(READ_TOKEN)).await.json();
    assert_eq!(all["plugins"][0]["generation"], 1);

    // Log level: a filter that does not parse is refused.
    assert_eq!(
        admin
            .admin(Method::PUT, "/v1/log_level", json!({ "level": "info,=[" }))
            .await
            .status,
        400
    );
    let level = admin
        .admin(Method::PUT, "/v1/log_level", json!({ "level": "debug" }))
        .await
        .json();
    assert_eq!(level["level"], "debug");
    assert_eq!(
        admin.get("/v1/log_level", Some(READ_TOKEN)).await.json()["level"],
        "debug"
    );
    assert_eq!(admin.get("/v1/nothing", Some(READ_TOKEN)).await.status, 404);
    assert_eq!(
        admin
            .call(Method::DELETE, "/v1/config", Some(ADMIN_TOKEN), "")
            .await
            .status,
        405
    );

    // The audit trail: one entry per mutation, with versions before and after.
    let lines = admin.audit_lines();
    let actions = admin.audit_actions();
    assert_eq!(
        actions,
        [
            "PUT /v1/config refused",
            "PUT /v1/config ok",
            "POST /v1/config/rollback ok",
            "POST /v1/config/rollback invalid",
            "POST /v1/plugins/hdr/push ok",
            "POST /v1/plugins/hdr/push refused",
            "POST /v1/plugins/hdr/push invalid",
            "POST /v1/plugins/nope/push invalid",
            "POST /v1/plugins/hdr/rollback ok",
            "PUT /v1/log_level invalid",
            "PUT /v1/log_level ok",
        ]
    );
    assert_eq!(
        (
            lines[1]["version_before"].as_u64(),
            lines[1]["version_after"].as_u64()
        ),
        (Some(1), Some(2))
    );

    // Drain: not ready any more, and the process exits.
    let drained = admin.admin(Method::POST, "/v1/drain", json!({})).await;
    assert_eq!(drained.status, 200);
    admin.exits_cleanly().await;
}

/// Runs `rustng-ctl` with `args`; (exit success, stdout, stderr).
fn ctl(admin: &Admin, token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rustng-ctl"));
    command
        .env_remove("RUSTNG_TOKEN")
        .env("RUSTNG_ADMIN", &admin.url);
    if let Some(token) = token {
        command.env("RUSTNG_TOKEN", token);
    }
    let output = command.args(args).output().expect("run rustng-ctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ctl_subcommand_works_against_the_real_binary() {
    let origin = Origin::start("o").await;
    let admin = start(&origin, false);
    let files = tempfile::tempdir().expect("tempdir");
    let run = |token: Option<&str>, args: &[&str]| ctl(&admin, token, args);
    let admin_token = Some(ADMIN_TOKEN);

    let (ok, out, _) = run(Some(READ_TOKEN), &["status"]);
    assert!(
        ok && out.contains("version 1") && out.contains("hdr"),
        "{out}"
    );
    let (ok, out, _) = run(Some(READ_TOKEN), &["-o", "json", "status"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["version"],
        1
    );
    // No token: non-zero exit with the server's message.
    let (ok, _, err) = run(None, &["status"]);
    assert!(!ok && err.contains("credentials required"), "{err}");
    let (ok, _, err) = run(Some(READ_TOKEN), &["log-level", "debug"]);
    assert!(!ok && err.contains("needs admin"), "{err}");

    let (ok, yaml, _) = run(Some(READ_TOKEN), &["config", "get"]);
    assert!(ok && yaml.contains("name: hdr"));
    let good = files.path().join("good.yaml");
    std::fs::write(&good, yaml.replace("value: one", "value: ctl")).expect("write");
    let bad = files.path().join("bad.yaml");
    std::fs::write(
        &bad,
        yaml.replace("default_cluster: backend", "default_cluster: nowhere"),
    )
    .expect("write");
    let path = |p: &PathBuf| p.display().to_string();
    let (ok, out, _) = run(Some(READ_TOKEN), &["config", "validate", &path(&good)]);
    assert!(ok && out.contains("valid"), "{out}");
    let (ok, out, _) = run(Some(READ_TOKEN), &["config", "validate", &path(&bad)]);
    assert!(!ok && out.contains("listeners[0].default_cluster"), "{out}");
    let (ok, out, _) = run(Some(READ_TOKEN), &["config", "diff", &path(&good)]);
    assert!(
        ok && out.contains("+        - header: { key: x-gen, value: ctl }"),
        "{out}"
    );
    let (ok, _, err) = run(admin_token, &["config", "apply", &path(&bad)]);
    assert!(!ok && err.contains("listeners[0].default_cluster"), "{err}");
    let (ok, out, _) = run(admin_token, &["config", "apply", &path(&good)]);
    assert!(ok && out.contains("applied: version 2"), "{out}");
    assert_eq!(admin.generation_tag().await, "ctl");
    let (ok, out, _) = run(Some(READ_TOKEN), &["config", "history"]);
    assert!(
        ok && out.lines().count() == 3 && out.contains("running"),
        "{out}"
    );
    let (ok, out, _) = run(admin_token, &["config", "rollback", "1"]);
    assert!(ok && out.contains("version 3"), "{out}");
    assert_eq!(admin.generation_tag().await, "one");

    let config = files.path().join("plugin.json");
    std::fs::write(
        &config,
        r#"{"response_headers_to_add": [{"header": {"key": "x-gen", "value": "ctl-push"}}]}"#,
    )
    .expect("write");
    let wasm = module("headers").display().to_string();
    let (ok, out, err) = run(
        admin_token,
        &["wasm", "push", "hdr", &wasm, "--config", &path(&config)],
    );
    assert!(ok && out.contains("generation 3"), "{out}{err}");
    assert_eq!(admin.generation_tag().await, "ctl-push");
    let (ok, out, err) = run(
        admin_token,
        &[
            "wasm",
            "push",
            "hdr",
            &wasm,
            "--config-json",
            r#"{"response_headers_to_add": [{"header": {"key": "x-gen", "value": "inline"}}]}"#,
        ],
    );
    assert!(ok && out.contains("generation 4"), "{out}{err}");
    assert_eq!(admin.generation_tag().await, "inline");
    let (ok, out, _) = run(Some(READ_TOKEN), &["wasm", "list"]);
    assert!(ok && out.contains("hdr") && out.contains('4'), "{out}");
    let (ok, out, _) = run(Some(READ_TOKEN), &["wasm", "show", "hdr"]);
    assert!(
        ok && out.lines().count() == 5 && out.contains("active"),
        "{out}"
    );
    let (ok, _, _) = run(admin_token, &["wasm", "rollback", "hdr", "1"]);
    assert!(ok);
    assert_eq!(admin.generation_tag().await, "one");
    let (ok, _, err) = run(admin_token, &["wasm", "rollback", "hdr", "42"]);
    assert!(!ok && err.contains("42"), "{err}");

    let (ok, out, _) = run(admin_token, &["log-level", "warn"]);
    assert!(ok && out.trim() == "warn", "{out}");
    let (ok, out, _) = run(Some(READ_TOKEN), &["log-level"]);
    assert!(ok && out.trim() == "warn", "{out}");
    let (ok, out, _) = run(Some(READ_TOKEN), &["audit", "--limit", "50"]);
    assert!(
        ok && out.contains("POST /v1/plugins/hdr/push") && out.contains("ops"),
        "{out}"
    );

    let (ok, out, _) = run(admin_token, &["drain"]);
    assert!(ok && out.contains("draining"), "{out}");
    admin.exits_cleanly().await;
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`:
/// `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
fn mtls_files(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
    let issuer = Issuer::new(ca_params, ca_key);
    for (name, sans) in [
        ("server", vec!["127.0.0.1".to_owned()]),
        ("client", vec!["ops.test".to_owned()]),
    ] {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(sans)
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("sign");
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write");
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let origin = Origin::start("o").await;
    let files = tempfile::tempdir().expect("tempdir");
    let dir = files.path();
    mtls_files(dir);
    std::fs::write(
        dir.join("tokens.yaml"),
        format!("tokens:\n  - {{ name: ops, role: admin, token: {ADMIN_TOKEN} }}\n"),
    )
    .expect("tokens");
    let port = free_port();
    let _proxy = Rustng::start(&format!(
        "workers: 1
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: backend
    endpoints: [{{ address: {origin} }}]
admin:
  address: 127.0.0.1:{port}
  auth: {{ tokens_file: {tokens} }}
  tls: {{ certificate_chain: {dir}/server.pem, private_key: {dir}/server.key, client_ca: {dir}/ca.pem }}
",
        origin = origin.addr,
        tokens = dir.join("tokens.yaml").display(),
        dir = dir.display(),
    ));
    let https = format!("https://127.0.0.1:{port}");
    let file = |name: &str| dir.join(name).display().to_string();
    let ctl = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_rustng-ctl"))
            .env_remove("RUSTNG_TOKEN")
            .args(["--admin", &https, "--token", ADMIN_TOKEN])
            .args(args)
            .output()
            .expect("run rustng-ctl");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let (ok, out) = ctl(&["--cacert", &ca, "--cert", &cert, "--key", &key, "status"]);
    assert!(ok && out.contains("version 1"), "{out}");
    // No client certificate: the handshake fails before any token is read.
    let (ok, out) = ctl(&["--cacert", &ca, "status"]);
    assert!(!ok && out.contains("cannot reach"), "{out}");
    // A client certificate from another CA fails too.
    let other = tempfile::tempdir().expect("tempdir");
    mtls_files(other.path());
    let foreign_cert = other.path().join("client.pem").display().to_string();
    let foreign_key = other.path().join("client.key").display().to_string();
    let (ok, out) = ctl(&[
        "--cacert",
        &ca,
        "--cert",
        &foreign_cert,
        "--key",
        &foreign_key,
        "status",
    ]);
    assert!(!ok, "{out}");
    // Plain HTTP to the TLS port gets nothing.
    let plain = Command::new(env!("CARGO_BIN_EXE_rustng-ctl"))
        .args([
            "--admin",
            &format!("http://127.0.0.1:{port}"),
            "--token",
            ADMIN_TOKEN,
            "status",
        ])
        .output()
        .expect("run");
    assert!(!plain.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_drained_by_hand_gets_no_new_requests() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let files = tempfile::tempdir().expect("tempdir");
    write_tokens(files.path());
    let port = free_port();
    let (state, tokens) = (files.path().join("state"), files.path().join("tokens.yaml"));
    let config = |timeout: &str| {
        format!(
            "workers: 2
state_dir: {state}
listeners:
  - name: main
    address: '{{listen}}'
    default_cluster: backend
clusters:
  - name: backend
    timeout: {timeout}
    endpoints: [{{ address: {a} }}, {{ address: {b} }}]
admin:
  address: 127.0.0.1:{port}
  auth: {{ tokens_file: {tokens} }}
",
            state = state.display(),
            a = a.addr,
            b = b.addr,
            tokens = tokens.display(),
        )
    };
    let proxy = Rustng::start(&config("15s"));
    let admin = Admin {
        proxy,
        url: format!("http://127.0.0.1:{port}"),
        state: state.clone(),
        _files: files,
    };
    let client = client::http1();
    let origins = async |n: usize| {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..n {
            let reply = client::get(&client, &admin.proxy.url("/echo")).await;
            assert_eq!(reply.status, 200);
            seen.insert(
                reply.json()["origin"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        seen.into_iter().collect::<Vec<_>>()
    };
    assert_eq!(origins(8).await, ["a", "b"]);

    let drained = admin
        .admin(
            Method::POST,
            "/v1/clusters/backend/drain",
            json!({ "endpoint": a.addr.to_string() }),
        )
        .await;
    assert_eq!(drained.status, 200, "{}", drained.text());
    assert_eq!(drained.json()["changed"], true);
    assert_eq!(origins(8).await, ["b"]);
    let clusters = admin.get("/v1/clusters", Some(READ_TOKEN)).await.json();
    let endpoints = &clusters["clusters"][0]["endpoints"];
    assert_eq!(endpoints[0]["draining"], true, "{clusters}");
    assert_eq!(endpoints[1]["draining"], false);
    assert!(clusters["clusters"][0]["requests_by_class"][1].as_u64() >= Some(16));

    // A new config version that keeps the address keeps it drained.
    admin.proxy.write_config(&config("14s"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while admin.proxy.log_count("config reloaded") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            admin.proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(origins(8).await, ["b"]);

    // rustng-ctl: the table shows it, --undo restores it.
    let (ok, out, _) = ctl(&admin, Some(READ_TOKEN), &["clusters"]);
    assert!(
        ok && out.contains("draining") && out.contains("active"),
        "{out}"
    );
    let (ok, out, err) = ctl(
        &admin,
        Some(ADMIN_TOKEN),
        &[
            "endpoints",
            "drain",
            "backend",
            &a.addr.to_string(),
            "--undo",
        ],
    );
    assert!(ok && out.contains("active"), "{out}{err}");
    assert_eq!(origins(8).await, ["a", "b"]);
    let (ok, _, err) = ctl(
        &admin,
        Some(ADMIN_TOKEN),
        &["endpoints", "drain", "backend", "127.0.0.1:1"],
    );
    assert!(!ok && err.contains("no endpoint"), "{err}");
    let actions = admin.audit_actions();
    assert_eq!(
        actions,
        [
            "POST /v1/clusters/backend/drain ok",
            "POST /v1/clusters/backend/drain ok",
            "POST /v1/clusters/backend/drain invalid",
        ]
    );
}
