#!/usr/bin/env bash
# The benchmarks of docs/BENCHMARKS.md, in one run on one machine (nothing else should
# load it; stop background jobs first). Writes runs/bench/*.json.
#   1. engine throughput per configuration + the peer baseline (mrank bench);
#   2. resident memory with one and with all configurations loaded;
#   3. HTTP throughput at saturation, pinned to full (mrank replay --mode saturate);
#   4. a ramp to ~3x full capacity with `auto`, then the same ramp pinned to `full`;
#   5. a spike to ~3.6x full capacity and the calm after it (bench/spike_recovery.sh,
#      its own server on the default export).
# Needs: the release binary, the peer graph (fixtures/peer_baseline.py), DL19 data.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mrank=target/release/mrank
data=${DATA:-../shared/data/trec-dl}
out=runs/bench
mkdir -p "$out"
export_dir=${MRANK_EXPORT:-.cache/export/minilm-l6}
peer=${PEER:-runs/peer/minilm-full.onnx}
threads=${THREADS:-2}
slo_ms=${SLO_MS:-3000}

echo "== engine throughput" >&2
$mrank bench --export "$export_dir" --data "$data/dl19-bm25-top100.jsonl" --queries "${QUERIES:-8}" \
  --threads "$threads" --repeats 3 --peer "$peer" --json "$out/engine.json"

echo "== resident memory" >&2
for c in full all; do
  $mrank bench --export "$export_dir" --data /unused --configs $c --load-only --threads "$threads"
done | tee "$out/memory.jsonl"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
$mrank serve --model "$export_dir" --addr "127.0.0.1:$port" --threads "$threads" --slo-ms "$slo_ms" 2>"$out/serve.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do sleep 0.5; done

replay() { $mrank replay --target "127.0.0.1:$port" --data "$data/dl19-bm25-top100.jsonl" --qrels "$data/qrels.dl19-passage.txt" --slo-ms "$slo_ms" "$@"; }
echo "== HTTP saturation, full" >&2
replay --mode saturate --config full --concurrency 4 --duration-s "${SAT_S:-60}" --out "$out/http-saturate-full.json"
echo "== ramp, auto" >&2
replay --mode ramp --config auto --from-rps "${FROM_RPS:-0.2}" --to-rps "${TO_RPS:-2.2}" --duration-s "${RAMP_S:-120}" --out "$out/ramp-auto.json"
sleep 5
echo "== ramp, pinned full" >&2
replay --mode ramp --config full --from-rps "${FROM_RPS:-0.2}" --to-rps "${TO_RPS:-2.2}" --duration-s "${RAMP_S:-120}" --out "$out/ramp-full.json"
kill $server; wait $server 2>/dev/null || true
trap - EXIT

echo "== spike and recovery, auto" >&2
OUT=$out/spike bench/spike_recovery.sh
