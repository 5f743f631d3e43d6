#!/usr/bin/env bash
# One open-loop ramp against the embedded default served several ways, one after the
# other on one machine (nothing else should load it):
#   f32:  the committed quality table without its int8 and passage-cap rows (the ladder
#         before int8 twins);
#   int8: the table without its passage-cap rows (f32 and int8 rungs; the ladder before
#         passage caps);
#   caps: the committed table as is (the frontier picks among all rows).
# VARIANTS="int8 caps" runs a subset (default: all three).
# Each variant is exported by the server's own first-start path (latency measured here)
# into $OUT/<variant>/export (OUT=runs/ramp-compare); the ramp report and the server's
# peak memory after the ramp (server-memory.txt) go to $OUT/<variant>/.
# Needs: the release binary, DL19 data. Overrides: FROM_RPS TO_RPS RAMP_S SLO_MS THREADS.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mrank=$root/target/release/mrank
data=${DATA:-../shared/data/trec-dl}
out=${OUT:-runs/ramp-compare}
threads=${THREADS:-2}
slo_ms=${SLO_MS:-3000}
adapters=adapters/minilm-l6

for variant in ${VARIANTS:-f32 int8 caps}; do
  dir=$out/$variant
  rm -rf "$dir" && mkdir -p "$dir"
  if [ "$variant" != caps ]; then
    cp "$adapters/adapters.safetensors" "$dir/"
    python3 - "$adapters/eval.json" "$dir/eval.json" "$variant" <<'PY'
import json, re, sys
table = json.load(open(sys.argv[1]))
def kept(c):
    if re.search(r"-p\d+", c["id"]):
        return False  # a passage cap
    return sys.argv[3] != "f32" or not c["id"].endswith("-int8")
table["configs"] = [c for c in table["configs"] if kept(c)]
json.dump(table, open(sys.argv[2], "w"), indent=2)
PY
    export MRANK_ADAPTERS=$root/$dir/adapters.safetensors
  else
    unset MRANK_ADAPTERS
  fi
  export MRANK_EXPORT=$root/$dir/export
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Two starts: the first exports and measures every configuration (all of them loaded
  # at once), the second serves from that export, so its memory is serving's alone.
  for start in export serve; do
    echo "== $variant: start to $start" >&2
    $mrank serve --addr "127.0.0.1:$port" --threads "$threads" --slo-ms "$slo_ms" 2>>"$dir/serve.log" &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do
      kill -0 $server 2>/dev/null || { cat "$dir/serve.log" >&2; exit 1; }
      sleep 1
    done
    if [ "$start" = export ]; then kill $server; wait $server 2>/dev/null || true; fi
  done
  grep -h "serving configurations\|quality ladder" "$dir/serve.log" >&2 || true
  echo "== $variant: ramp, auto" >&2
  $mrank replay --target "127.0.0.1:$port" --data "$data/dl19-bm25-top100.jsonl" \
    --qrels "$data/qrels.dl19-passage.txt" --slo-ms "$slo_ms" --mode ramp --config auto \
    --from-rps "${FROM_RPS:-0.6}" --to-rps "${TO_RPS:-6.6}" --duration-s "${RAMP_S:-120}" \
    --out "$dir/ramp-auto.json"
  # The serving process's peak and current resident memory after the ramp (ONNX
  # Runtime's arenas grow with the batches they have served).
  grep -E "VmHWM|VmRSS" /proc/$server/status | tee "$dir/server-memory.txt" >&2
  kill $server; wait $server 2>/dev/null || true
  sleep 3
done
