# The two commands of README.md: `make serve` and `make test`.
SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
export MRANK_BASE_MODEL ?= $(CACHE)/all-minilm-l6-v2
export ORT_DYLIB_PATH ?= $(CACHE)/onnxruntime-1.31.1/libonnxruntime.so.1.31.1

.PHONY: setup serve test

setup:
	@MRANK_CACHE=$(CACHE) scripts/setup.sh >/dev/null

# The re-ranking service on the embedded default model (exported on first start).
serve: setup
	cargo run --release --bin mrank -- serve

test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
	scripts/test_prometheus.sh
	.cache/pyenv/bin/python scripts/test_compare_quality.py
