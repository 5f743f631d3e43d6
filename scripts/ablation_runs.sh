#!/usr/bin/env bash
# The ablations of docs/QUALITY.md for the embedded default's recipe
# (adapters/minilm-l6/train.toml), one change each, evaluated on DL19 through ONNX Runtime:
#   runs/ablation-no-comp.json   the default's adapters without stage 2 (V and H adapters)
#   runs/ablation-no-sd          trained with stage1/stage2 weight_self_distill = 0
# Merging is uniform in this recipe: with isolated segments no token attends across the
# query/passage boundary, so attention-weighted merging has no weights to use.
# Reuses the teacher cache of the default's run (TEACHER; saves ~20 min). Resumes a
# training run from its checkpoint when started again; finished parts are skipped.
# Usage: scripts/ablation_runs.sh [runs-dir]   (background it; ~60 min on 2 cores)
set -euo pipefail
RUNS=${1:-runs}
MRANK=${MRANK:-target/release/mrank}
MODEL=${MODEL:-$RUNS/maxsim}
TEACHER=${TEACHER:-$MODEL/teacher.safetensors}
export CONFIGS=${CONFIGS:-full,d5,d4,d3,d2,d6-r2@1,d6-r4@1,d3-r4@1,d2-r4@1,d2-r8@1}
here=$(dirname "$0")

if [ ! -f "$RUNS/ablation-no-comp.json" ]; then
    echo "without compensation: evaluating $MODEL"
    "$here/eval_quality.sh" "$MODEL" "$RUNS/ablation-no-comp.json.part" --without-compensation
    mv "$RUNS/ablation-no-comp.json.part" "$RUNS/ablation-no-comp.json"
fi

out=$RUNS/ablation-no-sd
if [ ! -f "$out/adapters.safetensors" ]; then
    mkdir -p "$out"
    [ -f "$TEACHER" ] && [ ! -f "$out/teacher.safetensors" ] && cp "$TEACHER" "$out/"
    # A resumed run continues with the config saved in its folder.
    start=(--config adapters/minilm-l6/train.toml)
    [ -f "$out/checkpoint.safetensors" ] && start=(--resume)
    echo "without self-distillation: training $out (log: $out.log)"
    "$MRANK" train "${start[@]}" --out "$out" \
        --set run.eval_configs=full \
        --set stage1.weight_self_distill=0 --set stage2.weight_self_distill=0 >>"$out.log" 2>&1
fi
if [ ! -f "$RUNS/ablation-no-sd.json" ]; then
    echo "without self-distillation: evaluating $out"
    "$here/eval_quality.sh" "$out" "$RUNS/ablation-no-sd.json.part"
    mv "$RUNS/ablation-no-sd.json.part" "$RUNS/ablation-no-sd.json"
fi
