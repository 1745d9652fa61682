#!/usr/bin/env bash
# `make run`: the demo upstream on 127.0.0.1:9000 and rustng in front of it. Ctrl-C stops both.
set -euo pipefail
bin=$1; config=$2
here=$(cd "$(dirname "$0")/.." && pwd)
python3 "$here/examples/demo_upstream.py" --port 9000 &
upstream=$!
# examples/quickstart.yaml's upgrade.pid_file: after `rustng upgrade` it names the new process.
pid_file="$here/target/rustng-state/rustng.pid"
stop() {
  kill "$upstream" 2>/dev/null || true
  if [ -f "$pid_file" ]; then kill "$(cat "$pid_file")" 2>/dev/null || true; fi
}
trap stop EXIT
# Fail with the reason (port taken, say) instead of proxying to someone else's server.
for _ in $(seq 50); do
  kill -0 "$upstream" 2>/dev/null || { echo "run: the demo upstream could not start on 127.0.0.1:9000" >&2; exit 1; }
  python3 -c 'import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(("127.0.0.1",9000)))' && break
  sleep 0.1
done
echo "demo upstream on http://127.0.0.1:9000, rustng on http://127.0.0.1:8080 — try: curl -i http://127.0.0.1:8080/hello"
"$here/$bin" run -c "$here/$config" &
status=0
wait $! || status=$?
# The process started here has handed over to a new one (a binary upgrade): follow that one.
while [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; do sleep 1; done
exit $status
