# RustNg. `make run` and `make test` work on a fresh machine: both call scripts/setup.sh first.
CARGO ?= cargo
RELEASE_BIN := target/release/rustng

.PHONY: setup build release run test lint fmt bench clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --workspace

release: setup
	$(CARGO) build --release -p rustng

## Starts the demo upstream on :9000 and rustng on :8080 (examples/quickstart.yaml).
run: release
	@scripts/run-demo.sh $(RELEASE_BIN) examples/quickstart.yaml

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Everything CI checks: formatting, lints, unit and end-to-end tests.
test: lint
	$(CARGO) test --workspace --no-fail-fast

## RustNg against origin-direct, nginx and haproxy in one run; writes bench/results/.
bench: release
	python3 scripts/bench.py --rustng $(RELEASE_BIN)

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
