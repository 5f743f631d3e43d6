#!/usr/bin/env python3
"""Checks scripts/compare_quality.py on constructed per-query files: a uniform shift is
found (its interval excludes zero, p is small, B wins every query), identical
configurations give a zero difference and p = 1, and a file without per-query figures
is refused with a message that says what to rerun. Run by `make test`.
"""
import json
import os
import subprocess
import sys
import tempfile

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compare_quality.py")


def write(path, configs):
    json.dump({"model": "test", "configs": configs}, open(path, "w"))


def row(config, values):
    per_query = {str(i): {"ndcg@10": v, "mrr@10": v} for i, v in enumerate(values)}
    mean = sum(values) / len(values)
    return {"id": config, "ndcg@10": mean, "mrr@10": mean, "flops_ratio": 1.0, "per_query": per_query}


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True)


def main():
    base = [0.2 + 0.03 * (i % 7) for i in range(20)]
    with tempfile.TemporaryDirectory() as d:
        a, b = os.path.join(d, "a.json"), os.path.join(d, "b.json")
        write(a, [row("full", base), row("same", base)])
        write(b, [row("full", [v + 0.1 for v in base])])
        r = run(f"{a}:full", b, f"{a}:same")
        assert r.returncode == 0, r.stderr
        shifted, same = [l.split() for l in r.stdout.splitlines()[2:4]]
        # columns: name n A B B-A [low, high] p W/L/T
        assert shifted[1] == "20" and abs(float(shifted[4]) - 0.1) < 1e-4, shifted
        low, high = float(shifted[5].strip("[,")), float(shifted[6].strip("]"))
        assert 0.09 < low <= high < 0.11, shifted
        assert float(shifted[7]) < 0.001 and shifted[8] == "20/0/0", shifted
        assert float(same[4]) == 0 and float(same[7]) == 1.0 and same[8] == "0/0/20", same

        bare = os.path.join(d, "bare.json")
        write(bare, [{"id": "full", "ndcg@10": 0.5, "mrr@10": 0.5, "flops_ratio": 1.0}])
        r = run(f"{a}:full", f"{bare}:full")
        assert r.returncode != 0 and "--per-query" in r.stderr, r.stderr
        r = run(f"{a}:full", f"{a}:nope")
        assert r.returncode != 0 and "no configuration nope" in r.stderr, r.stderr
    print("test_compare_quality: ok")


if __name__ == "__main__":
    main()
