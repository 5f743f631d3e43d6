#!/usr/bin/env python3
"""Quality vs cost of every evaluated sub-structure (docs/QUALITY.md's plot).

    python3 scripts/plot_quality.py EVAL.json [--ref NAME=NDCG ...] --out docs/quality-frontier.png

EVAL.json is `mrank eval --json` output (or a run's eval.json). Needs matplotlib.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def frontier(points):
    """Configurations no other one beats on both cost and quality."""
    best = []
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if not best or p[1] > best[-1][1]:
            best.append(p)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_json")
    ap.add_argument("--ref", action="append", default=[], help="NAME=NDCG reference line")
    ap.add_argument("--title", default="DL19 nDCG@10 vs FLOPs per pair")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.eval_json) as f:
        configs = json.load(f)["configs"]
    # int8 twins have their f32 configuration's FLOPs (FLOPs ignore precision): on this
    # axis they would only sit on top of it. Their cost is speed (docs/BENCHMARKS.md).
    pts = [
        (100 * c["flops_ratio"], c["ndcg@10"], c["id"])
        for c in configs
        if c.get("flops_ratio") is not None and not c["id"].endswith("-int8")
    ]
    fig, ax = plt.subplots(figsize=(8, 5))
    depth_only = [p for p in pts if "-r" not in p[2]]
    merged = [p for p in pts if "-r" in p[2]]
    ax.scatter([p[0] for p in merged], [p[1] for p in merged], s=14, c="tab:blue", alpha=0.5, label="depth + width (merged passage)")
    ax.scatter([p[0] for p in depth_only], [p[1] for p in depth_only], s=30, c="tab:orange", label="depth only")
    fr = frontier(pts)
    ax.plot([p[0] for p in fr], [p[1] for p in fr], c="black", lw=1, label="frontier")
    for p in fr:
        ax.annotate(p[2], (p[0], p[1]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    colors = ["tab:green", "tab:red", "tab:purple", "tab:gray"]
    for i, ref in enumerate(args.ref):
        name, value = ref.split("=")
        ax.axhline(float(value), ls="--", lw=1, c=colors[i % len(colors)], label=f"{name} ({float(value):.3f})")
    ax.set_xlabel("FLOPs per pair, % of full (query 32 + passage 128 tokens)")
    ax.set_ylabel("nDCG@10")
    ax.set_title(args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
