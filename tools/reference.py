#!/usr/bin/env python3
"""reference: an independent PyTorch reference of the models mor runs, in float64.

Written from docs/FORMAT.md, docs/POLICIES.md and the methods of docs/DESIGN.md, not from
the C engine. It reads models through tools/morgguf.py, i.e. exactly the bytes the engine
reads, and also reads llama2.c `.bin` checkpoints directly.

What it computes:

* arch `llama`: pre-norm Llama blocks (RMSNorm with eps, RoPE on adjacent pairs, GQA,
  SwiGLU, no biases), tied or separate output matrix; optional `rope_freqs.weight` (Llama 3.x:
  each inverse frequency divided by its factor) and linear RoPE scaling (`rope.scaling.type`
  linear: every inverse frequency divided by `rope.scaling.factor`).
* the other GGUF architectures of docs/FORMAT.md §4, as options of the same layer:
  - `qwen2`: Llama blocks with rotate-half RoPE and biases `blk.N.attn_{q,k,v}.bias` added
    after the projections (before RoPE);
  - `phi3`: rotate-half RoPE, `blk.N.attn_qkv.weight` = rows of Q, then K, then V, and
    `blk.N.ffn_up.weight` = rows of the gate, then of the up projection; a sliding window on
    every layer (`phi3.attention.sliding_window`, 0 = none);
  - `gemma2`: the embedding row times sqrt(d); head size `attention.key_length` (free of
    d / n_h); scores q.k / sqrt(d_h) soft-capped (cap * tanh(s / cap), `attn_logit_softcapping`)
    before the mask; a sliding window on even layers (`attention.sliding_window`); the attention
    output and the MLP output each RMS-normalized (`post_attention_norm`, `post_ffw_norm`)
    before the residual add; MLP gelu_tanh(gate) * up; final logits soft-capped
    (`final_logit_softcapping`); norm weights used as stored (converters store 1 + w).
  A sliding window W lets position p attend to positions p' with p - W < p' <= p.
* arch `mor` (FORMAT.md §3): L unrolled layers over n_store stored layers with the sharing
  maps s(l), r(l) of cycle / sequence / middle_cycle / middle_sequence; per-recursion
  overrides blk.i.rec.r.<role>.weight; LoRA y = W x + sigma * B (A x); the other relaxations
  of the MoR code, per (stored layer, recursion):
  - DoRA (`<role>.dora_m`, PEFT's use_dora): y = m / |W + sigma B A|_row * (W x + sigma B (A x)),
    the norm of each output row over the inputs, computed from the weights at every call;
  - recursion encoding (`rec_enc`): the layer's output stream h <- h * e;
  - adaption prompt (`adapt_prompt` P [len, d], `adapt_gate` g): K_a, V_a = the layer's own K
    and V projections of P (no RoPE), GQA heads repeated; o_a = g * softmax(q K_a^T / sqrt(d_h))
    V_a over the len slots (a softmax of its own, every slot visible to every token), q the
    layer's RoPE'd query; the layer's output projection of o_a is added to that of the
    attention output. Expert-choice routers with encodings or prompts and token-choice routers
    with prompts are refused (the MoR code does not define them);
  RoPE `neox`
  (rotate_half) or `norm` (adjacent pairs); recursion-wise KV cache (one slot per unrolled
  layer, holding only the tokens that ran it); recursive KV sharing (layers with r >= 1 attend
  to the recursion-0 slot of the same stored layer and write nothing); exit heads.
* routers (cycle and middle_cycle only; a recursion block is B consecutive unrolled layers of
  the middle part):
  - expert-choice: per recursion r, z = router_r(H / temp), g = alpha*sigmoid(z) (tanh: alpha*tanh(z);
    none: z). Causal threshold policy: a token runs recursion r iff it ran r-1 and
    sigmoid(z_dec) >= tau (z_dec from router_aux.r when present, else z). A selected token
    gets H <- H + g * F_r(H) (gating `additive`: H + F_r(H)); the others keep H unchanged.
  - token-choice: once, on the stream entering the first recursion, z = router(H / temp),
    p = alpha*softmax(z) (or alpha*sigmoid(z)), i = argmax(p + bias), g = p_i; x runs
    recursions 0..i (F_0 ... F_i applied in turn, no gate in between) and H <- H + g * x
    (`additive`: H + x).
  Only the tokens that run a recursion write or read that recursion's KV slots.

Everything is computed in float64 (CPU or GPU). Incremental decoding with the KV cache and a
full recomputation of the sequence share the same code path (a forward call processes a chunk
of tokens against the cache), so both give the same result.

Command line (prints logits and greedy continuation)::

    python3 tools/reference.py MODEL.gguf|MODEL.bin [--prompt 1,2,3] [--steps N] [--device cpu]
"""

import argparse
import math
import os
import struct
import sys

import torch
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import morgguf  # noqa: E402

DTYPE = torch.float64

NORM_ROLES = ("attn_norm", "ffn_norm")
PROJ_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
ROLES = NORM_ROLES + PROJ_ROLES
SHARINGS = ("cycle", "sequence", "middle_cycle", "middle_sequence")

# The GGUF architectures besides llama and mor (docs/FORMAT.md §4): what each adds to the layer.
ARCH_OPTIONS = {
    "qwen2": dict(bias=True, rope_scaling=True),
    "phi3": dict(fused=True, swa="all"),
    "gemma2": dict(act="gelu_tanh", post_norms=True, softcap=True, embd_scale=True, free_head=True,
                   swa="even", swa_def=4096),
}


class ModelError(ValueError):
    pass


def f32(x):
    """x rounded to float32 (as a python float)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

class Config(object):
    """Hyperparameters. For arch llama, n_rec = 1 and sharing = cycle (a vanilla model)."""

    def __init__(self, **kw):
        self.arch = "llama"
        self.d = self.d_ff = self.L = self.n_h = self.n_kv = self.d_h = self.V = 0
        self.ctx = 0
        self.eps = f32(1e-5)
        self.rope_base = 10000.0
        self.rope_type = "norm"
        self.n_rec = 1
        self.sharing = "cycle"
        self.kv_sharing = False
        self.lora_scale = None
        self.router_type = "none"
        self.router_arch = None
        self.router_func = None
        self.router_alpha = None
        self.router_temp = 1.0
        self.router_gating = "weighted"
        self.exit_layers = []
        # architecture options (docs/FORMAT.md §4); the defaults are the Llama layer
        self.act = "silu"              # "silu" or "gelu_tanh": act(gate) * up
        self.rope_linear = 1.0         # linear RoPE scaling factor
        self.attn_scale = None         # None: 1 / sqrt(d_h)
        self.attn_softcap = None
        self.final_softcap = None
        self.embd_scale = None         # None: 1
        self.swa = 0                   # sliding window of the windowed layers (0: none)
        self.swa_layers = "none"       # "none", "all" or "even"
        self.fused = False             # phi3: attn_qkv and gate/up ffn_up
        self.__dict__.update(kw)

    @property
    def middle(self):
        return self.sharing in ("middle_cycle", "middle_sequence")

    @property
    def B(self):
        n = self.L - 2 if self.middle else self.L
        if n < 1 or n % self.n_rec:
            raise ModelError("block_count %d does not split into %d recursions for %s"
                             % (self.L, self.n_rec, self.sharing))
        return n // self.n_rec

    @property
    def n_store(self):
        return self.B + 2 if self.middle else self.B

    def s_r(self, l):
        """Stored layer and recursion index of unrolled layer l (FORMAT.md §3.2)."""
        B, N, L = self.B, self.n_rec, self.L
        if self.sharing == "cycle":
            return l % B, l // B
        if self.sharing == "sequence":
            return l // N, l % N
        if l == 0:
            return 0, 0
        if l == L - 1:
            return B + 1, 0
        if self.sharing == "middle_cycle":
            return 1 + (l - 1) % B, (l - 1) // B
        return 1 + (l - 1) // N, (l - 1) % N

    def blocks(self):
        """(first layers, [layers of recursion block r], last layers) for the router path."""
        B = self.B
        if self.sharing == "middle_cycle":
            return [0], [list(range(1 + r * B, 1 + (r + 1) * B)) for r in range(self.n_rec)], [self.L - 1]
        if self.sharing == "cycle":
            return [], [list(range(r * B, (r + 1) * B)) for r in range(self.n_rec)], []
        raise ModelError("routers need sharing cycle or middle_cycle, not %s" % self.sharing)

    def kv_source(self, l):
        """The unrolled layer whose KV slot layer l reads (itself unless KV sharing)."""
        s, r = self.s_r(l)
        if not self.kv_sharing or r == 0:
            return l
        for l0 in range(self.L):
            if self.s_r(l0) == (s, 0):
                return l0
        raise ModelError("no recursion-0 layer for stored layer %d" % s)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _tensor_from_floats(arr, shape, device):
    """array('f') or array('d') -> float64 tensor of the given row-major shape."""
    dt = torch.float32 if arr.typecode == "f" else torch.float64
    buf = bytearray(arr.tobytes())
    if sys.byteorder != "little":
        raise ModelError("big-endian hosts are not supported")
    t = torch.frombuffer(buf, dtype=dt).clone() if len(buf) else torch.zeros(0, dtype=dt)
    return t.reshape(shape).to(device=device, dtype=DTYPE)


def _req_u32(r, key):
    if key not in r:
        raise ModelError("missing key %s" % key)
    return int(r.get(key))


class Model(object):
    """A loaded model: cfg (Config) and W (name -> float64 tensor, torch shape = rows x cols,
    i.e. the GGUF dims reversed)."""

    def __init__(self, cfg, W, device, source=""):
        self.cfg = cfg
        self.W = W
        self.device = device
        self.source = source
        self._check()

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_gguf(cls, path, device=None):
        device = device or default_device()
        r = morgguf.GGUFReader(path)
        arch = r.get("general.architecture")
        if arch == "llama":
            cfg = cls._cfg_llama(r)
        elif arch in ARCH_OPTIONS:
            cfg = cls._cfg_arch(r, arch)
        elif arch == "mor":
            cfg = cls._cfg_mor(r)
        else:
            raise ModelError("%s: unsupported architecture %r" % (path, arch))
        W = {}
        for t in r.tensors:
            if t.ttype not in (morgguf.F32, morgguf.F16, morgguf.BF16):
                raise ModelError("%s: tensor %s has type %s (only F32, F16, BF16)"
                                 % (path, t.name, t.type_name))
            W[t.name] = _tensor_from_floats(r.tensor_floats(t.name), t.shape, device)
        if cfg.V == 0:
            cfg.V = W["token_embd.weight"].shape[0]
        return cls(cfg, W, device, path)

    @staticmethod
    def _cfg_llama(r):
        p = "llama."
        d = _req_u32(r, p + "embedding_length")
        n_h = _req_u32(r, p + "attention.head_count")
        cfg = Config(arch="llama", d=d, d_ff=_req_u32(r, p + "feed_forward_length"),
                     L=_req_u32(r, p + "block_count"), n_h=n_h,
                     n_kv=int(r.get(p + "attention.head_count_kv", n_h)),
                     ctx=_req_u32(r, p + "context_length"),
                     eps=float(r.get(p + "attention.layer_norm_rms_epsilon", f32(1e-5))),
                     rope_base=float(r.get(p + "rope.freq_base", 10000.0)), rope_type="norm",
                     V=int(r.get(p + "vocab_size", 0)))
        cfg.d_h = d // n_h
        if d % n_h:
            raise ModelError("embedding_length %d is not a multiple of head_count %d" % (d, n_h))
        for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
            if p + key in r and int(r.get(p + key)) != cfg.d_h:
                raise ModelError("%s%s = %d, expected the head size %d"
                                 % (p, key, r.get(p + key), cfg.d_h))
        scaling = r.get(p + "rope.scaling.type", "none")
        if scaling == "linear":
            cfg.rope_linear = float(r.get(p + "rope.scaling.factor", 1.0))
        elif scaling != "none":
            raise ModelError("rope scaling %r is not implemented" % scaling)
        return cfg

    @staticmethod
    def _cfg_arch(r, arch):
        """qwen2, phi3, gemma2: the Llama keys under the architecture's prefix, and its options."""
        p = arch + "."
        opt = ARCH_OPTIONS[arch]
        d = _req_u32(r, p + "embedding_length")
        n_h = _req_u32(r, p + "attention.head_count")
        if d % n_h:
            raise ModelError("embedding_length %d is not a multiple of head_count %d" % (d, n_h))
        d_h = int(r.get(p + "attention.key_length", d // n_h))
        if not opt.get("free_head") and d_h != d // n_h:
            raise ModelError("%sattention.key_length %d is not d / n_h" % (p, d_h))
        for key in ("rope.dimension_count", "attention.value_length"):
            if p + key in r and int(r.get(p + key)) != d_h:
                raise ModelError("%s%s = %d, expected the head size %d" % (p, key, r.get(p + key), d_h))
        L = _req_u32(r, p + "block_count")
        cfg = Config(arch=arch, d=d, d_ff=_req_u32(r, p + "feed_forward_length"), L=L, n_h=n_h,
                     n_kv=int(r.get(p + "attention.head_count_kv", n_h)), d_h=d_h,
                     ctx=_req_u32(r, p + "context_length"),
                     eps=float(r.get(p + "attention.layer_norm_rms_epsilon", f32(1e-5))),
                     rope_base=float(r.get(p + "rope.freq_base", 10000.0)), rope_type="neox",
                     V=int(r.get(p + "vocab_size", 0)), act=opt.get("act", "silu"),
                     fused=bool(opt.get("fused")), swa_layers=opt.get("swa", "none"))
        if opt.get("rope_scaling"):
            scaling = r.get(p + "rope.scaling.type", "none")
            if scaling == "linear":
                cfg.rope_linear = float(r.get(p + "rope.scaling.factor", 1.0))
            elif scaling != "none":
                raise ModelError("rope scaling %r is not implemented" % scaling)
        if cfg.swa_layers != "none":
            key = p + "attention.sliding_window"
            if key not in r and opt.get("swa_def") is None:
                raise ModelError("missing key %s" % key)
            cfg.swa = int(r.get(key, opt.get("swa_def")))
        if opt.get("softcap"):
            cfg.attn_softcap = float(r.get(p + "attn_logit_softcapping", 50.0))
            cfg.final_softcap = float(r.get(p + "final_logit_softcapping", 30.0))
        if opt.get("embd_scale"):
            cfg.embd_scale = math.sqrt(d)
        if arch == "gemma2" and L == 46:   # the 27B model: query scale from d / n_h
            cfg.attn_scale = 1.0 / math.sqrt(d // n_h)
        return cfg

    @staticmethod
    def _cfg_mor(r):
        p = "mor."
        if _req_u32(r, p + "format_version") != 1:
            raise ModelError("mor.format_version %r is not 1" % r.get(p + "format_version"))
        d = _req_u32(r, p + "embedding_length")
        n_h = _req_u32(r, p + "attention.head_count")
        cfg = Config(arch="mor", d=d, d_ff=_req_u32(r, p + "feed_forward_length"),
                     L=_req_u32(r, p + "block_count"), n_h=n_h,
                     n_kv=int(r.get(p + "attention.head_count_kv", n_h)),
                     d_h=int(r.get(p + "attention.key_length", d // n_h)),
                     ctx=_req_u32(r, p + "context_length"),
                     eps=float(r.get(p + "attention.layer_norm_rms_epsilon", f32(1e-5))),
                     rope_base=float(r.get(p + "rope.freq_base", 10000.0)),
                     rope_type=r.get(p + "rope.type", "neox"),
                     n_rec=_req_u32(r, p + "recursion.count"),
                     sharing=r.get(p + "recursion.sharing"),
                     kv_sharing=bool(r.get(p + "kv_sharing", False)),
                     lora_scale=r.get(p + "lora.scale"),
                     router_type=r.get(p + "router.type", "none"),
                     router_arch=r.get(p + "router.arch"),
                     router_func=r.get(p + "router.func"),
                     router_alpha=r.get(p + "router.alpha"),
                     router_temp=float(r.get(p + "router.temp", 1.0)),
                     router_gating=r.get(p + "router.gating", "weighted"),
                     exit_layers=list(r.get(p + "exit.layers", [])))
        if cfg.sharing not in SHARINGS:
            raise ModelError("mor.recursion.sharing %r unknown" % cfg.sharing)
        if cfg.rope_type not in ("neox", "norm"):
            raise ModelError("mor.rope.type %r unknown" % cfg.rope_type)
        if cfg.router_type not in ("none", "expert", "token"):
            raise ModelError("mor.router.type %r unknown" % cfg.router_type)
        if cfg.router_type != "none":
            for k in ("router_arch", "router_func", "router_alpha"):
                if getattr(cfg, k) is None:
                    raise ModelError("router model without mor.%s" % k.replace("_", "."))
        return cfg

    @classmethod
    def from_llama2c(cls, path, device=None):
        """A llama2.c checkpoint (legacy version-0 layout: 7 int32 then float32 weights)."""
        device = device or default_device()
        with open(path, "rb") as f:
            data = f.read()
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack_from("<7i", data, 0)
        shared = vocab > 0
        V = abs(vocab)
        hs = dim // n_heads
        kv_dim = n_kv * hs
        off = [28]

        def take(*shape):
            n = 1
            for s in shape:
                n *= s
            end = off[0] + 4 * n
            if end > len(data):
                raise ModelError("%s: truncated at offset %d" % (path, off[0]))
            t = torch.frombuffer(bytearray(data[off[0]:end]), dtype=torch.float32).clone()
            off[0] = end
            return t.reshape(shape).to(device=device, dtype=DTYPE)

        W = {"token_embd.weight": take(V, dim)}
        per = {}
        per["attn_norm"] = take(n_layers, dim)
        per["attn_q"] = take(n_layers, n_heads * hs, dim)
        per["attn_k"] = take(n_layers, kv_dim, dim)
        per["attn_v"] = take(n_layers, kv_dim, dim)
        per["attn_output"] = take(n_layers, dim, n_heads * hs)
        per["ffn_norm"] = take(n_layers, dim)
        per["ffn_gate"] = take(n_layers, hidden, dim)      # w1
        per["ffn_down"] = take(n_layers, dim, hidden)      # w2
        per["ffn_up"] = take(n_layers, hidden, dim)        # w3
        W["output_norm.weight"] = take(dim)
        take(seq_len, hs // 2)                             # freq_cis_real (unused)
        take(seq_len, hs // 2)                             # freq_cis_imag (unused)
        if not shared:
            W["output.weight"] = take(V, dim)
        for role, t in per.items():
            for l in range(n_layers):
                W["blk.%d.%s.weight" % (l, role)] = t[l].clone()
        cfg = Config(arch="llama", d=dim, d_ff=hidden, L=n_layers, n_h=n_heads, n_kv=n_kv,
                     d_h=hs, V=V, ctx=seq_len, eps=f32(1e-5), rope_base=10000.0,
                     rope_type="norm")
        return cls(cfg, W, device, path)

    @classmethod
    def load(cls, path, device=None):
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic == b"GGUF":
            return cls.from_gguf(path, device)
        return cls.from_llama2c(path, device)

    # -- checks ----------------------------------------------------------------------------
    def _expected(self):
        """name -> torch shape of every tensor the file may hold, and the required names."""
        c = self.cfg
        d, dq, dkv = c.d, c.n_h * c.d_h, c.n_kv * c.d_h
        role_shape = {"attn_norm": (d,), "ffn_norm": (d,), "attn_q": (dq, d), "attn_k": (dkv, d),
                      "attn_v": (dkv, d), "attn_output": (d, dq), "ffn_gate": (c.d_ff, d),
                      "ffn_up": (c.d_ff, d), "ffn_down": (d, c.d_ff)}
        V = self.W["token_embd.weight"].shape[0] if "token_embd.weight" in self.W else c.V
        shapes = {"token_embd.weight": (V, d), "output_norm.weight": (d,), "output.weight": (V, d)}
        required = {"token_embd.weight", "output_norm.weight"}
        n_layers = c.n_store if c.arch == "mor" else c.L
        opt = ARCH_OPTIONS.get(c.arch, {})
        for i in range(n_layers):
            for role in ROLES:
                if c.fused and role in ("attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"):
                    continue
                name = "blk.%d.%s.weight" % (i, role)
                shapes[name] = role_shape[role]
                required.add(name)
            extra = {}
            if c.fused:
                extra["attn_qkv.weight"] = (dq + 2 * dkv, d)
                extra["ffn_up.weight"] = (2 * c.d_ff, d)
            if opt.get("bias"):
                extra.update({"attn_q.bias": (dq,), "attn_k.bias": (dkv,), "attn_v.bias": (dkv,)})
            if opt.get("post_norms"):
                extra.update({"post_attention_norm.weight": (d,), "post_ffw_norm.weight": (d,)})
            for k, shp in extra.items():
                shapes["blk.%d.%s" % (i, k)] = shp
                required.add("blk.%d.%s" % (i, k))
        if c.arch == "llama":
            shapes["rope_freqs.weight"] = (c.d_h // 2,)
        if c.arch == "mor":
            pairs = sorted(set(c.s_r(l) for l in range(c.L)))
            for (i, r) in pairs:
                for role in ROLES:
                    shapes["blk.%d.rec.%d.%s.weight" % (i, r, role)] = role_shape[role]
                for role in PROJ_ROLES:
                    out_, in_ = role_shape[role]
                    shapes["blk.%d.rec.%d.%s.lora_a" % (i, r, role)] = None  # (rank, in)
                    shapes["blk.%d.rec.%d.%s.lora_b" % (i, r, role)] = None  # (out, rank)
                    shapes["blk.%d.rec.%d.%s.dora_m" % (i, r, role)] = (out_,)
                shapes["blk.%d.rec.%d.rec_enc" % (i, r)] = (d,)
                shapes["blk.%d.rec.%d.adapt_prompt" % (i, r)] = None     # (len, d)
                shapes["blk.%d.rec.%d.adapt_gate" % (i, r)] = (1,)
            if c.router_type == "expert":
                for pre in ("router", "router_aux"):
                    for r in range(c.n_rec):
                        shapes["%s.%d.weight" % (pre, r)] = (1, d)
                        shapes["%s.%d.fc1.weight" % (pre, r)] = (2 * d, d)
                        shapes["%s.%d.fc2.weight" % (pre, r)] = (1, 2 * d)
            elif c.router_type == "token":
                shapes["router.weight"] = (c.n_rec, d)
                shapes["router.bias"] = (c.n_rec,)
                shapes["router.fc1.weight"] = (2 * d, d)
                shapes["router.fc2.weight"] = (c.n_rec, 2 * d)
            for k in range(len(c.exit_layers)):
                shapes["exit.%d.norm.weight" % k] = (d,)
                shapes["exit.%d.output.weight" % k] = (V, d)
        return shapes, required, role_shape

    def _check(self):
        c = self.cfg
        if c.d_h * c.n_h == 0 or c.n_h % max(c.n_kv, 1):
            raise ModelError("bad head counts n_h=%d n_kv=%d" % (c.n_h, c.n_kv))
        if c.d_h % 2:
            raise ModelError("head size %d is odd" % c.d_h)
        if c.arch == "mor":
            c.B  # raises on a bad split
        shapes, required, role_shape = self._expected()
        for name in required:
            if name not in self.W:
                raise ModelError("missing tensor %s" % name)
        for name, t in self.W.items():
            if name not in shapes:
                raise ModelError("unexpected tensor %s" % name)
            want = shapes[name]
            if want is not None and tuple(t.shape) != tuple(want):
                raise ModelError("tensor %s has shape %s, expected %s"
                                 % (name, tuple(t.shape), tuple(want)))
            if name.endswith(".lora_a"):
                role = name.split(".")[-2]
                out_, in_ = role_shape[role]
                b = name[:-len("lora_a")] + "lora_b"
                if b not in self.W:
                    raise ModelError("%s without %s" % (name, b))
                rank = t.shape[0]
                if t.dim() != 2 or t.shape[1] != in_ or not 1 <= rank <= min(in_, out_):
                    raise ModelError("tensor %s has shape %s" % (name, tuple(t.shape)))
                if tuple(self.W[b].shape) != (out_, rank):
                    raise ModelError("tensor %s has shape %s, expected %s"
                                     % (b, tuple(self.W[b].shape), (out_, rank)))
                if c.lora_scale is None:
                    raise ModelError("LoRA tensors without mor.lora.scale")
            if name.endswith(".lora_b") and name[:-len("lora_b")] + "lora_a" not in self.W:
                raise ModelError("%s without its lora_a" % name)
            if name.endswith(".dora_m") and name[:-len("dora_m")] + "lora_a" not in self.W:
                raise ModelError("%s without the LoRA pair of its projection" % name)
            if name.endswith(".adapt_prompt"):
                if t.dim() != 2 or t.shape[1] != c.d or t.shape[0] < 1:
                    raise ModelError("tensor %s has shape %s, expected (len, %d)" % (name, tuple(t.shape), c.d))
                if name[:-len("prompt")] + "gate" not in self.W:
                    raise ModelError("%s without its adapt_gate" % name)
            if name.endswith(".adapt_gate") and name[:-len("gate")] + "prompt" not in self.W:
                raise ModelError("%s without its adapt_prompt" % name)
        has_enc = any(k.endswith(".rec_enc") for k in self.W)
        has_prompt = any(k.endswith(".adapt_prompt") for k in self.W)
        if c.router_type == "expert" and (has_enc or has_prompt):
            raise ModelError("expert-choice routers with recursion encodings or adaption prompts are "
                             "not defined")
        if c.router_type == "token" and has_prompt:
            raise ModelError("token-choice routers with adaption prompts are not defined")
        if c.router_type == "expert":
            for r in range(c.n_rec):
                if c.router_arch == "linear":
                    ok = "router.%d.weight" % r in self.W
                else:
                    ok = "router.%d.fc1.weight" % r in self.W and "router.%d.fc2.weight" % r in self.W
                if not ok:
                    raise ModelError("missing %s router for recursion %d" % (c.router_arch, r))
        if c.router_type == "token":
            key = "router.weight" if c.router_arch == "linear" else "router.fc1.weight"
            if key not in self.W:
                raise ModelError("missing tensor %s" % key)
        if c.router_type != "none":
            c.blocks()

    # -- per-layer parameters --------------------------------------------------------------
    def layer_params(self, l):
        """role -> (W, A or None, B or None, m or None) for unrolled layer l (stored weight or its
        per-recursion override, plus the LoRA pair and DoRA magnitude of (s(l), r(l))). Fused
        matrices are split into their row blocks."""
        c = self.cfg
        s, r = c.s_r(l) if c.arch == "mor" else (l, 0)
        out = {}
        if c.fused:
            dq, dkv = c.n_h * c.d_h, c.n_kv * c.d_h
            qkv = self.W["blk.%d.attn_qkv.weight" % s]
            up = self.W["blk.%d.ffn_up.weight" % s]
            out["attn_q"], out["attn_k"] = (qkv[:dq], None, None, None), (qkv[dq:dq + dkv], None, None, None)
            out["attn_v"] = (qkv[dq + dkv:], None, None, None)
            out["ffn_gate"], out["ffn_up"] = (up[:c.d_ff], None, None, None), (up[c.d_ff:], None, None, None)
        for role in ROLES:
            if role in out:
                continue
            ov = "blk.%d.rec.%d.%s.weight" % (s, r, role)
            w = self.W[ov] if ov in self.W else self.W["blk.%d.%s.weight" % (s, role)]
            a = self.W.get("blk.%d.rec.%d.%s.lora_a" % (s, r, role))
            b = self.W.get("blk.%d.rec.%d.%s.lora_b" % (s, r, role))
            m = self.W.get("blk.%d.rec.%d.%s.dora_m" % (s, r, role))
            out[role] = (w, a, b, m)
        return out

    def layer_relax(self, l):
        """The encoding and adaption prompt of unrolled layer l: (e or None, (P, g) or None)."""
        if self.cfg.arch != "mor":
            return None, None
        s, r = self.cfg.s_r(l)
        base = "blk.%d.rec.%d." % (s, r)
        p = self.W.get(base + "adapt_prompt")
        return self.W.get(base + "rec_enc"), (None if p is None else (p, self.W[base + "adapt_gate"]))

    def layer_extras(self, l):
        """The architecture's additions to unrolled layer l: {"bias": {attn_q/k/v: vector},
        "post_attention_norm": vector or None, "post_ffw_norm": vector or None}."""
        s = self.cfg.s_r(l)[0] if self.cfg.arch == "mor" else l
        out = {"bias": {}}
        for role in ("attn_q", "attn_k", "attn_v"):
            b = self.W.get("blk.%d.%s.bias" % (s, role))
            if b is not None:
                out["bias"][role] = b
        for role in ("post_attention_norm", "post_ffw_norm"):
            out[role] = self.W.get("blk.%d.%s.weight" % (s, role))
        return out

    def output_matrix(self):
        return self.W.get("output.weight", self.W["token_embd.weight"])

    # -- cache -----------------------------------------------------------------------------
    def new_cache(self):
        return Cache(self.cfg.L)


class Cache(object):
    """Recursion-wise KV cache: one slot per unrolled layer, each with its own token count.
    Slot l holds K [n_kv, m, d_h] (post-RoPE), V [n_kv, m, d_h] and the absolute positions
    [m] of the m tokens that wrote it. `n` is the number of tokens processed so far."""

    def __init__(self, L):
        self.k = [None] * L
        self.v = [None] * L
        self.pos = [None] * L
        self.n = 0

    def append(self, l, k, v, pos):
        if self.k[l] is None:
            self.k[l], self.v[l], self.pos[l] = k, v, pos
        else:
            self.k[l] = torch.cat([self.k[l], k], dim=1)
            self.v[l] = torch.cat([self.v[l], v], dim=1)
            self.pos[l] = torch.cat([self.pos[l], pos])

    def slot_len(self, l):
        return 0 if self.pos[l] is None else int(self.pos[l].numel())


# ---------------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def linear(x, w, a=None, b=None, m=None, scale=None):
    """x @ W^T (+ scale * (x @ A^T) @ B^T), with DoRA (m given) each output row times
    m / |W + scale * B A|_row, the norm over the inputs (PEFT's weight norm, unmerged form)."""
    y = x @ w.t()
    if a is not None:
        y = y + scale * ((x @ a.t()) @ b.t())
    if m is not None:
        y = y * (m / torch.linalg.norm(w if a is None else w + scale * (b @ a), dim=1))
    return y


def rope(x, pos, base, kind, factors=None, linear=1.0):
    """x: [n_heads, T, d_h]; pos: [T] absolute positions (float64). factors: [d_h / 2] that
    divide the inverse frequencies (rope_freqs), linear: a factor dividing all of them."""
    d_h = x.shape[-1]
    half = d_h // 2
    i = torch.arange(half, dtype=DTYPE, device=x.device)
    inv = torch.pow(torch.tensor(base, dtype=DTYPE, device=x.device), -2.0 * i / d_h)
    if factors is not None:
        inv = inv / factors
    inv = inv / linear
    ang = pos.to(DTYPE)[:, None] * inv[None, :]           # [T, half]
    cos, sin = torch.cos(ang), torch.sin(ang)
    if kind == "norm":
        x0, x1 = x[..., 0::2], x[..., 1::2]
        y0 = x0 * cos - x1 * sin
        y1 = x0 * sin + x1 * cos
        return torch.stack([y0, y1], dim=-1).reshape(x.shape)
    if kind == "neox":
        x0, x1 = x[..., :half], x[..., half:]
        return torch.cat([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)
    raise ModelError("unknown rope type %r" % kind)


class Result(object):
    """Output of a forward call: logits [T, V], depths [T] (recursions run per token: N_r for
    models without a router, the layer count for llama), router [list of per-recursion dicts
    with the decision logits, for margin checks], exits {layer: logits}."""

    def __init__(self, logits, depths, router, exits):
        self.logits, self.depths, self.router, self.exits = logits, depths, router, exits


def _layer(model, l, h, act, pos, cache):
    """Run unrolled layer l on the rows of h selected by the boolean mask act; the other rows
    are returned unchanged. The active rows append K/V to slot l (or, with KV sharing at
    r >= 1, read the recursion-0 slot and write nothing) and attend over that slot: the
    cached earlier tokens plus the active tokens of this call, causally by absolute position."""
    c = model.cfg
    idx = torch.nonzero(act, as_tuple=False).flatten()
    if idx.numel() == 0:
        return h
    P = model.layer_params(l)
    X = model.layer_extras(l)
    sc = c.lora_scale
    x = h[idx]
    p = pos[idx]
    T = x.shape[0]
    bias = X["bias"]
    ff = model.W.get("rope_freqs.weight")
    a = rmsnorm(x, P["attn_norm"][0], c.eps)

    def qkv(role, n):
        y = linear(a, *P[role], scale=sc)
        if role in bias:
            y = y + bias[role]
        return y.reshape(T, n, c.d_h).transpose(0, 1)

    q = rope(qkv("attn_q", c.n_h), p, c.rope_base, c.rope_type, ff, c.rope_linear)
    src = c.kv_source(l) if c.arch == "mor" else l
    if src == l:
        k = rope(qkv("attn_k", c.n_kv), p, c.rope_base, c.rope_type, ff, c.rope_linear)
        v = qkv("attn_v", c.n_kv)
        cache.append(l, k, v, p)
    K, Vv, kp = cache.k[src], cache.v[src], cache.pos[src]
    rep = c.n_h // c.n_kv
    K = K.repeat_interleave(rep, dim=0)
    Vv = Vv.repeat_interleave(rep, dim=0)
    if c.attn_scale is None:
        s = (q @ K.transpose(1, 2)) / math.sqrt(c.d_h)       # [n_h, T, m]
    else:
        s = (q @ K.transpose(1, 2)) * c.attn_scale
    if c.attn_softcap:
        s = c.attn_softcap * torch.tanh(s / c.attn_softcap)
    mask = kp[None, :] <= p[:, None]                         # [T, m]
    if c.swa and (c.swa_layers == "all" or (c.swa_layers == "even" and l % 2 == 0)):
        mask = mask & (kp[None, :] > p[:, None] - c.swa)
    s = s.masked_fill(~mask[None], float("-inf"))
    o = torch.softmax(s, dim=-1) @ Vv                        # [n_h, T, d_h]
    o = o.transpose(0, 1).reshape(T, c.n_h * c.d_h)
    o = linear(o, *P["attn_output"], scale=sc)
    enc, prompt = model.layer_relax(l)
    if prompt is not None:  # adaption prompt: its own softmax over the slots, no RoPE on its keys
        Pm, gate = prompt
        n = Pm.shape[0]
        Ka = linear(Pm, *P["attn_k"], scale=sc).reshape(n, c.n_kv, c.d_h).transpose(0, 1)
        Va = linear(Pm, *P["attn_v"], scale=sc).reshape(n, c.n_kv, c.d_h).transpose(0, 1)
        Ka = Ka.repeat_interleave(rep, dim=0)                # [n_h, len, d_h]
        Va = Va.repeat_interleave(rep, dim=0)
        sa = (q @ Ka.transpose(1, 2)) / math.sqrt(c.d_h)     # [n_h, T, len]
        oa = gate * torch.softmax(sa, dim=-1) @ Va           # [n_h, T, d_h]
        o = o + linear(oa.transpose(0, 1).reshape(T, c.n_h * c.d_h), *P["attn_output"], scale=sc)
    if X["post_attention_norm"] is not None:
        o = rmsnorm(o, X["post_attention_norm"], c.eps)
    x = x + o
    b = rmsnorm(x, P["ffn_norm"][0], c.eps)
    g = linear(b, *P["ffn_gate"], scale=sc)
    if c.act == "gelu_tanh":
        g = Fn.gelu(g, approximate="tanh")
    elif c.act == "silu":
        g = Fn.silu(g)
    else:
        raise ModelError("unknown activation %r" % c.act)
    f = linear(g * linear(b, *P["ffn_up"], scale=sc), *P["ffn_down"], scale=sc)
    if X["post_ffw_norm"] is not None:
        f = rmsnorm(f, X["post_ffw_norm"], c.eps)
    x = x + f
    if enc is not None:  # recursion encoding: the whole output stream
        x = x * enc
    h = h.clone()
    h[idx] = x
    return h


def _head(model, h, norm=None, out=None):
    c = model.cfg
    norm = model.W["output_norm.weight"] if norm is None else norm
    out = model.output_matrix() if out is None else out
    y = rmsnorm(h, norm, c.eps) @ out.t()
    if c.final_softcap:
        y = c.final_softcap * torch.tanh(y / c.final_softcap)
    return y


def _router_logits(model, prefix, h):
    """Router output for the stream h [T, d]: linear `prefix.weight` or MLP
    `prefix.fc1/fc2.weight` with exact GELU in between."""
    c = model.cfg
    x = h / c.router_temp
    if c.router_arch == "linear":
        return x @ model.W[prefix + ".weight"].t()
    if c.router_arch == "mlp":
        return Fn.gelu(x @ model.W[prefix + ".fc1.weight"].t()) @ model.W[prefix + ".fc2.weight"].t()
    raise ModelError("unknown router arch %r" % c.router_arch)


def forward(model, tokens, cache=None, tau=0.5, max_depth=None, exits=False):
    """Process a chunk of tokens at positions cache.n ... cache.n+T-1 against the cache
    (a fresh one when None), appending to it. Returns a Result.

    tau: expert-choice threshold; max_depth: cap on the recursions a token may run (None:
    N_r). Without a router, a cap k skips every unrolled layer of recursion index >= k (the
    unique first and last layers of the middle strategies always run). exits: also compute
    the logits of the exit heads listed in mor.exit.layers (router-free models only)."""
    c = model.cfg
    cache = cache if cache is not None else model.new_cache()
    dev = model.device
    tok = torch.as_tensor(list(tokens), dtype=torch.long, device=dev)
    T = tok.numel()
    pos = torch.arange(cache.n, cache.n + T, dtype=DTYPE, device=dev)
    if cache.n + T > c.ctx:
        raise ModelError("context of %d tokens is full" % c.ctx)
    E = model.W["token_embd.weight"]
    if int(tok.min()) < 0 or int(tok.max()) >= E.shape[0]:
        raise ModelError("token id out of range")
    h = E[tok]
    if c.embd_scale is not None:
        h = h * c.embd_scale
    allm = torch.ones(T, dtype=torch.bool, device=dev)
    router_info = []
    exit_logits = {}
    if c.router_type == "none":
        cap = None if (max_depth is None or c.arch != "mor") else max(1, min(max_depth, c.n_rec))
        for l in range(c.L):
            if cap is not None and c.n_rec > 1:
                mid = not (c.middle and (l == 0 or l == c.L - 1))
                if mid and c.s_r(l)[1] >= cap:
                    continue
            h = _layer(model, l, h, allm, pos, cache)
            if exits and (l + 1) in c.exit_layers:
                k = c.exit_layers.index(l + 1)
                exit_logits[l + 1] = _head(model, h, model.W.get("exit.%d.norm.weight" % k),
                                           model.W.get("exit.%d.output.weight" % k))
        full = c.n_rec if c.arch == "mor" else c.L
        depths = torch.full((T,), full if cap is None else cap, dtype=torch.long, device=dev)
    else:
        first, blocks, last = c.blocks()
        for l in first:
            h = _layer(model, l, h, allm, pos, cache)
        cap = c.n_rec if max_depth is None else max(0, min(max_depth, c.n_rec))
        depths = torch.zeros(T, dtype=torch.long, device=dev)
        if c.router_type == "expert":
            active = allm
            for r in range(c.n_rec):
                z = _router_logits(model, "router.%d" % r, h)[:, 0]
                zd = z
                if ("router_aux.%d.weight" % r in model.W) or ("router_aux.%d.fc1.weight" % r in model.W):
                    zd = _router_logits(model, "router_aux.%d" % r, h)[:, 0]
                sel = active & (torch.sigmoid(zd) >= tau) if r < cap else torch.zeros_like(active)
                router_info.append({"r": r, "z": z, "z_decision": zd, "candidates": active.clone(),
                                    "selected": sel.clone()})
                if c.router_func == "sigmoid":
                    g = c.router_alpha * torch.sigmoid(z)
                elif c.router_func == "tanh":
                    g = c.router_alpha * torch.tanh(z)
                elif c.router_func == "none":
                    g = z
                else:
                    raise ModelError("unknown expert router func %r" % c.router_func)
                x = h
                for l in blocks[r]:
                    x = _layer(model, l, x, sel, pos, cache)
                upd = h + x if c.router_gating == "additive" else h + g[:, None] * x
                h = torch.where(sel[:, None], upd, h)
                depths = depths + sel.long()
                active = sel
        elif c.router_type == "token":
            prefix = "router"
            z = _router_logits(model, prefix, h)                 # [T, N_r]
            if c.router_func == "softmax":
                pr = c.router_alpha * torch.softmax(z, dim=-1)
            elif c.router_func == "sigmoid":
                pr = c.router_alpha * torch.sigmoid(z)
            else:
                raise ModelError("unknown token router func %r" % c.router_func)
            score = pr + model.W["router.bias"][None, :] if "router.bias" in model.W else pr
            i = torch.argmax(score, dim=-1)
            i = torch.clamp(i, max=cap - 1)
            g = pr.gather(1, i[:, None])[:, 0]
            router_info.append({"z": z, "p": pr, "score": score, "choice": i.clone()})
            x = h
            for r in range(c.n_rec):
                act = i >= r
                for l in blocks[r]:
                    x = _layer(model, l, x, act, pos, cache)
            h = h + x if c.router_gating == "additive" else h + g[:, None] * x
            depths = i + 1
        else:
            raise ModelError("unknown router type %r" % c.router_type)
        for l in last:
            h = _layer(model, l, h, allm, pos, cache)
    logits = _head(model, h)
    cache.n += T
    return Result(logits, depths, router_info, exit_logits)


def greedy(model, prompt, steps, incremental=True, **kw):
    """Greedy continuation of prompt. Returns (prompt Result, list of greedy ids, list of
    depths of the step that produced each id, list of top-1/top-2 margins, list of Results of
    every step). incremental=False recomputes the whole sequence at each step."""
    cache = model.new_cache()
    res0 = forward(model, prompt, cache, **kw)
    last = res0.logits[-1]
    dep = int(res0.depths[-1])
    seq = list(prompt)
    out, depths, margins, steps_res = [], [], [], []
    for _ in range(steps):
        top = torch.topk(last, 2)
        nxt = int(top.indices[0])
        margins.append(float(top.values[0] - top.values[1]))
        out.append(nxt)
        depths.append(dep)
        seq.append(nxt)
        if len(out) == steps:
            break
        if incremental:
            res = forward(model, [nxt], cache, **kw)
        else:
            res = forward(model, seq, None, **kw)
        steps_res.append(res)
        last = res.logits[-1]
        dep = int(res.depths[-1])
    return res0, out, depths, margins, steps_res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", default="1", help="comma-separated token ids")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--device", default=None)
    ap.add_argument("--tau", type=float, default=0.5)
    ap.add_argument("--max-depth", type=int, default=None)
    a = ap.parse_args(argv)
    m = Model.load(a.model, a.device)
    prompt = [int(x) for x in a.prompt.split(",") if x.strip()]
    res, out, depths, margins, _ = greedy(m, prompt, a.steps, tau=a.tau, max_depth=a.max_depth)
    print("model %s: arch %s, d %d, L %d, V %d" % (a.model, m.cfg.arch, m.cfg.d, m.cfg.L,
                                                    res.logits.shape[1]))
    print("last logits[:8]", [round(float(x), 6) for x in res.logits[-1][:8]])
    print("greedy", out)
    print("depths", depths)
    print("min margin %.3g" % min(margins) if margins else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
