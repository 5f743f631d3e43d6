#!/usr/bin/env python3
"""Pseudo-queries from the training passages, for distillation-only training.

The training data has 129 real queries (53 judged DL21, 76 unlabeled DL22). A shallow
exit distilled from the full model may be short of queries rather than of capacity;
this writes more of them, drawn from the same passages, in the data's JSONL format so
`mrank train` can take the file as `data.unlabeled` (only the distillation terms use it).

Each pseudo-query comes from one sentence of a random training passage: half are the
sentence's first 4 to 9 words (natural-language shape), half are 3 to 6 of its rarer
content words in order (keyword shape). Its candidates are the BM25 top-K of all
training passages (k1 = 0.9, b = 0.4), so they share its topic the
way a first stage's candidates do (k1 and b are Anserini's defaults; the words are
lower-cased \w+ runs, not stemmed, and a query's repeated word counts once). Nothing is
read from DL19.

Usage: python3 scripts/pseudo_queries.py DATA_DIR OUT.jsonl [--queries N] [--candidates K] [--seed S]
"""
import argparse
import json
import math
import random
import re
import sys
from collections import Counter, defaultdict

STOPWORDS = set(
    """a an the of to in on at for from by with and or but if then than as is are was were be
    been being it its this that these those there here which who whom whose what when where
    why how can could will would should may might must do does did done have has had not no
    so such into over under about after before between through during also just only very
    more most other some any each few all both own same too s t i you he she we they them
    his her our their your my me him us one""".split()
)
WORD = re.compile(r"\w+", re.UNICODE)


def words(text):
    return WORD.findall(text.lower())


def read_passages(paths):
    seen, passages = set(), []
    for path in paths:
        for line in open(path, encoding="utf-8"):
            for c in json.loads(line)["candidates"]:
                if c["docid"] not in seen:
                    seen.add(c["docid"])
                    passages.append((c["docid"], c["text"]))
    return passages


class Bm25:
    def __init__(self, texts, k1=0.9, b=0.4):
        self.k1, self.b = k1, b
        self.lengths = []
        self.postings = defaultdict(list)
        for i, text in enumerate(texts):
            tf = Counter(words(text))
            self.lengths.append(sum(tf.values()))
            for term, n in tf.items():
                self.postings[term].append((i, n))
        self.avg = sum(self.lengths) / len(self.lengths)
        n = len(texts)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}

    def top(self, query, k):
        scores = defaultdict(float)
        # Sorted, so the float sums (and the order of ties) do not depend on Python's
        # per-process string hashing: the same seed writes the same file.
        for term in sorted(set(words(query))):
            idf = self.idf.get(term)
            if idf is None:
                continue
            for i, tf in self.postings[term]:
                norm = self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg)
                scores[i] += idf * tf * (self.k1 + 1) / (tf + norm)
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


def pseudo_query(text, bm25, rng):
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if 6 <= len(words(s)) <= 40]
    if not sentences:
        return None
    toks = words(rng.choice(sentences))
    if rng.random() < 0.5:
        return " ".join(toks[: rng.randint(4, 9)])
    content = [t for t in toks if t not in STOPWORDS and not t.isdigit() and len(t) > 2]
    if len(content) < 3:
        return None
    # Rarer words are likelier to be kept, as a searcher names what is specific.
    keep = min(len(content), rng.randint(3, 6))
    weights = [bm25.idf.get(t, 1.0) for t in content]
    chosen = set()
    while len(chosen) < keep:
        chosen.add(rng.choices(range(len(content)), weights=weights)[0])
    return " ".join(content[i] for i in sorted(chosen))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir")
    ap.add_argument("out")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    files = [f"{args.data_dir}/dl21-bm25-top100.jsonl", f"{args.data_dir}/dl22-bm25-top100.jsonl"]
    passages = read_passages(files)
    bm25 = Bm25([t for _, t in passages])
    print(f"{len(passages)} distinct training passages indexed", file=sys.stderr)
    rng = random.Random(args.seed)
    written, seen, attempts = 0, set(), 0
    with open(args.out, "w", encoding="utf-8") as out:
        while written < args.queries:
            attempts += 1
            if attempts > 50 * args.queries:
                sys.exit(
                    f"{args.out}: only {written} of {args.queries} pseudo-queries found "
                    f"{args.candidates} candidates each; ask for fewer queries or candidates"
                )
            _, text = passages[rng.randrange(len(passages))]
            query = pseudo_query(text, bm25, rng)
            if not query or query in seen:
                continue
            top = bm25.top(query, args.candidates)
            if len(top) < args.candidates:
                continue
            seen.add(query)
            candidates = [
                {"docid": passages[i][0], "text": passages[i][1], "bm25_rank": r + 1, "bm25_score": round(s, 4)}
                for r, (i, s) in enumerate(top)
            ]
            out.write(json.dumps({"qid": f"pq{written}", "query": query, "candidates": candidates}) + "\n")
            written += 1
            if written % 100 == 0:
                print(f"\r{written}/{args.queries} pseudo-queries", end="", file=sys.stderr)
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
