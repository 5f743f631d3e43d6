#!/usr/bin/env python3
"""Is configuration B better than A on these queries, or is it noise? A paired comparison.

    .cache/pyenv/bin/python scripts/compare_quality.py A.json:ID B.json:ID [B2.json:ID ...] [--metric ndcg@10]

Each side is a `mrank eval --json --per-query` output (or a training run's eval.json,
which keeps per-query figures) and a configuration id in it (`runs/x/eval.json:full`);
`:ID` may be left off when the file holds one configuration. Every B is compared with A
on the queries both judged:

- the mean of each and the mean difference B - A;
- a 95% confidence interval of that difference (paired bootstrap over queries, 10,000
  resamples, seed 0);
- a two-sided p-value of a paired randomization test (the sign of each query's
  difference flipped at random, 100,000 draws, seed 0);
- how many queries B wins, loses and ties.

DL19 has 43 judged queries, so differences of about 0.01-0.02 nDCG@10 are often within
noise; docs/QUALITY.md quotes this script where it compares runs. Needs numpy (the
set-up's `.cache/pyenv` has it).
"""
import argparse
import json
import sys

import numpy as np


def load(spec, metric):
    path, sep, config = spec.rpartition(":")
    if not sep or "/" in config:  # no ":ID" (a colon inside the path)
        path, config = spec, ""
    try:
        data = json.load(open(path))
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"{path}: cannot read it as JSON ({e})")
    rows = data.get("configs", [])
    if not config:
        if len(rows) != 1:
            ids = ", ".join(r["id"] for r in rows)
            sys.exit(f"{path}: holds {len(rows)} configurations ({ids}); name one as {path}:ID")
        config = rows[0]["id"]
    row = next((r for r in rows if r["id"] == config), None)
    if row is None:
        sys.exit(f"{path}: no configuration {config} (it has {', '.join(r['id'] for r in rows)})")
    if "per_query" not in row:
        sys.exit(f"{path}: {config} has no per-query figures; rerun mrank eval with --json --per-query")
    return f"{path}:{config}", {q: m[metric] for q, m in row["per_query"].items()}


CHUNK = 10_000  # draws per block, so that memory stays small for thousands of queries


def compare(a, b, rng_seed=0):
    qids = sorted(set(a) & set(b))
    x = np.array([a[q] for q in qids])
    y = np.array([b[q] for q in qids])
    d = y - x
    rng = np.random.default_rng(rng_seed)
    boot = np.concatenate([
        d[rng.integers(0, len(d), size=(CHUNK, len(d)))].mean(axis=1)
        for _ in range(10_000 // CHUNK)
    ])
    low, high = np.percentile(boot, [2.5, 97.5])
    observed = abs(d.mean()) - 1e-12
    draws, extreme = 0, 0
    for _ in range(100_000 // CHUNK):
        signs = rng.choice([-1.0, 1.0], size=(CHUNK, len(d)))
        extreme += int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed))
        draws += CHUNK
    p = (extreme + 1) / (draws + 1)
    return {
        "queries": len(qids), "a": x.mean(), "b": y.mean(), "diff": d.mean(),
        "ci": (low, high), "p": p,
        "wins": int(np.sum(d > 1e-12)), "losses": int(np.sum(d < -1e-12)),
        "ties": int(np.sum(np.abs(d) <= 1e-12)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", help="FILE[:ID], the reference")
    ap.add_argument("b", nargs="+", help="FILE[:ID], each compared with the reference")
    ap.add_argument("--metric", default="ndcg@10", choices=["ndcg@10", "mrr@10"])
    args = ap.parse_args()
    name_a, a = load(args.a, args.metric)
    print(f"reference A = {name_a}; {args.metric}; 95% CI by paired bootstrap, p by paired randomization")
    print(f"{'B':48s} {'n':>3s} {'A':>7s} {'B':>7s} {'B-A':>8s} {'95% CI':>18s} {'p':>7s} {'W/L/T':>9s}")
    for spec in args.b:
        name_b, b = load(spec, args.metric)
        if not set(a) & set(b):
            sys.exit(f"{name_a} and {name_b} share no judged query")
        r = compare(a, b)
        ci = f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]"
        wlt = f"{r['wins']}/{r['losses']}/{r['ties']}"
        print(f"{name_b:48s} {r['queries']:3d} {r['a']:7.4f} {r['b']:7.4f} {r['diff']:+8.4f} {ci:>18s} {r['p']:7.4f} {wlt:>9s}")


if __name__ == "__main__":
    main()
