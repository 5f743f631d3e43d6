# The two commands of README.md: `make serve` and `make test`.
SHELL := /bin/bash
CACHE ?= $(CURDIR)/.cache
export MRANK_BASE_MODEL ?= $(CACHE)/all-minilm-l6-v2
export ORT_DYLIB_PATH ?= $(CACHE)/onnxruntime-1.31.1/libonnxruntime.so.1.31.1

.PHONY: setup serve test

setup:
	@MRANK_CACHE=$(CACHE) scripts/setup.sh >/dev/null

# Until the HTTP server lands, this describes the embedded default model.
serve: setup
	cargo run --release --bin mrank -- inspect

test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
