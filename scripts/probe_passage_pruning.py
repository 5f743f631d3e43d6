"""Probe: does idf pick which passage tokens to keep better than a passage cap does?

Untrained base, isolated segments, max-sim with query tokens weighted idf(t)^0.5 (the
best exponent at full depth, `probe_idf_weights.py`). Each passage is cut *before the
first layer* in one of these ways, then encoded alone:

- `all`: every token (the reference);
- `cap:N`: the first N tokens (a passage cap, `-pN`);
- `topk_ratio:R`: the ceil(n / R) tokens of highest idf, in passage order;
- `topk_fixed:K`: the K tokens of highest idf;
- `group_max:R`: the highest-idf token of each run of R consecutive tokens (a width
  merge before layer 1 with all of each group's weight on its rarest token).

`renum` False keeps each kept token's original position id, True numbers them 1..k.
Prints DL19 nDCG@10 per variant and depth. idf as `probe_idf_weights.py` counts it.

Needs torch and transformers (not part of CI). From the repository root:
    python3 scripts/probe_passage_pruning.py .cache/all-minilm-l6-v2 ../shared/data/trec-dl
"""
import os
import collections, json, math, sys
import numpy as np, torch
from transformers import AutoModel, AutoTokenizer
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from probe_idf_weights import idf_table, read_jsonl, read_qrels, ndcg10

if len(sys.argv) != 3:
    sys.exit("usage: probe_passage_pruning.py MODEL_DIR TREC_DL_DIR")
model_dir, data_dir = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModel.from_pretrained(model_dir, output_hidden_states=True).eval()
idf = idf_table(tok, data_dir)
qrels = read_qrels(f"{data_dir}/qrels.dl19-passage.txt")
rows = [r for r in read_jsonl(f"{data_dir}/dl19-bm25-top100.jsonl") if r["qid"] in qrels]
ALPHA = 0.5
DEPTHS = [2, 3, 4, 6]

def select(ids, mode, arg):
    """ids: passage content ids (no specials). Returns kept positions (0-based within content)."""
    m = len(ids)
    if mode == "all": return list(range(m))
    if mode == "cap": return list(range(min(m, arg)))
    w = [idf(t) for t in ids]
    if mode == "topk_ratio":
        k = max(1, math.ceil(m / arg))
        keep = sorted(sorted(range(m), key=lambda i: -w[i])[:k]); return keep
    if mode == "topk_fixed":
        keep = sorted(sorted(range(m), key=lambda i: -w[i])[:arg]); return keep
    if mode == "group_max":
        return [max(range(s, min(m, s + arg)), key=lambda i: w[i]) for s in range(0, m, arg)]
    raise ValueError(mode)

VARIANTS = [("all", 0), ("cap", 32), ("cap", 48), ("cap", 64), ("topk_ratio", 2), ("topk_ratio", 3), ("topk_ratio", 4),
            ("topk_fixed", 32), ("topk_fixed", 24), ("group_max", 2), ("group_max", 4)]
results = collections.defaultdict(list); toks = collections.defaultdict(list)
for k, row in enumerate(rows):
    q = tok([row["query"]], return_tensors="pt")
    with torch.no_grad(): q_states = model(**q).hidden_states
    q_ids = q["input_ids"][0, 1:-1]
    w_q = torch.exp(ALPHA * torch.tensor([math.log(idf(int(t))) for t in q_ids]))
    docids = [c["docid"] for c in row["candidates"]]
    content = [tok(c["text"], add_special_tokens=False, truncation=True, max_length=198)["input_ids"] for c in row["candidates"]]
    for mode, arg in VARIANTS:
        for renum in ([False, True] if mode not in ("all", "cap") else [False]):
            kept = [select(ids, mode, arg) for ids in content]
            L = max(len(x) for x in kept) + 2
            B = len(kept)
            inp = torch.zeros(B, L, dtype=torch.long); pos = torch.zeros(B, L, dtype=torch.long); att = torch.zeros(B, L, dtype=torch.long)
            for b, (ids, kp) in enumerate(zip(content, kept)):
                seq = [tok.cls_token_id] + [ids[i] for i in kp] + [tok.sep_token_id]
                p = [0] + ([i + 1 for i in kp] if not renum else list(range(1, len(kp) + 1))) + ([kp[-1] + 2] if not renum else [len(kp) + 1])
                inp[b, :len(seq)] = torch.tensor(seq); pos[b, :len(seq)] = torch.tensor(p); att[b, :len(seq)] = 1
            with torch.no_grad():
                ps = model(input_ids=inp, attention_mask=att, position_ids=pos).hidden_states
            inside = att.clone(); inside[:, 0] = 0; inside[torch.arange(B), att.sum(1) - 1] = 0
            toks[(mode, arg, renum)].append(float(att.sum()) / B)
            for d in DEPTHS:
                qn = torch.nn.functional.normalize(q_states[d][0, 1:-1], dim=-1)
                pn = torch.nn.functional.normalize(ps[d], dim=-1)
                sim = torch.einsum("qh,bph->bqp", qn, pn).masked_fill(inside[:, None, :] == 0, -9)
                best = sim.max(-1).values
                s = (best * w_q).sum(1) / w_q.sum()
                results[(mode, arg, renum, d)].append(ndcg10(s.tolist(), docids, qrels[row["qid"]]))
    print(f"\rquery {k + 1}/{len(rows)}", end="", file=sys.stderr, flush=True)
print(file=sys.stderr)
print("variant | renum | mean passage tokens | " + " | ".join(f"d{d}" for d in DEPTHS))
for mode, arg in VARIANTS:
    for renum in ([False, True] if mode not in ("all", "cap") else [False]):
        print(f"{mode}:{arg} | {renum} | {np.mean(toks[(mode,arg,renum)]):.1f} | " + " | ".join(f"{np.mean(results[(mode,arg,renum,d)]):.4f}" for d in DEPTHS), flush=True)
