#!/usr/bin/env bash
# `make run`: the demo upstream on 127.0.0.1:9000 and rustng in front of it. Ctrl-C stops both.
set -euo pipefail
bin=$1; config=$2
here=$(cd "$(dirname "$0")/.." && pwd)
python3 "$here/examples/demo_upstream.py" --port 9000 &
upstream=$!
trap 'kill $upstream 2>/dev/null || true' EXIT
echo "demo upstream on http://127.0.0.1:9000, rustng on http://127.0.0.1:8080 — try: curl -i http://127.0.0.1:8080/"
"$here/$bin" run -c "$here/$config"
