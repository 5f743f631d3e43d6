#!/usr/bin/env bash
# The CUDA-provider figures of docs/BENCHMARKS.md, in one run on a GPU machine (~5 min):
#   1. parity: the export parity tests (every configuration of every fixture family, and
#      of the embedded default on real DL19 pairs) with the graphs on the CUDA provider;
#   2. engine throughput: `mrank bench --cuda` on DL19, the served configurations and the
#      peer graph, then the same bench on the CPU provider with every core, for scale.
# Never part of CI. Needs, from the environment:
#   MRANK          an mrank built with `cargo build --release --features cuda`
#   TEST_BINS      a folder with the `parity` and `minilm` test binaries of
#                  `cargo test --release -p export --features cuda --no-run`
#   ORT_DYLIB_PATH libonnxruntime.so.1.31.1 of the onnxruntime-gpu 1.31.1 wheel, beside its
#                  libonnxruntime_providers_{shared,cuda}.so
#   LD_LIBRARY_PATH  the CUDA 13 runtime, cuBLAS, cuFFT, cuRAND and cuDNN 9
#   MRANK_BASE_MODEL the base checkpoint;  DATA  the TREC-DL folder;  OUT  where results go
# The test binaries find the fixtures through the path they were built in.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${MRANK:?}" "${TEST_BINS:?}" "${ORT_DYLIB_PATH:?}" "${MRANK_BASE_MODEL:?}" "${DATA:?}" "${OUT:?}"
mkdir -p "$OUT"
status=0
step() { echo "== $*" >&2; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
nproc | sed 's/^/cpu cores: /' | tee -a "$OUT/gpu.txt"

step "parity on the CUDA provider"
for t in parity minilm; do
  if ! MRANK_TEST_CUDA=1 "$TEST_BINS/$t" --test-threads 1 2>&1 | tee "$OUT/parity-$t.log"; then
    echo "parity test binary $t FAILED" >&2
    status=1
  fi
done

step "peer graph (fixtures/peer_baseline.py)"
peer_args=()
if python3 fixtures/peer_baseline.py --base "$MRANK_BASE_MODEL" \
    --adapters adapters/minilm-l6/adapters.safetensors --out "$OUT/peer/minilm-full.onnx" \
    >"$OUT/peer.log" 2>&1; then
  peer_args=(--peer "$OUT/peer/minilm-full.onnx")
else
  echo "peer graph failed (see peer.log); benching without it" >&2
  tail -5 "$OUT/peer.log" >&2
fi

step "engine throughput, CUDA provider"
"$MRANK" bench --cuda --data "$DATA/dl19-bm25-top100.jsonl" --queries "${QUERIES:-43}" \
  --repeats 3 "${peer_args[@]}" --json "$OUT/engine-cuda.json" 2>&1 | tee "$OUT/engine-cuda.log" || status=1

step "engine throughput, CPU provider, all cores"
"$MRANK" bench --threads 0 --data "$DATA/dl19-bm25-top100.jsonl" --queries "${CPU_QUERIES:-8}" \
  --repeats 3 "${peer_args[@]}" --json "$OUT/engine-cpu.json" 2>&1 | tee "$OUT/engine-cpu.log" || status=1
rm -rf "$OUT/peer"
exit $status
