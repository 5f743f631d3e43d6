#!/usr/bin/env python3
"""Other ways to write the int8 full graph, timed side by side with the exported one.

    .cache/pyenv/bin/python scripts/int8_variants.py EXPORT_DIR [--rounds 7]

EXPORT_DIR holds an export with `full.onnx` and `full-int8.onnx` (for example the
embedded default's, `mrank export ... --configs full,full-int8`). The script rewrites
copies of them (written next to the originals as `variant-*.onnx`, deleted afterwards)
and times every graph on one batch: one query of 10 tokens against 100 passages of 80
tokens (random ordinary vocabulary ids; DL19 passages average about 80 tokens), 2
intra-op threads, 3 warm-up runs, then `--rounds` interleaved rounds. It prints each
graph's median ms per batch, its speed relative to `full`, and its largest score
difference from `full`, relative to the largest |score| of `full` (the int8 attention
variants compute exactly what `full-int8` computes).

Variants of `full-int8` (docs/BENCHMARKS.md, "What else was tried for int8"):
  mha          QAttention -> DynamicQuantizeMatMul (q, k, v and bias in one GEMM) + Split
               + ONNX Runtime's MultiHeadAttention with the key padding mask;
  explicit     the same GEMM, then attention from standard ops (Reshape, Transpose,
               MatMul, additive mask, Softmax, MatMul);
  fastgelu     BiasGelu (erf) -> FastGelu (tanh approximation, bias fused);
and of `full` (f32):
  nbits8-128   every MatMul with a constant weight -> MatMulNBits, 8-bit weights in
               blocks of 128 along K, accuracy_level 4 (int8 activations); attention f32.
"""
import argparse
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

MS = "com.microsoft"


def producers(graph):
    return {o: n for n in graph.node for o in n.output}


def keys_mask(graph, lengths):
    """The int32 [B, T] key mask the export builds next to `lengths` (Cast(Less(...)))."""
    made = producers(graph)
    total = made[lengths].input[0]  # lengths = Cast(ReduceSum(mask))
    for n in graph.node:
        if n.op_type == "Less" and made[n.input[1]].input[0] == total:
            for c in graph.node:
                if c.op_type == "Cast" and c.input[0] == n.output[0]:
                    return n.output[0], c.output[0]
    raise SystemExit(f"no key mask next to {lengths}: not an mrank split graph?")


def rewrite_attention(model, explicit):
    g = model.graph
    quantized = {n.output[0]: n for n in g.node if n.op_type == "DynamicQuantizeLinear"}
    out, dropped, additive = [], set(), {}

    def const(name, value):
        g.initializer.append(numpy_helper.from_array(np.array(value), name))
        return name

    def add(op, inputs, outputs, **attrs):
        domain = MS if op in ("DynamicQuantizeMatMul", "MultiHeadAttention") else ""
        out.append(helper.make_node(op, inputs, outputs, domain=domain, **attrs))

    for n in g.node:
        if n.op_type != "QAttention":
            out.append(n)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        heads = attrs["num_heads"]
        x = quantized[n.input[0]].input[0]
        dropped.add(n.input[0])
        p = n.name
        # QAttention inputs: x_q, W, bias, x_scale, W_scale, mask_index, x_zero_point.
        add("DynamicQuantizeMatMul", [x, n.input[1], n.input[4], "", n.input[2]], [p + "_qkv"])
        less, keys = keys_mask(g, n.input[5])
        if not explicit:
            add("Split", [p + "_qkv"], [p + "_q", p + "_k", p + "_v"], axis=2)
            add("MultiHeadAttention", [p + "_q", p + "_k", p + "_v", "", keys], [n.output[0]],
                num_heads=heads, scale=attrs["scale"])
            continue
        if less not in additive:
            a = less + "_additive"
            add("Cast", [less], [a + "_f"], to=onnx.TensorProto.FLOAT)
            add("Sub", [const(a + "_one", np.float32(1)), a + "_f"], [a + "_off"])
            add("Mul", [a + "_off", const(a + "_big", np.float32(-10000))], [a + "_flat"])
            add("Unsqueeze", [a + "_flat", const(a + "_axes", np.array([1, 2], np.int64))], [a])
            additive[less] = a
        head_dim = None
        for init in g.initializer:
            if init.name == n.input[2]:
                head_dim = init.dims[0] // 3 // heads
        add("Reshape", [p + "_qkv", const(p + "_s5", np.array([0, 0, 3, heads, head_dim], np.int64))], [p + "_r"])
        add("Transpose", [p + "_r"], [p + "_t"], perm=[2, 0, 3, 1, 4])  # [3, B, H, T, d]
        add("Split", [p + "_t"], [p + "_q3", p + "_k3", p + "_v3"], axis=0)
        zero = const(p + "_ax0", np.array([0], np.int64))
        for t in "qkv":
            add("Squeeze", [p + f"_{t}3", zero], [p + f"_{t}"])
        add("Transpose", [p + "_k"], [p + "_kt"], perm=[0, 1, 3, 2])
        add("MatMul", [p + "_q", p + "_kt"], [p + "_scores"])
        add("Mul", [p + "_scores", const(p + "_scale", np.float32(attrs["scale"]))], [p + "_scaled"])
        add("Add", [p + "_scaled", additive[less]], [p + "_masked"])
        add("Softmax", [p + "_masked"], [p + "_probs"], axis=-1)
        add("MatMul", [p + "_probs", p + "_v"], [p + "_ctx"])
        add("Transpose", [p + "_ctx"], [p + "_ctxt"], perm=[0, 2, 1, 3])
        add("Reshape", [p + "_ctxt", const(p + "_s3", np.array([0, 0, heads * head_dim], np.int64))], [n.output[0]])
    out = [n for n in out if not (n.op_type == "DynamicQuantizeLinear" and n.output[0] in dropped)]
    del g.node[:]
    g.node.extend(out)


def rewrite_fastgelu(model):
    for n in model.graph.node:
        if n.op_type == "BiasGelu":
            n.op_type = "FastGelu"


def nbits_model(path, block):
    model = onnx.load(path)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    nodes, quantized = [], set()
    for n in g.node:
        if n.op_type != "MatMul" or n.input[1] not in inits:
            nodes.append(n)
            continue
        name = n.input[1]
        w = numpy_helper.to_array(inits[name]).astype(np.float32)  # [K, N]
        k, cols = w.shape
        if name not in quantized:
            blocks = w.T.reshape(cols, k // block, block)
            scale = np.abs(blocks).max(axis=2) / 127
            scale[scale == 0] = 1
            q = np.clip(np.rint(blocks / scale[..., None]), -128, 127).astype(np.int32) + 128
            g.initializer.extend([
                numpy_helper.from_array(q.astype(np.uint8), name + "_nbits"),
                numpy_helper.from_array(scale.astype(np.float32).reshape(-1), name + "_nbits_scale"),
            ])
            quantized.add(name)
        nodes.append(helper.make_node(
            "MatMulNBits", [n.input[0], name + "_nbits", name + "_nbits_scale"], list(n.output),
            domain=MS, K=k, N=cols, bits=8, block_size=block, accuracy_level=4))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("export_dir")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    d = args.export_dir
    full, int8 = os.path.join(d, "full.onnx"), os.path.join(d, "full-int8.onnx")
    for path in (full, int8):
        if not os.path.exists(path):
            raise SystemExit(f"{path}: missing; export full and full-int8 there first")

    written = []

    def variant(name, model, external):
        path = os.path.join(d, f"variant-{name}.onnx")
        if external:  # keep the shared weights file the originals point at
            onnx.save(model, path)
        else:
            onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                      location=f"variant-{name}.weights")
            written.append(os.path.join(d, f"variant-{name}.weights"))
        written.append(path)
        return path

    graphs = {"full": full, "full-int8": int8}
    for name, edit in [
        ("mha", lambda m: rewrite_attention(m, explicit=False)),
        ("explicit", lambda m: rewrite_attention(m, explicit=True)),
        ("fastgelu", rewrite_fastgelu),
    ]:
        m = onnx.load(int8, load_external_data=False)
        edit(m)
        graphs[f"int8-{name}"] = variant(name, m, external=True)
    graphs["nbits8-128"] = variant("nbits8-128", nbits_model(full, 128), external=False)

    rng = np.random.default_rng(0)

    def ids(rows, tokens):
        x = rng.integers(2000, 20000, size=(rows, tokens)).astype(np.int64)
        x[:, 0], x[:, -1] = 101, 102  # [CLS], [SEP] of the BERT vocabulary
        return x

    feeds = {
        "query_ids": ids(1, 10), "query_mask": np.ones((1, 10), np.int64),
        "passage_ids": ids(100, 80), "passage_mask": np.ones((100, 80), np.int64),
        "query_index": np.zeros(100, np.int64),
    }
    # Padding, so that the mask paths do real work: the last 30 passages are 50 tokens.
    feeds["passage_mask"][70:, 50:] = 0
    feeds["passage_ids"][70:, 50:] = 0
    feeds["passage_ids"][70:, 49] = 102
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    try:
        sessions = {k: ort.InferenceSession(p, opts, providers=["CPUExecutionProvider"])
                    for k, p in graphs.items()}
        scores = {k: s.run(None, feeds)[0] for k, s in sessions.items()}
        for _ in range(2):
            for s in sessions.values():
                s.run(None, feeds)
        times = {k: [] for k in sessions}
        for r in range(args.rounds):
            for k, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feeds)
                times[k].append(time.perf_counter() - start)
            print(f"\rround {r + 1}/{args.rounds}", end="", flush=True)
        print()
    finally:
        for path in written:
            if os.path.exists(path):
                os.remove(path)
    base = statistics.median(times["full"])
    ref = scores["full"]
    scale = float(np.abs(ref).max())
    print(f"{'graph':14s} {'ms/batch':>9s} {'x full':>7s} {'max |score - full| / max |full|':>32s}")
    for k in sessions:
        med = statistics.median(times[k])
        diff = float(np.abs(scores[k] - ref).max()) / scale
        print(f"{k:14s} {1000 * med:9.1f} {base / med:7.2f} {diff:32.2e}")


if __name__ == "__main__":
    main()
