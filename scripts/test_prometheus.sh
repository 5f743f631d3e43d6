#!/usr/bin/env bash
# A real Prometheus server (Debian package `prometheus`, installed by scripts/setup.sh)
# scrapes a real `mrank serve` on loopback; the PromQL request count must reach the
# number of requests sent. Run by `make test` after `cargo test` (which builds the binary
# and the embedded default's export).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mrank=${MRANK_BIN:-$root/target/debug/mrank}
command -v prometheus >/dev/null || { echo "test_prometheus: prometheus not installed; run scripts/setup.sh" >&2; exit 1; }
[ -x "$mrank" ] || { echo "test_prometheus: $mrank missing; run cargo build" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mport=$(port); pport=$(port)

"$mrank" serve --addr "127.0.0.1:$mport" --threads 2 >"$work/mrank.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$mport/ready" >/dev/null && break
  sleep 0.5
done
curl -sf "http://127.0.0.1:$mport/ready" >/dev/null || { cat "$work/mrank.log"; echo "test_prometheus: mrank never became ready" >&2; exit 1; }

sent=3
for i in $(seq 1 $sent); do
  curl -sf "http://127.0.0.1:$mport/v2/rerank" -H 'content-type: application/json' \
    -d '{"query": "capital of france", "documents": ["Paris is the capital of France.", "Bananas are yellow."]}' >/dev/null
done

cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: mrank
    static_configs:
      - targets: ["127.0.0.1:$mport"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$pport" >"$work/prometheus.log" 2>&1 &
pids+=($!)

query='sum(mrank_request_duration_seconds_count{status="200"})'
for _ in $(seq 1 60); do
  value=$(curl -sf "http://127.0.0.1:$pport/api/v1/query" --data-urlencode "query=$query" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")' 2>/dev/null || true)
  if [ -n "$value" ] && python3 -c "import sys; sys.exit(0 if float('$value') >= $sent else 1)"; then
    echo "test_prometheus: ok, PromQL $query = $value"
    exit 0
  fi
  sleep 1
done
tail -5 "$work/prometheus.log" >&2
echo "test_prometheus: Prometheus never saw $sent requests (last value: '${value:-none}')" >&2
exit 1
