#!/usr/bin/env python3
"""Tests of tools/mor-relax (build/mor-relax, or $MOR_BUILD_DIR/mor-relax), through the
engine's public API (python/mor.py on lib/libmor.so):

* full rank reproduces the vanilla model: stories260K (5 layers: cycle 5, middle_cycle 3) and a
  random 4-layer model (every sharing strategy that splits it), each init method; the logits of
  16 tokens stepped one at a time must agree within TOL of the logit scale (below);
* a low rank gives a different model, rank 0 + stepwise equals the plain recursive model built
  here by hand from the source layers (without and with per-recursion norms), and a mor input
  of one recursion with its own LoRA, an override and exit heads converts exactly, exit heads
  included (read at the same depth by a fixed-depth policy);
* the file's layout: keys, LoRA shapes and ranks (what tools/train.py's model_from_gguf reads),
  the printed parameter counts, determinism, --skip-exact, F16 and Q8_0 inputs;
* refusals: other architectures, RoPE factors, recursive inputs, depths that do not split, bad
  options; exit status 1 or 2, a message naming the problem, no output left behind.

Tolerance. With F32 weights the converted layer computes W_s x + B (A x) where B A equals the
residual W - W_s to float rounding (the SVD runs in double and is exact at full rank), and the
attention's Q/K rows are permuted (the same dot products summed in another order). Each of
these moves a logit by a few float roundings of the activations: measured 1.5e-6 of the logit
scale on stories260K. TOL = 1e-4 of the logit scale leaves a factor 60 for other compilers and
kernels, while any real mistake (a missing LoRA pair, a wrong permutation, a norm not carried)
moves logits by 3e-2 of the scale or more (rank 0 and low ranks below: 0.4 to 1.2)."""
import math
import os
import re
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("MOR_BUILD_DIR") or os.path.join(ROOT, "build")
TOOL = os.path.join(BUILD, "mor-relax")
RANDMODEL = os.path.join(BUILD, "mor-randmodel")
DATA = os.path.join(ROOT, "tests", "data")
STORIES = os.path.join(DATA, "stories260K.gguf")
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "python"))
import morgguf  # noqa: E402
from morconvert import layout  # noqa: E402

TOL = 1e-4
Q8_0 = 8  # GGUF tensor type id
ROLES9 = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
ROLES7 = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
STORY_TOKENS = [1, 403, 261, 378, 300, 356, 282, 289, 265, 430, 290, 263, 268, 288, 300, 342]
RAND_TOKENS = [93, 111, 58, 100, 8, 29, 84, 105, 83, 108, 21, 116, 18, 81, 95, 105]

try:
    import mor
except OSError:  # the shared library is not built
    mor = None


def run(*args):
    return subprocess.run([TOOL] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)


def logits(path, tokens, depth=None):
    """Logits after each token, stepped one at a time (a fixed-depth policy when depth is set)."""
    m = mor.Model(path)
    s = m.session(n_ctx=64)
    if depth is not None:
        s.set_exit_policy("fixed", depth=depth)
    out = []
    for t in tokens:
        s.step([t])
        out.append(list(s.logits()))
    s.close()
    m.close()
    return out


def max_diff(a, b):
    scale = max(abs(x) for r in a for x in r)
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)) / scale


def stepwise(lo, hi, B):
    """round(linspace(lo, hi, B)), ties to even (Python's round)."""
    if B == 1:
        return [lo]
    return [round(lo + j * (hi - lo) / (B - 1)) if j < B - 1 else hi for j in range(B)]


def layer_map(sharing, L, n_rec, l):
    """(stored layer, recursion) of unrolled layer l: docs/FORMAT.md §3.2."""
    return layout.s_r(l, L, sharing, n_rec)


def hand_built(src, out, sharing, n_rec, norms):
    """The plain recursive model of stepwise init, written here without mor-relax: stored layer j
    is a byte copy of source layer round(linspace(...))[j] (the unique ends: layers 0 and L-1),
    RoPE kept as the source has it (adjacent pairs: mor.rope.type norm, nothing permuted); with
    norms, every (stored, recursion) gets the norms of its unrolled layer as overrides."""
    r = morgguf.GGUFReader(src)
    arch = r.get("general.architecture")
    p = arch + "."
    L = r.get(p + "block_count")
    middle = sharing.startswith("middle")
    B = (L - 2 * middle) // n_rec
    w = morgguf.GGUFWriter()
    w.add_string("general.architecture", "mor")
    w.add_uint32("mor.format_version", 1)
    for k in ("context_length", "embedding_length", "feed_forward_length", "block_count",
              "attention.head_count", "attention.head_count_kv"):
        w.add_uint32("mor." + k, r.get(p + k))
    w.add_float32("mor.attention.layer_norm_rms_epsilon", r.get(p + "attention.layer_norm_rms_epsilon", 1e-5))
    w.add_float32("mor.rope.freq_base", r.get(p + "rope.freq_base", 10000.0))
    w.add_string("mor.rope.type", "norm" if arch == "llama" else r.get("mor.rope.type", "neox"))
    w.add_uint32("mor.recursion.count", n_rec)
    w.add_string("mor.recursion.sharing", sharing)
    for f in r.fields.values():
        if f.key.startswith("tokenizer."):
            w.add_kv(f.key, f.value, f.vtype)

    def copy(name, as_name=None):
        t = r.tensor(name)
        w.add_tensor(as_name or name, r.tensor_bytes(name), dims=t.dims, ttype=t.ttype)

    for n in ("token_embd.weight", "output_norm.weight", "output.weight"):
        if r.has_tensor(n):
            copy(n)
    src_of = stepwise(1, L - 2, B) if middle else stepwise(0, L - 1, B)
    stored = ([0] if middle else []) + src_of + ([L - 1] if middle else [])
    for i, l in enumerate(stored):
        for role in ROLES9:
            copy("blk.%d.%s.weight" % (l, role), "blk.%d.%s.weight" % (i, role))
    if norms:
        for l in range(L):
            s, rr = layer_map(sharing, L, n_rec, l)
            if middle and l in (0, L - 1):
                continue
            for role in ("attn_norm", "ffn_norm"):
                copy("blk.%d.%s.weight" % (l, role), "blk.%d.rec.%d.%s.weight" % (s, rr, role))
    w.write(out)


@unittest.skipUnless(os.path.exists(TOOL) and os.path.exists(RANDMODEL), "build/mor-relax not built (run make)")
class Relax(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.rand = os.path.join(cls.tmp.name, "rand.gguf")          # llama, F32, 4 layers, d 64
        cls.rand16 = os.path.join(cls.tmp.name, "rand-f16.gguf")
        cls.rand8 = os.path.join(cls.tmp.name, "rand-q8.gguf")
        for path, typ in ((cls.rand, "f32"), (cls.rand16, "f16"), (cls.rand8, "q8_0")):
            subprocess.run([RANDMODEL, "tiny", path, "--type", typ], check=True, stderr=subprocess.DEVNULL)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def convert(self, src, *args, name="out.gguf"):
        out = self.path(name)
        res = run(src, out, *args)
        self.assertEqual(res.returncode, 0, res.stdout + res.stderr)
        return out, res.stdout

    def need_lib(self):
        if mor is None:
            self.skipTest("lib/libmor.so not built")

    # -- exactness --------------------------------------------------------------------------
    def test_full_rank_stories(self):
        self.need_lib()
        base = logits(STORIES, STORY_TOKENS)
        for sharing, n in (("middle_cycle", 3), ("cycle", 5)):
            for init in ("stepwise", "average", "lower"):
                out, _ = self.convert(STORIES, "--recursions", n, "--sharing", sharing, "--init", init, "--rank", "full")
                d = max_diff(base, logits(out, STORY_TOKENS))
                self.assertLess(d, TOL, (sharing, init, d))

    def test_full_rank_random(self):
        self.need_lib()
        base = logits(self.rand, RAND_TOKENS)
        for sharing, n in (("cycle", 2), ("cycle", 4), ("sequence", 2), ("middle_cycle", 2), ("middle_sequence", 2)):
            for init in ("stepwise", "average", "lower"):
                out, _ = self.convert(self.rand, "--recursions", n, "--sharing", sharing, "--init", init, "--rank", "full")
                d = max_diff(base, logits(out, RAND_TOKENS))
                self.assertLess(d, TOL, (sharing, n, init, d))

    def test_low_rank_differs(self):
        self.need_lib()
        base = logits(STORIES, STORY_TOKENS)
        for rank in ("0", "4"):
            out, _ = self.convert(STORIES, "--recursions", 3, "--init", "average", "--rank", rank)
            self.assertGreater(max_diff(base, logits(out, STORY_TOKENS)), 0.05, rank)
        r = morgguf.GGUFReader(out)
        self.assertEqual(r.tensor("blk.1.rec.2.ffn_up.lora_a").shape, (4, 64))    # (rank, in)
        self.assertEqual(r.tensor("blk.1.rec.2.ffn_up.lora_b").shape, (172, 4))   # (out, rank)

    def test_rank0_stepwise_is_the_recursive_model(self):
        self.need_lib()
        for src, toks in ((STORIES, STORY_TOKENS), (self.rand, RAND_TOKENS)):
            L = morgguf.GGUFReader(src).get("llama.block_count")
            for sharing, n in (("cycle", L), ("middle_cycle", L - 2)) if L == 5 else (("cycle", 2), ("middle_cycle", 2)):
                for norms in (False, True):
                    want = self.path("hand.gguf")
                    hand_built(src, want, sharing, n, norms)
                    args = ["--recursions", n, "--sharing", sharing, "--init", "stepwise", "--rank", "0"]
                    out, _ = self.convert(src, *(args + ([] if norms else ["--no-norm-overrides"])))
                    d = max_diff(logits(want, toks), logits(out, toks))
                    self.assertLess(d, TOL, (src, sharing, norms, d))
                    names = morgguf.GGUFReader(out).tensor_names()
                    self.assertFalse([x for x in names if "lora" in x])
                    self.assertEqual(bool([x for x in names if ".rec." in x]), norms)

    def test_mor_input_with_lora_and_exit_heads(self):
        """A mor file of one recursion (tied output, rotate-half RoPE, sharing cycle as
        tools/train.py writes its vanilla model) with its own LoRA on one layer, a norm override
        on another and two exit heads: full rank is exact at the final head and at the exit heads
        (after layers 2 and 4 = after recursions 0 and 1 of cycle 2)."""
        self.need_lib()
        plain = self.path("mor1.gguf")
        subprocess.run([RANDMODEL, "tiny", plain, "--recursions", "1"], check=True, stderr=subprocess.DEVNULL)
        r = morgguf.GGUFReader(plain)
        self.assertEqual(r.get("mor.recursion.count"), 1)
        w = morgguf.rewrite(r)
        w.kv = [(k, t, "cycle" if k == "mor.recursion.sharing" else v) for k, t, v in w.kv]
        w.add_float32("mor.lora.scale", 2.0)
        w.add_array("mor.exit.layers", morgguf.UINT32, [2, 4])
        import random
        rng = random.Random(5)
        w.add_tensor("blk.1.rec.0.attn_q.lora_a", [rng.gauss(0, 0.1) for _ in range(3 * 64)], shape=(3, 64))
        w.add_tensor("blk.1.rec.0.attn_q.lora_b", [rng.gauss(0, 0.1) for _ in range(64 * 3)], shape=(64, 3))
        w.add_tensor("blk.2.rec.0.ffn_norm.weight", [1 + rng.gauss(0, 0.3) for _ in range(64)], shape=(64,))
        w.add_tensor("exit.0.norm.weight", [1 + rng.gauss(0, 0.3) for _ in range(64)], shape=(64,))
        w.add_tensor("exit.1.norm.weight", [1 + rng.gauss(0, 0.3) for _ in range(64)], shape=(64,))
        src = self.path("mor1-extras.gguf")
        w.write(src)
        out, text = self.convert(src, "--recursions", 2, "--sharing", "cycle", "--init", "average", "--rank", "full")
        o = morgguf.GGUFReader(out)
        self.assertEqual(o.get("mor.exit.layers"), [2, 4])
        self.assertEqual(o.tensor_bytes("exit.0.norm.weight"), morgguf.GGUFReader(src).tensor_bytes("exit.0.norm.weight"))
        self.assertEqual(o.get("mor.rope.type"), "neox")
        self.assertNotIn("output.weight", o.tensor_names())
        for depth in (1, 2):
            d = max_diff(logits(src, RAND_TOKENS, depth), logits(out, RAND_TOKENS, depth))
            self.assertLess(d, TOL, (depth, d))
        self.assertGreater(max_diff(logits(src, RAND_TOKENS, 1), logits(src, RAND_TOKENS, 2)), 0.01)
        # middle_cycle 2 (blocks of one layer after the unique first): recursions end after
        # layers 2 and 3, so the head after layer 4 is kept but named in a warning.
        res = run(src, self.path("mc.gguf"), "--recursions", 2, "--rank", 0)
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertIn("exit head 1 (after layer 4) is kept, but it is not at the end of a recursion", res.stderr)

    def test_f16_and_q8_inputs(self):
        """F16 input: auto writes F16 shared and LoRA matrices (rounding of A and B: 1e-3 of the
        logit scale on stories260K); Q8_0 input: the arithmetic runs on its dequantized weights
        and the F32 output is compared with the Q8_0 model, whose products also quantize the
        activations to 8 bits (1e-2)."""
        self.need_lib()
        out, _ = self.convert(self.rand16, "--recursions", 2, "--sharing", "cycle", "--rank", "full")
        r = morgguf.GGUFReader(out)
        self.assertEqual(r.tensor("blk.0.attn_q.weight").ttype, morgguf.F16)
        self.assertEqual(r.tensor("blk.0.rec.1.attn_q.lora_a").ttype, morgguf.F16)
        self.assertEqual(r.tensor("blk.0.attn_norm.weight").ttype, morgguf.F32)
        self.assertLess(max_diff(logits(self.rand16, RAND_TOKENS), logits(out, RAND_TOKENS)), 3e-3)
        out, _ = self.convert(self.rand8, "--recursions", 2, "--sharing", "middle_cycle", "--rank", "full",
                              "--type", "f32", "--lora-type", "f32")
        r = morgguf.GGUFReader(out)
        self.assertEqual(r.tensor("blk.1.attn_q.weight").ttype, morgguf.F32)
        self.assertEqual(r.tensor("blk.0.attn_v.weight").ttype, Q8_0)  # the unique ends: copied
        self.assertEqual(r.tensor("token_embd.weight").ttype, Q8_0)
        self.assertLess(max_diff(logits(self.rand8, RAND_TOKENS), logits(out, RAND_TOKENS)), 3e-2)

    # -- the file ---------------------------------------------------------------------------
    def test_layout_counts_and_determinism(self):
        out, text = self.convert(STORIES, "--recursions", 3, "--init", "average", "--rank", 16, "--roles", "q,v,down")
        r = morgguf.GGUFReader(out)
        self.assertEqual(r.get("general.architecture"), "mor")
        self.assertEqual((r.get("mor.recursion.count"), r.get("mor.recursion.sharing")), (3, "middle_cycle"))
        self.assertEqual(r.get("mor.block_count"), 5)
        self.assertAlmostEqual(r.get("mor.lora.scale"), 1.0)
        self.assertEqual(r.get("tokenizer.ggml.model"), "llama")
        src = morgguf.GGUFReader(STORIES)
        self.assertEqual(r.get("tokenizer.ggml.tokens"), src.get("tokenizer.ggml.tokens"))
        # What train.py's model_from_gguf reads: every middle layer x recursion x role, ranks
        # min(max rank, out, in), shapes (rank, in) and (out, rank).
        shapes = {"attn_q": (64, 64), "attn_v": (32, 64), "ffn_down": (64, 172)}
        for rr in range(3):
            for role, (o, i) in shapes.items():
                k = min(16, o, i)
                self.assertEqual(r.tensor("blk.1.rec.%d.%s.lora_a" % (rr, role)).shape, (k, i))
                self.assertEqual(r.tensor("blk.1.rec.%d.%s.lora_b" % (rr, role)).shape, (o, k))
        self.assertFalse([n for n in r.tensor_names() if "attn_k.lora" in n or n.startswith(("blk.0.rec", "blk.2.rec"))])
        total = sum(r.tensor(n).n_elements for n in r.tensor_names())
        m = re.search(r"parameters: (\d+) -> (\d+) \(([0-9.]+) of the input\)", text)
        self.assertIsNotNone(m, text)
        self.assertEqual(int(m.group(1)), sum(src.tensor(n).n_elements for n in src.tensor_names()))
        self.assertEqual(int(m.group(2)), total)
        out2, _ = self.convert(STORIES, "--recursions", 3, "--init", "average", "--rank", 16, "--roles", "q,v,down",
                               name="again.gguf")
        with open(out, "rb") as f1, open(out2, "rb") as f2:
            self.assertEqual(f1.read(), f2.read())

    def test_skip_exact(self):
        # cycle 2 of 4 layers, lower: stored j = layer j, so recursion 0 is exact (zero residual).
        out, text = self.convert(self.rand, "--recursions", 2, "--sharing", "cycle", "--init", "lower", "--rank", 4)
        self.assertIn("28 LoRA pairs (14 of zero residual)", text)  # 4 positions x 7 roles; recursion 0 exact
        r = morgguf.GGUFReader(out)
        b = r.tensor_floats("blk.0.rec.0.attn_q.lora_b")
        self.assertTrue(all(x == 0 for x in b))
        out, text = self.convert(self.rand, "--recursions", 2, "--sharing", "cycle", "--init", "lower", "--rank", 4,
                                 "--skip-exact")
        names = morgguf.GGUFReader(out).tensor_names()
        self.assertNotIn("blk.0.rec.0.attn_q.lora_a", names)
        self.assertIn("blk.0.rec.1.attn_q.lora_a", names)

    def test_train_py_reads_it(self):
        """tools/train.py's model_from_gguf (uptraining) loads the output and computes what the
        engine computes: LoRA of every rank, the Q/K permutation, and the per-recursion norms
        where its ModelConfig has norm_overrides (else shared norms only). Its head is tied to
        the embedding, hence a tied source (docs/RELAX.md). Needs PyTorch; skipped without it."""
        self.need_lib()
        try:
            import torch
        except ImportError:
            self.skipTest("PyTorch not installed")
        import train
        tied = os.path.join(DATA, "vanilla-tied.gguf")
        norms = [["--no-norm-overrides"]] + ([[]] if "norm_overrides" in train.ModelConfig.DEFAULTS else [])
        for rank, extra in [(r, e) for r in ("4", "full") for e in norms]:
            out, _ = self.convert(tied, "--recursions", 2, "--sharing", "cycle", "--init", "average", "--rank", rank,
                                  *extra)
            m = train.model_from_gguf(out).double().eval()
            with torch.no_grad():
                got = m(torch.tensor([RAND_TOKENS]), policy="eval")["logits"][0].tolist()
            d = max_diff(logits(out, RAND_TOKENS), got)
            self.assertLess(d, TOL, (rank, extra, d))
        # what the trainer cannot hold is refused, not dropped
        out, _ = self.convert(STORIES, "--recursions", 3, "--rank", "4")
        with self.assertRaises(SystemExit) as cm:
            train.model_from_gguf(out)
        self.assertIn("output.weight", str(cm.exception))
        out, _ = self.convert(tied, "--recursions", 2, "--sharing", "cycle", "--rank", "4", "--skip-exact")
        with self.assertRaises(SystemExit) as cm:
            train.model_from_gguf(out)
        self.assertIn("--skip-exact", str(cm.exception))

    # -- refusals ---------------------------------------------------------------------------
    def test_refusals(self):
        out = self.path("refused.gguf")
        cases = [
            ([os.path.join(DATA, "qwen2.gguf"), out, "--recursions", 2, "--sharing", "cycle"], 1, "biases"),
            ([os.path.join(DATA, "gemma2.gguf"), out, "--recursions", 2, "--sharing", "cycle"], 1, "post-attention"),
            ([os.path.join(DATA, "phi3.gguf"), out, "--recursions", 2, "--sharing", "cycle"], 1, "architecture phi3"),
            ([os.path.join(DATA, "llama-rope-freqs.gguf"), out, "--recursions", 2, "--sharing", "cycle"], 1,
             "rope_freqs.weight"),
            ([os.path.join(DATA, "cycle-lora.gguf"), out, "--recursions", 2], 1, "already recursive"),
            ([STORIES, out, "--recursions", 2], 1, "5 layers do not split into 2 recursions with middle_cycle"),
            ([STORIES, out, "--recursions", 2, "--sharing", "cycle"], 1, "cycle: 5; sequence: 5; middle_cycle: 3"),
            ([STORIES, out, "--recursions", 3, "--rank", "-2"], 2, "--rank '-2'"),
            ([STORIES, out, "--recursions", 3, "--rank", "many"], 2, "--rank 'many'"),
            ([STORIES, out, "--recursions", 1], 2, "--recursions '1'"),
            ([STORIES, out, "--recursions", "x"], 2, "--recursions 'x'"),
            ([STORIES, out], 2, "--recursions N is required"),
            ([STORIES, out, "--recursions", 3, "--init", "upper"], 2, "--init 'upper'"),
            ([STORIES, out, "--recursions", 3, "--sharing", "ring"], 2, "--sharing 'ring'"),
            ([STORIES, out, "--recursions", 3, "--roles", "q,qk"], 2, "--roles 'q,qk'"),
            ([STORIES, out, "--recursions", 3, "--type", "q8_0"], 2, "--type 'q8_0'"),
            ([STORIES, out, "--recursions", 3, "--lora-scale", "0"], 2, "--lora-scale '0'"),
            ([STORIES, out, "--recursions", 3, "--frobnicate"], 2, "unknown option '--frobnicate'"),
            ([STORIES, out, "--recursions"], 2, "--recursions needs a value"),
            ([STORIES, STORIES, "--recursions", 3], 2, "is the input"),
            ([os.path.join(DATA, "stories260K.bin"), out, "--recursions", 3], 1, "stories260K.bin: not a GGUF file"),
            ([self.path("missing.gguf"), out, "--recursions", 3], 1, "missing.gguf"),
            ([STORIES, os.path.join(self.tmp.name, "no", "dir.gguf"), "--recursions", 3], 1, "cannot create"),
        ]
        for args, rc, msg in cases:
            res = run(*args)
            self.assertEqual(res.returncode, rc, (args, res.stdout, res.stderr))
            self.assertIn(msg, res.stderr, args)
            self.assertTrue(res.stderr.startswith("mor-relax: "), res.stderr)
            self.assertFalse(os.path.exists(out) or os.path.exists(out + ".part"), args)


if __name__ == "__main__":
    unittest.main()
