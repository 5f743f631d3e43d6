#!/usr/bin/env python3
"""Probe: does adding the first stage's BM25 score to a cheap exit's score close the
budget gap? A lexical score costs no transformer FLOPs, so a cheap sub-structure fused
with it would stay under its FLOPs budget.

Reads TREC run files written by `mrank eval --engine onnx --run-dir DIR` (one per
configuration) and the candidates' `bm25_score` from the data file, z-normalises both
per query and ranks by  model + w * bm25. The weight is chosen on the training queries
(DL21) and applied to DL19; the best weight on DL19 itself is printed too, as an upper
bound no honest setting can beat.

Usage:
  mrank eval --engine onnx --configs full,d2,... $DL19 --run-dir runs/fusion/dl19
  mrank eval --engine onnx --configs full,d2,... $DL21 --run-dir runs/fusion/dl21
  python3 scripts/probe_bm25_fusion.py runs/fusion ../shared/data/trec-dl
"""
import json
import math
import os
import sys
from collections import defaultdict

WEIGHTS = [round(0.05 * i, 2) for i in range(0, 61)]  # 0 .. 3


def read_bm25(path):
    bm25 = {}
    for line in open(path, encoding="utf-8"):
        q = json.loads(line)
        bm25[q["qid"]] = {c["docid"]: float(c["bm25_score"]) for c in q["candidates"]}
    return bm25


def read_qrels(path):
    qrels = defaultdict(dict)
    for line in open(path):
        qid, _, docid, grade = line.split()
        qrels[qid][docid] = int(grade)
    return qrels


def read_run(path):
    run = defaultdict(dict)
    for line in open(path):
        qid, _, docid, _, score, _ = line.split()
        run[qid][docid] = float(score)
    return run


def ndcg10(ranking, judged):
    """trec_eval's ndcg_cut_10: linear gain, log2(rank + 1) discount, ideal from all
    judged grades of the query."""
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranking[:10]))
    ideal = sorted(judged.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def znorm(scores):
    vals = list(scores.values())
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals)) or 1.0
    return {d: (v - mean) / sd for d, v in scores.items()}


def mean_ndcg(run, bm25, qrels, w):
    total, n = 0.0, 0
    for qid, scores in run.items():
        if qid not in qrels:
            continue
        model, lex = znorm(scores), znorm(bm25[qid])
        fused = {d: model[d] + w * lex[d] for d in scores}
        ranking = sorted(fused, key=lambda d: -fused[d])
        total += ndcg10(ranking, qrels[qid])
        n += 1
    return total / n


def main():
    runs, data = sys.argv[1], sys.argv[2]
    sets = {
        name: (read_bm25(f"{data}/{name}-bm25-top100.jsonl"), read_qrels(f"{data}/qrels.{name}-passage.txt"))
        for name in ("dl19", "dl21")
    }
    configs = sorted(f[:-4] for f in os.listdir(f"{runs}/dl19") if f.endswith(".run"))
    full19 = mean_ndcg(read_run(f"{runs}/dl19/full.run"), *sets["dl19"], 0.0)
    print(f"full alone on DL19: {full19:.4f}; 97% = {0.97 * full19:.4f}, 93% = {0.93 * full19:.4f}")
    print("| config | alone | w from DL21 | fused (w from DL21) | % of full | best w on DL19 | fused (best on DL19) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for c in configs:
        r19, r21 = read_run(f"{runs}/dl19/{c}.run"), read_run(f"{runs}/dl21/{c}.run")
        w21 = max(WEIGHTS, key=lambda w: mean_ndcg(r21, *sets["dl21"], w))
        alone = mean_ndcg(r19, *sets["dl19"], 0.0)
        fused = mean_ndcg(r19, *sets["dl19"], w21)
        w19 = max(WEIGHTS, key=lambda w: mean_ndcg(r19, *sets["dl19"], w))
        best = mean_ndcg(r19, *sets["dl19"], w19)
        print(f"| {c} | {alone:.4f} | {w21} | {fused:.4f} | {100 * fused / full19:.1f}% | {w19} | {best:.4f} |")


if __name__ == "__main__":
    main()
