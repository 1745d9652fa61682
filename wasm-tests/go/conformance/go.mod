module github.com/rustng/wasm-tests/go/conformance

go 1.24

require github.com/proxy-wasm/proxy-wasm-go-sdk v0.0.0-20260105142703-44c7d5847745

require github.com/rustng/rustng/sdk/go v0.0.0

// RustNg's Go helpers, from this repository.
replace github.com/rustng/rustng/sdk/go => ../../../sdk/go
