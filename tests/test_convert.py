#!/usr/bin/env python3
"""Tests of tools/mor-convert (standard library only; no torch needed).

    python3 tests/test_convert.py [-v] [TestClass.test_name ...]

* Each checkpoint layout of tests/data/hf (written by tools/make-hf-fixtures.py with torch in
  the official layouts) is converted into a temporary directory; the GGUF file is checked with
  tools/morgguf.py (keys, tensor names, shapes, types, shared tensors stored once, overrides only
  where the checkpoint differs), then run by the C engine (build/mor-run, or $MOR_RUN) on the
  fixture's prompt: the greedy tokens (and, for router models, the depths) must equal what the
  float64 reference computed from the original checkpoint. Without build/mor-run those engine
  checks are skipped (run `make` first).
* Variants (PEFT adapter only, YAML versus flags, --arch, --type, inferred sharing strategies,
  aliases dropped) are built from the fixtures in the temporary directory.
* Bad inputs: each must exit with status 1 and a message naming the problem, no traceback.

The converter runs as `python3 -S tools/mor-convert`, without site-packages, which also proves
it needs nothing beyond the standard library.
"""

import json
import os
import pickle
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
HF = os.path.join(ROOT, "tests", "data", "hf")
CONVERT = os.path.join(TOOLS, "mor-convert")
MOR_RUN = os.environ.get("MOR_RUN") or os.path.join(ROOT, "build", "mor-run")
sys.path.insert(0, TOOLS)

import morgguf  # noqa: E402
from morconvert import floats, yamlmini  # noqa: E402
from morconvert.safetensors import SafetensorsFile, write_safetensors  # noqa: E402
from morconvert.torchzip import TorchZipFile  # noqa: E402
from morconvert.common import ConvertError  # noqa: E402

ROLES = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
         "ffn_up", "ffn_down")
SUB = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
       "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
       "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
       "ffn_norm": "post_attention_layernorm"}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def convert(*args):
    """Run mor-convert; returns (exit status, stdout, stderr)."""
    p = subprocess.run([sys.executable, "-S", CONVERT] + [str(a) for a in args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def read_fix(path):
    fx = {}
    with open(path) as f:
        lines = f.read().split("\n")
    assert lines[0] == "mor-fixture 1"
    for ln in lines[1:]:
        t = ln.split()
        if t and t[0] in ("prompt", "greedy", "depths"):
            fx[t[0]] = [int(x) for x in t[2:]]
            assert len(fx[t[0]]) == int(t[1])
        elif t and t[0] == "model":
            fx["model"] = t[1]
    return fx


def engine(gguf, prompt, n):
    """Greedy ids and per-generated-token depths from build/mor-run."""
    p = subprocess.run([MOR_RUN, "-m", gguf, "--ids-prompt", " ".join(map(str, prompt)), "-n", str(n), "--ids",
                        "--ignore-eos", "--stats"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = p.stderr.decode("utf-8", "replace")
    if p.returncode != 0:
        raise AssertionError("mor-run failed on %s: %s" % (gguf, err))
    ids = [int(x) for x in p.stdout.decode().split()]
    depths = None
    m = re.search(r"per generated token \(depth[^)]*\):(.*)", err)
    if m:
        depths = [int(x.split("/")[0]) for x in m.group(1).split()]
    else:
        m = re.search(r"depths:(.*)", err)
        if m:
            depths = [int(x) for x in m.group(1).split()]
    return ids, depths


def gguf(path):
    return morgguf.GGUFReader(path)


def copy_fixture(name, dst):
    d = os.path.join(dst, name)
    shutil.copytree(os.path.join(HF, name), d)
    return d


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def read_text(path):
    with open(path) as f:
        return f.read()


def load_json(path):
    with open(path) as f:
        return json.load(f)


def save_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def st_items(path):
    """A safetensors file as a list of (name, dtype, shape, bytes)."""
    f = SafetensorsFile(path)
    return [(k, t.dtype, list(t.shape), bytes(t.data() if t.dtype in ("F32", "F16", "BF16") else
                                                t._get())) for k, t in f.tensors.items()]


def f32_bytes(vals):
    return struct.pack("<%df" % len(vals), *vals)


def rand_f32(rng, n, std=0.1):
    return f32_bytes([rng.gauss(0, std) for _ in range(n)])


# A torch.save zip written with the standard library: the pickle is assembled from opcodes
# (GLOBAL torch._utils _rebuild_tensor_v2 etc.) exactly as torch writes it (protocol 2).
def _pstr(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _pint(v):
    return b"J" + struct.pack("<i", v)


def _ptuple(items):
    return b"(" + b"".join(items) + b"t"


def write_torch_zip(path, tensors, archive="archive", extra_pickle=None):
    """tensors: list of (key, storage dtype class name, storage key, storage bytes, offset,
    size, stride); the same storage key may be given several times (aliases)."""
    p = [b"\x80\x02", b"ccollections\nOrderedDict\n", b")R", b"q\x00"]  # PROTO 2, OrderedDict()
    storages = {}
    for key, cls, skey, data, offset, size, stride in tensors:
        esize = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "DoubleStorage": 8,
                 "CharStorage": 1}[cls]
        storages[skey] = data
        p.append(b"h\x00")                                           # the dict (memo 0)
        p.append(_pstr(key))
        p.append(b"ctorch._utils\n_rebuild_tensor_v2\n")
        pid = _ptuple([_pstr("storage"), b"ctorch\n%s\n" % cls.encode(), _pstr(skey), _pstr("cpu"),
                       _pint(len(data) // esize)])
        args = _ptuple([pid + b"Q", _pint(offset), _ptuple([_pint(s) for s in size]),
                        _ptuple([_pint(s) for s in stride]), b"\x89",
                        b"ccollections\nOrderedDict\n)R"])
        p.append(args + b"R")
        p.append(b"s0")                                              # SETITEM, POP the dict copy
    if extra_pickle:
        p.append(extra_pickle)
    p.append(b".")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(archive + "/data.pkl", b"".join(p))
        for skey, data in storages.items():
            z.writestr(archive + "/data/" + skey, data)
        z.writestr(archive + "/version", b"3\n")


# ---------------------------------------------------------------------------------------------
# the fixture layouts, end to end
# ---------------------------------------------------------------------------------------------

class Base(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mor-convert-test-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def conv(self, src, *args, **kw):
        out = os.path.join(self.tmp, kw.get("out", "out.gguf"))
        rc, so, se = convert(src, "-o", out, *args)
        self.assertEqual(rc, 0, "mor-convert failed:\n" + se)
        self.assertNotIn("Traceback", se)
        return out, se

    def fails(self, src, needle, *args):
        rc, so, se = convert(src, "-o", os.path.join(self.tmp, "bad.gguf"), *args)
        self.assertEqual(rc, 1, "expected exit status 1, got %d:\n%s" % (rc, se))
        self.assertNotIn("Traceback", se)
        self.assertIn("mor-convert: error:", se)
        self.assertIn(needle, se)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad.gguf")))
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "bad.gguf.part")))
        return se

    def numbers(self, path, layout):
        """The engine's greedy tokens (and depths) on the converted file equal the reference's."""
        if not os.path.exists(MOR_RUN):
            self.skipTest("%s not built (run make)" % MOR_RUN)
        fx = read_fix(os.path.join(HF, layout, "expected.fix"))
        ids, depths = engine(path, fx["prompt"], len(fx["greedy"]))
        self.assertEqual(ids, fx["greedy"], "greedy tokens of %s differ from the reference" % layout)
        if "depths" in fx and depths is not None:
            n = len(fx["greedy"]) - 1
            self.assertEqual(depths[:n], fx["depths"][1:], "depths of %s differ" % layout)

    def tensor_names(self, r):
        return set(t.name for t in r.tensors)

    def assert_tensors(self, r, names):
        self.assertEqual(self.tensor_names(r), set(names))


def blk_names(n_store, extra=()):
    out = ["token_embd.weight", "output_norm.weight"]
    for i in range(n_store):
        out += ["blk.%d.%s.weight" % (i, role) for role in ROLES]
    return out + list(extra)


class TestLayouts(Base):
    def test_llama_vanilla(self):
        out, se = self.conv(os.path.join(HF, "llama"), "--check")
        self.assertIn("check:", se)
        r = gguf(out)
        self.assertEqual(r.get("general.architecture"), "llama")
        want = {"llama.context_length": 128, "llama.embedding_length": 32, "llama.feed_forward_length": 64,
                "llama.block_count": 3, "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                "llama.rope.dimension_count": 8, "llama.vocab_size": 320}
        for k, v in want.items():
            self.assertEqual(r.get(k), v, k)
        self.assertAlmostEqual(r.get("llama.attention.layer_norm_rms_epsilon"), 1e-5, places=9)
        self.assertEqual(r.get("llama.rope.freq_base"), 10000.0)
        self.assertEqual(r.get("general.file_type"), 32)   # mostly BF16
        names = ["token_embd.weight", "output_norm.weight", "output.weight"] + \
            ["blk.%d.%s.weight" % (l, role) for l in range(3) for role in ROLES]
        self.assert_tensors(r, names)
        self.assertEqual(r.tensor("blk.0.attn_k.weight").dims, [32, 16])
        self.assertEqual(r.tensor("blk.0.ffn_down.weight").dims, [64, 32])
        self.assertEqual(r.tensor("output.weight").dims, [32, 320])
        self.assertEqual(r.tensor("blk.1.attn_q.weight").type_name, "BF16")
        self.assertEqual(r.tensor("blk.1.ffn_norm.weight").type_name, "F32")
        # Q and K rows permuted from rotate_half to adjacent pairs; V untouched
        src = SafetensorsFile(os.path.join(HF, "llama", "model.safetensors")).tensors
        for role, heads in (("attn_q", 4), ("attn_k", 2)):
            raw = bytes(src["model.layers.1.%s.weight" % SUB[role]].data())
            rb = 32 * 2
            rows = [raw[i * rb:(i + 1) * rb] for i in range(heads * 8)]
            perm = b"".join(rows[h * 8 + j * 4 + i] for h in range(heads) for i in range(4) for j in range(2))
            self.assertEqual(r.tensor_bytes("blk.1.%s.weight" % role), perm, role)
        self.assertEqual(r.tensor_bytes("blk.1.attn_v.weight"),
                         bytes(src["model.layers.1.self_attn.v_proj.weight"].data()))
        # vocabulary
        tj = load_json(os.path.join(HF, "llama", "tokenizer.json"))
        toks = r.get("tokenizer.ggml.tokens")
        self.assertEqual(r.get("tokenizer.ggml.model"), "gpt2")
        self.assertEqual(r.get("tokenizer.ggml.pre"), "smollm")
        self.assertEqual(len(toks), 320)
        for t, i in tj["model"]["vocab"].items():
            self.assertEqual(toks[i], t)
        self.assertEqual(r.get("tokenizer.ggml.merges"), tj["model"]["merges"])
        types = r.get("tokenizer.ggml.token_type")
        self.assertEqual(types[:4], [3, 3, 3, 1])
        self.assertEqual(r.get("tokenizer.ggml.bos_token_id"), 0)
        self.assertEqual(r.get("tokenizer.ggml.eos_token_id"), 0)
        self.numbers(out, "llama")

    def test_llama_as_mor(self):
        # the same model as arch mor with one recursion: no permutation, rope neox
        out, _ = self.conv(os.path.join(HF, "llama"), "--arch", "mor")
        r = gguf(out)
        self.assertEqual(r.get("general.architecture"), "mor")
        self.assertEqual(r.get("mor.recursion.count"), 1)
        self.assertEqual(r.get("mor.rope.type"), "neox")
        self.numbers(out, "llama")

    def test_llama_tied_and_pre(self):
        d = copy_fixture("llama", self.tmp)
        cfg = load_json(os.path.join(d, "config.json"))
        cfg["tie_word_embeddings"] = True
        save_json(os.path.join(d, "config.json"), cfg)
        items = [x for x in st_items(os.path.join(d, "model.safetensors")) if x[0] != "lm_head.weight"]
        write_safetensors(os.path.join(d, "model.safetensors"), items)
        out, _ = self.conv(d, "--pre", "gpt-2", "--type", "f16")
        r = gguf(out)
        self.assertFalse(r.has_tensor("output.weight"))
        self.assertEqual(r.get("tokenizer.ggml.pre"), "gpt-2")
        self.assertEqual(r.tensor("token_embd.weight").type_name, "F16")
        self.assertEqual(r.get("general.file_type"), 1)
        out2, se = self.conv(d, "--no-vocab", out="novocab.gguf")
        self.assertNotIn("tokenizer.ggml.model", gguf(out2).fields)

    def test_mor_expert_middle_cycle_bin(self):
        d = os.path.join(HF, "mor-expert")
        out, se = self.conv(d, "--yaml", os.path.join(d, "train.yaml"), "--check")
        r = gguf(out)
        self.assertEqual(r.get("general.architecture"), "mor")
        want = {"mor.format_version": 1, "mor.block_count": 8, "mor.recursion.count": 3,
                "mor.recursion.sharing": "middle_cycle", "mor.rope.type": "neox",
                "mor.router.type": "expert", "mor.router.arch": "linear", "mor.router.func": "sigmoid",
                "mor.router.gating": "weighted", "mor.attention.key_length": 8}
        for k, v in want.items():
            self.assertEqual(r.get(k), v, k)
        self.assertAlmostEqual(r.get("mor.router.alpha"), 0.1, places=7)
        self.assertEqual(r.get("mor.router.temp"), 1.0)
        self.assertNotIn("mor.kv_sharing", r.fields)
        # 4 stored layers (first, 2 shared, last); attention untied for recursions 1 and 2 of
        # the shared slots 1 and 2; MLP and norms shared: no overrides for them
        over = ["blk.%d.rec.%d.%s.weight" % (i, rr, role) for i in (1, 2) for rr in (1, 2)
                for role in ("attn_q", "attn_k", "attn_v", "attn_output")]
        routers = ["router.%d.weight" % rr for rr in range(3)]
        self.assert_tensors(r, blk_names(4, over + routers))
        self.assertEqual(r.tensor("router.2.weight").dims, [32, 1])
        self.assertEqual(r.tensor("router.2.weight").type_name, "F32")
        # the stored attention is recursion 0's (model.layers.1.block.*), byte for byte
        src = TorchZipFile(os.path.join(d, "pytorch_model.bin")).tensors
        self.assertEqual(r.tensor_bytes("blk.2.attn_q.weight"),
                         bytes(src["model.layers.1.block.1.self_attn.q_proj.weight"].data()))
        self.assertEqual(r.tensor_bytes("blk.2.rec.2.attn_q.weight"),
                         bytes(src["model.layers.3.block.1.self_attn.q_proj.weight"].data()))
        self.assertEqual(r.tensor_bytes("blk.3.ffn_up.weight"),
                         bytes(src["model.layers.4.mlp.up_proj.weight"].data()))
        self.assertIn("attn_q x4", se)
        self.numbers(out, "mor-expert")

    def test_mor_expert_yaml_and_flags(self):
        d = copy_fixture("mor-expert", self.tmp)
        y = read_text(os.path.join(d, "train.yaml"))
        y = y.replace("alpha: 0.1", "alpha: 0.25").replace("gating: weighted  # weighted, additive",
                                                           "gating: additive").replace("temp: 1.0", "temp: 2.0")
        with open(os.path.join(d, "alt.yaml"), "w") as f:
            f.write(y)
        out, _ = self.conv(d, "--yaml", os.path.join(d, "alt.yaml"))
        r = gguf(out)
        self.assertAlmostEqual(r.get("mor.router.alpha"), 0.25, places=7)
        self.assertEqual(r.get("mor.router.gating"), "additive")
        self.assertEqual(r.get("mor.router.temp"), 2.0)
        # flags override the YAML
        out, _ = self.conv(d, "--yaml", os.path.join(d, "alt.yaml"), "--router-alpha", "0.1",
                           "--router-gating", "weighted", "--router-temp", "1", "--router-func", "tanh",
                           out="flags.gguf")
        r = gguf(out)
        self.assertAlmostEqual(r.get("mor.router.alpha"), 0.1, places=7)
        self.assertEqual(r.get("mor.router.func"), "tanh")
        # without YAML or flags: the official defaults, with a warning
        out, se = self.conv(d, out="defaults.gguf")
        self.assertIn("assuming the official defaults", se)
        self.assertEqual(gguf(out).get("mor.router.func"), "sigmoid")
        self.numbers(out, "mor-expert")
        # a YAML that contradicts the layout
        with open(os.path.join(d, "cycle.yaml"), "w") as f:
            f.write(y.replace("sharing: middle_cycle", "sharing: cycle"))
        self.fails(d, "the checkpoint's expert-choice layout is middle_cycle with 3 recursions",
                   "--yaml", os.path.join(d, "cycle.yaml"))
        with open(os.path.join(d, "token.yaml"), "w") as f:
            f.write(y.replace("type: expert", "type: token"))
        self.fails(d, "says router token", "--yaml", os.path.join(d, "token.yaml"))
        self.fails(d, "arch llama cannot hold a router", "--arch", "llama")

    def test_mor_expert_cycle_mlp_aux_safetensors(self):
        d = os.path.join(HF, "mor-expert-cycle")
        out, se = self.conv(d, "--yaml", os.path.join(d, "train.yaml"), "--check")
        r = gguf(out)
        self.assertEqual(r.get("mor.recursion.sharing"), "cycle")
        self.assertEqual(r.get("mor.block_count"), 3)
        self.assertEqual(r.get("mor.router.arch"), "mlp")
        over = ["blk.0.rec.%d.%s.weight" % (rr, role) for rr in (1, 2)
                for role in ("attn_q", "attn_k", "attn_v", "attn_output")]
        routers = ["%s.%d.%s.weight" % (p, rr, fc) for p in ("router", "router_aux") for rr in range(3)
                   for fc in ("fc1", "fc2")]
        self.assert_tensors(r, blk_names(1, over + routers + ["output.weight"]))
        self.assertEqual(r.tensor("router_aux.1.fc1.weight").dims, [32, 64])
        self.assertEqual(r.tensor("router.1.fc2.weight").dims, [64, 1])
        self.assertEqual(r.tensor("router.1.fc2.weight").type_name, "F32")   # widened from BF16
        self.assertEqual(r.tensor("blk.0.ffn_up.weight").type_name, "BF16")
        self.assertIn("taken from their stored layer", se)
        self.numbers(out, "mor-expert-cycle")

    def test_mor_token_middle_cycle(self):
        d = os.path.join(HF, "mor-token")
        out, se = self.conv(d, "--yaml", os.path.join(d, "train.yaml"), "--check")
        r = gguf(out)
        want = {"mor.block_count": 5, "mor.recursion.count": 3, "mor.recursion.sharing": "middle_cycle",
                "mor.router.type": "token", "mor.router.arch": "linear", "mor.router.func": "softmax",
                "mor.kv_sharing": True}
        for k, v in want.items():
            self.assertEqual(r.get(k), v, k)
        self.assertEqual(r.get("mor.router.alpha"), 1.0)
        # fully tied: 3 stored layers, no overrides; tied lm_head -> no output.weight
        self.assert_tensors(r, blk_names(3, ["router.weight", "router.bias"]))
        self.assertEqual(r.tensor("router.weight").dims, [32, 3])
        self.assertEqual(r.tensor("router.bias").dims, [3])
        self.numbers(out, "mor-token")

    def test_mor_token_without_yaml(self):
        d = os.path.join(HF, "mor-token")
        # kv_sharing from config.json, router settings from flags
        out, se = self.conv(d, "--router-func", "softmax", "--router-alpha", "1")
        self.assertNotIn("warning: no training YAML", se)
        r = gguf(out)
        self.assertEqual(r.get("mor.kv_sharing"), True)
        self.numbers(out, "mor-token")
        out, se = self.conv(d, "--no-kv-sharing", out="nokv.gguf")
        self.assertIn("assuming the official defaults", se)
        self.assertNotIn("mor.kv_sharing", gguf(out).fields)

    def test_mor_token_cycle_layout(self):
        # model.layers.block_list.R.M.* (token-choice over a plain cycle), built from the fixture
        d = copy_fixture("mor-token", self.tmp)
        items = []
        for k, dt, shape, raw in st_items(os.path.join(d, "model.safetensors")):
            if k.startswith("model.layers.0.") or k.startswith("model.layers.2."):
                continue
            items.append((k.replace("model.layers.1.", "model.layers."), dt, shape, raw))
        write_safetensors(os.path.join(d, "model.safetensors"), items)
        cfg = load_json(os.path.join(d, "config.json"))
        cfg["num_hidden_layers"] = 3
        del cfg["kv_sharing"]
        save_json(os.path.join(d, "config.json"), cfg)
        out, _ = self.conv(d)
        r = gguf(out)
        self.assertEqual(r.get("mor.recursion.sharing"), "cycle")
        self.assertEqual(r.get("mor.recursion.count"), 3)
        self.assert_tensors(r, blk_names(1, ["router.weight", "router.bias"]))

    def test_recursive_inferred(self):
        d = os.path.join(HF, "recursive")
        out, se = self.conv(d, "--check")
        self.assertIn("inferred from identical FFN weights", se)
        r = gguf(out)
        self.assertEqual(r.get("mor.recursion.sharing"), "cycle")
        self.assertEqual(r.get("mor.recursion.count"), 3)
        self.assertEqual(r.get("mor.block_count"), 6)
        # ln_share false: only the norms of recursions 1 and 2 are overrides
        over = ["blk.%d.rec.%d.%s.weight" % (i, rr, role) for i in (0, 1) for rr in (1, 2)
                for role in ("attn_norm", "ffn_norm")]
        self.assert_tensors(r, blk_names(2, over))
        self.assertEqual(r.tensor("blk.0.attn_q.weight").type_name, "F16")
        self.numbers(out, "recursive")
        # declared sharing gives the same file
        out2, _ = self.conv(d, "--sharing", "cycle", "--recursions", "3", out="declared.gguf")
        self.assertEqual(read_bytes(out), read_bytes(out2))
        # unrolled back to a plain Llama file (Q/K permuted): same numbers
        out3, _ = self.conv(d, "--arch", "llama", out="unrolled.gguf")
        r3 = gguf(out3)
        self.assertEqual(r3.get("general.architecture"), "llama")
        self.assertEqual(len(r3.tensors), 2 + 9 * 6)
        self.numbers(out3, "recursive")

    def test_recursive_types(self):
        d = os.path.join(HF, "recursive")
        src = SafetensorsFile(os.path.join(d, "model-00001-of-00002.safetensors")).tensors
        name = "model.layers.0.mlp.up_proj.weight"
        if name not in src:
            src = SafetensorsFile(os.path.join(d, "model-00002-of-00002.safetensors")).tensors
        vals = floats.to_floats(src[name].data(), "F16")
        for typ, tname in (("f32", "F32"), ("bf16", "BF16"), ("f16", "F16")):
            out, _ = self.conv(d, "--type", typ, out=typ + ".gguf")
            r = gguf(out)
            t = r.tensor("blk.0.ffn_up.weight")
            self.assertEqual(t.type_name, tname)
            self.assertEqual(r.tensor("blk.0.attn_norm.weight").type_name, "F32")
            got = list(r.tensor_floats("blk.0.ffn_up.weight"))
            want = {"F32": vals, "F16": vals, "BF16": list(morgguf.round_bf16(vals))}[tname]
            self.assertEqual(got, list(want), typ)

    def test_relaxed_official_dir(self):
        d = os.path.join(HF, "relaxed")
        out, se = self.conv(d, "--check")
        self.assertIn("scale 2 (adapter_config.json)", se)
        r = gguf(out)
        self.assertEqual(r.get("mor.recursion.sharing"), "cycle")
        self.assertEqual(r.get("mor.recursion.count"), 2)
        self.assertEqual(r.get("mor.lora.scale"), 2.0)
        lora = ["blk.%d.rec.%d.%s.%s" % (i, rr, role, ab) for i in (0, 1) for rr in (0, 1)
                for role in ("attn_q", "attn_v") for ab in ("lora_a", "lora_b")]
        self.assert_tensors(r, blk_names(2, lora))
        self.assertEqual(r.tensor("blk.1.rec.1.attn_v.lora_a").dims, [32, 4])
        self.assertEqual(r.tensor("blk.1.rec.1.attn_v.lora_b").dims, [4, 16])
        self.numbers(out, "relaxed")

    def test_relaxed_scale_sources(self):
        d = copy_fixture("relaxed", self.tmp)
        # in-checkpoint LoRA keys only, scale from the YAML (alpha = r * alpha_pattern)
        out, se = self.conv(d, "--no-adapter", "--yaml", os.path.join(d, "train.yaml"))
        self.assertIn("relaxation.lora.alpha_pattern", se)
        self.numbers(out, "relaxed")
        self.fails(d, "no scale", "--no-adapter")
        # PEFT's r / lora_alpha are overridden per module by rank_pattern / alpha_pattern
        ac = load_json(os.path.join(d, "adapter_config.json"))
        ac["r"], ac["lora_alpha"] = 16, 1
        save_json(os.path.join(d, "adapter_config.json"), ac)
        out, _ = self.conv(d, out="patterns.gguf")
        self.assertEqual(gguf(out).get("mor.lora.scale"), 2.0)
        ac["alpha_pattern"] = {}
        save_json(os.path.join(d, "adapter_config.json"), ac)
        out, _ = self.conv(d, out="alpha1.gguf")
        self.assertEqual(gguf(out).get("mor.lora.scale"), 0.25)
        ac["rank_pattern"] = {}
        save_json(os.path.join(d, "adapter_config.json"), ac)
        self.fails(d, "rank 16")
        ac["use_dora"] = True
        save_json(os.path.join(d, "adapter_config.json"), ac)
        self.fails(d, "adapter_config.json says use_dora = true, but the LoRA modules have no lora_magnitude_vector")

    def test_relaxed_base_plus_adapter(self):
        # base model.safetensors with plain keys + adapter_model.safetensors + adapter_config.json
        d = copy_fixture("relaxed", self.tmp)
        src = TorchZipFile(os.path.join(d, "pytorch_model.bin")).tensors
        items = []
        for k, t in src.items():
            if ".lora_" in k or k == "lm_head.weight":
                continue
            items.append((k.replace(".base_layer.weight", ".weight"), t.dtype, list(t.shape), bytes(t.data())))
        os.unlink(os.path.join(d, "pytorch_model.bin"))
        write_safetensors(os.path.join(d, "model.safetensors"), items)
        cfg = load_json(os.path.join(d, "config.json"))
        self.assertTrue(cfg["tie_word_embeddings"])
        out, se = self.conv(d)
        self.assertIn("adapter adapter_model.safetensors", se)
        self.numbers(out, "relaxed")
        # the adapter in another directory
        ad = os.path.join(self.tmp, "adapter")
        os.makedirs(ad)
        for fn in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.move(os.path.join(d, fn), os.path.join(ad, fn))
        out, _ = self.conv(d, "--adapter", ad, out="sep.gguf")
        self.numbers(out, "relaxed")
        # without the adapter it is a plain recursive model
        out, _ = self.conv(d, out="noadapter.gguf")
        self.assertNotIn("mor.lora.scale", gguf(out).fields)

    def test_relaxed_dora_official_dir(self):
        d = os.path.join(HF, "relaxed-dora")
        out, se = self.conv(d, "--check")
        self.assertIn("relaxations: DoRA magnitudes on 8 projections", se)
        r = gguf(out)
        self.assertEqual(r.get("mor.lora.scale"), 2.0)
        lora = ["blk.%d.rec.%d.%s.%s" % (i, rr, role, ab) for i in (0, 1) for rr in (0, 1)
                for role in ("attn_q", "attn_v") for ab in ("lora_a", "lora_b", "dora_m")]
        self.assert_tensors(r, blk_names(2, lora))
        self.assertEqual(r.tensor("blk.1.rec.1.attn_v.dora_m").dims, [16])
        self.assertEqual(r.tensor("blk.1.rec.1.attn_v.dora_m").type_name, "F32")
        self.numbers(out, "relaxed-dora")
        # the same from the state dict alone (lora_magnitude_vector.default.weight), the scale from the YAML
        out, se = self.conv(d, "--no-adapter", "--yaml", os.path.join(d, "train.yaml"), out="state-dict.gguf")
        self.assertIn("DoRA magnitudes on 8 projections", se)
        self.numbers(out, "relaxed-dora")

    def test_recenc_official_dir(self):
        d = os.path.join(HF, "recenc")
        out, se = self.conv(d, "--check")
        self.assertIn("relaxations: recursion encodings on 2 layers", se)
        r = gguf(out)
        self.assertEqual(r.get("mor.recursion.sharing"), "middle_cycle")
        self.assertEqual(r.get("mor.recursion.count"), 2)
        # the last layer of each recursion block: stored layer 2 at recursions 0 and 1
        self.assert_tensors(r, blk_names(4, ["blk.2.rec.0.rec_enc", "blk.2.rec.1.rec_enc"]))
        self.assertEqual(r.tensor("blk.2.rec.1.rec_enc").dims, [32])
        self.numbers(out, "recenc")

    def test_adapt_official_dir(self):
        d = os.path.join(HF, "adapt")
        out, se = self.conv(d, "--check")
        self.assertIn("relaxations: adaption prompts of 4 slots on 4 layers", se)
        r = gguf(out)
        names = ["blk.%d.rec.%d.adapt_%s" % (i, rr, k) for i in (0, 1) for rr in (0, 1) for k in ("prompt", "gate")]
        self.assert_tensors(r, blk_names(2, names))
        self.assertEqual(r.tensor("blk.1.rec.1.adapt_prompt").dims, [32, 4])
        self.assertEqual(r.tensor("blk.1.rec.1.adapt_gate").dims, [1])
        self.numbers(out, "adapt")
        out, se = self.conv(d, "--no-adapter", out="state-dict.gguf")
        self.numbers(out, "adapt")


# ---------------------------------------------------------------------------------------------
# sharing inference on synthetic checkpoints (standard library only)
# ---------------------------------------------------------------------------------------------

def synth_layers(rng, n):
    shapes = {"attn_q": (32, 32), "attn_k": (16, 32), "attn_v": (16, 32), "attn_output": (32, 32),
              "ffn_gate": (64, 32), "ffn_up": (64, 32), "ffn_down": (32, 64), "attn_norm": (32,),
              "ffn_norm": (32,)}
    out = []
    for _ in range(n):
        lay = {}
        for role, shape in shapes.items():
            k = 1
            for s in shape:
                k *= s
            lay[role] = (list(shape), rand_f32(rng, k))
        out.append(lay)
    return out


def synth_checkpoint(d, per_layer, tie=True, cfg_extra=None, extra=()):
    """per_layer: list of layer dicts role -> (shape, bytes) (the same dict object for tied
    layers)."""
    os.makedirs(d, exist_ok=True)
    rng = random.Random(7)
    items = [("model.embed_tokens.weight", "F32", [64, 32], rand_f32(rng, 64 * 32)),
             ("model.norm.weight", "F32", [32], rand_f32(rng, 32))]
    for l, lay in enumerate(per_layer):
        for role, (shape, raw) in lay.items():
            items.append(("model.layers.%d.%s.weight" % (l, SUB[role]), "F32", shape, raw))
    items += list(extra)
    write_safetensors(os.path.join(d, "model.safetensors"), items)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
           "intermediate_size": 64, "num_hidden_layers": len(per_layer), "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "tie_word_embeddings": tie, "vocab_size": 64}
    cfg.update(cfg_extra or {})
    save_json(os.path.join(d, "config.json"), cfg)
    return d


class TestInference(Base):
    def infer(self, layers):
        d = synth_checkpoint(os.path.join(self.tmp, "ck"), layers)
        out, se = self.conv(d)
        return gguf(out), se

    def test_strategies(self):
        rng = random.Random(1)
        u = synth_layers(rng, 4)
        cases = {
            "cycle": ([u[0], u[1], u[0], u[1], u[0], u[1]], 3, 2),
            "sequence": ([u[0], u[0], u[0], u[1], u[1], u[1]], 3, 2),
            "middle_cycle": ([u[2], u[0], u[1], u[0], u[1], u[3]], 2, 4),
            "middle_sequence": ([u[2], u[0], u[0], u[1], u[1], u[3]], 2, 4),
        }
        for sharing, (layers, n_rec, n_store) in cases.items():
            r, se = self.infer(layers)
            self.assertEqual(r.get("mor.recursion.sharing"), sharing)
            self.assertEqual(r.get("mor.recursion.count"), n_rec, sharing)
            self.assertEqual(len(r.tensors), 2 + 9 * n_store, sharing)
            shutil.rmtree(os.path.join(self.tmp, "ck"))

    def test_vanilla_and_partial(self):
        rng = random.Random(2)
        r, _ = self.infer(synth_layers(rng, 4))
        self.assertEqual(r.get("general.architecture"), "llama")
        shutil.rmtree(os.path.join(self.tmp, "ck"))
        # per-recursion attention in a plain layout: FFN tied, attention differs
        u = synth_layers(rng, 4)
        layers = [dict(u[0]), dict(u[0])]
        layers[1]["attn_q"] = u[1]["attn_q"]
        r, se = self.infer(layers)
        self.assertEqual(r.get("mor.recursion.count"), 2)
        self.assertTrue(r.has_tensor("blk.0.rec.1.attn_q.weight"))
        self.assertEqual(len(r.tensors), 2 + 9 + 1)

    def test_dropped_aliases(self):
        # safetensors saving keeps one name per tied tensor: the others come from the map
        rng = random.Random(3)
        u = synth_layers(rng, 2)
        d = synth_checkpoint(os.path.join(self.tmp, "ck"), [u[0], u[1]])
        cfg = load_json(os.path.join(d, "config.json"))
        cfg["num_hidden_layers"] = 6
        save_json(os.path.join(d, "config.json"), cfg)
        out, se = self.conv(d, "--sharing", "cycle", "--recursions", "3")
        self.assertIn("36 layer tensors absent", se)
        self.assertEqual(len(gguf(out).tensors), 2 + 18)
        self.fails(d, "missing tensor model.layers.2.input_layernorm.weight")

    def test_misdeclared_sharing_warns(self):
        rng = random.Random(4)
        d = synth_checkpoint(os.path.join(self.tmp, "ck"), synth_layers(rng, 4))
        out, se = self.conv(d, "--sharing", "cycle", "--recursions", "2")
        self.assertIn("is the sharing right?", se)
        self.fails(d, "does not split", "--sharing", "cycle", "--recursions", "3")
        self.fails(d, "--sharing needs --recursions", "--sharing", "cycle")


# ---------------------------------------------------------------------------------------------
# readers and helpers (in process)
# ---------------------------------------------------------------------------------------------

class TestUnits(Base):
    def test_float_conversions(self):
        rng = random.Random(5)
        vals = [rng.gauss(0, 1) * 10 ** rng.randint(-40, 38) for _ in range(5000)]
        vals += [0.0, -0.0, float("inf"), -float("inf"), 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1e-45]
        import array
        b = array.array("f", vals).tobytes()
        self.assertEqual(floats.f32_to_bf16(b), morgguf.encode_floats(array.array("f", b), morgguf.BF16))
        nan = struct.pack("<I", 0xFFC12345) + struct.pack("<I", 0x7F800001)
        self.assertEqual(floats.f32_to_bf16(b + nan)[-4:], struct.pack("<HH", 0xFFC0, 0x7FC0))
        small = array.array("f", [v for v in vals if abs(v) < 60000]).tobytes()
        self.assertEqual(floats.f32_to_f16(small), morgguf.encode_floats(array.array("f", small), morgguf.F16))
        self.assertEqual(floats.bf16_to_f32(floats.f32_to_bf16(b)),
                         morgguf.decode_floats(floats.f32_to_bf16(b), morgguf.BF16).tobytes())
        with self.assertRaises(ConvertError):
            floats.f32_to_f16(f32_bytes([1.0, 70000.0]), "T")

    def test_streaming_pieces(self):
        # A tensor is converted in pieces of at most `size` source bytes, each released from a
        # mapped file once converted: memory does not grow with the checkpoint.
        from morconvert.common import SrcTensor
        from morconvert.layout import OutTensor
        vals = [float(i % 251) - 125.0 for i in range(10000)]
        raw = f32_bytes(vals)
        released = []
        src = SrcTensor("w", "F32", (100, 100), "m.safetensors", lambda: memoryview(raw),
                        release=lambda lo, hi: released.append((lo, hi)))
        pieces = list(OutTensor("w", src, "F16").chunks(size=4096))
        self.assertEqual(len(pieces), 10)
        self.assertTrue(all(len(p) <= 2048 for p in pieces))
        self.assertEqual(b"".join(pieces), floats.f32_to_f16(raw))
        self.assertEqual(released[0], (0, 4096))
        self.assertEqual(sum(min(hi, len(raw)) - lo for lo, hi in released), len(raw))
        # a mapped safetensors file gives its pages back (the released range must be legal)
        p = os.path.join(self.tmp, "s.safetensors")
        write_safetensors(p, [("w", "F32", [100, 100], raw)])
        t = SafetensorsFile(p).tensors["w"]
        self.assertEqual(b"".join(OutTensor("w", t, "F16").chunks(size=4096)), floats.f32_to_f16(raw))

    def test_yaml_subset(self):
        y = yamlmini.loads(read_text(os.path.join(HF, "mor-expert", "train.yaml")))
        self.assertEqual(y["recursive"], {"enable": True, "base_depth": None, "num_recursion": 3,
                                          "sharing": "middle_cycle", "ln_share": True,
                                          "initialization": "random"})
        self.assertEqual(y["relaxation"]["lora"]["target_modules"], ["q_proj", "v_proj"])
        self.assertEqual(y["mor"]["z_coeff"], 1e-5)
        self.assertEqual(y["learning_rate"], 3e-3)
        self.assertEqual(y["fixed_save_steps"], "1373,3433,11328")
        t = yamlmini.loads("a:\n- x\n- {k: [1, 2.5, null], 'q': \"s\\n\"}\nb: ~  # c\nc: 'it''s'\n")
        self.assertEqual(t, {"a": ["x", {"k": [1, 2.5, None], "q": "s\n"}], "b": None, "c": "it's"})
        for bad, needle in (("a: &x 1", "anchors"), ("a: *x", "aliases"), ("a: |\n  t", "block scalars"),
                            ("a: 1\na: 2", "duplicate key"), ("a:\n  b: 1\n c: 2", "bad indentation"),
                            ("a: 'open", "unterminated")):
            with self.assertRaises(yamlmini.YAMLError) as cm:
                yamlmini.loads(bad, "t.yaml")
            self.assertIn(needle, str(cm.exception))
            self.assertIn("t.yaml line", str(cm.exception))

    def test_torch_zip_without_torch(self):
        p = os.path.join(self.tmp, "m.bin")
        data = f32_bytes([float(i) for i in range(12)])
        write_torch_zip(p, [("a", "FloatStorage", "0", data, 0, (3, 4), (4, 1)),
                            ("alias", "FloatStorage", "0", data, 0, (3, 4), (4, 1)),
                            ("t", "FloatStorage", "0", data, 0, (4, 3), (1, 4)),
                            ("row", "FloatStorage", "0", data, 4, (2, 4), (4, 1))])
        z = TorchZipFile(p)
        self.assertEqual(bytes(z.tensors["a"].data()), data)
        self.assertTrue(z.tensors["a"].same(z.tensors["alias"]))
        self.assertEqual(floats.to_floats(z.tensors["t"].data(), "F32"),
                         [0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0])
        self.assertEqual(floats.to_floats(z.tensors["row"].data(), "F32"), [float(i) for i in range(4, 12)])

    def test_unpickler_refuses_code(self):
        marker = os.path.join(self.tmp, "pwned")

        class Evil(object):
            def __reduce__(self):
                return (os.system, ("touch %s" % marker,))

        bad = pickle.dumps({"model.norm.weight": Evil()}, protocol=2)
        p = os.path.join(self.tmp, "evil.bin")
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data.pkl", bad)
        with self.assertRaises(ConvertError) as cm:
            TorchZipFile(p)
        self.assertIn("refusing", str(cm.exception))
        self.assertIn("system", str(cm.exception))
        self.assertFalse(os.path.exists(marker))
        pickle.loads(pickle.dumps(1))  # the standard unpickler still works


# ---------------------------------------------------------------------------------------------
# bad inputs: exit status 1, a message naming the problem, no traceback
# ---------------------------------------------------------------------------------------------

class TestBadInputs(Base):
    def ck(self, **kw):
        rng = random.Random(11)
        u = synth_layers(rng, 2)
        return synth_checkpoint(os.path.join(self.tmp, "ck"), u, **kw)

    def test_config_errors(self):
        d = self.ck()
        cfg = load_json(os.path.join(d, "config.json"))
        with open(os.path.join(d, "config.json"), "w") as f:
            f.write('{"architectures": ["LlamaForCausalLM"], ')
        self.fails(d, "config.json is not valid JSON")
        for change, needle in ((dict(architectures=["GPT2LMHeadModel"]), "unsupported architecture GPT2LMHeadModel"),
                               (dict(model_type="mistral", architectures=[]), "model_type 'mistral'"),
                               (dict(rope_scaling={"rope_type": "llama3"}), "rope_scaling (llama3)"),
                               (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
                               (dict(hidden_size="32"), "hidden_size must be a positive integer"),
                               (dict(head_dim=16), "head_dim 16"),
                               (dict(intermediate_size=48), "model.layers.0.mlp.gate_proj.weight (in model.safetensors) has shape [64, 32], expected [48, 32]")):
            c = dict(cfg)
            c.update(change)
            save_json(os.path.join(d, "config.json"), c)
            self.fails(d, needle)
        os.unlink(os.path.join(d, "config.json"))
        self.fails(d, "no config.json")
        self.fails(os.path.join(self.tmp, "nope"), "no such directory")

    def test_missing_and_unknown_tensors(self):
        d = self.ck(tie=False)
        self.fails(d, "missing tensor lm_head.weight")
        shutil.rmtree(d)
        d = self.ck()
        items = st_items(os.path.join(d, "model.safetensors"))
        write_safetensors(os.path.join(d, "model.safetensors"), [x for x in items if x[0] != "model.norm.weight"])
        self.fails(d, "missing tensor model.norm.weight")
        write_safetensors(os.path.join(d, "model.safetensors"),
                          [x for x in items if x[0] != "model.layers.1.mlp.up_proj.weight"])
        self.fails(d, "missing tensor model.layers.1.mlp.up_proj.weight")
        rng = random.Random(1)
        for key, n, needle in (
                ("model.layers.0.self_attn.q_proj.bias", 32, "biases are not supported"),
                ("model.layers.0.self_attn.q_proj.lora_magnitude_vector.default.weight", 32,
                 "lora_magnitude_vector.default.weight (in model.safetensors) has no matching lora_A"),
                ("model.layers.0.recursion_encoding", 31, "model.layers.0.recursion_encoding (in model.safetensors) "
                 "has shape [31], expected [32] (a recursion encoding)"),
                ("model.layers.0.self_attn.adaption_prompt", 32, "has no matching adaption_gate"),
                ("model.layers.1.self_attn.adaption_gate", 1, "has no matching adaption_prompt"),
                ("model.layers.0.self_attn.prompt_embeddings", 32, "prompt tuning is not supported"),
                ("model.something.else", 32, "unsupported tensor model.something.else in model.safetensors")):
            write_safetensors(os.path.join(d, "model.safetensors"), items + [(key, "F32", [n], rand_f32(rng, n))])
            self.fails(d, needle)

    def test_bad_dtypes(self):
        d = self.ck()
        items = st_items(os.path.join(d, "model.safetensors"))
        for dt, raw in (("F64", struct.pack("<32d", *([0.5] * 32))), ("I8", bytes(32))):
            it = [x for x in items if x[0] != "model.norm.weight"] + [("model.norm.weight", dt, [32], raw)]
            write_safetensors(os.path.join(d, "model.safetensors"), it)
            self.fails(d, "model.norm.weight (in model.safetensors) has dtype %s" % dt)

    def test_bad_safetensors(self):
        d = self.ck()
        p = os.path.join(d, "model.safetensors")
        good = read_bytes(p)
        n = struct.unpack("<Q", good[:8])[0]
        cases = [(good[:5], "truncated safetensors file"),
                 (struct.pack("<Q", len(good)) + good[8:], "header length %d goes past the end" % len(good)),
                 (good[:8 + n // 2], "goes past the end of the file"),
                 (struct.pack("<Q", 6) + b"{nope}" + good[8 + n:], "not valid JSON"),
                 (good[:-100], "goes past the end of the file")]
        hdr = json.loads(good[8:8 + n])
        k = "model.norm.weight"
        hdr[k]["shape"] = [31]
        h = json.dumps(hdr).encode()
        h += b" " * (-len(h) % 8)
        cases.append((struct.pack("<Q", len(h)) + h + good[8 + n:], "data bytes for shape [31]"))
        hdr[k]["shape"], hdr[k]["dtype"] = [32], "Q4"
        h = json.dumps(hdr).encode()
        cases.append((struct.pack("<Q", len(h)) + h + good[8 + n:], "unknown dtype 'Q4'"))
        for data, needle in cases:
            with open(p, "wb") as f:
                f.write(data)
            self.fails(d, needle)

    def test_bad_pickles(self):
        d = self.ck()
        shutil.move(os.path.join(d, "model.safetensors"), os.path.join(self.tmp, "ck.safetensors"))
        p = os.path.join(d, "pytorch_model.bin")
        marker = os.path.join(self.tmp, "pwned")
        evil = b"\x80\x02cposix\nsystem\nX" + struct.pack("<I", 12 + len(marker)) + \
            ("touch %s" % marker).encode() + b"\x85R."
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data.pkl", evil)
        self.fails(d, "the pickle asks for posix.system")
        self.assertFalse(os.path.exists(marker))
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02cbuiltins\neval\nX\x04\x00\x00\x001+1\x85R.")
        self.fails(d, "builtins.eval")
        with open(p, "wb") as f:
            f.write(pickle.dumps({"a": 1}, protocol=2))
        self.fails(d, "legacy (pre-1.6, non-zip) torch.save format")
        with open(p, "wb") as f:
            f.write(b"hello")
        self.fails(d, "not a torch zip archive")
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u.")
        self.fails(d, "state-dict entry a is a int, not a tensor")
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02garbage")
        self.fails(d, "not a valid state-dict pickle")
        # the synthetic checkpoint as a torch zip converts; then a tensor record pointing
        # outside its storage, and an F64 storage
        items = st_items(os.path.join(self.tmp, "ck.safetensors"))
        recs = [(k, "FloatStorage", str(i), raw, 0, tuple(shape),
                 tuple(shape[1:]) + (1,) if len(shape) == 2 else (1,))
                for i, (k, dt, shape, raw) in enumerate(items)]
        write_torch_zip(p, recs)
        self.conv(d)
        norm = [i for i, x in enumerate(recs) if x[0] == "model.norm.weight"][0]
        bad = list(recs)
        bad[norm] = ("model.norm.weight", "FloatStorage", "n", bytes(128), 8, (32,), (1,))
        write_torch_zip(p, bad)
        self.fails(d, "model.norm.weight (offset 8, size (32,), stride (1,)) lies outside its storage")
        bad[norm] = ("model.norm.weight", "DoubleStorage", "n", bytes(256), 0, (32,), (1,))
        write_torch_zip(p, bad)
        self.fails(d, "model.norm.weight (in pytorch_model.bin) has dtype F64")

    def test_bad_weights_files(self):
        d = self.ck()
        os.unlink(os.path.join(d, "model.safetensors"))
        self.fails(d, "no weights")
        save_json(os.path.join(d, "model.safetensors.index.json"), {"weight_map": {"a": "model-00001-of-00002.safetensors"}})
        self.fails(d, "names model-00001-of-00002.safetensors, which does not exist")
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            f.write("{")
        self.fails(d, "model.safetensors.index.json is not valid JSON")

    def test_bad_yaml_and_settings(self):
        d = self.ck()
        y = os.path.join(self.tmp, "t.yaml")
        for text, needle in (("recursive:\n  enable: true\n  num_recursion: &a 2\n", "t.yaml line 3"),
                             ("recursive:\n  enable: true\n  num_recursion: 2\n  sharing: spiral\n",
                              "recursive.sharing 'spiral'"),
                             ("relaxation:\n  enable: true\n  method: dora\n",
                              "relaxation.method is dora, but the checkpoint has no lora_magnitude_vector"),
                             ("relaxation:\n  enable: true\n  method: prefix\n",
                              "relaxation.method 'prefix' is not supported (lora, dora, recursion_encoding, "
                              "adaption_prompt)"),
                             ("mor:\n  enable: true\n  type: expert\n  rand_router: true\n", "rand_router"),
                             ("mor:\n  enable: true\n  type: expert\n", "says router expert"),
                             ("kv_sharing:\n  enable: true\n  update_cache: true\n", "update_cache"),
                             ("- a\n- b\n", "must be a YAML mapping")):
            with open(y, "w") as f:
                f.write(text)
            self.fails(d, needle, "--yaml", y)
        self.fails(d, "cannot read", "--yaml", os.path.join(self.tmp, "missing.yaml"))

    def test_f16_overflow(self):
        rng = random.Random(3)
        u = synth_layers(rng, 2)
        u[1]["ffn_up"] = ([64, 32], f32_bytes([1e5] + [0.0] * (64 * 32 - 1)))
        d = synth_checkpoint(os.path.join(self.tmp, "ck"), u)
        self.fails(d, "blk.1.ffn_up.weight (from model.layers.1.mlp.up_proj.weight): the value 100000 "
                      "does not fit F16", "--type", "f16")
        self.conv(d, "--type", "bf16")

    def test_tokenizer_too_big(self):
        d = self.ck()
        tj = {"model": {"type": "BPE", "vocab": dict(("t%d" % i, i) for i in range(100)), "merges": []},
              "pre_tokenizer": {"type": "ByteLevel"}}
        save_json(os.path.join(d, "tokenizer.json"), tj)
        self.fails(d, "tokenizer.json has 100 tokens but the embedding has 64 rows")
        out, se = self.conv(d, "--no-vocab")


# ---------------------------------------------------------------------------------------------
# command-line behaviour
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# relaxations: the GGUF fixtures written back in the MoR code's layouts, converted again
# ---------------------------------------------------------------------------------------------

RELAX_YAML = """recursive:
  enable: true
  num_recursion: {n_rec}
  sharing: {sharing}
relaxation:
  enable: true
  method: {method}
  lora:
    r: {rank}
    alpha_pattern: 2.0
  prompt:
    len: {plen}
{mor}"""

TOKEN_YAML = """mor:
  enable: true
  type: token
  router_type: linear
  token:
    router_func: softmax
    alpha: 1.0
    balancing: loss_free
"""


def s_r(l, L, sharing, n_rec):
    mid = sharing.startswith("middle")
    B = (L - 2 * mid) // n_rec
    if sharing == "cycle":
        return l % B, l // B
    if l == 0:
        return 0, 0
    if l == L - 1:
        return B + 1, 0
    return 1 + (l - 1) % B, (l - 1) // B


def hf_from_gguf(src, d, method, expert=False):
    """Writes the mor GGUF file src (a relaxation fixture of tests/data) as the MoR code saves such
    a model into directory d: every unrolled layer's tensors under its own keys (plain, or the
    token-choice block_list), LoRA as base_layer / lora_A / lora_B with the DoRA magnitude as
    lora_magnitude_vector.default.weight, an encoded layer's tensors under .block. beside its
    recursion_encoding, a prompt-adapted attention's projections under self_attn.model. beside
    adaption_prompt [1, len, d] and adaption_gate [1]; config.json and the training YAML. expert:
    a middle-cycle model in the expert-choice layout (model.layers.{1+r}.block.{j}.), with
    random routers."""
    r = gguf(src)
    L, n_rec, sharing = r.get("mor.block_count"), r.get("mor.recursion.count"), r.get("mor.recursion.sharing")
    token = r.get("mor.router.type") == "token"
    B = (L - 2 * sharing.startswith("middle")) // n_rec
    names = set(t.name for t in r.tensors)

    def item(key, name, shape=None):
        t = r.tensor(name)
        return (key, t.type_name, list(shape or reversed(t.dims)), bytes(r.tensor_bytes(name)))

    items = [item("model.embed_tokens.weight", "token_embd.weight"), item("model.norm.weight", "output_norm.weight")]
    rank = 0
    for l in range(L):
        s, rr = s_r(l, L, sharing, n_rec)
        if token and 0 < l < L - 1:
            pre = "model.layers.1.block_list.%d.%d." % ((l - 1) // B, (l - 1) % B)
        elif expert and 0 < l < L - 1:
            pre = "model.layers.%d.block.%d." % (1 + (l - 1) // B, (l - 1) % B)
        elif expert:
            pre = "model.layers.%d." % (0 if l == 0 else n_rec + 1)
        else:
            pre = "model.layers.%d." % (0 if token and l == 0 else 2 if token else l)
        rec = "blk.%d.rec.%d." % (s, rr)
        if rec + "rec_enc" in names:
            items.append(item(pre + "recursion_encoding", rec + "rec_enc"))
            pre += "block."
        adapted = rec + "adapt_prompt" in names
        if adapted:
            t = r.tensor(rec + "adapt_prompt")
            items.append(item(pre + "self_attn.adaption_prompt", rec + "adapt_prompt", [1, t.dims[1], t.dims[0]]))
            items.append(item(pre + "self_attn.adaption_gate", rec + "adapt_gate"))
        for role in ROLES:
            sub = SUB[role]
            if adapted and sub.startswith("self_attn."):
                sub = "self_attn.model." + sub[len("self_attn."):]
            w = rec + role + ".weight" if rec + role + ".weight" in names else "blk.%d.%s.weight" % (s, role)
            if rec + role + ".lora_a" in names:
                items.append(item(pre + sub + ".base_layer.weight", w))
                items.append(item(pre + sub + ".lora_A.default.weight", rec + role + ".lora_a"))
                items.append(item(pre + sub + ".lora_B.default.weight", rec + role + ".lora_b"))
                rank = r.tensor(rec + role + ".lora_a").dims[1]
                if rec + role + ".dora_m" in names:
                    items.append(item(pre + sub + ".lora_magnitude_vector.default.weight", rec + role + ".dora_m"))
            else:
                items.append(item(pre + sub + ".weight", w))
    if token:
        items.append(item("model.layers.1.mor_router.router.weight", "router.weight"))
        items.append(item("model.layers.1.router_bias", "router.bias"))
    if expert:
        rng = random.Random(5)
        dm = r.get("mor.embedding_length")
        for i in range(n_rec):
            items.append(("model.layers.%d.mor_router.router.weight" % (1 + i), "F32", [1, dm], rand_f32(rng, dm)))
    os.makedirs(d)
    write_safetensors(os.path.join(d, "model.safetensors"), items)
    plen = max([r.tensor(n).dims[1] for n in names if n.endswith(".adapt_prompt")] or [16])
    save_json(os.path.join(d, "config.json"), {
        "architectures": ["MoRLlamaForCausalLM" if token or expert else "LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": r.get("mor.embedding_length"), "intermediate_size": r.get("mor.feed_forward_length"),
        "num_hidden_layers": L, "num_attention_heads": r.get("mor.attention.head_count"),
        "num_key_value_heads": r.get("mor.attention.head_count_kv"), "max_position_embeddings": r.get("mor.context_length"),
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "vocab_size": r.tensor("token_embd.weight").dims[1]})
    with open(os.path.join(d, "train.yaml"), "w") as f:
        f.write(RELAX_YAML.format(n_rec=n_rec, sharing=sharing, method=method, rank=rank or 4, plen=plen,
                                  mor=TOKEN_YAML if token else ""))
    return d


class TestRelaxations(Base):
    """The relaxation fixtures of tests/data (DoRA, recursion encodings, adaption prompts) come
    back from the MoR code's checkpoint layout as the same tensors, and run the same tokens."""

    CASES = (("middle_cycle-dora", "dora"), ("middle_cycle-recenc", "recursion_encoding"),
             ("token-recenc", "recursion_encoding"), ("cycle-adapt", "adaption_prompt"))

    def round_trip(self, name, method):
        src = os.path.join(ROOT, "tests", "data", name + ".gguf")
        d = hf_from_gguf(src, os.path.join(self.tmp, name), method)
        out, se = self.conv(d, "--yaml", os.path.join(d, "train.yaml"), out=name + ".gguf")
        a, b = gguf(src), gguf(out)
        self.assertEqual(self.tensor_names(b), self.tensor_names(a), name)
        for t in a.tensors:
            self.assertEqual(b.tensor(t.name).type_name, t.type_name, t.name)
            self.assertEqual(b.tensor(t.name).dims, t.dims, t.name)
            self.assertEqual(b.tensor_bytes(t.name), a.tensor_bytes(t.name), t.name)
        self.assertIn("relaxations:", se)
        if os.path.exists(MOR_RUN):
            prompt = [3, 1, 4, 1, 5, 9, 2, 6]
            self.assertEqual(engine(out, prompt, 12), engine(src, prompt, 12), name)
        return d, se

    def test_round_trips(self):
        for name, method in self.CASES:
            d, se = self.round_trip(name, method)
            if method == "dora":
                self.assertIn("DoRA magnitudes on 42 projections", se)
            if name == "middle_cycle-recenc":
                self.assertIn("recursion encodings on 3 layers", se)
            if method == "adaption_prompt":
                self.assertIn("adaption prompts of 4 slots on 6 layers", se)

    def test_peft_adapter_files(self):
        # DoRA from a PEFT adapter (use_dora, magnitudes keyed lora_magnitude_vector), the base
        # weights under plain keys; adaption prompts from an ADAPTION_PROMPT adapter
        d = hf_from_gguf(os.path.join(ROOT, "tests", "data", "middle_cycle-dora.gguf"),
                         os.path.join(self.tmp, "dora"), "dora")
        items, adapter = [], []
        for k, dt, shape, raw in st_items(os.path.join(d, "model.safetensors")):
            if ".lora_" in k:
                k = k.replace(".default.weight", ".weight").replace("lora_magnitude_vector.weight", "lora_magnitude_vector")
                adapter.append(("base_model.model." + k, dt, shape, raw))
            else:
                items.append((k.replace(".base_layer.weight", ".weight"), dt, shape, raw))
        write_safetensors(os.path.join(d, "model.safetensors"), items)
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), adapter)
        save_json(os.path.join(d, "adapter_config.json"), {"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                           "use_dora": True, "target_modules": ["q_proj"]})
        out, se = self.conv(d)   # no YAML: the sharing is inferred, the scale from adapter_config.json
        self.assertIn("DoRA magnitudes on 42 projections", se)
        a, b = gguf(os.path.join(ROOT, "tests", "data", "middle_cycle-dora.gguf")), gguf(out)
        self.assertEqual(self.tensor_names(b), self.tensor_names(a))
        for t in a.tensors:
            self.assertEqual(b.tensor_bytes(t.name), a.tensor_bytes(t.name), t.name)
        # use_dora without magnitudes
        write_safetensors(os.path.join(d, "adapter_model.safetensors"),
                          [x for x in adapter if "magnitude" not in x[0]])
        self.fails(d, "adapter_config.json says use_dora = true, but the LoRA modules have no lora_magnitude_vector")
        d = hf_from_gguf(os.path.join(ROOT, "tests", "data", "cycle-adapt.gguf"), os.path.join(self.tmp, "ap"),
                         "adaption_prompt")
        items, adapter = [], []
        for k, dt, shape, raw in st_items(os.path.join(d, "model.safetensors")):
            (adapter if ".adaption_" in k else items).append(("base_model.model." + k if ".adaption_" in k else k,
                                                              dt, shape, raw))
        write_safetensors(os.path.join(d, "model.safetensors"), items)
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), adapter)
        save_json(os.path.join(d, "adapter_config.json"), {"peft_type": "ADAPTION_PROMPT", "adapter_len": 4,
                                                           "adapter_layers": 6, "target_modules": "self_attn"})
        out, se = self.conv(d, "--yaml", os.path.join(d, "train.yaml"))
        self.assertIn("adaption prompts of 4 slots on 6 layers", se)
        save_json(os.path.join(d, "adapter_config.json"), {"peft_type": "ADAPTION_PROMPT", "adapter_len": 5})
        self.fails(d, "holds 4 prompt slots, but adapter_config.json adapter_len says 5")

    def test_refused(self):
        d = hf_from_gguf(os.path.join(ROOT, "tests", "data", "middle_cycle-recenc.gguf"),
                         os.path.join(self.tmp, "enc"), "recursion_encoding")
        y = os.path.join(d, "train.yaml")
        # as an expert-choice checkpoint: the MoR code's expert transform cannot wrap encoded layers
        e = hf_from_gguf(os.path.join(ROOT, "tests", "data", "middle_cycle-recenc.gguf"),
                         os.path.join(self.tmp, "expert"), "recursion_encoding", expert=True)
        self.fails(e, "recursion encodings with an expert-choice router is not defined")
        with open(y) as f:
            text = f.read()
        with open(y, "w") as f:
            f.write(text.replace("method: recursion_encoding", "method: dora"))
        self.fails(d, "relaxation.method is dora, but the checkpoint", "--yaml", y)
        with open(y, "w") as f:
            f.write(text.replace("method: recursion_encoding", "method: adaption_prompt"))
        self.fails(d, "is adaption_prompt, but the checkpoint has no adaption_prompt tensors", "--yaml", y)
        self.fails(d, "cannot hold DoRA, recursion encodings or adaption prompts", "--arch", "llama")
        d = hf_from_gguf(os.path.join(ROOT, "tests", "data", "cycle-adapt.gguf"), os.path.join(self.tmp, "ap"),
                         "adaption_prompt")
        items = st_items(os.path.join(d, "model.safetensors"))
        write_safetensors(os.path.join(d, "model.safetensors"),
                          [x if not x[0].endswith("layers.2.self_attn.adaption_gate") else (x[0], x[1], [2], x[3] * 2)
                           for x in items])
        self.fails(d, "model.layers.2.self_attn.adaption_gate (in model.safetensors) has shape [2], expected [1]",
                   "--yaml", os.path.join(d, "train.yaml"))


class TestCommandLine(Base):
    def test_progress_dry_run_determinism(self):
        d = os.path.join(HF, "mor-token")
        out, se = self.conv(d, "--progress", "-q")
        self.assertIn("100%", se)
        self.assertIn("31/31 tensors", se)
        self.assertNotIn("mor-convert: layout", se)
        out2, _ = self.conv(d, out="again.gguf")
        self.assertEqual(read_bytes(out), read_bytes(out2))
        rc, so, se = convert(d, "--dry-run", "-o", os.path.join(self.tmp, "dry.gguf"))
        self.assertEqual(rc, 0)
        self.assertIn("router.bias", se)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "dry.gguf")))
        rc, so, se = convert(d, "--type", "q4_0")
        self.assertEqual(rc, 2)

    def test_sentencepiece_vocab(self):
        # a hand-made SentencePiece BPE model: pieces (text, score, type) + trainer spec
        d = synth_checkpoint(os.path.join(self.tmp, "ck"), synth_layers(random.Random(9), 2))

        def fld(num, wt, payload):
            key = bytes([num << 3 | wt])
            if wt == 2:
                return key + bytes([len(payload)]) + payload
            return key + payload

        pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("<0x41>", 0.0, 6),
                  ("\u2581a", -1.0, 1), ("b", -2.0, 1)]
        proto = b""
        for text, score, typ in pieces:
            proto += fld(1, 2, fld(1, 2, text.encode()) + fld(2, 5, struct.pack("<f", score)) +
                         fld(3, 0, bytes([typ])))
        proto += fld(2, 2, fld(3, 0, bytes([2])))          # trainer_spec.model_type = BPE
        with open(os.path.join(d, "tokenizer.model"), "wb") as f:
            f.write(proto)
        out, se = self.conv(d)
        r = gguf(out)
        self.assertEqual(r.get("tokenizer.ggml.model"), "llama")
        toks = r.get("tokenizer.ggml.tokens")
        self.assertEqual(toks[:6], [p[0] for p in pieces])
        self.assertEqual(toks[6], "[PAD6]")
        self.assertEqual(len(toks), 64)
        self.assertEqual(r.get("tokenizer.ggml.scores")[:6], [p[1] for p in pieces])
        self.assertEqual(r.get("tokenizer.ggml.token_type")[:7], [2, 3, 3, 6, 1, 1, 5])
        self.assertEqual(r.get("tokenizer.ggml.bos_token_id"), 1)
        self.assertEqual(r.get("tokenizer.ggml.unk_token_id"), 0)


if __name__ == "__main__":
    unittest.main()
