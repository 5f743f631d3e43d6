#!/usr/bin/env python3
"""Probe: which N passage tokens should a width cut at layer 0 keep?

A passage cap (`full-p32`) keeps the first N tokens; on DL19 that costs 0.036 at N = 32,
because the match often sits later in the passage. Keeping N *consecutive* tokens
chosen for the query instead (the window where the query's rare terms occur) costs the
same transformer FLOPs, and the text stays readable, unlike pruning tokens by idf
(scripts/probe_passage_pruning.py, much worse). Choosing the window is a lexical pass
over token ids: no layer runs for it.

Runs the full configuration's exported split graph (isolated segments) in ONNX Runtime
over DL19's 100 candidates per query, once per (N, selection), and prints nDCG@10.

Usage:
  mrank export --configs full --out runs/export-full
  .cache/pyenv/bin/python scripts/probe_passage_window.py runs/export-full/full.onnx \
      adapters/minilm-l6/adapters.safetensors .cache/all-minilm-l6-v2 ../shared/data/trec-dl
"""
import importlib.util
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("fusion", os.path.join(HERE, "probe_bm25_fusion.py"))
fusion = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fusion)

CLS, SEP, PAD = 101, 102, 0
MAX_PASSAGE = 256 - 2


def window_start(passage, n, weights, continuation, power=1.0, distinct=True, centre=False):
    """Start of the n-token window with the most query weight (idf(t)^power per query
    token id, once per window when `distinct`, else per occurrence). Ties go to the
    earliest start, so a passage without a match keeps its first n tokens (the cap); with
    `centre`, to the middle of the tied starts, so the match gets context on both sides."""
    if len(passage) <= n:
        return 0
    best, starts = -1.0, []
    for s in range(0, len(passage) - n + 1):
        if s > 0 and continuation[passage[s]]:
            continue  # never start inside a word
        seen = set()
        total = 0.0
        for t in passage[s : s + n]:
            w = weights.get(t)
            if w is not None and (not distinct or t not in seen):
                seen.add(t)
                total += w**power
        if total > best + 1e-9:
            best, starts = total, [s]
        elif total > best - 1e-9:
            starts.append(s)
    if best <= 0.0 or not centre:
        return starts[0]
    return starts[len(starts) // 2]


def select(passage, n, weights, continuation, rule):
    """The tokens a rule keeps, in passage order."""
    if len(passage) <= n:
        return passage
    if rule is None:
        return passage[:n]
    rule = dict(rule)
    head = rule.pop("head", 0)
    pieces = rule.pop("pieces", 1)
    if head:
        rest = passage[head:]
        return passage[:head] + select(rest, n - head, weights, continuation, dict(rule, pieces=pieces))
    if rule.pop("greedy", False):
        return pieces_of(passage, n, pieces, weights, continuation, rule)
    focus = rule.pop("focus", 0)
    if focus:
        # the best window of `focus` tokens, widened to n on both sides
        s = window_start(passage, focus, weights, continuation, **rule)
        start = min(max(0, s - (n - focus) // 2), len(passage) - n)
        return passage[start : start + n]
    if pieces == 2:
        size = n // 2
        s = window_start(passage, size, weights, continuation, **rule)
        first = (s, passage[s : s + size])
        held = {t for t in first[1] if t in weights}
        lacking = {t: w for t, w in weights.items() if t not in held} or weights
        # the second piece from the longer stretch the first leaves, for the terms the
        # first lacks (all terms when it holds every one)
        before, after = passage[:s], passage[s + size :]
        side, offset = (after, s + size) if len(after) >= len(before) else (before, 0)
        if len(side) <= n - size:
            second = (offset, side)
        else:
            t = window_start(side, n - size, lacking, continuation, **rule)
            second = (offset + t, side[t : t + n - size])
        return [tok for _, piece in sorted([first, second]) for tok in piece]
    s = window_start(passage, n, weights, continuation, **rule)
    return passage[s : s + n]


def pieces_of(passage, n, pieces, weights, continuation, rule):
    """`pieces` windows of n / pieces tokens, chosen greedily: each the best window in a
    stretch no earlier piece covers, for the query terms no earlier piece holds (all
    terms again once every term is held). Kept in passage order."""
    size = n // pieces
    chosen = []  # (start, end)
    held = set()
    for k in range(pieces):
        want = n - size * (pieces - 1) if k == pieces - 1 else size
        lacking = {t: w for t, w in weights.items() if t not in held} or weights
        free, at = [], 0
        for s, e in sorted(chosen) + [(len(passage), len(passage))]:
            if s > at:
                free.append((at, s))
            at = max(at, e)
        best = None
        for a, b in free:
            stretch = passage[a:b]
            if len(stretch) <= want:
                gain = sum(w for t, w in lacking.items() if t in set(stretch))
                cand = (gain, -(b - a), a, b)
            else:
                s = window_start(stretch, want, lacking, continuation, **rule)
                window = stretch[s : s + want]
                gain = sum(w for t, w in lacking.items() if t in set(window))
                cand = (gain, -want, a + s, a + s + want)
            if best is None or cand[0] > best[0] + 1e-9:
                best = cand
        if best is None:
            break
        chosen.append((best[2], best[3]))
        held |= {t for t in passage[best[2] : best[3]] if t in weights}
    return [t for s, e in sorted(chosen) for t in passage[s:e]]


RULES = {
    "first": None,
    "idf": dict(),
    "idf-centre": dict(centre=True),
    "idf2": dict(power=2.0),
    "idf2-centre": dict(power=2.0, centre=True),
    "idf-occurrences": dict(distinct=False),
    "head8-idf-centre": dict(centre=True, head=8),
    "head4-idf-centre": dict(centre=True, head=4),
    "two-idf-centre": dict(centre=True, pieces=2),
    "greedy2-idf-centre": dict(centre=True, pieces=2, greedy=True),
    "greedy3-idf-centre": dict(centre=True, pieces=3, greedy=True),
    "greedy4-idf-centre": dict(centre=True, pieces=4, greedy=True),
    "two-idf": dict(pieces=2),
    "focus16-idf-centre": dict(centre=True, focus=16),
    "focus8-idf-centre": dict(centre=True, focus=8),
}


def main():
    graph, adapters, base, data = sys.argv[1:5]
    sizes = [int(x) for x in os.environ.get("SIZES", "32,24,48").split(",")]
    rules = os.environ.get("RULES", "first,idf").split(",")
    query_set = os.environ.get("SET", "dl19")
    # the adapters hold ln(idf) per vocabulary id (trainer::idf)
    idf = np.exp(load_file(adapters)["idf.log"].astype(np.float64))
    tok = Tokenizer.from_file(os.path.join(base, "tokenizer.json"))
    tok.no_padding()  # the checkpoint's file pads and truncates to 128
    tok.no_truncation()
    vocab = tok.get_vocab()
    continuation = np.zeros(len(idf), dtype=bool)
    for piece, i in vocab.items():
        if piece.startswith("##") and i < len(idf):
            continuation[i] = True
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(os.environ.get("THREADS", "2"))
    sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    qrels = fusion.read_qrels(f"{data}/qrels.{query_set}-passage.txt")
    queries = [json.loads(l) for l in open(f"{data}/{query_set}-bm25-top100.jsonl", encoding="utf-8")]
    queries = [q for q in queries if q["qid"] in qrels]

    def ids(text):
        return tok.encode(text, add_special_tokens=False).ids

    encoded = []
    for q in queries:
        q_ids = ids(q["query"])[:30]
        # every distinct query token id counts once per window, weighted by its idf
        weights = {t: float(idf[t]) for t in q_ids}
        cands = [(c["docid"], ids(c["text"])[:MAX_PASSAGE]) for c in q["candidates"]]
        encoded.append((q, q_ids, weights, cands))

    def score(q_ids, passages):
        qrow = np.array([[CLS] + q_ids + [SEP]], dtype=np.int64)
        t = max(len(p) for p in passages) + 2
        pid = np.full((len(passages), t), PAD, dtype=np.int64)
        pmask = np.zeros_like(pid)
        for i, p in enumerate(passages):
            row = [CLS] + p + [SEP]
            pid[i, : len(row)] = row
            pmask[i, : len(row)] = 1
        out = sess.run(None, {
            "query_ids": qrow,
            "query_mask": np.ones_like(qrow),
            "passage_ids": pid,
            "passage_mask": pmask,
            "query_index": np.zeros(len(passages), dtype=np.int64),
        })[0]
        return np.asarray(out).reshape(-1)

    variants = [("uncut", None, None)]
    for n in sizes:
        for rule in rules:
            variants.append((f"{rule} {n}", n, RULES[rule]))
    results = {}
    # the uncut scores take minutes: kept beside the graph, per query set
    # keyed on the graph file's size and time, so a graph exported again is scored again
    st = os.stat(graph)
    uncut_cache = f"{graph}.{query_set}-{st.st_size}-{int(st.st_mtime)}-uncut.json"
    for name, n, how in variants:
        t0 = time.time()
        per_query, kept = [], []
        if n is None and os.path.exists(uncut_cache):
            results[name] = json.load(open(uncut_cache))
            print(f"| uncut (cached) | | {np.mean(results[name]):.4f} | | | |", flush=True)
            continue
        for q, q_ids, weights, cands in encoded:
            passages = []
            for _, p in cands:
                if n is None:
                    passages.append(p)
                else:
                    passages.append(select(p, n, weights, continuation, how))
                kept.append(len(passages[-1]) + 2)
            s = score(q_ids, passages)
            ranking = [cands[i][0] for i in np.argsort(-s, kind="stable")]
            per_query.append(fusion.ndcg10(ranking, qrels[q["qid"]]))
        results[name] = per_query
        if n is None:
            json.dump(per_query, open(uncut_cache, "w"))
        base_q = results["uncut"]
        diff = np.array(per_query) - np.array(base_q)
        print(
            f"| {name} | {np.mean(kept):.1f} | {np.mean(per_query):.4f} | "
            f"{100 * np.mean(per_query) / np.mean(base_q):.1f}% | {diff.mean():+.4f} | "
            f"{time.time() - t0:.0f} s |",
            flush=True,
        )
    out = os.environ.get("OUT")
    if out:
        json.dump({k: dict(zip([q["qid"] for q, *_ in encoded], v)) for k, v in results.items()},
                  open(out, "w"), indent=1)


if __name__ == "__main__":
    print("| passage read | tokens (mean, with [CLS]/[SEP]) | nDCG@10 | % of uncut | vs uncut | time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    main()
