#!/usr/bin/env python3
"""make-fixtures: seeded random test models and their golden fixtures for the C tests.

    python3 tools/make-fixtures.py [--out tests/data] [--device cuda|cpu] [--only NAME,...]
                                   [--models-only] [--stories-src DIR]

For every model X it writes X.gguf (weights drawn with Python's `random`, seeded by the
model name and an attempt number, so the files are the same on every machine) and X.fix
(logits at every prompt position and the greedy continuation computed by tools/reference.py
in float64). A model is re-drawn with the next attempt number until
  * every greedy step has a top-1/top-2 logit margin above MARGIN,
  * the greedy continuation holds at least MIN_DISTINCT different tokens,
  * every router decision (prompt and greedy steps) is further than MARGIN from its
    threshold (expert: |z| for tau = 0.5; token: top-1/top-2 score), and router models have
    tokens at several depths,
  * decoding with the KV cache and recomputing the whole sequence agree (logits within
    1e-9, same tokens),
so that float32 arithmetic in the engine cannot flip a token or a routing decision.

stories260K: copies stories260K.bin, tok512.bin and stories260K.gguf into the output folder
(checking their sha256) and writes stories260K.fix from the `.bin` read directly (prompt =
BOS, 200 greedy tokens, no stop at EOS); it also runs the `.gguf` and prints the largest
logit difference between the two.

Fixture format (parsed by the C tests):
    mor-fixture 1
    model X.gguf
    prompt <n> <id> ...
    logits <n_pos> <n_vocab>
    <n_pos lines of n_vocab floats, %.9e>
    greedy <n> <id> ...
    depths <n> <d> ...      (router models only: recursions run by the forward step that
                             produced each greedy token)
    end
"""

import argparse
import hashlib
import os
import random
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import morgguf  # noqa: E402
from morgguf import F32, F16, BF16  # noqa: E402
from morconvert import layout  # noqa: E402

MARGIN = 1e-3
MIN_DISTINCT = 8
MAX_ATTEMPTS = 60
N_PROMPT = 16
N_GREEDY = 32
N_STORIES = 200

# Scales of the random weights.
EMB_STD = 0.2
OUT_STD = 0.08
# Sharp attention (large q/k) and a strong per-token FFN path keep greedy decoding of these
# random models from settling on one repeated token.
PROJ_STD = {"attn_q": 0.25, "attn_k": 0.25, "attn_v": 0.04, "attn_output": 0.04,
            "ffn_gate": 0.12, "ffn_up": 0.12, "ffn_down": 0.12}
NORM_STD = 0.1
LORA_STD = 0.08
LORA_SCALE = 2.0
# The other relaxations: DoRA magnitudes within about 15 % of the row norms they start from,
# recursion encodings around the ones they start from, adaption prompts drawn as the MoR code
# initializes them (standard normal) with gates of either sign (trained gates move away from 0).
DORA_STD = 0.15
ENC_STD = 0.25
GATE_STD = 0.6
# The relaxation fixtures are narrower (d 32, FFN 64) and stored in F16, to stay small.
SMALL = dict(d=32, d_ff=64, ttype=F16)

D, N_H, N_KV, D_FF, V, CTX = 48, 4, 2, 96, 128, 256
D_H = D // N_H

STORIES = {
    "stories260K.bin": "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696",
    "tok512.bin": "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312",
    "stories260K.gguf": "270cba1bd5109f42d03350f60406024560464db173c0e387d91f0426d3bd256d",
}

# name -> spec. Unlisted keys take the defaults of Spec below.
SPECS = [
    ("vanilla", dict(arch="llama", L=4, tied=False)),
    ("vanilla-tied", dict(arch="llama", L=4, tied=True)),
    ("cycle", dict(sharing="cycle", L=6, explicit=False)),
    ("sequence", dict(sharing="sequence", L=6)),
    ("middle_cycle", dict(sharing="middle_cycle", L=8)),
    ("middle_sequence", dict(sharing="middle_sequence", L=8)),
    ("cycle-lora", dict(sharing="cycle", L=6, lora=4)),
    ("sequence-lora", dict(sharing="sequence", L=6, lora=4)),
    ("middle_cycle-lora", dict(sharing="middle_cycle", L=8, lora=4)),
    ("middle_sequence-lora", dict(sharing="middle_sequence", L=8, lora=4)),
    ("middle_cycle-untied", dict(sharing="middle_cycle", L=8, untied=True)),
    ("middle_cycle-norm", dict(sharing="middle_cycle", L=8, rope="norm")),
    ("middle_cycle-f16", dict(sharing="middle_cycle", L=8, ttype=F16)),
    ("middle_cycle-bf16", dict(sharing="middle_cycle", L=8, ttype=BF16)),
    ("middle_cycle-kvshare", dict(sharing="middle_cycle", L=8, kv_sharing=True)),
    ("expert", dict(sharing="middle_cycle", L=8, router="expert")),
    ("token", dict(sharing="middle_cycle", L=8, router="token")),
    # the relaxations of the MoR code besides LoRA
    ("middle_cycle-recenc", dict(sharing="middle_cycle", L=8, rec_enc=True, **SMALL)),
    ("token-recenc", dict(sharing="middle_cycle", L=8, router="token", rec_enc=True, ttype=F16)),
    ("cycle-adapt", dict(sharing="cycle", L=6, adapt=4, **SMALL)),
    ("middle_cycle-dora", dict(sharing="middle_cycle", L=8, lora=4, dora=True, **SMALL)),
    # the other GGUF architectures (docs/FORMAT.md §4), two layers each
    ("llama-rope-freqs", dict(arch="llama", L=2, tied=True, rope_freqs=True)),
    ("qwen2", dict(arch="qwen2", L=2, tied=True)),
    ("phi3", dict(arch="phi3", L=2, tied=False)),
    ("gemma2", dict(arch="gemma2", L=2, tied=True)),
]

# Llama 3.x RoPE frequency factors of llama-rope-freqs.gguf: the rule the converters apply
# (factor 8, low / high frequency factors 1 and 4) with an original context of 64 positions, so
# that the 6 factors of a head of 12 take the three kinds of value (1, smoothed, 8).
LLAMA3_ROPE = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=64)
# Per-architecture settings of the fixtures: sliding windows short enough to matter over the
# 48 positions, soft-caps low enough to bend the scores and logits, Gemma 2's head size 16
# (not d / n_h = 12).
PHI3_WINDOW = 10
# Its embedding is drawn smaller: times sqrt(d), at EMB_STD it would outweigh the normalized
# block outputs, and the tied output would only repeat the input token.
GEMMA2 = dict(window=6, head=16, attn_cap=5.0, final_cap=3.0, emb_std=0.06)
BIAS_STD = {"attn_q": 0.3, "attn_k": 0.3, "attn_v": 0.05}

DESCRIPTIONS = {
    "vanilla": "arch llama, L=4, separate output matrix",
    "vanilla-tied": "arch llama, L=4, output tied to token_embd",
    "cycle": "arch mor, cycle, L=6, N_r=3 (B=2); optional keys left out (defaults: rope neox, "
             "freq_base 10000, eps 1e-5, key_length d/n_h)",
    "sequence": "arch mor, sequence, L=6, N_r=3 (B=2)",
    "middle_cycle": "arch mor, middle_cycle, L=8, N_r=3 (B=2, 4 stored layers)",
    "middle_sequence": "arch mor, middle_sequence, L=8, N_r=3 (B=2, 4 stored layers)",
    "cycle-lora": "cycle + LoRA rank 4 on all seven projections of every (stored layer, "
                  "recursion), sigma 2.0",
    "sequence-lora": "sequence + LoRA rank 4 on all seven projections of every (stored layer, "
                     "recursion), sigma 2.0",
    "middle_cycle-lora": "middle_cycle + LoRA rank 4 on all seven projections of the middle "
                         "layers (stored 1..B) at every recursion, sigma 2.0",
    "middle_sequence-lora": "middle_sequence + LoRA rank 4 on all seven projections of the "
                            "middle layers at every recursion, sigma 2.0",
    "middle_cycle-untied": "middle_cycle + per-recursion overrides: attn_q/k/v/output for "
                           "recursions 1 and 2, attn_norm and ffn_norm for recursions 0, 1 "
                           "and 2, of stored layers 1..B",
    "middle_cycle-norm": "middle_cycle with mor.rope.type = norm (adjacent pairs)",
    "middle_cycle-f16": "middle_cycle with token_embd and all projections stored F16 (norms F32)",
    "middle_cycle-bf16": "middle_cycle with token_embd and all projections stored BF16 (norms F32)",
    "middle_cycle-kvshare": "middle_cycle with mor.kv_sharing = true",
    "expert": "middle_cycle + expert-choice linear sigmoid router, alpha 0.1, threshold 0.5 "
              "(depths 0..3 per token)",
    "token": "middle_cycle + token-choice linear softmax router with router.bias, alpha 1.0 "
             "(depths 1..3 per token)",
    "middle_cycle-recenc": "middle_cycle, d 32, FFN 64, F16 matrices, recursion encodings on the "
                           "last layer of each recursion block (stored layer 2 at recursions 0..2)",
    "token-recenc": "token with F16 matrices and recursion encodings on the last layer of each "
                    "recursion block (d 48: the narrower models route every token alike)",
    "cycle-adapt": "cycle, L=6, N_r=3, d 32, FFN 64, F16 matrices, an adaption prompt of 4 slots "
                   "and a gate on every unrolled layer",
    "middle_cycle-dora": "middle_cycle, d 32, FFN 64, F16 matrices, LoRA rank 4 with DoRA "
                         "magnitudes on all seven projections of the middle layers at every "
                         "recursion, sigma 2.0",
    "llama-rope-freqs": "arch llama, L=2, tied, rope_freqs.weight (Llama 3 rule, factor 8, "
                        "original context 64)",
    "qwen2": "arch qwen2, L=2, tied, Q/K/V biases, rotate-half RoPE",
    "phi3": "arch phi3, L=2, separate output, fused attn_qkv and gate/up ffn_up, sliding window "
            "10 on every layer",
    "gemma2": "arch gemma2, L=2, tied, head size 16, GeGLU, post-norms, embedding x sqrt(d), "
              "attention soft-cap 5, final soft-cap 3, sliding window 6 on layer 0",
}


class Spec(object):
    def __init__(self, name, arch="mor", L=8, tied=True, sharing="cycle", n_rec=3, lora=0,
                 untied=False, rope="neox", ttype=F32, kv_sharing=False, router=None,
                 explicit=True, rope_freqs=False, d=D, d_ff=D_FF, dora=False, rec_enc=False,
                 adapt=0):
        self.__dict__.update(locals())
        del self.__dict__["self"]

    def s_r(self, l):
        """Stored layer and recursion of unrolled layer l (docs/FORMAT.md §3.2)."""
        return layout.s_r(l, self.L, self.sharing, self.n_rec)

    @property
    def middle(self):
        return self.sharing.startswith("middle")

    @property
    def B(self):
        return ((self.L - 2) if self.middle else self.L) // self.n_rec

    @property
    def n_store(self):
        if self.arch == "llama":
            return self.L
        return self.B + 2 if self.middle else self.B


def enc_pairs(spec):
    """(stored layer, recursion) of the layers the MoR code wraps with a recursion encoding:
    under cycle and middle_cycle the last layer of each recursion block ((idx + 1) mod B == 0,
    idx counting the layers of the middle part), under sequence and middle_sequence every
    layer of the middle part; never the unique first and last layers."""
    mid = 1 if spec.middle else 0
    out = []
    for idx in range(spec.L - 2 * mid):
        if spec.sharing in ("sequence", "middle_sequence") or (idx + 1) % spec.B == 0:
            out.append(spec.s_r(idx + mid))
    return out


def llama3_rope_factors(d_h, base):
    """The factors a converter writes to rope_freqs.weight for a Llama 3.x rope_scaling."""
    import math
    p = LLAMA3_ROPE
    lo_wl = p["original_max_position_embeddings"] / p["low_freq_factor"]
    hi_wl = p["original_max_position_embeddings"] / p["high_freq_factor"]
    out = []
    for i in range(0, d_h, 2):
        wavelen = 2 * math.pi * base ** (i / d_h)
        if wavelen < hi_wl:
            out.append(1.0)
        elif wavelen > lo_wl:
            out.append(p["factor"])
        else:
            smooth = (p["original_max_position_embeddings"] / wavelen - p["low_freq_factor"]) / (
                p["high_freq_factor"] - p["low_freq_factor"])
            out.append(1.0 / ((1 - smooth) / p["factor"] + smooth))
    return out


def build_arch_model(spec, attempt):
    """A GGUFWriter for the llama-rope-freqs, qwen2, phi3 and gemma2 specs: the keys and tensor
    names their converters write, weights drawn like build_model's."""
    rng = random.Random("%s:%d" % (spec.name, attempt))

    def gauss(n, std):
        return [rng.gauss(0.0, std) for _ in range(n)]

    def norm(n):
        return [1.0 + rng.gauss(0.0, NORM_STD) for _ in range(n)]

    arch = spec.arch
    d_h = GEMMA2["head"] if arch == "gemma2" else D_H
    dq, dkv = N_H * d_h, N_KV * d_h
    w = morgguf.GGUFWriter()
    w.add_string("general.architecture", arch)
    w.add_string("general.name", "mor test model %s" % spec.name)
    p = arch + "."
    w.add_uint32(p + "context_length", CTX)
    w.add_uint32(p + "embedding_length", D)
    w.add_uint32(p + "feed_forward_length", D_FF)
    w.add_uint32(p + "block_count", spec.L)
    w.add_uint32(p + "attention.head_count", N_H)
    w.add_uint32(p + "attention.head_count_kv", N_KV)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-5 if arch != "gemma2" else 1e-6)
    w.add_float32(p + "rope.freq_base", 10000.0)
    w.add_uint32(p + "rope.dimension_count", d_h)
    if arch == "phi3":
        w.add_uint32(p + "attention.sliding_window", PHI3_WINDOW)
    if arch == "gemma2":
        w.add_uint32(p + "attention.key_length", d_h)
        w.add_uint32(p + "attention.value_length", d_h)
        w.add_float32(p + "attn_logit_softcapping", GEMMA2["attn_cap"])
        w.add_float32(p + "final_logit_softcapping", GEMMA2["final_cap"])
        w.add_uint32(p + "attention.sliding_window", GEMMA2["window"])
    w.add_tensor("token_embd.weight", gauss(V * D, GEMMA2["emb_std"] if arch == "gemma2" else EMB_STD),
                 shape=(V, D))
    if arch == "llama":
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(d_h, 10000.0), shape=(d_h // 2,))
    w.add_tensor("output_norm.weight", norm(D), shape=(D,))
    if not spec.tied:
        w.add_tensor("output.weight", gauss(V * D, OUT_STD), shape=(V, D))
    shapes = {"attn_q": (dq, D), "attn_k": (dkv, D), "attn_v": (dkv, D), "attn_output": (D, dq),
              "ffn_gate": (D_FF, D), "ffn_up": (D_FF, D), "ffn_down": (D, D_FF)}
    for i in range(spec.L):
        b = "blk.%d." % i
        w.add_tensor(b + "attn_norm.weight", norm(D), shape=(D,))
        if arch == "phi3":   # Q rows, then K, then V; gate rows, then up
            qkv = []
            for role in ("attn_q", "attn_k", "attn_v"):
                o, n = shapes[role]
                qkv += gauss(o * n, PROJ_STD[role])
            w.add_tensor(b + "attn_qkv.weight", qkv, shape=(dq + 2 * dkv, D))
        else:
            for role in ("attn_q", "attn_k", "attn_v"):
                o, n = shapes[role]
                w.add_tensor(b + role + ".weight", gauss(o * n, PROJ_STD[role]), shape=(o, n))
                if arch == "qwen2":
                    w.add_tensor(b + role + ".bias", gauss(o, BIAS_STD[role]), shape=(o,))
        o, n = shapes["attn_output"]
        w.add_tensor(b + "attn_output.weight", gauss(o * n, PROJ_STD["attn_output"]), shape=(o, n))
        if arch == "gemma2":
            w.add_tensor(b + "post_attention_norm.weight", norm(D), shape=(D,))
        w.add_tensor(b + "ffn_norm.weight", norm(D), shape=(D,))
        if arch == "phi3":
            gu = gauss(D_FF * D, PROJ_STD["ffn_gate"]) + gauss(D_FF * D, PROJ_STD["ffn_up"])
            w.add_tensor(b + "ffn_up.weight", gu, shape=(2 * D_FF, D))
        else:
            for role in ("ffn_gate", "ffn_up"):
                o, n = shapes[role]
                w.add_tensor(b + role + ".weight", gauss(o * n, PROJ_STD[role]), shape=(o, n))
        o, n = shapes["ffn_down"]
        w.add_tensor(b + "ffn_down.weight", gauss(o * n, PROJ_STD["ffn_down"]), shape=(o, n))
        if arch == "gemma2":
            w.add_tensor(b + "post_ffw_norm.weight", norm(D), shape=(D,))
    return w


def prompt_ids():
    rng = random.Random("mor-fixture-prompt")
    return [rng.randrange(V) for _ in range(N_PROMPT)]


# ---------------------------------------------------------------------------------------------
# Model generation (standard library only)
# ---------------------------------------------------------------------------------------------

def build_model(spec, attempt, router_std=None):
    """A GGUFWriter for spec, drawn from random.Random('<name>:<attempt>')."""
    rng = random.Random("%s:%d" % (spec.name, attempt))

    def gauss(n, std):
        return [rng.gauss(0.0, std) for _ in range(n)]

    def norm(n):
        return [1.0 + rng.gauss(0.0, NORM_STD) for _ in range(n)]

    w = morgguf.GGUFWriter()
    w.add_string("general.architecture", spec.arch)
    w.add_string("general.name", "mor test model %s" % spec.name)
    D, D_FF = spec.d, spec.d_ff     # the width of this spec (the relaxation fixtures are narrower)
    D_H = D // N_H
    dq, dkv = N_H * D_H, N_KV * D_H
    if spec.arch == "llama":
        p = "llama."
        w.add_uint32(p + "context_length", CTX)
        w.add_uint32(p + "embedding_length", D)
        w.add_uint32(p + "feed_forward_length", D_FF)
        w.add_uint32(p + "block_count", spec.L)
        w.add_uint32(p + "attention.head_count", N_H)
        w.add_uint32(p + "attention.head_count_kv", N_KV)
        w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-5)
        w.add_float32(p + "rope.freq_base", 10000.0)
        w.add_uint32(p + "rope.dimension_count", D_H)
        if not spec.tied:
            w.add_uint32(p + "vocab_size", V)
    else:
        p = "mor."
        w.add_uint32(p + "format_version", 1)
        w.add_uint32(p + "context_length", CTX)
        w.add_uint32(p + "embedding_length", D)
        w.add_uint32(p + "feed_forward_length", D_FF)
        w.add_uint32(p + "block_count", spec.L)
        w.add_uint32(p + "attention.head_count", N_H)
        w.add_uint32(p + "attention.head_count_kv", N_KV)
        if spec.explicit:
            w.add_uint32(p + "attention.key_length", D_H)
            w.add_float32(p + "attention.layer_norm_rms_epsilon", 1e-5)
            w.add_float32(p + "rope.freq_base", 10000.0)
            w.add_string(p + "rope.type", spec.rope)
        w.add_uint32(p + "recursion.count", spec.n_rec)
        w.add_string(p + "recursion.sharing", spec.sharing)
        if spec.kv_sharing:
            w.add_bool(p + "kv_sharing", True)
        if spec.lora:
            w.add_float32(p + "lora.scale", LORA_SCALE)
        if spec.router == "expert":
            w.add_string(p + "router.type", "expert")
            w.add_string(p + "router.arch", "linear")
            w.add_string(p + "router.func", "sigmoid")
            w.add_float32(p + "router.alpha", 0.1)
            w.add_float32(p + "router.temp", 1.0)
            w.add_string(p + "router.gating", "weighted")
        elif spec.router == "token":
            w.add_string(p + "router.type", "token")
            w.add_string(p + "router.arch", "linear")
            w.add_string(p + "router.func", "softmax")
            w.add_float32(p + "router.alpha", 1.0)

    mt = spec.ttype     # type of the matrices; 1-D norms stay F32
    w.add_tensor("token_embd.weight", gauss(V * D, EMB_STD), shape=(V, D), ttype=mt)
    w.add_tensor("output_norm.weight", norm(D), shape=(D,))
    if not spec.tied:
        w.add_tensor("output.weight", gauss(V * D, OUT_STD), shape=(V, D), ttype=mt)
    shapes = {"attn_q": (dq, D), "attn_k": (dkv, D), "attn_v": (dkv, D), "attn_output": (D, dq),
              "ffn_gate": (D_FF, D), "ffn_up": (D_FF, D), "ffn_down": (D, D_FF)}
    vals = {}   # (stored layer, role) -> the drawn values (DoRA magnitudes are drawn around their norms)
    for i in range(spec.n_store):
        b = "blk.%d." % i
        w.add_tensor(b + "attn_norm.weight", norm(D), shape=(D,))
        for role in ("attn_q", "attn_k", "attn_v", "attn_output"):
            o, n = shapes[role]
            vals[(i, role)] = gauss(o * n, PROJ_STD[role])
            w.add_tensor(b + role + ".weight", vals[(i, role)], shape=(o, n), ttype=mt)
        w.add_tensor(b + "ffn_norm.weight", norm(D), shape=(D,))
        for role in ("ffn_gate", "ffn_up", "ffn_down"):
            o, n = shapes[role]
            vals[(i, role)] = gauss(o * n, PROJ_STD[role])
            w.add_tensor(b + role + ".weight", vals[(i, role)], shape=(o, n), ttype=mt)
    shared = list(range(1, spec.B + 1)) if spec.middle else list(range(spec.n_store))
    if spec.arch == "mor" and spec.untied:
        for i in shared:
            for r in range(spec.n_rec):
                b = "blk.%d.rec.%d." % (i, r)
                w.add_tensor(b + "attn_norm.weight", norm(D), shape=(D,))
                w.add_tensor(b + "ffn_norm.weight", norm(D), shape=(D,))
                if r == 0:
                    continue
                for role in ("attn_q", "attn_k", "attn_v", "attn_output"):
                    o, n = shapes[role]
                    w.add_tensor(b + role + ".weight", gauss(o * n, PROJ_STD[role]), shape=(o, n),
                                 ttype=mt)
    if spec.arch == "mor" and spec.lora:
        rk = spec.lora
        for i in shared:
            for r in range(spec.n_rec):
                for role in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                             "ffn_down"):
                    o, n = shapes[role]
                    b = "blk.%d.rec.%d.%s." % (i, r, role)
                    la, lb = gauss(rk * n, LORA_STD), gauss(o * rk, LORA_STD)
                    w.add_tensor(b + "lora_a", la, shape=(rk, n), ttype=mt)
                    w.add_tensor(b + "lora_b", lb, shape=(o, rk), ttype=mt)
                    if spec.dora:   # m around |W + sigma B A|_row (the value DoRA starts from)
                        W = vals[(i, role)]
                        mags = []
                        for row in range(o):
                            ss = 0.0
                            for c in range(n):
                                v = W[row * n + c] + LORA_SCALE * sum(lb[row * rk + k] * la[k * n + c]
                                                                      for k in range(rk))
                                ss += v * v
                            mags.append(ss ** 0.5 * (1.0 + rng.gauss(0.0, DORA_STD)))
                        w.add_tensor(b + "dora_m", mags, shape=(o,))
    if spec.arch == "mor" and spec.rec_enc:
        for i, r in enc_pairs(spec):
            w.add_tensor("blk.%d.rec.%d.rec_enc" % (i, r), [1.0 + rng.gauss(0.0, ENC_STD) for _ in range(D)],
                         shape=(D,))
    if spec.arch == "mor" and spec.adapt:
        for i, r in sorted(set(spec.s_r(l) for l in range(spec.L))):   # every unrolled layer
            w.add_tensor("blk.%d.rec.%d.adapt_prompt" % (i, r), gauss(spec.adapt * D, 1.0),
                         shape=(spec.adapt, D))
            w.add_tensor("blk.%d.rec.%d.adapt_gate" % (i, r), gauss(1, GATE_STD), shape=(1,))
    if spec.router == "expert":
        for r in range(spec.n_rec):
            w.add_tensor("router.%d.weight" % r, gauss(D, router_std), shape=(1, D))
    elif spec.router == "token":
        w.add_tensor("router.weight", gauss(spec.n_rec * D, router_std), shape=(spec.n_rec, D))
        w.add_tensor("router.bias", gauss(spec.n_rec, 0.15), shape=(spec.n_rec,))
    return w


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

def write_fixture(path, model_file, prompt, logits, greedy_ids, depths=None):
    lines = ["mor-fixture 1", "model %s" % model_file,
             "prompt %d %s" % (len(prompt), " ".join(str(t) for t in prompt)),
             "logits %d %d" % (len(logits), len(logits[0]))]
    for row in logits:
        lines.append(" ".join("%.9e" % x for x in row))
    lines.append("greedy %d %s" % (len(greedy_ids), " ".join(str(t) for t in greedy_ids)))
    if depths is not None:
        lines.append("depths %d %s" % (len(depths), " ".join(str(d) for d in depths)))
    lines.append("end")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def read_fixture(path):
    """Parse a fixture back (used to check what was written)."""
    with open(path) as f:
        lines = f.read().split("\n")
    assert lines[0] == "mor-fixture 1", path
    fx = {"model": lines[1].split()[1]}
    t = lines[2].split()
    assert t[0] == "prompt" and int(t[1]) == len(t) - 2
    fx["prompt"] = [int(x) for x in t[2:]]
    t = lines[3].split()
    n_pos, n_voc = int(t[1]), int(t[2])
    fx["logits"] = [[float(x) for x in lines[4 + i].split()] for i in range(n_pos)]
    assert all(len(r) == n_voc for r in fx["logits"])
    i = 4 + n_pos
    t = lines[i].split()
    assert t[0] == "greedy" and int(t[1]) == len(t) - 2
    fx["greedy"] = [int(x) for x in t[2:]]
    i += 1
    if lines[i].startswith("depths"):
        t = lines[i].split()
        assert int(t[1]) == len(t) - 2
        fx["depths"] = [int(x) for x in t[2:]]
        i += 1
    assert lines[i] == "end" and lines[i + 1:] == [""], path
    return fx


def evaluate(ref, torch, model, prompt, n_steps):
    """Run greedy decoding with the KV cache, recompute the whole sequence, and collect the
    margins. Returns a dict or raises AssertionError when the two disagree."""
    res0, ids, depths, margins, steps = ref.greedy(model, prompt, n_steps)
    full = ref.forward(model, prompt + ids[:-1])
    inc_logits = torch.cat([res0.logits] + [s.logits for s in steps], dim=0)
    diff = float((full.logits - inc_logits).abs().max())
    inc_depths = torch.cat([res0.depths] + [s.depths for s in steps])
    if diff > 1e-9 or not torch.equal(full.depths, inc_depths):
        raise AssertionError("KV-cache decoding and recomputation differ: %.3g" % diff)
    if [int(x) for x in torch.argmax(full.logits[len(prompt) - 1:], dim=-1)] != ids:
        raise AssertionError("recomputed greedy tokens differ")
    # router margins over every decision made (the full recomputation covers all tokens)
    rmargin = float("inf")
    c = model.cfg
    if c.router_type == "expert":
        for info in full.router:
            zc = info["z_decision"][info["candidates"]]
            if zc.numel():
                rmargin = min(rmargin, float(zc.abs().min()))
    elif c.router_type == "token":
        sc = full.router[0]["score"]
        top = torch.topk(sc, 2, dim=-1).values
        rmargin = float((top[:, 0] - top[:, 1]).min())
    return {"res0": res0, "ids": ids, "depths": depths, "margins": margins, "diff": diff,
            "all_depths": [int(x) for x in full.depths], "router_margin": rmargin}


def depths_ok(spec, all_depths, greedy_depths):
    """Router models must exercise every depth: each possible depth at least twice over all
    positions (expert: 0..N_r, with most tokens running recursion 0; token: 1..N_r), and
    more than one depth among the greedy steps."""
    lo = 0 if spec.router == "expert" else 1
    for d in range(lo, spec.n_rec + 1):
        if all_depths.count(d) < 2:
            return False
    if spec.router == "expert" and all_depths.count(0) > len(all_depths) // 4:
        return False
    return len(set(greedy_depths)) >= 2


def make_random_model(ref, torch, spec, out_dir, prompt, device, models_only):
    gguf = os.path.join(out_dir, spec.name + ".gguf")
    router_std = {"expert": 0.35, "token": 0.1}.get(spec.router)
    for attempt in range(MAX_ATTEMPTS):
        if spec.arch == "mor" or (spec.arch == "llama" and not spec.rope_freqs):
            w = build_model(spec, attempt, router_std)
        else:
            w = build_arch_model(spec, attempt)
        w.write(gguf)
        if models_only:
            return attempt, None
        model = ref.Model.from_gguf(gguf, device)
        try:
            ev = evaluate(ref, torch, model, prompt, N_GREEDY)
        except AssertionError as e:
            raise SystemExit("%s: %s" % (spec.name, e))
        why = []
        if min(ev["margins"]) <= MARGIN:
            why.append("greedy margin %.3g" % min(ev["margins"]))
        if len(set(ev["ids"])) < MIN_DISTINCT:
            why.append("%d distinct greedy tokens" % len(set(ev["ids"])))
        if spec.router:
            if ev["router_margin"] <= MARGIN:
                why.append("router margin %.3g" % ev["router_margin"])
            if not depths_ok(spec, ev["all_depths"], ev["depths"]):
                hist = {d: ev["all_depths"].count(d) for d in sorted(set(ev["all_depths"]))}
                why.append("depths %s" % hist)
        if why:
            print("  %s attempt %d rejected: %s" % (spec.name, attempt, ", ".join(why)))
            continue
        fix = os.path.join(out_dir, spec.name + ".fix")
        logits = ev["res0"].logits.cpu().tolist()
        write_fixture(fix, spec.name + ".gguf", prompt, logits, ev["ids"],
                      ev["depths"] if spec.router else None)
        back = read_fixture(fix)
        assert back["greedy"] == ev["ids"] and back["prompt"] == prompt
        maxlog = max(abs(x) for row in logits for x in row)
        info = "attempt %d, max|logit| %.3f, min greedy margin %.4f, %d distinct" % (
            attempt, maxlog, min(ev["margins"]), len(set(ev["ids"])))
        if spec.router:
            hist = {d: ev["all_depths"].count(d) for d in sorted(set(ev["all_depths"]))}
            info += ", router margin %.4f, depths over all %d positions %s" % (
                ev["router_margin"], len(ev["all_depths"]), hist)
        print("%-22s %s, kv-cache vs recompute %.1e" % (spec.name, info, ev["diff"]))
        try:
            sens = sensitivity(ref, torch, model, prompt)
        except Exception as e:  # a report only: the fixture is written
            sens = "failed (%s: %s)" % (e.__class__.__name__, str(e)[:200])
        print("%-22s sensitivity (max|diff|/max|logit|): %s" % ("", sens))
        hf_name = HF_CLASSES.get(spec.arch, ("", "LlamaForCausalLM, unrolled"))[1]
        print("%-22s transformers %s: max|diff|/max|logit| %s"
              % ("", hf_name, hf_check(ref, torch, model, prompt)))
        print("%-22s tools/plainref.py: max|diff|/max|logit| %s" % ("", plain_check(gguf, prompt, logits)))
        if spec.dora or spec.adapt:
            print("%-22s peft %s: max|diff|/max|logit| %s"
                  % ("", "DoRA" if spec.dora else "adaption prompt", peft_check(ref, torch, model, prompt)))
        return attempt, ev
    raise SystemExit("%s: no acceptable model in %d attempts" % (spec.name, MAX_ATTEMPTS))


def plain_check(gguf, prompt, logits):
    """The prompt logits of tools/plainref.py (standard-library Python, merged weights, no
    cache) against the reference's, relative to max|logit|; n/a for the models it does not
    model (routers, KV sharing, other architectures)."""
    import plainref
    try:
        got = plainref.logits(gguf, prompt)
    except plainref.Unsupported:
        return "n/a"
    scale = max(abs(x) for row in logits for x in row)
    return "%.2g" % (max(abs(a - b) for ra, rb in zip(got, logits) for a, b in zip(ra, rb)) / scale)


def sensitivity(ref, torch, model, prompt):
    """How far the prompt logits move when one feature is computed the wrong way, relative
    to max|logit| (the C tests compare within 1e-4 of it): shows each fixture can tell a
    correct implementation from a plausible mistake."""
    import copy
    base = ref.forward(model, prompt).logits
    scale = float(base.abs().max())
    c = model.cfg
    cases = []

    def variant(label, cfg_changes=None, drop=lambda name: False):
        m = copy.copy(model)
        m.cfg = copy.copy(c)
        for k, v in (cfg_changes or {}).items():
            setattr(m.cfg, k, v)
        m.W = {k: v for k, v in model.W.items() if not drop(k)}
        d = float((ref.forward(m, prompt).logits - base).abs().max()) / scale
        cases.append("%s %.2g" % (label, d))

    def variant_w(label, fn):
        m = copy.copy(model)
        m.W = {k: fn(k, v) for k, v in model.W.items()}
        d = float((ref.forward(m, prompt).logits - base).abs().max()) / scale
        cases.append("%s %.2g" % (label, d))

    variant("other-rope", {"rope_type": "neox" if c.rope_type == "norm" else "norm"})
    if "rope_freqs.weight" in model.W:
        variant("no-rope-freqs", drop=lambda k: k == "rope_freqs.weight")
    if any(k.endswith(".bias") for k in model.W):
        variant("no-qkv-bias", drop=lambda k: k.endswith(".bias"))
    if c.swa:
        variant("no-sliding-window", {"swa": 0})
    if c.arch == "gemma2":
        variant("silu", {"act": "silu"})
        variant("no-attn-softcap", {"attn_softcap": None})
        variant("no-final-softcap", {"final_softcap": None})
        variant("no-embd-scale", {"embd_scale": None})
        variant("no-post-norms", drop=lambda k: "post_" in k)
        # the Hugging Face (1 + w) applied again to weights the converter already shifted
        variant_w("norms-plus-1", lambda k, t: t + 1 if k.endswith("norm.weight") else t)
    if c.fused:  # up rows first: the other order of the fused gate/up matrix
        variant_w("gate-up-swapped", lambda k, t: torch.cat([t[c.d_ff:], t[:c.d_ff]])
                  if k.endswith("ffn_up.weight") else t)
    if c.arch == "mor":
        other = {"cycle": "sequence", "sequence": "cycle", "middle_cycle": "middle_sequence",
                 "middle_sequence": "middle_cycle"}[c.sharing]
        if c.router_type == "none":
            variant("other-sharing", {"sharing": other})
        variant("kv-sharing-flipped", {"kv_sharing": not c.kv_sharing})
        if any(k.endswith(".lora_a") for k in model.W):
            variant("no-lora", drop=lambda k: ".lora_" in k)
        if any(".rec." in k and k.endswith(".weight") for k in model.W):
            variant("no-rec0-norm-overrides", drop=lambda k: ".rec.0." in k and "norm" in k)
            variant("no-qkvo-overrides", drop=lambda k: ".rec." in k and "attn_" in k
                    and "norm" not in k)
        if c.router_type == "expert":
            variant("all-tokens-full-depth", {"router_type": "none"})
            variant("gating-additive", {"router_gating": "additive"})
        if c.router_type == "token":
            variant("no-router-bias", drop=lambda k: k == "router.bias")
        if any(k.endswith(".dora_m") for k in model.W):
            variant("no-dora", drop=lambda k: k.endswith(".dora_m"))
            variant_w("dora-other-norm", lambda k, t: _column_norm_scale(model, k, t) if k.endswith(".dora_m") else t)
        if any(k.endswith(".rec_enc") for k in model.W):
            variant("no-rec-enc", drop=lambda k: k.endswith(".rec_enc"))
        if any(k.endswith(".adapt_prompt") for k in model.W):
            variant("no-adapt", drop=lambda k: ".adapt_" in k)
            variant_w("adapt-gate-tanh", lambda k, t: torch.tanh(t) if k.endswith(".adapt_gate") else t)
    return "; ".join(cases)


def _column_norm_scale(model, k, m):
    """A DoRA magnitude that, applied with the row norm, gives the scale of the norm taken over
    the other dimension (the outputs) where the shapes allow: m * |row| / |column|."""
    import torch
    c = model.cfg
    base = k[:-len("dora_m")]
    s_, r_ = int(k.split(".")[1]), int(k.split(".")[3])
    role = k.split(".")[4]
    w = model.W.get("blk.%d.rec.%d.%s.weight" % (s_, r_, role), model.W["blk.%d.%s.weight" % (s_, role)])
    full = w + c.lora_scale * (model.W[base + "lora_b"] @ model.W[base + "lora_a"])
    rows, cols = torch.linalg.norm(full, dim=1), torch.linalg.norm(full, dim=0)
    if rows.numel() != cols.numel():
        return m * rows / rows.mean()   # not square: scale rows by their spread instead
    return m * rows / cols


def hf_check(ref, torch, model, prompt):
    """Cross-check against Hugging Face transformers' LlamaForCausalLM where it is installed:
    the model is unrolled into L plain Llama layers (per-recursion overrides chosen and LoRA
    merged as W + sigma*B*A; for `norm` RoPE the rows of W_q and W_k are permuted into the
    rotate_half order). Router and KV-sharing models cannot be unrolled. Returns max|diff| /
    max|logit| of the prompt logits, or a string saying why no check ran. transformers runs
    its norms, RoPE tables and softmax in float32, so expect about 1e-6."""
    c = model.cfg
    if c.arch in HF_CLASSES:
        return hf_check_arch(ref, torch, model, prompt)
    if c.router_type != "none" or c.kv_sharing:
        return "n/a"
    try:
        import transformers
    except Exception as e:  # pragma: no cover - depends on the machine
        return "skipped (%s)" % e.__class__.__name__
    kw = dict(vocab_size=int(model.W["token_embd.weight"].shape[0]), hidden_size=c.d,
              intermediate_size=c.d_ff, num_hidden_layers=c.L, num_attention_heads=c.n_h,
              num_key_value_heads=c.n_kv, head_dim=c.d_h, max_position_embeddings=c.ctx,
              rms_norm_eps=c.eps, tie_word_embeddings=False, attention_bias=False,
              mlp_bias=False, hidden_act="silu")
    try:
        try:
            hc = transformers.LlamaConfig(rope_theta=c.rope_base, attn_implementation="eager", **kw)
        except TypeError:
            hc = transformers.LlamaConfig(**kw)
        rp = getattr(hc, "rope_parameters", None)
        if isinstance(rp, dict):
            rp["rope_theta"] = c.rope_base
        else:
            hc.rope_theta = c.rope_base
        if "rope_freqs.weight" in model.W:  # the Llama 3 rule the factors were made with
            l3 = dict(LLAMA3_ROPE, rope_type="llama3")
            if isinstance(rp, dict):
                rp.update(l3)
            else:
                hc.rope_scaling = l3
        hf = transformers.LlamaForCausalLM(hc).to(device=model.device, dtype=torch.float64).eval()

        def perm(w, n_heads):
            if c.rope_type == "neox":
                return w
            w = w.reshape(n_heads, c.d_h // 2, 2, -1)
            return w.transpose(1, 2).reshape(n_heads * c.d_h, -1)

        sd = {"model.embed_tokens.weight": model.W["token_embd.weight"],
              "model.norm.weight": model.W["output_norm.weight"],
              "lm_head.weight": model.output_matrix()}
        names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                 "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
                 "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
        for l in range(c.L):
            for role, (w, a, b, m) in model.layer_params(l).items():
                if a is not None:
                    w = w + c.lora_scale * (b @ a)
                if m is not None:   # DoRA merged as PEFT merges it: m * (W + dW) / |W + dW|_row
                    w = m[:, None] * w / torch.linalg.norm(w, dim=1, keepdim=True)
                if role == "attn_q":
                    w = perm(w, c.n_h)
                if role == "attn_k":
                    w = perm(w, c.n_kv)
                sd["model.layers.%d.%s.weight" % (l, names[role])] = w
        missing, unexpected = hf.load_state_dict(sd, strict=False)
        missing = [k for k in missing if "rotary" not in k]
        if missing or unexpected:
            return "failed (missing %s, unexpected %s)" % (missing[:3], unexpected[:3])
        hook_relaxations(torch, hf, model)
        with torch.no_grad():
            ids = torch.tensor([prompt], device=model.device)
            out = hf(input_ids=ids, use_cache=False).logits[0].to(torch.float64)
        base = ref.forward(model, prompt).logits
        return "%.2g" % (float((out - base).abs().max()) / float(base.abs().max()))
    except Exception as e:  # pragma: no cover - depends on the transformers version
        return "failed (%s: %s)" % (e.__class__.__name__, str(e)[:200])


def hook_relaxations(torch, hf, model):
    """Recursion encodings and adaption prompts on an unrolled transformers Llama, as forward
    hooks written from the MoR code's description (the encoded layer's output times e; the
    prompt attended with the layer's own k_proj, v_proj, o_proj and the RoPE'd query of its
    q_proj, with a softmax of its own), not from tools/reference.py."""
    import math
    from transformers.models.llama import modeling_llama as ml
    c = model.cfg
    for l in range(c.L):
        enc, prompt = model.layer_relax(l)
        layer = hf.model.layers[l]
        if enc is not None:
            def enc_hook(mod, args, out, e=enc):
                return (out[0] * e,) + tuple(out[1:]) if isinstance(out, tuple) else out * e
            layer.register_forward_hook(enc_hook)
        if prompt is not None:
            P, g = prompt
            P = P[None]                                          # [1, len, d]

            def adapt_hook(mod, args, kwargs, out, P=P, g=g):
                hs = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                cos, sin = kwargs["position_embeddings"]
                bsz, T = hs.shape[0], hs.shape[1]
                q = mod.q_proj(hs).view(bsz, T, -1, c.d_h).transpose(1, 2)
                q, _ = ml.apply_rotary_pos_emb(q, q, cos, sin)
                n = P.shape[1]
                k = mod.k_proj(P).view(1, n, c.n_kv, c.d_h).transpose(1, 2)
                v = mod.v_proj(P).view(1, n, c.n_kv, c.d_h).transpose(1, 2)
                rep = c.n_h // c.n_kv
                k, v = torch.repeat_interleave(k, rep, dim=1), torch.repeat_interleave(v, rep, dim=1)
                att = g * torch.softmax(q @ k.transpose(2, 3) / math.sqrt(c.d_h), dim=-1)
                o = mod.o_proj((att @ v).transpose(1, 2).reshape(bsz, T, -1))
                return (out[0] + o,) + tuple(out[1:]) if isinstance(out, tuple) else out + o
            layer.self_attn.register_forward_hook(adapt_hook, with_kwargs=True)


def peft_check(ref, torch, model, prompt):
    """DoRA and adaption prompts through PEFT's own modules where peft is installed: the
    unrolled transformers Llama of hf_check wrapped by get_peft_model (LoraConfig(use_dora=True)
    on the projections that carry LoRA, or AdaptionPromptConfig on every layer) with the file's
    values loaded into PEFT's parameters. Returns max|diff| / max|logit| of the prompt logits,
    or why no check ran."""
    c = model.cfg
    has_dora = any(k.endswith(".dora_m") for k in model.W)
    has_prompt = any(k.endswith(".adapt_prompt") for k in model.W)
    if not (has_dora or has_prompt) or c.router_type != "none" or c.kv_sharing or c.rope_type != "neox":
        return "n/a"
    if any(k.endswith(".rec_enc") for k in model.W):
        return "n/a (recursion encodings)"
    try:
        import peft
        import transformers
    except Exception as e:  # pragma: no cover - depends on the machine
        return "skipped (%s)" % e.__class__.__name__
    try:
        kw = dict(vocab_size=int(model.W["token_embd.weight"].shape[0]), hidden_size=c.d,
                  intermediate_size=c.d_ff, num_hidden_layers=c.L, num_attention_heads=c.n_h,
                  num_key_value_heads=c.n_kv, head_dim=c.d_h, max_position_embeddings=c.ctx,
                  rms_norm_eps=c.eps, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                  hidden_act="silu", rope_theta=c.rope_base)
        hc = transformers.LlamaConfig(**kw)
        hc._attn_implementation = "eager"
        hf = transformers.LlamaForCausalLM(hc).to(device=model.device, dtype=torch.float64).eval()
        names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
        sd = {"model.embed_tokens.weight": model.W["token_embd.weight"],
              "model.norm.weight": model.W["output_norm.weight"], "lm_head.weight": model.output_matrix()}
        lora = {}
        for l in range(c.L):
            for role, (w, a, b, m) in model.layer_params(l).items():
                sd["model.layers.%d.%s.weight" % (l, names[role])] = w
                if a is not None:
                    lora["model.layers.%d.%s" % (l, names[role])] = (a, b, m)
        hf.load_state_dict(sd, strict=False)
        ids = torch.tensor([prompt], device=model.device)
        if has_dora:
            ranks = set(int(a.shape[0]) for a, b, m in lora.values())
            if len(ranks) != 1:
                return "n/a (several ranks)"
            rank = ranks.pop()
            cfg = peft.LoraConfig(r=rank, lora_alpha=c.lora_scale * rank, lora_dropout=0.0, use_dora=True,
                                  target_modules=sorted(set(k.split(".")[-1] for k in lora)),
                                  layers_to_transform=sorted(set(int(k.split(".")[2]) for k in lora)))
            pm = peft.get_peft_model(hf, cfg).to(torch.float64).eval()
            with torch.no_grad():
                pm(input_ids=ids[:, :1], use_cache=False)     # PEFT sets the magnitudes on a first call
                mods = dict(pm.base_model.model.named_modules())
                for name, (a, b, m) in lora.items():
                    mod = mods[name]
                    mod.lora_A["default"].weight.copy_(a)
                    mod.lora_B["default"].weight.copy_(b)
                    mv = mod.lora_magnitude_vector["default"]
                    (mv.weight if hasattr(mv, "weight") else mv).copy_(m)
                missing = [k for k in mods if k.startswith("model.layers.") and k.endswith("_proj")
                           and hasattr(mods[k], "lora_A") and k not in lora]
                if missing:
                    return "failed (LoRA on %s, which the file has not)" % missing[:2]
                out = pm(input_ids=ids, use_cache=False).logits[0].to(torch.float64)
        else:
            lens = set(int(model.layer_relax(l)[1][0].shape[0]) for l in range(c.L) if model.layer_relax(l)[1])
            if len(lens) != 1 or any(model.layer_relax(l)[1] is None for l in range(c.L)) or lora:
                return "n/a (not a prompt on every layer, one length, without LoRA)"
            cfg = peft.AdaptionPromptConfig(adapter_len=lens.pop(), adapter_layers=c.L, task_type="CAUSAL_LM")
            pm = peft.get_peft_model(hf, cfg).to(torch.float64).eval()
            with torch.no_grad():
                n_set = 0
                for name, mod in pm.named_modules():
                    if hasattr(mod, "adaption_prompt") and hasattr(mod, "adaption_gate"):
                        l = int(name.split("layers.")[1].split(".")[0])
                        P, g = model.layer_relax(l)[1]
                        mod.adaption_prompt.copy_(P[None])
                        mod.adaption_gate.copy_(g)
                        n_set += 1
                if n_set != c.L:
                    return "failed (%d adapted attentions for %d layers)" % (n_set, c.L)
                out = pm(input_ids=ids, use_cache=False).logits[0].to(torch.float64)
        base = ref.forward(model, prompt).logits
        return "%.2g (peft %s)" % (float((out - base).abs().max()) / float(base.abs().max()), peft.__version__)
    except Exception as e:  # pragma: no cover - depends on the peft / transformers versions
        return "failed (%s: %s)" % (e.__class__.__name__, str(e)[:200])


# Hugging Face classes of the other architectures, for hf_check_arch.
HF_CLASSES = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "phi3": ("Phi3Config", "Phi3ForCausalLM"),
              "gemma2": ("Gemma2Config", "Gemma2ForCausalLM")}


def hf_check_arch(ref, torch, model, prompt):
    """Cross-check of a qwen2, phi3 or gemma2 model against the Hugging Face class of that
    architecture, where transformers is installed: the GGUF tensors renamed back (phi3 keeps
    its fused matrices, gemma2's norm weights are stored as 1 + w: w = stored - 1). Returns
    max|diff| / max|logit| of the prompt logits, or why no check ran."""
    c = model.cfg
    try:
        import transformers
    except Exception as e:  # pragma: no cover - depends on the machine
        return "skipped (%s)" % e.__class__.__name__
    cfg_name, cls_name = HF_CLASSES[c.arch]
    tied = "output.weight" not in model.W
    kw = dict(vocab_size=int(model.W["token_embd.weight"].shape[0]), hidden_size=c.d,
              intermediate_size=c.d_ff, num_hidden_layers=c.L, num_attention_heads=c.n_h,
              num_key_value_heads=c.n_kv, max_position_embeddings=c.ctx, rms_norm_eps=c.eps,
              rope_theta=c.rope_base, tie_word_embeddings=tied)
    if c.arch == "qwen2":
        kw.update(use_sliding_window=False)
    if c.arch == "phi3":
        kw.update(sliding_window=c.swa or None, rope_scaling=None, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    if c.arch == "gemma2":
        kw.update(head_dim=c.d_h, query_pre_attn_scalar=c.d_h, sliding_window=c.swa,
                  attn_logit_softcapping=c.attn_softcap, final_logit_softcapping=c.final_softcap,
                  hidden_activation="gelu_pytorch_tanh", pad_token_id=0, bos_token_id=1,
                  eos_token_id=2)
    try:
        hc = getattr(transformers, cfg_name)(**kw)
        try:
            hc._attn_implementation = "eager"
        except Exception:
            pass
        hf = getattr(transformers, cls_name)(hc).to(device=model.device, dtype=torch.float64).eval()
        W = model.W
        one = 1.0 if c.arch == "gemma2" else 0.0
        sd = {"model.embed_tokens.weight": W["token_embd.weight"],
              "model.norm.weight": W["output_norm.weight"] - one,
              "lm_head.weight": model.output_matrix()}
        names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "attn_qkv": "self_attn.qkv_proj",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
                 "attn_norm": "input_layernorm"}
        if c.arch == "phi3":
            names["ffn_up"] = "mlp.gate_up_proj"
        if c.arch == "gemma2":
            names.update(post_attention_norm="post_attention_layernorm", ffn_norm="pre_feedforward_layernorm",
                         post_ffw_norm="post_feedforward_layernorm")
        else:
            names["ffn_norm"] = "post_attention_layernorm"
        for name, t in W.items():
            if not name.startswith("blk."):
                continue
            _, l, role, kind = name.split(".")
            hf_name = "model.layers.%s.%s.%s" % (l, names[role], kind)
            sd[hf_name] = t - one if role.endswith("norm") else t
        missing, unexpected = hf.load_state_dict(sd, strict=False)
        missing = [k for k in missing if "rotary" not in k and not (tied and k == "lm_head.weight")]
        if missing or unexpected:
            return "failed (missing %s, unexpected %s)" % (missing[:3], unexpected[:3])
        with torch.no_grad():
            ids = torch.tensor([prompt], device=model.device)
            out = hf(input_ids=ids, use_cache=False).logits[0].to(torch.float64)
        base = ref.forward(model, prompt).logits
        return "%.2g" % (float((out - base).abs().max()) / float(base.abs().max()))
    except Exception as e:  # pragma: no cover - depends on the transformers version
        return "failed (%s: %s)" % (e.__class__.__name__, str(e)[:200])


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def make_stories(ref, torch, out_dir, src, device):
    for name, digest in STORIES.items():
        dst = os.path.join(out_dir, name)
        if src and os.path.abspath(os.path.join(src, name)) != os.path.abspath(dst):
            shutil.copyfile(os.path.join(src, name), dst)
        if not os.path.exists(dst):
            raise SystemExit("%s is missing: pass --stories-src" % dst)
        if sha256(dst) != digest:
            raise SystemExit("%s: sha256 %s, expected %s" % (dst, sha256(dst), digest))
    mb = ref.Model.from_llama2c(os.path.join(out_dir, "stories260K.bin"), device)
    mg = ref.Model.from_gguf(os.path.join(out_dir, "stories260K.gguf"), device)
    prompt = [1]
    ev = evaluate(ref, torch, mb, prompt, N_STORIES)
    seq = prompt + ev["ids"][:-1]
    lb = ref.forward(mb, seq).logits
    lg = ref.forward(mg, seq).logits
    diff = float((lb - lg).abs().max())
    print("stories260K: .bin vs .gguf max |logit diff| over %d positions: %.3g" % (len(seq), diff))
    print("stories260K: transformers LlamaForCausalLM: max|diff|/max|logit| %s"
          % hf_check(ref, torch, mb, seq))
    if diff > 1e-5:
        raise SystemExit("stories260K: .bin and .gguf disagree")
    logits = ev["res0"].logits.cpu().tolist()
    write_fixture(os.path.join(out_dir, "stories260K.fix"), "stories260K.gguf", prompt, logits,
                  ev["ids"])
    print("stories260K: min greedy margin %.4f (step %d), kv-cache vs recompute %.1e"
          % (min(ev["margins"]), ev["margins"].index(min(ev["margins"])), ev["diff"]))
    print("stories260K greedy: %s" % " ".join(str(t) for t in ev["ids"]))
    return ev


def main(argv=None):
    ap = argparse.ArgumentParser(description="generate tests/data models and fixtures")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "tests", "data"))
    ap.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    ap.add_argument("--only", default="", help="comma-separated model names (stories260K too)")
    ap.add_argument("--models-only", action="store_true",
                    help="write the .gguf files of attempt 0 without torch (no fixtures)")
    ap.add_argument("--stories-src", default=None,
                    help="folder holding stories260K.bin, tok512.bin, stories260K.gguf")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    only = set(x for x in a.only.split(",") if x)
    ref = torch = None
    if not a.models_only:
        import torch  # noqa: F811
        import reference as ref  # noqa: F811
    device = a.device
    if not a.models_only and device is None:
        device = ref.default_device()
    if torch is not None:
        print("torch %s on %s" % (torch.__version__, device))
    prompt = prompt_ids()
    print("prompt: %s" % " ".join(str(t) for t in prompt))
    t0 = time.time()
    for name, kw in SPECS:
        if only and name not in only:
            continue
        spec = Spec(name, **kw)
        make_random_model(ref, torch, spec, a.out, prompt, device, a.models_only)
    if not a.models_only and (not only or "stories260K" in only):
        make_stories(ref, torch, a.out, a.stories_src, device)
    print("done in %.1f s" % (time.time() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
