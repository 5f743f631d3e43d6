#!/usr/bin/env bash
# Trains the two ablations of docs/QUALITY.md that need their own run, with the embedded
# default's recipe and one change each, and evaluates them on DL19:
#   runs/ablation-no-sd     stage1/stage2 weight_self_distill = 0
#   runs/ablation-uniform   model.merge_mode = uniform (trained and evaluated uniform)
# Reuses the teacher cache of an earlier run when TEACHER points at one (saves ~20 min).
# Usage: scripts/ablation_runs.sh [runs-dir]   (background it; progress goes to <run>.log)
set -euo pipefail
RUNS=${1:-runs}
MRANK=${MRANK:-target/release/mrank}
TEACHER=${TEACHER:-$RUNS/minilm-l6/teacher.safetensors}
CONFIGS="full,d4,d2,d6-r4@1,d3-r4@2,d2-r4@1"

train() {
    local name=$1; shift
    local out=$RUNS/$name
    if [ -f "$out/eval.json" ]; then echo "$name: done already"; return; fi
    mkdir -p "$out"
    [ -f "$TEACHER" ] && [ ! -f "$out/teacher.safetensors" ] && cp "$TEACHER" "$out/"
    local resume=()
    [ -f "$out/checkpoint.safetensors" ] && resume=(--resume)
    "$MRANK" train --config adapters/minilm-l6/train.toml --out "$out" "${resume[@]}" \
        --set "run.eval_configs=$CONFIGS" "$@" >>"$out.log" 2>&1
    echo "$name: $(cat "$out/eval.md" 2>/dev/null | head -20)"
}

train ablation-no-sd --set stage1.weight_self_distill=0 --set stage2.weight_self_distill=0
train ablation-uniform --set model.merge_mode=uniform
