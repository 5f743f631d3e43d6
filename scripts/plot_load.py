"""Plots a ramp run of `mrank replay` (auto vs pinned full): offered load, p99 latency per
1-second window against the SLO, and the share served at full quality.

Usage: python scripts/plot_load.py runs/bench/ramp-auto.json runs/bench/ramp-full.json --out docs/load-ramp.png
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
    args = ap.parse_args()
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for path in args.reports:
        r = json.load(open(path))
        w = [x for x in r["windows"]]
        t = [x["start_s"] for x in w]
        label = f'{r["config"]} (p99 ≤ SLO in {100 * r["windows_within_slo"]:.0f}% of windows, nDCG@10 {r["mean_ndcg10"]:.3f})'
        axes[0].plot(t, [x["offered_rps"] for x in w], label=r["config"])
        axes[1].plot(t, [x["p99_s"] if x["answered"] else float("nan") for x in w], ".-", label=label)
        axes[2].plot(t, [x["full_share"] if x["answered"] else float("nan") for x in w], ".-", label=r["config"])
        slo = r["slo_s"]
    axes[0].set_ylabel("offered requests/s")
    axes[1].axhline(slo, color="red", linestyle="--", label=f"SLO {slo:.1f}s")
    axes[1].set_ylabel("p99 latency (s), 1 s windows")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("share served at full")
    axes[2].set_xlabel("seconds")
    for a in axes:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle("mrank under a ramp to ~3x the full configuration's capacity (DL19 queries, 20-100 docs)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
