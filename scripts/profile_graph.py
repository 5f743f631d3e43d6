#!/usr/bin/env python3
"""Where one exported split graph spends its time: ONNX Runtime's own profiler, per op type.

    python3 scripts/profile_graph.py EXPORT_DIR/CONFIG.onnx [--passages 100] [--tokens 80]

One query of 10 tokens against N passages of T tokens each (random ordinary vocabulary
ids between [CLS] and [SEP]; DL19 passages average about 80 tokens), 2 intra-op threads,
3 warm-up runs, then 5 profiled ones. Needs onnxruntime (the tests' venv has it:
.cache/pyenv/bin/python). docs/BENCHMARKS.md "int8 twins" quotes its output.
"""
import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("graph")
    ap.add_argument("--passages", type=int, default=100)
    ap.add_argument("--tokens", type=int, default=80)
    args = ap.parse_args()
    rng = np.random.default_rng(0)

    def ids(rows, tokens):
        x = rng.integers(2000, 20000, size=(rows, tokens)).astype(np.int64)
        x[:, 0], x[:, -1] = 101, 102  # [CLS], [SEP] of the BERT vocabulary
        return x

    b, t = args.passages, args.tokens
    feeds = {
        "query_ids": ids(1, 10),
        "query_mask": np.ones((1, 10), np.int64),
        "passage_ids": ids(b, t),
        "passage_mask": np.ones((b, t), np.int64),
        "query_index": np.zeros(b, np.int64),
    }
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    session = ort.InferenceSession(args.graph, opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, feeds)
    start = time.perf_counter()
    for _ in range(5):
        session.run(None, feeds)
    per_batch = (time.perf_counter() - start) / 5
    events = json.load(open(session.end_profiling()))
    by_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    print(f"{args.graph}: {per_batch * 1000:.1f} ms per batch of {b} passages x {t} tokens")
    for op, dur in by_op.most_common(8):
        print(f"  {op:28s} {100 * dur / total:5.1f}%  {dur / 8 / 1000:7.1f} ms per run")


if __name__ == "__main__":
    main()
