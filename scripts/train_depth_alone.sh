#!/usr/bin/env bash
# One depth exit trained alone: the embedded default's recipe on the base cut to its
# first N layers, so every trained parameter serves depth N alone (no deeper layer to
# share the LoRA with, no width sampling). docs/QUALITY.md "Each cheap depth trained
# alone" compares it with the Matryoshka model's own exit at N.
#
# Usage: scripts/train_depth_alone.sh N [TEACHER.safetensors] [--set KEY=VALUE ...]
#   N: layers kept (2..5 for all-MiniLM-L6-v2).
#   TEACHER: a teacher cache of the full base (`teacher.safetensors` of any run of the
#     default's recipe) to copy in; "" for none. Without one the trainer computes the
#     bi-encoder teacher from the cut base, which is a weaker teacher than the default's.
#   Further arguments go to `mrank train` (e.g. `--set stage1.steps=2000`).
# Writes runs/base-l$N (the cut checkpoint: config.json with num_hidden_layers = N, the
# base's weights and tokenizer linked/copied) and runs/alone-d$N, or $OUT when set (the
# run; its eval.md is DL19 nDCG@10 of that depth). Takes 5 (N = 2) to 12 (N = 5)
# minutes on 2 cores at the default's steps.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:?usage: scripts/train_depth_alone.sh N [TEACHER.safetensors] [--set KEY=VALUE ...]}
TEACHER=${2:-}
shift $(( $# < 2 ? $# : 2 ))
BASE=${MRANK_BASE_MODEL:-$PWD/.cache/all-minilm-l6-v2}
MRANK=${MRANK:-target/release/mrank}
[ -f "$BASE/config.json" ] || { echo "no base model at $BASE: run make setup" >&2; exit 1; }
CUT=runs/base-l$N OUT=${OUT:-runs/alone-d$N}
mkdir -p "$CUT"
ln -sf "$(cd "$BASE" && pwd)/model.safetensors" "$CUT/model.safetensors"
cp "$BASE/tokenizer.json" "$CUT/"
python3 - "$BASE/config.json" "$CUT/config.json" "$N" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
n = int(sys.argv[3])
if not 2 <= n < cfg["num_hidden_layers"]:
    sys.exit(f"N={n}: the base has {cfg['num_hidden_layers']} layers; keep 2 to {cfg['num_hidden_layers'] - 1}")
cfg["num_hidden_layers"] = n
json.dump(cfg, open(sys.argv[2], "w"), indent=2)
PY
mkdir -p "$OUT"
if [ -n "$TEACHER" ]; then cp "$TEACHER" "$OUT/teacher.safetensors"; fi
"$MRANK" train --config adapters/minilm-l6/train.toml --out "$OUT" \
  --set model.base="$CUT" --set space.min_depth="$N" --set "space.anchors=[$N]" \
  --set 'space.ratios=[]' --set 'space.compress_layers=[1]' --set run.eval_configs=full "$@"
