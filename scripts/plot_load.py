"""Plots ramp runs of `mrank replay` side by side: offered load, p99 latency per 1-second
window against the SLO, and the share served at full quality or, given the quality table
(`--quality`, an `mrank eval --json` file), the DL19 nDCG@10 of the rung served.

Usage: python scripts/plot_load.py runs/bench/ramp-auto.json runs/bench/ramp-full.json --out docs/load-ramp.png
       python scripts/plot_load.py A.json B.json --labels "f32 ladder" "int8 ladder" \
           --quality adapters/minilm-l6/eval.json --title "..." --out docs/load-ramp-int8.png
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--labels", nargs="+", help="one per report (default: its config)")
    ap.add_argument("--quality", help="mrank eval --json file: plot the served rung's nDCG@10")
    ap.add_argument("--bucket-s", type=float, default=10.0,
                    help="seconds of sending time averaged per point of the quality panel")
    ap.add_argument("--title", default="mrank under a ramp to ~3x the full configuration's capacity (DL19 queries, 20-100 docs)")
    args = ap.parse_args()
    quality = {}
    if args.quality:
        quality = {c["id"]: c["ndcg@10"] for c in json.load(open(args.quality))["configs"]}
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for i, path in enumerate(args.reports):
        r = json.load(open(path))
        name = args.labels[i] if args.labels else r["config"]
        w = [x for x in r["windows"]]
        t = [x["start_s"] for x in w]
        label = f'{name} (p99 ≤ SLO in {100 * r["windows_within_slo"]:.0f}% of windows, nDCG@10 {r["mean_ndcg10"]:.3f})'
        axes[0].plot(t, [x["offered_rps"] for x in w], label=name)
        axes[1].plot(t, [x["p99_s"] if x["answered"] else float("nan") for x in w], ".-", label=label)
        if quality:
            # Mean DL19 quality of the rungs answered per bucket of sending time.
            b = args.bucket_s
            buckets = {}
            for s in r["samples"]:
                if s["status"] == 200 and s["config"] in quality:
                    buckets.setdefault(int(s["sent_s"] // b), []).append(quality[s["config"]])
            keys = sorted(buckets)
            axes[2].plot([b * k + b / 2 for k in keys], [sum(buckets[k]) / len(buckets[k]) for k in keys], "o-", label=name)
        else:
            axes[2].plot(t, [x["full_share"] if x["answered"] else float("nan") for x in w], ".-", label=name)
        slo = r["slo_s"]
    axes[0].set_ylabel("offered requests/s")
    axes[1].axhline(slo, color="red", linestyle="--", label=f"SLO {slo:.1f}s")
    axes[1].set_ylabel("p99 latency (s), 1 s windows")
    axes[1].set_yscale("log")
    axes[2].set_ylabel(f"DL19 nDCG@10 of the rung served\n({args.bucket_s:g} s means)" if quality else "share served at full")
    axes[2].set_xlabel("seconds")
    for a in axes:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle(args.title)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
