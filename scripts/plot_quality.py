#!/usr/bin/env python3
"""Quality vs cost of every evaluated sub-structure (docs/QUALITY.md's plot).

    python3 scripts/plot_quality.py EVAL.json [MORE_EVAL.json ...] [--ref NAME=NDCG ...] [--point NAME=FLOPS%:NDCG ...]
        [--targets] --out docs/quality-frontier.png

EVAL.json is `mrank eval --json` output (or a run's eval.json); further files of the same
model add their rows (the first file wins for an id). Needs matplotlib.
"""
import argparse
import json
import re

import matplotlib
import matplotlib.patches

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
    ap.add_argument("eval_json", nargs="+")
    ap.add_argument("--ref", action="append", default=[], help="NAME=NDCG reference line")
    ap.add_argument("--point", action="append", default=[],
                    help="NAME=FLOPS%%:NDCG, a model outside EVAL.json (e.g. a depth trained alone)")
    ap.add_argument("--targets", action="store_true",
                    help="mark the trainer issue's budget targets: 97%% of full at <=40%% FLOPs, 93%% at <=25%%")
    ap.add_argument("--title", default="DL19 nDCG@10 vs FLOPs per pair")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    configs, seen = [], set()
    for path in args.eval_json:
        with open(path) as f:
            for c in json.load(f)["configs"]:
                if c["id"] not in seen:
                    seen.add(c["id"])
                    configs.append(c)
    # int8 twins have their f32 configuration's FLOPs (FLOPs ignore precision): on this
    # axis they would only sit on top of it. Their cost is speed (docs/BENCHMARKS.md).
    # Passage caps (`-p<N>` ids) save what the data's passages allow: at the reference
    # lengths (passage 128) they would look cheaper than they are on DL19, so they are
    # drawn at their FLOPs over DL19's own pairs, apart from the sub-structures' frontier.
    def capped(c):
        return c.get("flops_ratio_on_data") is not None and re.search(r"-p\d+", c["id"])

    pts = [
        (100 * c["flops_ratio"], c["ndcg@10"], c["id"])
        for c in configs
        if c.get("flops_ratio") is not None and not c["id"].endswith("-int8") and not capped(c)
    ]
    caps = [
        (100 * c["flops_ratio_on_data"], c["ndcg@10"], c["id"])
        for c in configs
        if capped(c) and not c["id"].endswith("-int8")
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
    if caps:
        ax.scatter([p[0] for p in caps], [p[1] for p in caps], marker="^", s=36, c="tab:green",
                   label="full depth, passage cut to N tokens (FLOPs on DL19's pairs)", zorder=3)
        for p in caps:
            ax.annotate(p[2], (p[0], p[1]), fontsize=7, xytext=(3, 4), textcoords="offset points",
                        color="tab:green")
    for name, flops_ndcg in (p.split("=", 1) for p in args.point):
        x, y = (float(v) for v in flops_ndcg.split(":"))
        ax.scatter([x], [y], marker="D", s=36, facecolors="none", edgecolors="tab:brown", zorder=3)
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, 4), textcoords="offset points", color="tab:brown")
    full = next((c["ndcg@10"] for c in configs if c["id"] == "full"), None)
    if args.targets and full is not None:
        # Each target is a region: at most `budget` FLOPs, at least `share` of full.
        for budget, share, dy in ((40, 0.97, 3), (25, 0.93, -10)):
            ax.add_patch(matplotlib.patches.Rectangle(
                (0, share * full), budget, 1.0, fc="tab:red", alpha=0.07, ec="tab:red", ls=":"))
            ax.annotate(f"target: >= {share:.0%} of full at <= {budget}% FLOPs", (1, share * full),
                        fontsize=7, xytext=(0, dy), textcoords="offset points", color="tab:red")
    ys = [p[1] for p in pts + caps] + [float(p.split(":")[-1]) for p in args.point]
    ax.set_ylim(min(ys) - 0.03, max(ys) + 0.03)
    ax.set_xlim(0, 103)
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
