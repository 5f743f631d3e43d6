#!/usr/bin/env python3
"""Probe: spend a FLOPs budget on fewer candidates instead of a smaller model.

A request's cost is (pairs scored) x (cost per pair). A sub-structure cuts the second
factor; re-ranking only the first stage's top k candidates cuts the first, and k/100 of
the candidates is k% of the request's FLOPs. This re-ranks BM25's top k of each DL19
query by a configuration's scores (from `mrank eval --engine onnx --run-dir`) and leaves
the rest in BM25 order below them, for several k.

Usage: python3 scripts/probe_rerank_depth.py RUN_DIR DATA_DIR [CONFIG ...]
  e.g. python3 scripts/probe_rerank_depth.py runs/fusion/dl19 ../shared/data/trec-dl full d5 d2
"""
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("fusion", os.path.join(HERE, "probe_bm25_fusion.py"))
fusion = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fusion)

DEPTHS = [10, 20, 25, 30, 40, 50, 60, 80, 100]


def main():
    run_dir, data = sys.argv[1], sys.argv[2]
    configs = sys.argv[3:] or ["full"]
    bm25_order = {}
    for line in open(f"{data}/dl19-bm25-top100.jsonl", encoding="utf-8"):
        q = json.loads(line)
        bm25_order[q["qid"]] = [c["docid"] for c in sorted(q["candidates"], key=lambda c: c["bm25_rank"])]
    qrels = fusion.read_qrels(f"{data}/qrels.dl19-passage.txt")
    judged = [qid for qid in bm25_order if qid in qrels]
    full = fusion.read_run(f"{run_dir}/full.run")

    def mean_ndcg(run, k):
        total = 0.0
        for qid in judged:
            order = bm25_order[qid]
            head = sorted(order[:k], key=lambda d: -run[qid][d])
            total += fusion.ndcg10(head + order[k:], qrels[qid])
        return total / len(judged)

    reference = mean_ndcg(full, 100)
    print(f"full on all 100 candidates: {reference:.4f}")
    print("| config | " + " | ".join(f"top {k}" for k in DEPTHS) + " |")
    print("| --- |" + " --- |" * len(DEPTHS))
    for c in configs:
        run = fusion.read_run(f"{run_dir}/{c}.run")
        cells = [mean_ndcg(run, k) for k in DEPTHS]
        print(f"| {c} | " + " | ".join(f"{v:.4f} ({100 * v / reference:.1f}%)" for v in cells) + " |")


if __name__ == "__main__":
    main()
