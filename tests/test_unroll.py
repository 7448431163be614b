#!/usr/bin/env python3
"""tools/mor-unroll: a recursive `mor` file and its unrolled `llama` file compute the same
logits (the engine runs both, token by token), also with per-recursion overrides and with
`norm` RoPE; the unrolled file stores every layer; what has no vanilla equivalent is refused
with a message naming it (exit status 1, no traceback).

    python3 tests/test_unroll.py [-v]
"""
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
DATA = os.path.join(ROOT, "tests", "data")
sys.path.insert(0, TOOLS)
sys.path.insert(0, os.path.join(ROOT, "python"))
import morgguf  # noqa: E402
import mor  # noqa: E402

UNROLL = os.path.join(TOOLS, "mor-unroll")


def unroll(*args):
    p = subprocess.run([sys.executable, "-S", UNROLL] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, cwd=ROOT)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def logits_per_token(path, tokens):
    """Logits after each token, stepping one token at a time (F32 compute)."""
    with mor.Model(path) as m:
        with m.session(n_ctx=64) as s:
            out = []
            for t in tokens:
                s.step([t])
                out.append(list(s.logits()))
            return out


class Unroll(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def same_function(self, name, n_tokens=12):
        src = os.path.join(DATA, name)
        dst = os.path.join(self.tmp.name, "unrolled.gguf")
        rc, out, err = unroll(src, "-o", dst)
        self.assertEqual(rc, 0, err)
        r, u = morgguf.GGUFReader(src), morgguf.GGUFReader(dst)
        L = r.get("mor.block_count")
        self.assertEqual(u.get("general.architecture"), "llama")
        self.assertEqual(u.get("llama.block_count"), L)
        self.assertEqual(sum(1 for n in u.tensor_names() if n.endswith(".attn_q.weight")), L)
        V = r.tensor("token_embd.weight").dims[1]
        toks = [(7 * i + 3) % V for i in range(n_tokens)]
        a, b = logits_per_token(src, toks), logits_per_token(dst, toks)
        # the same products summed in another order (heads' rows permuted for RoPE): F32 rounding
        for i, (x, y) in enumerate(zip(a, b)):
            scale = max(abs(v) for v in x)
            diff = max(abs(p - q) for p, q in zip(x, y))
            self.assertLess(diff, 1e-4 * max(1.0, scale), "%s: token %d differs by %g" % (name, i, diff))
            self.assertEqual(max(range(V), key=x.__getitem__), max(range(V), key=y.__getitem__))
        return r, u

    def test_middle_cycle_default_model(self):
        r, u = self.same_function(os.path.join("models", "default.gguf"), n_tokens=8)
        # exit heads dropped, tokenizer kept
        self.assertFalse([n for n in u.tensor_names() if n.startswith("exit.")])
        self.assertEqual(u.get("tokenizer.ggml.tokens"), r.get("tokenizer.ggml.tokens"))

    def test_strategies_and_overrides(self):
        for name in ("cycle.gguf", "sequence.gguf", "middle_cycle.gguf", "middle_sequence.gguf",
                     "middle_cycle-norm.gguf", "middle_cycle-untied.gguf", "middle_cycle-bf16.gguf", "middle_cycle-f16.gguf"):
            with self.subTest(name=name):
                self.same_function(name)

    def test_override_is_used(self):
        # the unrolled layers of a file with per-recursion overrides are not all the same bytes
        src = os.path.join(DATA, "middle_cycle-untied.gguf")
        dst = os.path.join(self.tmp.name, "u.gguf")
        self.assertEqual(unroll(src, "-o", dst)[0], 0)
        u = morgguf.GGUFReader(dst)
        r = morgguf.GGUFReader(src)
        over = [n for n in r.tensor_names() if ".rec." in n]
        self.assertTrue(over)
        for role in ("attn_norm", "attn_q"):
            got = set(u.tensor_bytes("blk.%d.%s.weight" % (l, role)) for l in range(1, u.get("llama.block_count") - 1))
            self.assertGreater(len(got), 1, role)

    def test_refusals(self):
        dst = os.path.join(self.tmp.name, "x.gguf")
        cases = [("vanilla.gguf", "already vanilla"), ("expert.gguf", "router"),
                 ("token.gguf", "router"), ("cycle-lora.gguf", "LoRA"),
                 ("middle_cycle-kvshare.gguf", "KV sharing"), ("qwen2.gguf", "arch"),
                 ("middle_cycle-dora.gguf", "LoRA"), ("cycle-adapt.gguf", "adaption prompts"),
                 ("middle_cycle-recenc.gguf", "recursion encodings")]
        for name, what in cases:
            with self.subTest(name=name):
                rc, out, err = unroll(os.path.join(DATA, name), "-o", dst)
                self.assertEqual(rc, 1, out + err)
                self.assertIn(what, err)
                self.assertNotIn("Traceback", err)
        rc, out, err = unroll(os.path.join(self.tmp.name, "missing.gguf"), "-o", dst)
        self.assertEqual(rc, 1)
        self.assertIn("missing.gguf", err)
        bad = os.path.join(self.tmp.name, "bad.gguf")
        with open(bad, "wb") as f:
            f.write(b"GGUF\x03\x00\x00\x00" + b"\xff" * 32)
        rc, out, err = unroll(bad, "-o", dst)
        self.assertEqual(rc, 1)
        self.assertNotIn("Traceback", err)


if __name__ == "__main__":
    unittest.main()
