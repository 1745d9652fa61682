//! What one request costs a plugin instance, without a network: the callbacks a proxied
//! request runs (context create, request headers, response headers, one response body chunk,
//! done, log, delete) in a loop, on one thread. The end-to-end benchmark measures the same
//! path through sockets, where a run's noise (±2 µs) hides the differences this one shows.
//!
//! With `EVICT_KIB`, the loop walks that much memory between requests, as other work does
//! between a busy proxy's requests, so each request finds the filter's code and data out of the
//! caches; the walk is timed alone too and taken off. The difference to a run without it is
//! what cold caches add to a request.
//!
//! `cargo run --release -p rustng-wasm --example filter_cycle -- MODULE.wasm [CONFIG] [REQUESTS] [EVICT_KIB]`

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use rustng_wasm::{
    Direction, InstanceEnv, Limits, PluginConfig, PluginInstance, PluginModule, RequestHead,
    ResponseHead, StreamInfo, WasmEngine,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: filter_cycle MODULE.wasm [CONFIG] [REQUESTS] [EVICT_KIB]")?;
    let configuration = args.next().unwrap_or_default();
    let requests: u32 = args.next().map_or(Ok(200_000), |n| n.parse())?;
    let evict_kib: usize = args.next().map_or(Ok(0), |n| n.parse())?;
    let mut evicting = vec![0u8; evict_kib * 1024];
    // One write per cache line: the lines the walk owns are the ones a request no longer has.
    let mut evict = move || {
        for line in evicting.iter_mut().step_by(64) {
            *line = line.wrapping_add(1);
        }
        std::hint::black_box(&mut evicting);
    };

    let engine = WasmEngine::new()?;
    let module = PluginModule::compile(&engine, &std::fs::read(&path)?)?;
    let config = Arc::new(PluginConfig {
        name: "bench".into(),
        plugin_configuration: configuration.into_bytes(),
        ..PluginConfig::default()
    });
    let mut instance =
        PluginInstance::start(&module, config, Limits::default(), InstanceEnv::default())?;

    let mut request = HeaderMap::new();
    request.insert("host", HeaderValue::from_static("bench.local"));
    request.insert("user-agent", HeaderValue::from_static("wrk"));
    request.insert("accept", HeaderValue::from_static("*/*"));
    let mut response = HeaderMap::new();
    response.insert("server", HeaderValue::from_static("nginx"));
    response.insert("content-type", HeaderValue::from_static("text/plain"));
    response.insert("content-length", HeaderValue::from_static("12"));

    let mut cycle = || -> Result<(), rustng_wasm::WasmError> {
        let mut stream = StreamInfo {
            source: Some(([127, 0, 0, 1], 40000).into()),
            destination: Some(([127, 0, 0, 1], 8080).into()),
            ..StreamInfo::default()
        };
        let mut head = RequestHead {
            method: Method::GET,
            uri: Uri::from_static("/api/v1/items"),
            headers: request.clone(),
            scheme: "http",
        };
        let (context, outcome) = instance.start_http_stream(&mut head, &mut stream, true);
        outcome?;
        let mut answer = ResponseHead {
            status: StatusCode::OK,
            headers: response.clone(),
        };
        instance.on_response_headers(context, &mut answer, &mut stream, false)?;
        let mut body = bytes::Bytes::from_static(b"hello world\n");
        instance.on_body(Direction::Response, context, &mut body, &mut stream, true)?;
        instance.finish_http_context(context, &mut Some(head), &mut Some(answer))
    };
    for _ in 0..requests / 10 {
        cycle()?;
        evict();
    }
    // Five batches, the fastest reported: on a shared machine, interference only adds time.
    // With eviction, each batch is paired with a batch of the walk alone.
    let mut batches = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..requests / 5 {
            cycle()?;
            evict();
        }
        let both = started.elapsed();
        let started = Instant::now();
        if evict_kib > 0 {
            for _ in 0..requests / 5 {
                evict();
            }
        }
        let walk = started.elapsed();
        let per_request = both.saturating_sub(walk).as_nanos() as f64 / f64::from(requests / 5);
        batches.push(per_request);
    }
    batches.sort_by(f64::total_cmp);
    println!(
        "{path}: {:.0} ns per request (fastest of 5 batches of {}; median {:.0}; {evict_kib} KiB \
         walked between requests)",
        batches[0],
        requests / 5,
        batches[2]
    );
    Ok(())
}
