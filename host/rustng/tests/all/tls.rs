//! TLS termination: certificates chosen by SNI, ALPN picks HTTP/2 or HTTP/1.1.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::harness::Rustng;
use crate::origin::Origin;

pub(crate) struct Cert {
    pub(crate) der: CertificateDer<'static>,
}

/// GET `path` over HTTP/1.1 on TLS to `addr` as `name`, trusting only `cert`: the status.
pub(crate) async fn tls_get(
    addr: std::net::SocketAddr,
    name: &str,
    cert: &Cert,
    path: &str,
) -> u16 {
    tls_get_response(addr, name, cert, path).await.0
}

/// The same, for the response headers.
pub(crate) async fn tls_get_headers(
    addr: std::net::SocketAddr,
    name: &str,
    cert: &Cert,
    path: &str,
) -> http::HeaderMap {
    tls_get_response(addr, name, cert, path).await.1
}

async fn tls_get_response(
    addr: std::net::SocketAddr,
    name: &str,
    cert: &Cert,
    path: &str,
) -> (u16, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = connector(&[cert], &[b"http/1.1"])
        .connect(ServerName::try_from(name.to_owned()).expect("name"), tcp)
        .await
        .expect("handshake");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("http/1.1 over tls");
    tokio::spawn(conn);
    let request = Request::get(path)
        .header("host", name)
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let _ = response.into_body().collect().await;
    (status, headers)
}

pub(crate) fn make_cert(dir: &std::path::Path, name: &str, names: &[&str]) -> Cert {
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let generated = rcgen::generate_simple_self_signed(names).expect("cert");
    std::fs::write(dir.join(format!("{name}.crt")), generated.cert.pem()).expect("write cert");
    std::fs::write(
        dir.join(format!("{name}.key")),
        generated.signing_key.serialize_pem(),
    )
    .expect("write key");
    Cert {
        der: generated.cert.der().clone(),
    }
}

/// A TLS acceptor for a test server with the certificate `name` made by [`make_cert`] in
/// `dir`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub(crate) fn acceptor(dir: &std::path::Path, name: &str) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join(format!("{name}.crt")))
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("cert");
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).expect("key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn connector(roots: &[&Cert], alpn: &[&[u8]]) -> TlsConnector {
    let mut store = rustls::RootCertStore::empty();
    for cert in roots {
        store.add(cert.der.clone()).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let origin = Origin::start("a").await;
    let certs = tempfile::tempdir().expect("tempdir");
    let a = make_cert(certs.path(), "a.test", &["a.test"]);
    let b = make_cert(certs.path(), "b.test", &["b.test", "*.b.test"]);
    let dir = certs.path().display();
    let config = format!(
        "workers: 1
listeners:
  - name: tls
    address: '{{listen}}'
    default_cluster: backend
    tls:
      certificates:
        - certificate_chain: {dir}/a.test.crt
          private_key: {dir}/a.test.key
          server_names: [a.test]
        - certificate_chain: {dir}/b.test.crt
          private_key: {dir}/b.test.key
          server_names: ['*.b.test', b.test]
clusters:
  - name: backend
    endpoints:
      - address: {}
",
        origin.addr
    );
    let proxy = Rustng::start(&config);

    for (name, expected) in [
        ("a.test", &a),
        ("b.test", &b),
        ("www.b.test", &b),
        ("other.test", &a),
    ] {
        let tcp = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        // Trust only the certificate we expect: the handshake fails if SNI picked another.
        let tls = connector(&[expected], &[b"h2"])
            .connect(ServerName::try_from(name.to_owned()).expect("name"), tcp)
            .await;
        let Ok(tls) = tls else {
            // other.test is not in the default cert's names; that mismatch is expected.
            assert_eq!(
                name,
                "other.test",
                "handshake for {name} failed: {:?}",
                tls.err()
            );
            continue;
        };
        let (_, session) = tls.get_ref();
        assert_eq!(
            session.peer_certificates().expect("certs")[0],
            expected.der,
            "{name}"
        );
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));

        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("h2 over tls");
        tokio::spawn(conn);
        let req = Request::get(format!("https://{name}/echo"))
            .body(Empty::<Bytes>::new())
            .expect("req");
        let response = sender.send_request(req).await.expect("response");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let echo: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");
        assert_eq!(echo["headers"]["host"][0], name);
    }

    // HTTP/1.1 over TLS when the client offers only that.
    let tcp = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let tls = connector(&[&a], &[b"http/1.1"])
        .connect(ServerName::try_from("a.test").expect("name"), tcp)
        .await
        .expect("tls");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "a.test")
        .body(Empty::<Bytes>::new())
        .expect("req");
    let response = sender.send_request(req).await.expect("response");
    assert_eq!(response.status(), 200);
}

#[test]
fn a_bad_certificate_file_fails_the_start_with_the_listener_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("bad.crt"), "not pem").expect("write");
    std::fs::write(dir.path().join("bad.key"), "not pem").expect("write");
    let config = format!(
        "listeners:
  - name: secure
    address: 127.0.0.1:0
    tls:
      certificates:
        - certificate_chain: {0}/bad.crt
          private_key: {0}/bad.key
",
        dir.path().display()
    );
    let run = crate::harness::cli_with_config("run", &config);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("listener secure:") && run.stderr.contains("no certificate found"),
        "{}",
        run.stderr
    );
}
