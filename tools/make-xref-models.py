#!/usr/bin/env python3
"""make-xref-models: the random-weight models of tests/data/xref, drawn with Python's `random`
only (standard library), so the files come out byte-identical on every machine.

    python3 tools/make-xref-models.py [--out tests/data/xref] [--only base,gemma2-26]

base-F32.gguf: a `llama` model whose every row length is a multiple of 256, so that each
quantized type (the K-quants too) applies to every matrix: d = 256, 4 heads of 64, 1 KV head,
d_ff = 256, 2 layers, vocabulary 128, a separate output matrix, seeded by "xref-base:0".
tests/data/xref/README.md says how the quantized copies base-<TYPE>.gguf are made from it.
Weights are drawn like those of tools/make-fixtures.py, their standard deviations scaled by
sqrt(48 / fan-in) so that the activations have the magnitudes of its 48-wide models. One
addition makes greedy decoding decisive: row v of output.weight is its random row plus
CHAIN = 2.0 times the (unit-variance) embedding of v's predecessor in a random cycle through
the vocabulary, so the token after u is most often its successor in the cycle, by a clear
margin. Without it, the greedy margins of such random models fall below 1% of the logit scale
within 64 steps, while a quantized file's logits computed by the engine and by llama.cpp
differ by up to 2% (both round the activations to 8 bits before the products, in blocks of
32, llama.cpp in blocks of 256 for the K-quants, and a last-bit difference upstream sometimes
moves a value to the next step), so a near tie would decide the token, not the arithmetic.

gemma2-26.gguf: tools/make-fixtures.py's gemma2 model (same keys and weight scales, same
window 6, soft-caps 5 and 3, head size 16) with 26 layers and d = 32, d_ff = 64, seeded by
"gemma2-26:0". llama.cpp (the commit of tests/data/xref/README.md) derives Gemma 2's query
scale from the layer count (26, 42 or 46 layers; 1/sqrt(head size) for the first two) and
aborts for other depths, so it cannot run the two-layer tests/data/gemma2.gguf.

Both files carry tokenizer.ggml.model = "none" and <arch>.vocab_size = 128: no vocabulary
(the engine loads none, and checks the size against token_embd), which is what llama.cpp
needs in order to load a file without one.
"""

import argparse
import importlib.util
import math
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import morgguf  # noqa: E402

D, N_H, N_KV, D_H, D_FF, L, V, CTX = 256, 4, 1, 64, 256, 2, 128, 256
# Weight of the successor cycle in output.weight (see the docstring).
CHAIN = 2.0


def load_make_fixtures():
    spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(HERE, "make-fixtures.py"))
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    return mf


def build_base(attempt, mf):
    rng = random.Random("xref-base:%d" % attempt)

    def gauss(n, std):
        return [rng.gauss(0.0, std) for _ in range(n)]

    def norm(n):
        return [1.0 + rng.gauss(0.0, mf.NORM_STD) for _ in range(n)]

    def scaled(std, fan_in):
        return std * math.sqrt(float(mf.D) / fan_in)

    dq, dkv = N_H * D_H, N_KV * D_H
    w = morgguf.GGUFWriter()
    w.add_string("general.architecture", "llama")
    w.add_string("general.name", "mor xref base")
    p = "llama."
    w.add_uint32(p + "context_length", CTX)
    w.add_uint32(p + "embedding_length", D)
    w.add_uint32(p + "feed_forward_length", D_FF)
    w.add_uint32(p + "block_count", L)
    w.add_uint32(p + "attention.head_count", N_H)
    w.add_uint32(p + "attention.head_count_kv", N_KV)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32(p + "rope.freq_base", 10000.0)
    w.add_uint32(p + "rope.dimension_count", D_H)
    w.add_uint32(p + "vocab_size", V)
    w.add_uint32("general.file_type", 0)  # all F32
    w.add_string("tokenizer.ggml.model", "none")
    emb = gauss(V * D, mf.EMB_STD)
    w.add_tensor("token_embd.weight", emb, shape=(V, D))
    w.add_tensor("output_norm.weight", norm(D), shape=(D,))
    order = list(range(V))
    rng.shuffle(order)          # one cycle through the vocabulary: token order[i] -> order[i + 1]
    succ = [0] * V
    for i in range(V):
        succ[order[i]] = order[(i + 1) % V]
    pred = [0] * V
    for u in range(V):
        pred[succ[u]] = u
    out = gauss(V * D, 1.0)
    for v in range(V):
        e = emb[pred[v] * D:(pred[v] + 1) * D]
        for j in range(D):
            out[v * D + j] = (out[v * D + j] + CHAIN * e[j] / mf.EMB_STD) * scaled(mf.OUT_STD, D)
    w.add_tensor("output.weight", out, shape=(V, D))
    shapes = {"attn_q": (dq, D), "attn_k": (dkv, D), "attn_v": (dkv, D), "attn_output": (D, dq),
              "ffn_gate": (D_FF, D), "ffn_up": (D_FF, D), "ffn_down": (D, D_FF)}
    for i in range(L):
        b = "blk.%d." % i
        w.add_tensor(b + "attn_norm.weight", norm(D), shape=(D,))
        for role in ("attn_q", "attn_k", "attn_v", "attn_output"):
            o, n = shapes[role]
            w.add_tensor(b + role + ".weight", gauss(o * n, scaled(mf.PROJ_STD[role], n)), shape=(o, n))
        w.add_tensor(b + "ffn_norm.weight", norm(D), shape=(D,))
        for role in ("ffn_gate", "ffn_up", "ffn_down"):
            o, n = shapes[role]
            w.add_tensor(b + role + ".weight", gauss(o * n, scaled(mf.PROJ_STD[role], n)), shape=(o, n))
    return w


def build_gemma2_26(attempt, mf):
    # make-fixtures' gemma2 writer with its module-level shape changed for this call
    saved = (mf.D, mf.D_FF, mf.D_H)
    mf.D, mf.D_FF, mf.D_H = 32, 64, 8
    try:
        w = mf.build_arch_model(mf.Spec("gemma2-26", arch="gemma2", L=26, tied=True), attempt)
    finally:
        mf.D, mf.D_FF, mf.D_H = saved
    w.add_uint32("gemma2.vocab_size", mf.V)
    w.add_string("tokenizer.ggml.model", "none")
    return w


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "data", "xref"))
    ap.add_argument("--only", default="base,gemma2-26")
    a = ap.parse_args()
    mf = load_make_fixtures()
    os.makedirs(a.out, exist_ok=True)
    only = a.only.split(",")
    if "base" in only:
        build_base(0, mf).write(os.path.join(a.out, "base-F32.gguf"))
    if "gemma2-26" in only:
        build_gemma2_26(0, mf).write(os.path.join(a.out, "gemma2-26.gguf"))


if __name__ == "__main__":
    main()
