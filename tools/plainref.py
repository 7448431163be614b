#!/usr/bin/env python3
"""plainref: a second, plain reference for router-free `mor` models, in standard-library Python.

Written from docs/FORMAT.md §3 and from how the MoR training code and PEFT compute the
relaxations, separately from tools/reference.py and in a different form, so that a fixture is
not only the reference agreeing with itself: each unrolled layer's projections are built as
dense matrices first (LoRA merged as W + sigma B A; DoRA merged as PEFT merges it,
m * (W + sigma B A) / |W + sigma B A|_row), every token is run through the whole sequence with
plain loops (attention over the tokens before it, no cache), an adaption prompt is attended as
a separate module would be (its keys and values from the layer's merged K and V matrices, the
RoPE'd query, its own softmax, the output projection of its result added to the attention's),
and a recursion encoding scales the layer's output. No KV sharing, routers or exit heads.

    python3 tools/plainref.py MODEL.gguf 1,2,3     prints the last position's logits

make-fixtures.py compares its logits at every prompt position with the reference's.
"""

import math
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import morgguf  # noqa: E402

ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
F32_1E5 = struct.unpack("<f", struct.pack("<f", 1e-5))[0]   # the default eps, a FLOAT32 key


class Unsupported(Exception):
    pass


def _matrix(r, name):
    t = r.tensor(name)
    vals = list(r.tensor_floats(name))
    if len(t.dims) == 1:
        return vals
    cols = t.dims[0]
    return [vals[i * cols:(i + 1) * cols] for i in range(len(vals) // cols)]


def load(path):
    """(hyperparameters, name -> vector or list of rows) of a router-free mor file."""
    r = morgguf.GGUFReader(path)
    if r.get("general.architecture") != "mor":
        raise Unsupported("not a mor file")
    if r.get("mor.router.type", "none") != "none" or r.get("mor.kv_sharing", False) or "mor.exit.layers" in r:
        raise Unsupported("routers, KV sharing and exit heads are not modelled")
    d, n_h = r.get("mor.embedding_length"), r.get("mor.attention.head_count")
    hp = {"d": d, "L": r.get("mor.block_count"), "n_h": n_h, "n_kv": r.get("mor.attention.head_count_kv", n_h),
          "eps": r.get("mor.attention.layer_norm_rms_epsilon", F32_1E5), "base": r.get("mor.rope.freq_base", 10000.0),
          "neox": r.get("mor.rope.type", "neox") == "neox", "n_rec": r.get("mor.recursion.count"),
          "sharing": r.get("mor.recursion.sharing"), "sigma": r.get("mor.lora.scale", 0.0)}
    hp["d_h"] = r.get("mor.attention.key_length", d // n_h)
    return hp, {t.name: _matrix(r, t.name) for t in r.tensors}


def stored_and_recursion(hp, l):
    L, N, sh = hp["L"], hp["n_rec"], hp["sharing"]
    mid = sh.startswith("middle")
    B = (L - 2 * mid) // N
    if sh == "cycle":
        return l % B, l // B
    if sh == "sequence":
        return l // N, l % N
    if l == 0:
        return 0, 0
    if l == L - 1:
        return B + 1, 0
    if sh == "middle_cycle":
        return 1 + (l - 1) % B, (l - 1) // B
    return 1 + (l - 1) // N, (l - 1) % N


def dense(hp, W, s, r, role):
    """The layer's matrix for a role, rows of inputs: override or stored, LoRA and DoRA merged."""
    pre = "blk.%d.rec.%d.%s." % (s, r, role)
    M = [list(row) for row in W.get(pre + "weight", W["blk.%d.%s.weight" % (s, role)])]
    A, Bm = W.get(pre + "lora_a"), W.get(pre + "lora_b")
    if A is not None:
        for o, brow in enumerate(Bm):
            for k, b in enumerate(brow):
                c = hp["sigma"] * b
                M[o] = [x + c * a for x, a in zip(M[o], A[k])]
    mag = W.get(pre + "dora_m")
    if mag is not None:
        M = [[mag[o] / math.sqrt(sum(x * x for x in row)) * x for x in row] for o, row in enumerate(M)]
    return M


def apply(M, x):
    return [sum(a * b for a, b in zip(row, x)) for row in M]


def rmsnorm(x, w, eps):
    s = math.sqrt(sum(v * v for v in x) / len(x) + eps)
    return [v / s * g for v, g in zip(x, w)]


def rope(v, pos, hp):
    d_h, half = hp["d_h"], hp["d_h"] // 2
    out = list(v)
    for h in range(len(v) // d_h):
        for i in range(half):
            th = pos * hp["base"] ** (-2.0 * i / d_h)
            c, sn = math.cos(th), math.sin(th)
            a, b = (h * d_h + i, h * d_h + i + half) if hp["neox"] else (h * d_h + 2 * i, h * d_h + 2 * i + 1)
            out[a], out[b] = v[a] * c - v[b] * sn, v[b] * c + v[a] * sn
    return out


def softmax(x):
    m = max(x)
    e = [math.exp(v - m) for v in x]
    t = sum(e)
    return [v / t for v in e]


def attend(q, keys, values, hp, h):
    """One query head against a list of (already rotated) key and value vectors of all KV heads."""
    d_h, rep = hp["d_h"], hp["n_h"] // hp["n_kv"]
    kh = h // rep
    qh = q[h * d_h:(h + 1) * d_h]
    p = softmax([sum(a * b for a, b in zip(qh, k[kh * d_h:(kh + 1) * d_h])) / math.sqrt(d_h) for k in keys])
    return [sum(pj * v[kh * d_h + i] for pj, v in zip(p, values)) for i in range(d_h)]


def forward(hp, W, tokens):
    """Logits at every position of the token list."""
    hs = [list(W["token_embd.weight"][t]) for t in tokens]
    for l in range(hp["L"]):
        s, r = stored_and_recursion(hp, l)
        P = {role: dense(hp, W, s, r, role) for role in ROLES}
        an = W.get("blk.%d.rec.%d.attn_norm.weight" % (s, r), W["blk.%d.attn_norm.weight" % s])
        fn = W.get("blk.%d.rec.%d.ffn_norm.weight" % (s, r), W["blk.%d.ffn_norm.weight" % s])
        xs = [rmsnorm(x, an, hp["eps"]) for x in hs]
        qs = [rope(apply(P["attn_q"], x), p, hp) for p, x in enumerate(xs)]
        ks = [rope(apply(P["attn_k"], x), p, hp) for p, x in enumerate(xs)]
        vs = [apply(P["attn_v"], x) for x in xs]
        prompt = W.get("blk.%d.rec.%d.adapt_prompt" % (s, r))
        if prompt is not None:      # the adapter's keys and values: no RoPE
            gate = W["blk.%d.rec.%d.adapt_gate" % (s, r)][0]
            pk = [apply(P["attn_k"], row) for row in prompt]
            pv = [apply(P["attn_v"], row) for row in prompt]
        enc = W.get("blk.%d.rec.%d.rec_enc" % (s, r))
        out = []
        for t in range(len(hs)):
            o = []
            for h in range(hp["n_h"]):
                o += attend(qs[t], ks[:t + 1], vs[:t + 1], hp, h)
            y = apply(P["attn_output"], o)
            if prompt is not None:
                oa = []
                for h in range(hp["n_h"]):
                    oa += [gate * v for v in attend(qs[t], pk, pv, hp, h)]
                y = [a + b for a, b in zip(y, apply(P["attn_output"], oa))]
            x = [a + b for a, b in zip(hs[t], y)]
            m = rmsnorm(x, fn, hp["eps"])
            g, u = apply(P["ffn_gate"], m), apply(P["ffn_up"], m)
            f = apply(P["ffn_down"], [a / (1.0 + math.exp(-a)) * b for a, b in zip(g, u)])
            x = [a + b for a, b in zip(x, f)]
            out.append([a * e for a, e in zip(x, enc)] if enc is not None else x)
        hs = out
    head = W.get("output.weight", W["token_embd.weight"])
    return [apply(head, rmsnorm(x, W["output_norm.weight"], hp["eps"])) for x in hs]


def logits(path, tokens):
    hp, W = load(path)
    return forward(hp, W, tokens)


if __name__ == "__main__":
    toks = [int(x) for x in sys.argv[2].split(",")]
    print(" ".join("%.6f" % v for v in logits(sys.argv[1], toks)[-1]))
