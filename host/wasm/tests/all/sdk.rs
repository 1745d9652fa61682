//! The header-rewrite filter from `filters/`, built with the upstream proxy-wasm Rust SDK by
//! `make filters`: the same module Envoy would run, driven through a request and a response.

use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderValue, Method, StatusCode};
use rustng_abi::{AbiVersion, LogLevel};
use rustng_wasm::{
    HeadersOutcome, Limits, PluginConfig, PluginInstance, PluginModule, RequestHead, ResponseHead,
    StreamInfo,
};

use crate::{capture, engine, lines};

fn sdk_filter() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../filters/target/wasm32-wasip1/release/header_rewrite.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build the filters first with `make filters`",
            path.display()
        )
    })
}

fn request(path: &str) -> RequestHead {
    let mut head = RequestHead {
        method: Method::POST,
        uri: path.parse().expect("uri"),
        scheme: "http",
        ..RequestHead::default()
    };
    head.headers
        .insert("host", HeaderValue::from_static("example.test"));
    head.headers
        .insert("x-remove-me", HeaderValue::from_static("1"));
    head
}

#[test]
fn the_rust_sdk_filter_rewrites_headers_and_answers_locally() {
    let module = PluginModule::compile(engine(), &sdk_filter()).expect("compiles");
    assert_eq!(module.abi_version(), AbiVersion::V0_2_1);
    let (sink, logged) = capture();
    let config = Arc::new(PluginConfig {
        name: "hdr".into(),
        plugin_configuration: b"abc".to_vec(),
        ..PluginConfig::default()
    });
    let mut plugin = PluginInstance::start(&module, config, Limits::default(), crate::env(sink))
        .expect("starts");

    // A request passes with headers added, replaced and removed.
    let context = plugin.create_http_context().expect("context");
    let mut head = request("/hello?x=1");
    let outcome = plugin
        .on_request_headers(context, &mut head, &mut StreamInfo::default(), true)
        .expect("runs");
    assert_eq!(outcome, HeadersOutcome::Continue);
    assert_eq!(head.headers["x-filter-tag"], "abc");
    assert_eq!(head.headers["x-filter-method"], "POST");
    assert!(head.headers.get("x-remove-me").is_none());
    assert_eq!(
        head.headers["host"], "example.test",
        "host stays, seen as :authority"
    );

    let mut response = ResponseHead {
        status: StatusCode::CREATED,
        ..ResponseHead::default()
    };
    let outcome = plugin
        .on_response_headers(context, &mut response, &mut StreamInfo::default(), false)
        .expect("runs");
    assert_eq!(outcome, HeadersOutcome::Continue);
    assert_eq!(response.headers["x-filter-saw-status"], "201");
    plugin
        .finish_http_context(context, &mut Some(head), &mut Some(response))
        .expect("finishes");

    // /deny gets a local response instead.
    let context = plugin.create_http_context().expect("context");
    let mut head = request("/deny");
    match plugin
        .on_request_headers(context, &mut head, &mut StreamInfo::default(), true)
        .expect("runs")
    {
        HeadersOutcome::LocalResponse(local) => {
            assert_eq!(local.status, StatusCode::FORBIDDEN);
            assert_eq!(local.body, b"denied\n");
            assert_eq!(
                local.headers,
                vec![("x-denied-by".to_owned(), HeaderValue::from_static("abc"))]
            );
        }
        other => panic!("expected a local response, got {other:?}"),
    }
    plugin
        .finish_http_context(context, &mut Some(head), &mut None)
        .expect("finishes");

    assert_eq!(
        lines(&logged),
        vec![
            (LogLevel::Info, "configured with tag abc".to_owned()),
            (LogLevel::Info, "done with /hello?x=1 -> 201".to_owned()),
            (LogLevel::Info, "done with /deny -> ".to_owned()),
        ]
    );
}
