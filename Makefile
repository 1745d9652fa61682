# RustNg. `make run` and `make test` work on a fresh machine: both call scripts/setup.sh first.
CARGO ?= cargo
RELEASE_BIN := target/release/rustng
# The profile-guided build `make bench` measures (scripts/pgo.sh); `make bench PGO=0` measures
# the plain release build instead.
PGO ?= 1
PGO_BIN := target/pgo/release/rustng

# Both wasm workspaces: RustNg's own filters and the conformance suite's Rust filters.
WASM_WORKSPACES := filters/Cargo.toml wasm-tests/Cargo.toml

.PHONY: setup build release release-pgo modules filters run test lint fmt bench clean

setup:
	@scripts/setup.sh

build: setup
	$(CARGO) build --workspace

release: setup
	$(CARGO) build --release -p rustng

## The release build optimized with a profile of its request paths: target/pgo/release/rustng.
## Two builds and a short training run (about 25 minutes from scratch on 2 cores).
release-pgo: setup modules
	CARGO=$(CARGO) scripts/pgo.sh

## Starts the demo upstream on :9000 and rustng on :8080 (examples/quickstart.yaml).
run: release modules
	@scripts/run-demo.sh $(RELEASE_BIN) examples/quickstart.yaml

# The Go SDK conformance filter: Go's own wasip1 port, as a reactor (c-shared).
GO_CONFORMANCE := wasm-tests/target/go-conformance.wasm

## RustNg's own proxy-wasm modules (filters/: the router, the header filter), for wasm32-wasip1.
modules: setup
	$(CARGO) build --manifest-path filters/Cargo.toml --release --target wasm32-wasip1

## Every proxy-wasm module: filters/ and the conformance filters in wasm-tests/, from source.
filters: modules
	$(CARGO) build --manifest-path wasm-tests/Cargo.toml --release --target wasm32-wasip1
	mkdir -p wasm-tests/target
	cd wasm-tests/go/conformance && GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o ../../../$(GO_CONFORMANCE) .
	cd wasm-tests/assemblyscript/conformance && npm ci --no-audit --no-fund --silent && npm run --silent build

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	test -z "$$(gofmt -l wasm-tests/go sdk/go)" || { gofmt -l wasm-tests/go sdk/go; exit 1; }
	for m in $(WASM_WORKSPACES); do \
	  $(CARGO) fmt --manifest-path $$m --all -- --check && \
	  $(CARGO) clippy --manifest-path $$m --target wasm32-wasip1 -- -D warnings || exit 1; \
	done

## Everything CI checks: formatting, lints, unit and end-to-end tests (the wasm host's tests
## load the filters built from source; the filters' own unit tests run natively).
test: lint filters
	$(CARGO) test --manifest-path filters/Cargo.toml
	$(CARGO) test --workspace --no-fail-fast

## RustNg against origin-direct, nginx and haproxy in one run; writes bench/results/.
## The HTTP/3 load generator (the machine's h2load has no QUIC) is an example of the rustng package.
ifeq ($(PGO),0)
bench: release
	$(CARGO) build --release -p rustng --example h3load
	python3 scripts/bench.py --rustng $(RELEASE_BIN)
else
bench: release-pgo
	python3 scripts/bench.py --rustng $(PGO_BIN)
endif

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	for m in $(WASM_WORKSPACES); do $(CARGO) clean --manifest-path $$m; done
