#!/usr/bin/env bash
# DL19 nDCG@10 / MRR@10 of the sub-structures docs/QUALITY.md tabulates, through ONNX
# Runtime (`mrank eval --engine onnx`, same scores as the candle forward within 1e-4).
# Usage: scripts/eval_quality.sh MODEL_DIR OUT.json [extra mrank eval args...]
#   MODEL_DIR: a run directory of `mrank train` (adapters.safetensors) or an adapters dir.
# Takes ~20 minutes on 2 cores; progress on stderr.
set -euo pipefail
MODEL=$1; OUT=$2; shift 2
MRANK=${MRANK:-target/release/mrank}
D=${DATA:-../shared/data/trec-dl}
CONFIGS=${CONFIGS:-d2,d3,d4,d5,full,d2-r8@1,d3-r8@1,d4-r8@1,d5-r8@1,d6-r8@1,d2-r4@1,d3-r4@1,d4-r4@1,d5-r4@1,d6-r4@1,d2-r2@1,d3-r2@1,d4-r2@1,d5-r2@1,d6-r2@1,d3-r8@2,d4-r8@2,d5-r8@2,d6-r8@2,d3-r4@2,d4-r4@2,d5-r4@2,d6-r4@2}
"$MRANK" eval --engine onnx --model "$MODEL" --data "$D/dl19-bm25-top100.jsonl" \
    --qrels "$D/qrels.dl19-passage.txt" --configs "$CONFIGS" --json "$@" >"$OUT"
python3 - "$OUT" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("| config | nDCG@10 | MRR@10 | FLOPs |\n| --- | --- | --- | --- |")
for c in sorted(d["configs"], key=lambda c: c["flops_ratio"]):
    print(f"| {c['id']} | {c['ndcg@10']:.4f} | {c['mrr@10']:.4f} | {100 * c['flops_ratio']:.1f}% |")
PY
