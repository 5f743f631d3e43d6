#!/usr/bin/env python3
"""Quality vs measured speed of served configurations (docs/BENCHMARKS.md's plot).

    python3 scripts/plot_speed.py BENCH.json [MORE_BENCH.json ...] --quality EVAL.json
        [--targets] --out docs/speed-frontier.png

BENCH.json is `mrank bench --json` output; a configuration's speed is its `x_full` (pairs/s
over full's, measured in the same run), and a later file adds only ids the earlier ones
lack (put the run you quote first). Quality is DL19 nDCG@10 from EVAL.json (`mrank eval
--json`, e.g. adapters/minilm-l6/eval.json). The peer graph of the first file is drawn at
full's quality: it computes the same function. Needs matplotlib.
"""
import argparse
import json

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def kind(config_id):
    capped = "-p" in config_id and config_id.split("-p")[-1][:1].isdigit()
    int8 = config_id.endswith("-int8")
    return {
        (False, False): ("sub-structure, f32", "tab:orange", "o"),
        (False, True): ("sub-structure, int8", "tab:blue", "s"),
        (True, False): ("passage cut to N tokens, f32", "tab:green", "^"),
        (True, True): ("passage cut to N tokens, int8", "tab:purple", "v"),
    }[(capped, int8)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_json", nargs="+")
    ap.add_argument("--quality", required=True, help="mrank eval --json output with every plotted id")
    ap.add_argument("--targets", action="store_true",
                    help="mark the export issue's target: >= 97%% of full's quality at >= 2.5x full")
    ap.add_argument("--title", default="DL19 nDCG@10 vs measured speed (mrank bench, 2 threads)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.quality) as f:
        quality = {c["id"]: c["ndcg@10"] for c in json.load(f)["configs"]}
    points, seen, peer = [], set(), None
    for path in args.bench_json:
        with open(path) as f:
            run = json.load(f)
        full = next(c["pairs_per_s"] for c in run["configs"] if c["id"] == "full")
        if peer is None and run.get("peer_pairs_per_s"):
            peer = run["peer_pairs_per_s"] / full
        for c in run["configs"]:
            if c["id"] in seen:
                continue
            if c["id"] not in quality:
                print(f"{path}: {c['id']} left out: no nDCG@10 in {args.quality}")
                continue
            seen.add(c["id"])
            points.append((c["x_full"], quality[c["id"]], c["id"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    labelled = set()
    for i, (x, y, name) in enumerate(sorted(points)):
        label, color, marker = kind(name)
        ax.scatter([x], [y], c=color, marker=marker, s=34, zorder=3,
                   label=None if label in labelled else label)
        labelled.add(label)
        # Alternate above and below: neighbours on the log axis sit close together.
        ax.annotate(name, (x, y), fontsize=7, xytext=(4, 4 if i % 2 else -10),
                    textcoords="offset points")
    full_q = quality["full"]
    if peer is not None:
        ax.scatter([peer], [full_q], marker="x", c="black", s=40, zorder=3,
                   label="peer: torch.onnx + ORT transformer optimizer (full's function)")
    if args.targets:
        ax.add_patch(matplotlib.patches.Rectangle(
            (2.5, 0.97 * full_q), 1000, 1.0, fc="tab:red", alpha=0.07, ec="tab:red", ls=":"))
        ax.annotate("target: >= 97% of full at >= 2.5x full", (2.55, 0.97 * full_q), fontsize=7,
                    xytext=(0, -10), textcoords="offset points", color="tab:red")
    ax.set_xscale("log")
    xs = [p[0] for p in points] + ([peer] if peer else [])
    ax.set_xlim(min(xs) * 0.8, max(xs) * 1.6)
    ys = [p[1] for p in points]
    ax.set_ylim(min(ys) - 0.02, max(ys) + 0.02)
    ax.set_xlabel("pairs/s, x full (same run, log scale)")
    ax.set_ylabel("DL19 nDCG@10")
    ax.set_title(args.title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
