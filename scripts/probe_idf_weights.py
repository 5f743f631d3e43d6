"""Probe: max-sim with idf-weighted query tokens on the *untrained* base, per depth.

Each query and passage is encoded alone (isolated segments, as the embedded default),
and each depth's exit scores the mean over query tokens of their best cosine with a
passage token, each query token weighted idf(t)^alpha (alpha = 0 is plain max-sim).
idf = ln((N + 1) / (df + 1)) + 1 over the distinct DL21 + DL22 candidate passages
(`mrank train` counts the same passages, less those of the two DL21 queries it drops for
lacking a grade-2 passage). Prints DL19 nDCG@10 per (depth, alpha).

Needs torch and transformers (not part of CI). From the repository root:
    python3 scripts/probe_idf_weights.py .cache/all-minilm-l6-v2 ../shared/data/trec-dl
"""
import collections
import json
import math
import sys

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

ALPHAS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
DEPTHS = [2, 3, 4, 5, 6]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def read_qrels(path):
    qrels = collections.defaultdict(dict)
    with open(path) as f:
        for line in f:
            qid, _, docid, grade = line.split()
            qrels[qid][docid] = int(grade)
    return qrels


def ndcg10(scores, docids, judged):
    order = np.argsort(-np.asarray(scores), kind="stable")[:10]
    dcg = sum(judged.get(docids[i], 0) / math.log2(k + 2) for k, i in enumerate(order))
    ideal = sorted(judged.values(), reverse=True)[:10]
    idcg = sum(g / math.log2(k + 2) for k, g in enumerate(ideal))
    return dcg / idcg


def idf_table(tok, data_dir):
    """idf(t) = ln((N + 1) / (df(t) + 1)) + 1 over the distinct DL21 + DL22 candidate
    passages, as a function of a token id."""
    df, seen = collections.Counter(), set()
    for name in ["dl21-bm25-top100.jsonl", "dl22-bm25-top100.jsonl"]:
        for row in read_jsonl(f"{data_dir}/{name}"):
            for c in row["candidates"]:
                if c["docid"] not in seen:
                    seen.add(c["docid"])
                    df.update(set(tok(c["text"], add_special_tokens=False)["input_ids"]))
    n = len(seen)
    return lambda t: math.log((n + 1) / (df.get(t, 0) + 1)) + 1.0


def main(model_dir, data_dir):
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, output_hidden_states=True).eval()
    idf = idf_table(tok, data_dir)
    qrels = read_qrels(f"{data_dir}/qrels.dl19-passage.txt")
    results = collections.defaultdict(list)
    rows = [r for r in read_jsonl(f"{data_dir}/dl19-bm25-top100.jsonl") if r["qid"] in qrels]
    for k, row in enumerate(rows):
        q = tok([row["query"]], return_tensors="pt")
        p = tok([c["text"] for c in row["candidates"]], padding=True, truncation=True,
                max_length=200, return_tensors="pt")
        with torch.no_grad():
            q_states = model(**q).hidden_states
            p_states = model(**p).hidden_states
        q_ids = q["input_ids"][0, 1:-1]
        log_idf = torch.tensor([math.log(idf(int(t))) for t in q_ids])
        inside = p["attention_mask"].clone()
        inside[:, 0] = 0
        inside[torch.arange(len(inside)), p["attention_mask"].sum(1) - 1] = 0
        docids = [c["docid"] for c in row["candidates"]]
        for d in DEPTHS:
            qn = torch.nn.functional.normalize(q_states[d][0, 1:-1], dim=-1)
            pn = torch.nn.functional.normalize(p_states[d], dim=-1)
            sim = torch.einsum("qh,bph->bqp", qn, pn).masked_fill(inside[:, None, :] == 0, -9)
            best = sim.max(-1).values
            for a in ALPHAS:
                w = torch.exp(a * log_idf)
                scores = (best * w).sum(1) / w.sum()
                results[(d, a)].append(ndcg10(scores.tolist(), docids, qrels[row["qid"]]))
        print(f"\rquery {k + 1}/{len(rows)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    print("depth | " + " | ".join(f"alpha {a}" for a in ALPHAS))
    for d in DEPTHS:
        print(f"d{d} | " + " | ".join(f"{np.mean(results[(d, a)]):.4f}" for a in ALPHAS))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: probe_idf_weights.py MODEL_DIR TREC_DL_DIR")
    main(sys.argv[1], sys.argv[2])
