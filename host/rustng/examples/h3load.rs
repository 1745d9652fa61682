//! An HTTP/3 load generator for `make bench` (the machine's h2load has no QUIC): `-c`
//! connections with `-m` requests in flight on each, GET of one URL for `-D` seconds, on one
//! thread. Prints one JSON object: requests, seconds, rps, latency percentiles, non-2xx,
//! errors.
//!
//! `cargo run --release --example h3load -- -c 32 -m 10 -D 10 --ca cert.pem https://127.0.0.1:8443/`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Buf as _, Bytes};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// The command line.
struct Args {
    connections: usize,
    streams: usize,
    duration: Duration,
    ca: std::path::PathBuf,
    url: http::Uri,
}

fn args() -> anyhow::Result<Args> {
    let mut connections = 1;
    let mut streams = 1;
    let mut duration = Duration::from_secs(5);
    let mut ca = None;
    let mut url = None;
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = || given.next().context("a value after the option");
        match arg.as_str() {
            "-c" => connections = value()?.parse()?,
            "-m" => streams = value()?.parse()?,
            "-D" => duration = Duration::from_secs(value()?.parse()?),
            "--ca" => ca = Some(value()?.into()),
            other if other.starts_with('-') => bail!("unknown option {other}"),
            other => url = Some(other.parse()?),
        }
    }
    Ok(Args {
        connections,
        streams,
        duration,
        ca: ca.context("--ca PEM: the certificate to trust")?,
        url: url.context("the URL to load")?,
    })
}

/// What one request loop saw.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    non_2xx: u64,
    errors: u64,
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(args))?;
    println!("{report}");
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca)? {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));

    let authority = args.url.authority().context("an absolute URL")?.clone();
    let address: SocketAddr = tokio::net::lookup_host(authority.as_str())
        .await?
        .next()
        .context("the URL's host resolves to nothing")?;
    let server_name = authority.host().to_owned();

    let mut senders = Vec::with_capacity(args.connections);
    let mut drivers = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let connection = endpoint.connect(address, &server_name)?.await?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(connection)).await?;
        drivers.spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        senders.push(send);
    }

    let started = Instant::now();
    let deadline = started + args.duration;
    let mut loops = tokio::task::JoinSet::new();
    for send in &senders {
        for _ in 0..args.streams {
            let mut send = send.clone();
            let url = args.url.clone();
            loops.spawn(async move {
                let mut tally = Tally::default();
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    match get(&mut send, &url).await {
                        Ok(status) => {
                            tally.latencies_us.push(
                                u64::try_from(begun.elapsed().as_micros()).unwrap_or(u64::MAX),
                            );
                            if !status.is_success() {
                                tally.non_2xx += 1;
                            }
                        }
                        Err(_) => tally.errors += 1,
                    }
                }
                tally
            });
        }
    }
    let mut all = Tally::default();
    while let Some(tally) = loops.join_next().await {
        let tally = tally?;
        all.latencies_us.extend(tally.latencies_us);
        all.non_2xx += tally.non_2xx;
        all.errors += tally.errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let percentile = |p: f64| -> Option<f64> {
        let n = all.latencies_us.len();
        (n > 0).then(|| {
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            all.latencies_us[rank.clamp(1, n) - 1] as f64 / 1000.0
        })
    };
    let requests = all.latencies_us.len();
    Ok(serde_json::json!({
        "requests": requests,
        "seconds": seconds,
        "rps": requests as f64 / seconds,
        "p50_ms": percentile(50.0),
        "p99_ms": percentile(99.0),
        "non_2xx": all.non_2xx,
        "errors": all.errors,
    }))
}

/// One GET, its body read to the end: the status.
async fn get(
    send: &mut h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    url: &http::Uri,
) -> anyhow::Result<http::StatusCode> {
    let mut stream = send
        .send_request(http::Request::get(url.clone()).body(())?)
        .await?;
    // The server may stop reading the request once it has answered (RFC 9114 4.1).
    let _ = stream.finish().await;
    let response = stream.recv_response().await?;
    while let Some(mut chunk) = stream.recv_data().await? {
        chunk.advance(chunk.remaining());
    }
    Ok(response.status())
}
