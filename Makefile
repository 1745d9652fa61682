# RustNg. `make run` and `make test` work on a fresh machine: both call scripts/setup.sh first.
CARGO ?= cargo
RELEASE_BIN := target/release/rustng

FILTERS := cargo build --manifest-path filters/Cargo.toml --release --target wasm32-wasip1

.PHONY: setup build release filters run test lint fmt bench clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --workspace

release: setup
	$(CARGO) build --release -p rustng

## Starts the demo upstream on :9000 and rustng on :8080 (examples/quickstart.yaml).
run: release
	@scripts/run-demo.sh $(RELEASE_BIN) examples/quickstart.yaml

## The proxy-wasm filters in filters/, built from source for wasm32-wasip1.
filters: setup
	$(FILTERS)

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path filters/Cargo.toml --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --manifest-path filters/Cargo.toml --target wasm32-wasip1 -- -D warnings

## Everything CI checks: formatting, lints, unit and end-to-end tests (the wasm host's tests
## load the filters built from source).
test: lint filters
	$(CARGO) test --workspace --no-fail-fast

## RustNg against origin-direct, nginx and haproxy in one run; writes bench/results/.
bench: release
	python3 scripts/bench.py --rustng $(RELEASE_BIN)

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	$(CARGO) clean --manifest-path filters/Cargo.toml
