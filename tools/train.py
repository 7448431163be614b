#!/usr/bin/env python3
"""train: the corpus, tokenizer, trainer, exporter and golden fixtures of mor's trained models.

Nothing here is needed by `make` or `make test`; training runs on a GPU machine (a CPU works
for tiny configurations). Steps, each a sub-command:

    prepare   clean the corpus (Project Gutenberg header/footer stripped, hard-wrapped
              paragraphs joined, Brown corpus de-tokenized), hold out three books and the
              tail of TinyStories, train a byte-level BPE tokenizer (GPT-2 pre-tokenizer, no
              normalizer, `<|endoftext|>` between documents) in pure Python, encode
              everything to uint16 token files.                          (CPU, ~30 s)
    train     train the model family (vanilla, recursive, mor-expert, mor-token by default)
              for the same wall-clock time each on one GPU, evaluate held-out perplexity,
              export every model to GGUF (docs/FORMAT.md, arch `mor`, F16 matrices).
    fixtures  golden fixtures (tests/data/models/*.fix) of the shipped GGUF files computed by
              tools/reference.py in float64, and the tokenizer test vectors (*.gguf.inp/.out).
    selftest  tiny models of every variant (four sharing strategies, LoRA, KV sharing, both
              routers, exit heads) trained a few steps on random data, exported, and checked
              against tools/reference.py; runs on a CPU in seconds.
    exits     exit-head statistics (softmax-response confidence) of a router-free model.
    uptrain   continue training a converted recursive model (mor-relax) for a token budget,
              optionally distilled from the vanilla model; held-out perplexity before/after.
    export-hf a GGUF written here -> Hugging Face style checkpoint of the official MoR
              layouts (docs/CONVERT.md), for converter tests.
    all       prepare + train + fixtures (what `make models` runs).

The model definition (one class, `MorLM`) covers (docs/DESIGN.md names the papers): the four
sharing strategies (cycle, sequence, middle_cycle, middle_sequence), depth-wise LoRA
relaxation, expert-choice routing with top-k capacity selection and the auxiliary BCE loss,
token-choice routing with the balancing loss and router z-loss, recursion-wise and
recursive-shared KV, and exit heads trained with the layer-weighted loss omega_i ∝ i
(docs/MODELS.md, "Training"). Inference semantics (what the C engine and tools/reference.py
run) are the causal ones: expert-choice continues a token iff sigmoid(z) >= 0.5, token-choice
takes the argmax depth.

Tokens are packed into fixed windows; attention crosses document boundaries (as in the MoR
training setup). See docs/MODELS.md for the trained models and the commands.
"""

import argparse
import collections
import contextlib
import heapq
import json
import math
import os
import re
import struct
import sys
import time
import unicodedata
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import morgguf  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Corpus
# ---------------------------------------------------------------------------------------------

# Held out from training (and from the tokenizer's training text); perplexities are measured
# on them. Three books by authors with other books in the training set, of different styles.
HELDOUT_BOOKS = [
    "pg35-The-Time-Machine.txt",
    "pg501-The-Story-of-Doctor-Dolittle.txt",
    "pg2852-The-Hound-of-the-Baskervilles.txt",
]
# The last 5% of the TinyStories file (cut at a paragraph break) is held out too.
TINYSTORIES_HELDOUT = 0.05
EOT = "<|endoftext|>"
EOT_ID = 0
VOCAB_SIZE = 4096


def read_text(path):
    with open(path, "rb") as f:
        raw = f.read()
    try:
        t = raw.decode("utf-8")
    except UnicodeDecodeError:
        t = raw.decode("latin-1")
    return t.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def strip_gutenberg(text):
    """The book between the Project Gutenberg header and footer: after the line starting
    '*** START OF' (old files: after the '*END*THE SMALL PRINT' line) and before the line
    starting '*** END OF' or 'End of (the) Project Gutenberg'."""
    lines = text.split("\n")
    start = None
    for i, l in enumerate(lines):
        if re.match(r"^\*\*\*\s*START OF", l):
            start = i + 1
            break
    if start is None:
        for i, l in enumerate(lines):
            if re.search(r"\*END\*?\s*THE SMALL PRINT", l):
                start = i + 1
                break
    if start is None:
        raise ValueError("no Project Gutenberg header found")
    end = len(lines)
    for i in range(start, len(lines)):
        if re.match(r"^\*\*\*\s*END OF", lines[i]) or \
                re.match(r"^\s*End of (the )?Project Gutenberg", lines[i], re.I):
            end = i
            break
    return "\n".join(lines[start:end])


def unwrap_paragraphs(text):
    """Join hard-wrapped lines: paragraphs (separated by blank lines) become one line each,
    separated by one blank line."""
    out = []
    for para in re.split(r"\n[ \t]*\n", text):
        words = " ".join(l.strip() for l in para.split("\n") if l.strip())
        if words:
            out.append(words)
    return "\n\n".join(out)


def detok_brown(line):
    """Undo the Brown corpus tokenization of one sentence (`` '' quotes, spaces before
    punctuation and clitics)."""
    s = " " + line.strip() + " "
    s = s.replace(" `` ", ' "').replace(" '' ", '" ')
    s = re.sub(r" ([.,;:?!%)\]}])", r"\1", s)
    s = re.sub(r"([(\[{$]) ", r"\1", s)
    s = re.sub(r" (n't|'s|'re|'ve|'m|'ll|'d)(?=\W)", r"\1", s)
    return re.sub(r"  +", " ", s).strip()


def brown_text(text):
    """Brown sentences (one a line) joined into paragraphs of up to six sentences; a line
    without final punctuation (a heading) stands alone."""
    paras, cur = [], []
    for line in text.split("\n"):
        s = detok_brown(line)
        if not s:
            continue
        if not re.search(r"[.!?\"')]$", s):
            if cur:
                paras.append(" ".join(cur))
                cur = []
            paras.append(s)
            continue
        cur.append(s)
        if len(cur) == 6:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


def load_corpus(corpus_dir):
    """(train documents, held-out documents): lists of (name, text)."""
    train, held = [], []
    gdir = os.path.join(corpus_dir, "gutenberg")
    for fn in sorted(os.listdir(gdir)):
        if not fn.endswith(".txt"):
            continue
        text = unwrap_paragraphs(strip_gutenberg(read_text(os.path.join(gdir, fn))))
        (held if fn in HELDOUT_BOOKS else train).append(("gutenberg/" + fn, text))
    missing = set(HELDOUT_BOOKS) - set(n.split("/")[1] for n, _ in held)
    if missing:
        raise SystemExit("held-out books missing: %s" % sorted(missing))
    train.append(("brown", brown_text(read_text(os.path.join(corpus_dir, "brown", "brown_detagged.txt")))))
    train.append(("tinyshakespeare", read_text(os.path.join(corpus_dir, "tinyshakespeare", "input.txt")).strip()))
    ts = read_text(os.path.join(corpus_dir, "tinystories", "tinystories_validation_head.txt")).strip()
    cut = ts.rfind("\n\n", 0, int(len(ts) * (1 - TINYSTORIES_HELDOUT)))
    train.append(("tinystories", ts[:cut].strip()))
    held.append(("tinystories-tail", ts[cut:].strip()))
    return train, held


# ---------------------------------------------------------------------------------------------
# Byte-level BPE (GPT-2 pre-tokenizer)
# ---------------------------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's byte -> printable character map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


BYTE_ENC = bytes_to_unicode()
BYTE_DEC = {c: b for b, c in BYTE_ENC.items()}

# Unicode White_Space (the \s of the GPT-2 expression as Rust/oniguruma and the C engine read it).
WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
               (0x3000, 0x3000)]


def _class_ranges(pred):
    out, lo = [], None
    for cp in range(0x110000 + 1):
        ok = cp < 0x110000 and not 0xD800 <= cp <= 0xDFFF and pred(chr(cp))
        if ok and lo is None:
            lo = cp
        elif not ok and lo is not None:
            out.append((lo, cp - 1))
            lo = None
    return out


def _class_src(ranges):
    return "".join("\\U%08x-\\U%08x" % (a, b) if a != b else "\\U%08x" % a for a, b in ranges)


_PAT = None


def gpt2_pattern():
    """The GPT-2 pre-tokenizer expression
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
    for Python's `re` (no \\p{..}): the classes are spelled out from unicodedata."""
    global _PAT
    if _PAT is None:
        L = _class_src(_class_ranges(lambda c: unicodedata.category(c)[0] == "L"))
        N = _class_src(_class_ranges(lambda c: unicodedata.category(c)[0] == "N"))
        S = _class_src(WHITE_SPACE)
        _PAT = re.compile("'s|'t|'re|'ve|'m|'ll|'d| ?[%s]+| ?[%s]+| ?[^%s%s%s]+|[%s]+(?![^%s])|[%s]+"
                          % (L, N, S, L, N, S, S, S))
    return _PAT


def to_byte_level(piece):
    return "".join(BYTE_ENC[b] for b in piece.encode("utf-8"))


def train_bpe(texts, vocab_size, log=print):
    """Byte-level BPE merges learned from texts (a list of strings): the most frequent
    adjacent pair is merged first (ties: the pair of smaller symbol ids). Returns the list of
    merges as (left, right) byte-level strings, in rank order."""
    pat = gpt2_pattern()
    counts = collections.Counter()
    for t in texts:
        counts.update(pat.findall(t))
    log("bpe: %d distinct pre-tokenized pieces" % len(counts))
    sym = [BYTE_ENC[b] for b in range(256)]
    byte_id = {c: b for b, c in enumerate(sym)}
    words, freq = [], []
    for piece, c in counts.items():
        words.append([byte_id[ch] for ch in to_byte_level(piece)])
        freq.append(c)
    pair_count = collections.defaultdict(int)
    where = collections.defaultdict(set)
    for wi, w in enumerate(words):
        c = freq[wi]
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] += c
            where[(a, b)].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges = []
    n_merges = vocab_size - 256 - 1
    while len(merges) < n_merges and heap:
        negc, p = heapq.heappop(heap)
        cur = pair_count.get(p, 0)
        if -negc != cur:
            if cur > 0:
                heapq.heappush(heap, (-cur, p))
            continue
        if cur < 2:
            break
        a, b = p
        new = len(sym)
        sym.append(sym[a] + sym[b])
        merges.append((sym[a], sym[b]))
        touched = {}
        for wi in where.pop(p):
            w = words[wi]
            if len(w) < 2:
                continue
            c = freq[wi]
            nw, i, hit = [], 0, False
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    nw.append(new)
                    i += 2
                    hit = True
                else:
                    nw.append(w[i])
                    i += 1
            if not hit:
                continue
            for q in zip(w, w[1:]):
                pair_count[q] -= c
                touched[q] = 1
            for q in zip(nw, nw[1:]):
                pair_count[q] += c
                where[q].add(wi)
                touched[q] = 1
            words[wi] = nw
        pair_count.pop(p, None)
        for q in touched:
            c = pair_count.get(q, 0)
            if c > 0 and q != p:
                heapq.heappush(heap, (-c, q))
        if len(merges) % 500 == 0:
            log("bpe: %d merges, last %r + %r (count %d)" % (len(merges), sym[a], sym[b], cur))
    return merges


class Tokenizer(object):
    """Byte-level BPE with GPT-2 pre-tokenization: id 0 = <|endoftext|> (control), ids
    1..256 = the 256 byte symbols (in byte order), then one token per merge."""

    def __init__(self, merges):
        self.merges = [tuple(m) for m in merges]
        self.tokens = [EOT] + [BYTE_ENC[b] for b in range(256)] + [a + b for a, b in self.merges]
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        if len(self.ids) != len(self.tokens):
            raise ValueError("duplicate token strings")
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.cache = {}
        self.pat = gpt2_pattern()

    @property
    def n_vocab(self):
        return len(self.tokens)

    def token_types(self):
        return [3] + [1] * (len(self.tokens) - 1)

    def _bpe(self, piece):
        syms = list(to_byte_level(piece))
        ranks = self.ranks
        while len(syms) > 1:
            best, bi = None, -1
            for i in range(len(syms) - 1):
                r = ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            a, b = syms[bi], syms[bi + 1]
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            syms = out
        return [self.ids[s] for s in syms]

    def encode(self, text):
        """Token ids of text (special-token text is not parsed: it is plain text here)."""
        out = []
        cache = self.cache
        for piece in self.pat.findall(text):
            ids = cache.get(piece)
            if ids is None:
                ids = cache[piece] = self._bpe(piece)
            out.extend(ids)
        return out

    def decode(self, ids):
        bs = bytearray()
        for i in ids:
            if i == EOT_ID:
                continue
            bs.extend(BYTE_DEC[c] for c in self.tokens[i])
        return bs.decode("utf-8", errors="replace")

    def to_json(self):
        return {"type": "byte-level BPE, GPT-2 pre-tokenizer", "eot": EOT, "eot_id": EOT_ID,
                "merges": [" ".join(m) for m in self.merges]}

    @classmethod
    def from_json(cls, obj):
        return cls([tuple(m.split(" ")) for m in obj["merges"]])

    def gguf_keys(self, w):
        w.add_string("tokenizer.ggml.model", "gpt2")
        w.add_string("tokenizer.ggml.pre", "gpt-2")
        w.add_array("tokenizer.ggml.tokens", morgguf.STRING, self.tokens)
        w.add_array("tokenizer.ggml.token_type", morgguf.INT32, self.token_types())
        w.add_array("tokenizer.ggml.merges", morgguf.STRING, [" ".join(m) for m in self.merges])
        w.add_uint32("tokenizer.ggml.bos_token_id", EOT_ID)
        w.add_uint32("tokenizer.ggml.eos_token_id", EOT_ID)
        w.add_bool("tokenizer.ggml.add_bos_token", False)
        w.add_bool("tokenizer.ggml.add_eos_token", False)

    def hf(self):
        """The same tokenizer as a Hugging Face `tokenizers` object (needs the package)."""
        from tokenizers import Tokenizer as HFTok, AddedToken
        from tokenizers.models import BPE
        from tokenizers import pre_tokenizers, decoders
        vocab = {t: i for i, t in enumerate(self.tokens)}
        t = HFTok(BPE(vocab=vocab, merges=list(self.merges)))
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        t.decoder = decoders.ByteLevel()
        t.add_special_tokens([AddedToken(EOT, special=True)])
        return t


def cmd_prepare(a):
    t0 = time.time()
    os.makedirs(a.work, exist_ok=True)
    train, held = load_corpus(a.corpus)
    for name, text in train + held:
        print("corpus: %-55s %9d chars %s" % (name, len(text), "(held out)" if (name, text) in held else ""))
    merges = train_bpe([t for _, t in train], a.vocab)
    tok = Tokenizer(merges)
    with open(os.path.join(a.work, "tokenizer.json"), "w") as f:
        json.dump(tok.to_json(), f, ensure_ascii=False, indent=0)
    print("tokenizer: %d tokens (%d merges), %.0f s" % (tok.n_vocab, len(merges), time.time() - t0))
    from array import array
    ids = array("H")
    for name, text in train:
        ids.extend(tok.encode(text))
        ids.append(EOT_ID)
    with open(os.path.join(a.work, "train.u16"), "wb") as f:
        ids.tofile(f)
    n_chars = sum(len(t) for _, t in train)
    print("train: %d tokens from %d chars (%.2f chars/token)" % (len(ids), n_chars, n_chars / len(ids)))
    hdir = os.path.join(a.work, "heldout")
    os.makedirs(hdir, exist_ok=True)
    meta = []
    for name, text in held:
        base = name.split("/")[-1].replace(".txt", "")
        with open(os.path.join(hdir, base + ".txt"), "w", encoding="utf-8") as f:
            f.write(text)
        hid = array("H", tok.encode(text))
        with open(os.path.join(hdir, base + ".u16"), "wb") as f:
            hid.tofile(f)
        meta.append({"name": name, "file": base, "chars": len(text), "tokens": len(hid)})
        print("held out: %-45s %7d tokens" % (name, len(hid)))
    with open(os.path.join(a.work, "data.json"), "w") as f:
        json.dump({"train_tokens": len(ids), "train_docs": [n for n, _ in train],
                   "train_chars": n_chars, "heldout": meta, "vocab": tok.n_vocab}, f, indent=1)
    print("prepare: done in %.0f s" % (time.time() - t0))


# ---------------------------------------------------------------------------------------------
# Model (torch)
# ---------------------------------------------------------------------------------------------

ROLES7 = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
USE_SDPA = True       # F.scaled_dot_product_attention when torch has it (set False to use math)


def _torch():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    return torch, nn, F


class ModelConfig(object):
    """Shape and training options of one model. Sharing maps, recursion blocks and KV sources
    come from tools/reference.py's Config (the same rules the engine implements)."""

    DEFAULTS = dict(name="model", d=384, n_h=6, n_kv=2, d_ff=1024, V=VOCAB_SIZE, L=8, n_rec=1,
                    sharing="cycle", router="none", kv_sharing=False, lora_rank=0,
                    lora_roles=list(ROLES7), lora_scale=2.0, norm_overrides=[], exit_layers=[], ctx=512,
                    rope_base=10000.0, eps=1e-5, temp=1.0,
                    expert_alpha=0.1, capacity=None, aux_coeff=0.1,
                    token_alpha=1.0, bal_coeff=0.1, z_coeff=1e-5)

    def __init__(self, **kw):
        for k, v in self.DEFAULTS.items():
            setattr(self, k, list(v) if isinstance(v, list) else v)
        for k, v in kw.items():
            if k not in self.DEFAULTS:
                raise ValueError("unknown model option %s" % k)
            setattr(self, k, v)
        import reference
        self.ref = reference.Config(arch="mor", d=self.d, d_ff=self.d_ff, L=self.L, n_h=self.n_h,
                                    n_kv=self.n_kv, d_h=self.d // self.n_h, V=self.V, ctx=self.ctx,
                                    n_rec=self.n_rec, sharing=self.sharing,
                                    kv_sharing=self.kv_sharing)
        self.ref.B  # raises if L does not split
        if self.router != "none":
            self.ref.blocks()
        # hyperparameters the GGUF stores as FLOAT32 are used at that precision everywhere
        for k in ("eps", "rope_base", "temp", "expert_alpha", "token_alpha", "lora_scale"):
            setattr(self, k, struct.unpack("<f", struct.pack("<f", float(getattr(self, k))))[0])
        if self.capacity is None:
            self.capacity = [(self.n_rec - r) / self.n_rec for r in range(self.n_rec)]

    @property
    def d_h(self):
        return self.d // self.n_h

    def to_dict(self):
        return {k: getattr(self, k) for k in self.DEFAULTS}

    def lora_layers(self):
        """Stored layers that get per-recursion LoRA (middle strategies: not the unique ends)."""
        if self.ref.middle:
            return list(range(1, self.ref.B + 1))
        return list(range(self.ref.n_store))

    def params(self):
        """(unique parameters, parameters of the unrolled model), as the engine counts them."""
        d, dq, dkv = self.d, self.n_h * self.d_h, self.n_kv * self.d_h
        per = 2 * d + d * dq * 2 + d * dkv * 2 + 3 * d * self.d_ff
        lora = 0
        if self.lora_rank:
            shapes = {"attn_q": (dq, d), "attn_k": (dkv, d), "attn_v": (dkv, d),
                      "attn_output": (d, dq), "ffn_gate": (self.d_ff, d), "ffn_up": (self.d_ff, d),
                      "ffn_down": (d, self.d_ff)}
            lora = sum(self.lora_rank * sum(shapes[r]) for r in self.lora_roles)
        emb = self.V * d + d
        extra = len(self.exit_layers) * d
        if self.router == "expert":
            extra += self.n_rec * d
        elif self.router == "token":
            extra += self.n_rec * d
        n_lora_sets = len(self.lora_layers()) * self.n_rec if self.lora_rank else 0
        extra_unique = len(self.norm_overrides) * d
        unique = emb + self.ref.n_store * per + n_lora_sets * lora + extra + extra_unique
        unrolled = emb + self.L * per + extra + (
            (self.L - (2 if self.ref.middle else 0)) * lora if self.lora_rank else 0)
        return unique, unrolled

    def flops_per_token(self, seq, load=None):
        """Training FLOPs per token (6 x multiply-adds of the matrices run, plus attention),
        with `load[r]` = fraction of tokens running recursion r (None: all)."""
        d, dq, dkv = self.d, self.n_h * self.d_h, self.n_kv * self.d_h
        per = d * dq * 2 + d * dkv * 2 + 3 * d * self.d_ff
        att = 2 * seq * dq / 2          # q.k and p.v over the causal half, per token per layer
        layers = float(self.L)
        if self.router != "none":
            first, blocks, last = self.ref.blocks()
            load = load or [1.0] * self.n_rec
            layers = len(first) + len(last) + sum(len(b) * load[r] for r, b in enumerate(blocks))
            att_layers = len(first) + len(last) + sum(len(b) * load[r] ** 2 for r, b in enumerate(blocks))
        else:
            att_layers = layers
        heads = 1 + len(self.exit_layers)
        return 6 * (layers * per + att_layers * att + heads * self.V * d)


def build_model(cfg):
    torch, nn, F = _torch()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            d, dq, dkv = cfg.d, cfg.n_h * cfg.d_h, cfg.n_kv * cfg.d_h
            shapes = {"attn_q": (dq, d), "attn_k": (dkv, d), "attn_v": (dkv, d),
                      "attn_output": (d, dq), "ffn_gate": (cfg.d_ff, d), "ffn_up": (cfg.d_ff, d),
                      "ffn_down": (d, cfg.d_ff)}
            self.attn_norm = nn.Parameter(torch.ones(d))
            self.ffn_norm = nn.Parameter(torch.ones(d))
            for role, shp in shapes.items():
                std = 0.02 / math.sqrt(2 * cfg.L) if role in ("attn_output", "ffn_down") else 0.02
                setattr(self, role, nn.Parameter(torch.randn(*shp) * std))
            self.shapes = shapes

    class MorLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg = cfg
            c = cfg
            self.emb = nn.Parameter(torch.randn(c.V, c.d) * 0.02)
            self.blocks = nn.ModuleList([Block() for _ in range(c.ref.n_store)])
            self.norm = nn.Parameter(torch.ones(c.d))
            self.exit_norms = nn.ParameterList([nn.Parameter(torch.ones(c.d)) for _ in c.exit_layers])
            if c.router == "expert":
                self.router_w = nn.Parameter(torch.randn(c.n_rec, c.d) * 0.02)
            elif c.router == "token":
                self.router_w = nn.Parameter(torch.randn(c.n_rec, c.d) * 0.02)
            self.lora_a = nn.ParameterDict()
            self.lora_b = nn.ParameterDict()
            # per-recursion norm weights (`blk.s.rec.r.attn_norm.weight`), keys "s_r_role"
            self.norm_over = nn.ParameterDict({k: nn.Parameter(torch.ones(c.d)) for k in c.norm_overrides})
            if c.lora_rank:
                shapes = self.blocks[0].shapes
                for s in c.lora_layers():
                    for r in range(c.n_rec):
                        for role in c.lora_roles:
                            out_, in_ = shapes[role]
                            rk = min(c.lora_rank, out_, in_)
                            key = "%d_%d_%s" % (s, r, role)
                            self.lora_a[key] = nn.Parameter(torch.randn(rk, in_) * 0.02)
                            self.lora_b[key] = nn.Parameter(torch.zeros(out_, rk))
            half = c.d_h // 2
            inv = c.rope_base ** (-2.0 * torch.arange(half, dtype=torch.float64) / c.d_h)
            self.register_buffer("inv_freq", inv, persistent=False)
            # unrolled layers whose K/V a later layer reads (recursive KV sharing)
            self.kv_keep = set(c.ref.kv_source(l) for l in range(c.L)) if c.kv_sharing else set()

        # -- pieces ----------------------------------------------------------------------
        def rms(self, x, w):
            xf = x.float() if x.dtype != torch.float64 else x
            y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg.eps)
            return y * w.to(y.dtype)

        def lin(self, x, s, r, role):
            y = F.linear(x, getattr(self.blocks[s], role))
            key = "%d_%d_%s" % (s, r, role)
            if key in self.lora_a:
                y = y + self.cfg.lora_scale * F.linear(F.linear(x, self.lora_a[key]), self.lora_b[key])
            return y

        def normw(self, s, r, role):
            key = "%d_%d_%s" % (s, r, role)
            if key in self.norm_over:
                return self.norm_over[key]
            return getattr(self.blocks[s], role)

        def rope(self, x, pos):
            """neox (rotate_half) RoPE of x [B, h, T, d_h] at positions pos [B, T]."""
            dt = torch.float64 if x.dtype == torch.float64 else torch.float32
            ang = pos.to(torch.float64).unsqueeze(-1) * self.inv_freq      # [B, T, half]
            cos = torch.cos(ang).to(dt).unsqueeze(1)
            sin = torch.sin(ang).to(dt).unsqueeze(1)
            x = x.to(dt)
            half = x.shape[-1] // 2
            x0, x1 = x[..., :half], x[..., half:]
            return torch.cat([x0 * cos - x1 * sin, x1 * cos + x0 * sin], dim=-1)

        @staticmethod
        def attend(q, k, v, mask):
            """q [B,h,Tq,dh], k/v [B,h,Tk,dh]; causal when mask is None, else mask [B,1,Tq,Tk]
            (True = attend)."""
            if USE_SDPA and hasattr(F, "scaled_dot_product_attention"):
                if mask is None:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            if mask is None:
                Tq, Tk = q.shape[-2], k.shape[-2]
                mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()
            s = s.masked_fill(~mask, float("-inf"))
            p = torch.softmax(s.float() if s.dtype != torch.float64 else s, dim=-1).to(v.dtype)
            return p @ v

        def layer(self, l, x, pos, valid, kvc):
            """Unrolled layer l on x [B, T, d] (tokens in causal order, padding rows at the
            end of each row when valid is given), positions pos [B, T]."""
            c = self.cfg
            s, r = c.ref.s_r(l)
            Bn, T, _ = x.shape
            a = self.rms(x, self.normw(s, r, "attn_norm"))      # float32 (float64 in tests); autocast casts for F.linear
            q = self.rope(self.lin(a, s, r, "attn_q").view(Bn, T, c.n_h, c.d_h).transpose(1, 2), pos)
            src = c.ref.kv_source(l) if c.kv_sharing else l
            if src == l:
                k = self.rope(self.lin(a, s, r, "attn_k").view(Bn, T, c.n_kv, c.d_h).transpose(1, 2), pos)
                v = self.lin(a, s, r, "attn_v").view(Bn, T, c.n_kv, c.d_h).transpose(1, 2)
                if l in self.kv_keep:
                    kvc[l] = (k, v, pos, valid)
                mask = None
            else:
                k, v, kpos, kvalid = kvc[src]
                m = kpos.unsqueeze(1) <= pos.unsqueeze(2)                   # [B, Tq, Tk]
                if kvalid is not None:
                    m = m & kvalid.unsqueeze(1)
                if valid is not None:
                    m = m | ~valid.unsqueeze(2)      # padding queries: anything, never empty
                mask = m.unsqueeze(1)
            dt = v.dtype
            rep = c.n_h // c.n_kv
            o = self.attend(q.to(dt), k.to(dt).repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), mask)
            o = o.transpose(1, 2).reshape(Bn, T, c.n_h * c.d_h)
            x = x + self.lin(o, s, r, "attn_output")
            b = self.rms(x, self.normw(s, r, "ffn_norm"))
            x = x + self.lin(F.silu(self.lin(b, s, r, "ffn_gate")) * self.lin(b, s, r, "ffn_up"), s, r, "ffn_down")
            return x

        def run(self, layers, h, act, pos, kvc, n_known=None):
            """Run unrolled layers on the tokens selected by act [B, T] (None: all). The
            selected tokens of each row are compacted in causal order (padded to the longest
            row), keep their absolute positions for RoPE and attend only among themselves.
            Returns h with the selected rows replaced (other rows: unspecified)."""
            if act is None:
                x = h
                for l in layers:
                    x = self.layer(l, x, pos, None, kvc)
                return x
            n = act.sum(1)
            Tc = int(n.max()) if n_known is None else n_known
            if Tc == 0:
                return h
            order = torch.sort((~act).to(torch.int32), dim=1, stable=True).indices[:, :Tc]
            idx = order.unsqueeze(-1).expand(-1, -1, h.shape[-1])
            x = h.gather(1, idx)
            p = pos.gather(1, order)
            valid = torch.arange(Tc, device=h.device).unsqueeze(0) < n.unsqueeze(1)
            for l in layers:
                x = self.layer(l, x, p, valid, kvc)
            return h.scatter(1, idx, x.to(h.dtype))

        def head(self, h, w):
            return F.linear(self.rms(h, w), self.emb)

        # -- forward ---------------------------------------------------------------------
        def forward(self, tok, targets=None, policy="train", tau=0.5):
            """policy 'train': expert-choice selects the top-k (capacity) tokens per row;
            'eval': the causal inference rules (expert: sigmoid(z) >= tau, hierarchical).
            Returns a dict: logits, depth [B, T], loss terms when targets are given."""
            c = self.cfg
            Bn, T = tok.shape
            h = F.embedding(tok, self.emb)
            pos = torch.arange(T, device=tok.device).unsqueeze(0).expand(Bn, T)
            kvc = {}
            out = {}
            aux = torch.zeros((), device=tok.device, dtype=torch.float32)
            exit_h = []
            depth = torch.full((Bn, T), c.n_rec, dtype=torch.long, device=tok.device)
            if c.router == "none":
                for l in range(c.L):
                    h = self.run([l], h, None, pos, kvc)
                    if (l + 1) in c.exit_layers:
                        exit_h.append(h)
            else:
                first, blocks, last = c.ref.blocks()
                if first:
                    h = self.run(first, h, None, pos, kvc)
                hd = torch.float64 if h.dtype == torch.float64 else torch.float32
                if c.router == "expert":
                    active = None
                    depth = torch.zeros((Bn, T), dtype=torch.long, device=tok.device)
                    for r in range(c.n_rec):
                        z = (h.to(hd) / c.temp) @ self.router_w[r].to(hd)          # [B, T]
                        g = c.expert_alpha * torch.sigmoid(z)
                        n_known = None
                        if policy == "train":
                            k = max(1, int(c.capacity[r] * T))
                            if active is None and k >= T:
                                sel = None
                            else:
                                sc = z.detach()
                                if active is not None:
                                    sc = sc.masked_fill(~active, float("-inf"))
                                top = torch.topk(sc, k, dim=1).indices
                                sel = torch.zeros((Bn, T), dtype=torch.bool, device=tok.device)
                                sel = sel.scatter(1, top, True)
                                n_known = k
                            y = torch.ones_like(z) if sel is None else sel.to(z.dtype)
                            zc, yc = (z, y) if active is None else (z[active], y[active])
                            aux = aux + c.aux_coeff * F.binary_cross_entropy_with_logits(zc.float(), yc.float())
                            out["router_acc%d" % r] = ((zc >= 0).to(yc.dtype) == yc).float().mean().detach()
                        else:
                            ok = torch.sigmoid(z) >= tau
                            sel = ok if active is None else (active & ok)
                        if sel is None:
                            Fh = self.run(blocks[r], h, None, pos, kvc)
                            h = h + g.unsqueeze(-1).to(h.dtype) * Fh
                            depth = depth + 1
                        else:
                            Fh = self.run(blocks[r], h, sel, pos, kvc, n_known)
                            h = torch.where(sel.unsqueeze(-1), h + g.unsqueeze(-1).to(h.dtype) * Fh, h)
                            depth = depth + sel.long()
                        active = sel if sel is not None else torch.ones((Bn, T), dtype=torch.bool, device=tok.device)
                elif c.router == "token":
                    z = (h.to(hd) / c.temp) @ self.router_w.to(hd).t()           # [B, T, N_r]
                    p = c.token_alpha * torch.softmax(z, dim=-1)
                    i = p.argmax(-1)
                    g = p.gather(-1, i.unsqueeze(-1))
                    if policy == "train":
                        f = c.n_rec * F.one_hot(i, c.n_rec).float().mean((0, 1))
                        P = p.float().mean((0, 1))
                        aux = aux + c.bal_coeff * (f * P).sum() + \
                            c.z_coeff * torch.logsumexp(z.float(), -1).pow(2).mean()
                        out["load"] = (f / c.n_rec).detach()
                    x = h
                    for r in range(c.n_rec):
                        act = None if r == 0 else (i >= r)
                        Fx = self.run(blocks[r], x, act, pos, kvc)
                        x = Fx if act is None else torch.where(act.unsqueeze(-1), Fx, x)
                    h = h + g.to(h.dtype) * x
                    depth = i + 1
                if last:
                    h = self.run(last, h, None, pos, kvc)
            logits = self.head(h, self.norm)
            out["logits"] = logits
            out["depth"] = depth
            out["aux"] = aux
            if targets is not None:
                V = c.V
                ce = F.cross_entropy(logits.float().view(-1, V), targets.reshape(-1))
                out["ce"] = ce
                if exit_h:
                    depths = list(c.exit_layers) + [c.L]
                    tot = float(sum(depths))
                    loss = ce * (c.L / tot)
                    for k, he in enumerate(exit_h):
                        ce_k = F.cross_entropy(self.head(he, self.exit_norms[k]).float().view(-1, V),
                                               targets.reshape(-1))
                        out["ce_exit%d" % c.exit_layers[k]] = ce_k.detach()
                        loss = loss + ce_k * (c.exit_layers[k] / tot)
                    out["loss"] = loss
                else:
                    out["loss"] = ce
            return out

        def exit_logits(self, tok):
            """Logits of every exit head (router-free models): {depth: [B, T, V]}."""
            c = self.cfg
            Bn, T = tok.shape
            h = F.embedding(tok, self.emb)
            pos = torch.arange(T, device=tok.device).unsqueeze(0).expand(Bn, T)
            kvc, res = {}, {}
            for l in range(c.L):
                h = self.run([l], h, None, pos, kvc)
                if (l + 1) in c.exit_layers:
                    res[l + 1] = self.head(h, self.exit_norms[c.exit_layers.index(l + 1)])
            return res

    return MorLM()


# ---------------------------------------------------------------------------------------------
# Export: GGUF (docs/FORMAT.md, arch mor) and a Hugging Face style checkpoint (docs/CONVERT.md)
# ---------------------------------------------------------------------------------------------

def export_gguf(model, tok, path, ttype=morgguf.F16, name=None, description=None):
    """Write model as an arch `mor` GGUF: matrices (token_embd, projections, LoRA) in ttype,
    norms and routers F32; output tied to token_embd; the tokenizer's keys. Returns bytes."""
    torch, nn, F = _torch()
    c = model.cfg
    w = morgguf.GGUFWriter()
    w.add_string("general.architecture", "mor")
    w.add_string("general.name", name or ("mor " + c.name))
    if description:
        w.add_string("general.description", description)
    p = "mor."
    w.add_uint32(p + "format_version", 1)
    w.add_uint32(p + "context_length", c.ctx)
    w.add_uint32(p + "embedding_length", c.d)
    w.add_uint32(p + "feed_forward_length", c.d_ff)
    w.add_uint32(p + "block_count", c.L)
    w.add_uint32(p + "attention.head_count", c.n_h)
    w.add_uint32(p + "attention.head_count_kv", c.n_kv)
    w.add_uint32(p + "attention.key_length", c.d_h)
    w.add_float32(p + "attention.layer_norm_rms_epsilon", c.eps)
    w.add_float32(p + "rope.freq_base", c.rope_base)
    w.add_string(p + "rope.type", "neox")
    w.add_uint32(p + "recursion.count", c.n_rec)
    w.add_string(p + "recursion.sharing", c.sharing)
    if c.kv_sharing:
        w.add_bool(p + "kv_sharing", True)
    if c.lora_rank:
        w.add_float32(p + "lora.scale", c.lora_scale)
    if c.router == "expert":
        w.add_string(p + "router.type", "expert")
        w.add_string(p + "router.arch", "linear")
        w.add_string(p + "router.func", "sigmoid")
        w.add_float32(p + "router.alpha", c.expert_alpha)
        w.add_float32(p + "router.temp", c.temp)
        w.add_string(p + "router.gating", "weighted")
    elif c.router == "token":
        w.add_string(p + "router.type", "token")
        w.add_string(p + "router.arch", "linear")
        w.add_string(p + "router.func", "softmax")
        w.add_float32(p + "router.alpha", c.token_alpha)
        w.add_float32(p + "router.temp", c.temp)
        w.add_string(p + "router.gating", "weighted")
    if c.exit_layers:
        w.add_array(p + "exit.layers", morgguf.UINT32, list(c.exit_layers))
    if tok is not None:
        tok.gguf_keys(w)

    def raw(t, tt):
        t = t.detach().to("cpu", torch.float32).contiguous()
        if tt == morgguf.F16:
            return t.to(torch.float16).numpy().tobytes()
        if tt == morgguf.F32:
            return t.numpy().tobytes()
        return morgguf.encode_floats(t.flatten().tolist(), tt)

    def add(name_, t, tt):
        w.add_tensor(name_, raw(t, tt), shape=tuple(t.shape), ttype=tt)

    add("token_embd.weight", model.emb, ttype)
    add("output_norm.weight", model.norm, morgguf.F32)
    for i, b in enumerate(model.blocks):
        add("blk.%d.attn_norm.weight" % i, b.attn_norm, morgguf.F32)
        for role in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add("blk.%d.%s.weight" % (i, role), getattr(b, role), ttype)
        add("blk.%d.ffn_norm.weight" % i, b.ffn_norm, morgguf.F32)
        for role in ("ffn_gate", "ffn_up", "ffn_down"):
            add("blk.%d.%s.weight" % (i, role), getattr(b, role), ttype)
    for key in model.norm_over.keys():
        s, r, role = key.split("_", 2)
        add("blk.%s.rec.%s.%s.weight" % (s, r, role), model.norm_over[key], morgguf.F32)
    for key in model.lora_a.keys():
        s, r, role = key.split("_", 2)
        add("blk.%s.rec.%s.%s.lora_a" % (s, r, role), model.lora_a[key], ttype)
        add("blk.%s.rec.%s.%s.lora_b" % (s, r, role), model.lora_b[key], ttype)
    if c.router == "expert":
        for r in range(c.n_rec):
            add("router.%d.weight" % r, model.router_w[r:r + 1], morgguf.F32)
    elif c.router == "token":
        add("router.weight", model.router_w, morgguf.F32)
    for k in range(len(c.exit_layers)):
        add("exit.%d.norm.weight" % k, model.exit_norms[k], morgguf.F32)
    return w.write(path)


def model_from_gguf(path, device="cpu"):
    """A MorLM holding the weights of a `mor` GGUF file written by export_gguf (float32)."""
    torch, nn, F = _torch()
    import reference
    r = morgguf.GGUFReader(path)
    g = lambda k, dflt=None: r.get("mor." + k, dflt)  # noqa: E731
    router = g("router.type", "none")
    kw = dict(name=os.path.basename(path).rsplit(".", 1)[0], d=g("embedding_length"),
              n_h=g("attention.head_count"), n_kv=g("attention.head_count_kv"),
              d_ff=g("feed_forward_length"), L=g("block_count"), n_rec=g("recursion.count"),
              sharing=g("recursion.sharing"), router=router, kv_sharing=bool(g("kv_sharing", False)),
              ctx=g("context_length"), eps=g("attention.layer_norm_rms_epsilon", 1e-5),
              rope_base=g("rope.freq_base", 10000.0), exit_layers=list(g("exit.layers", [])),
              temp=g("router.temp", 1.0))
    names = r.tensor_names()
    kw["V"] = r.tensor("token_embd.weight").shape[0]
    # what the trainer's model cannot hold is refused, never dropped
    for n in names:
        if n == "output.weight" or re.match(r"exit\.\d+\.output\.weight$", n):
            raise SystemExit("%s: %s: the trainer ties output matrices to the embedding and "
                             "cannot hold a separate one" % (path, n))
    loras = [n for n in names if n.endswith(".lora_a")]
    if loras:
        kw["lora_rank"] = max(r.tensor(n).shape[0] for n in loras)
        kw["lora_roles"] = sorted(set(n.split(".")[-2] for n in loras), key=ROLES7.index)
        kw["lora_scale"] = g("lora.scale")
    if router == "expert":
        kw["expert_alpha"] = g("router.alpha")
    elif router == "token":
        kw["token_alpha"] = g("router.alpha")
    over = []
    for n in names:
        mo = re.match(r"blk\.(\d+)\.rec\.(\d+)\.(\w+)\.weight$", n)
        if mo:
            if mo.group(3) not in ("attn_norm", "ffn_norm"):
                raise SystemExit("%s: per-recursion override %s is not supported by the trainer" % (path, n))
            over.append("%s_%s_%s" % mo.groups())
    kw["norm_overrides"] = over
    cfg = ModelConfig(**kw)
    m = build_model(cfg)
    ref = reference.Model.from_gguf(path, "cpu")
    W = {k: v.to(torch.float32) for k, v in ref.W.items()}
    with torch.no_grad():
        m.emb.copy_(W["token_embd.weight"])
        m.norm.copy_(W["output_norm.weight"])
        for i, b in enumerate(m.blocks):
            for role in ("attn_norm", "ffn_norm") + ROLES7:
                getattr(b, role).copy_(W["blk.%d.%s.weight" % (i, role)])
        for key in list(m.norm_over.keys()):
            s, rr, role = key.split("_", 2)
            m.norm_over[key].copy_(W["blk.%s.rec.%s.%s.weight" % (s, rr, role)])
        for key in list(m.lora_a.keys()):
            s, rr, role = key.split("_", 2)
            if "blk.%s.rec.%s.%s.lora_a" % (s, rr, role) not in W:
                raise SystemExit("%s: no LoRA pair blk.%s.rec.%s.%s: the trainer needs one at every "
                                 "position of a relaxed model (convert without --skip-exact)"
                                 % (path, s, rr, role))
            m.lora_a[key].copy_(W["blk.%s.rec.%s.%s.lora_a" % (s, rr, role)])
            m.lora_b[key].copy_(W["blk.%s.rec.%s.%s.lora_b" % (s, rr, role)])
        if router == "expert":
            for rr in range(cfg.n_rec):
                m.router_w[rr].copy_(W["router.%d.weight" % rr][0])
        elif router == "token":
            m.router_w.copy_(W["router.weight"])
        for k in range(len(cfg.exit_layers)):
            if "exit.%d.norm.weight" % k in W:
                m.exit_norms[k].copy_(W["exit.%d.norm.weight" % k])
    return m.to(device)


def write_safetensors(path, tensors, metadata=None):
    """tensors: ordered list of (name, torch tensor); F32/F16/BF16 as the tensor's dtype."""
    torch, nn, F = _torch()
    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        t = t.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            b = t.view(torch.int16).numpy().tobytes()
        else:
            b = t.numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((-len(hb)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def export_hf(model, out_dir, dtype="float32"):
    """A Hugging Face style checkpoint of model in the official MoR layouts (docs/CONVERT.md):
    config.json (LlamaConfig fields, num_hidden_layers = unrolled L, tied embeddings),
    model.safetensors and mor_config.json (the recursive / mor / kv_sharing / relaxation
    settings that the official code keeps in its Hydra YAML). Router-free models are written
    fully unrolled (every alias present); expert-choice with per-recursion `block` lists and
    routers, token-choice with `block_list` and one router (docs/CONVERT.md, "Supported
    checkpoint layouts").
    LoRA uses PEFT names (base_layer / lora_A.default / lora_B.default). Exit-head norms have
    no official name: they are written as model.exit_norms.{k}.weight."""
    torch, nn, F = _torch()
    c = model.cfg
    dt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    os.makedirs(out_dir, exist_ok=True)
    hf_role = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj"}
    T = []

    def layer(prefix, l):
        s, r = c.ref.s_r(l)
        b = model.blocks[s]
        T.append((prefix + "input_layernorm.weight", b.attn_norm.to(dt)))
        T.append((prefix + "post_attention_layernorm.weight", b.ffn_norm.to(dt)))
        for role in ROLES7:
            key = "%d_%d_%s" % (s, r, role)
            if key in model.lora_a:
                T.append((prefix + hf_role[role] + ".base_layer.weight", getattr(b, role).to(dt)))
                T.append((prefix + hf_role[role] + ".lora_A.default.weight", model.lora_a[key].to(dt)))
                T.append((prefix + hf_role[role] + ".lora_B.default.weight", model.lora_b[key].to(dt)))
            else:
                T.append((prefix + hf_role[role] + ".weight", getattr(b, role).to(dt)))

    T.append(("model.embed_tokens.weight", model.emb.to(dt)))
    if c.router == "none":
        for l in range(c.L):
            layer("model.layers.%d." % l, l)
    else:
        first, blocks, last = c.ref.blocks()
        base = 0
        if first:
            layer("model.layers.0.", 0)
            base = 1
        if c.router == "expert":
            for r, ls in enumerate(blocks):
                for j, l in enumerate(ls):
                    layer("model.layers.%d.block.%d." % (base + r, j), l)
                T.append(("model.layers.%d.mor_router.router.weight" % (base + r), model.router_w[r:r + 1].to(dt)))
            nxt = base + c.n_rec
        else:
            for r, ls in enumerate(blocks):
                for j, l in enumerate(ls):
                    layer("model.layers.%d.block_list.%d.%d." % (base, r, j), l)
            T.append(("model.layers.%d.mor_router.router.weight" % base, model.router_w.to(dt)))
            nxt = base + 1
        if last:
            layer("model.layers.%d." % nxt, last[0])
    T.append(("model.norm.weight", model.norm.to(dt)))
    T.append(("lm_head.weight", model.emb.to(dt)))
    for k in range(len(c.exit_layers)):
        T.append(("model.exit_norms.%d.weight" % k, model.exit_norms[k].to(dt)))
    write_safetensors(os.path.join(out_dir, "model.safetensors"), T, {"format": "pt"})
    conf = {"architectures": ["MoRLlamaForCausalLM" if c.router != "none" else "LlamaForCausalLM"],
            "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": EOT_ID,
            "eos_token_id": EOT_ID, "head_dim": c.d_h, "hidden_act": "silu", "hidden_size": c.d,
            "initializer_range": 0.02, "intermediate_size": c.d_ff, "max_position_embeddings": c.ctx,
            "mlp_bias": False, "model_type": "llama", "num_attention_heads": c.n_h,
            "num_hidden_layers": c.L, "num_key_value_heads": c.n_kv, "pretraining_tp": 1,
            "rms_norm_eps": c.eps, "rope_scaling": None, "rope_theta": c.rope_base,
            "tie_word_embeddings": True, "torch_dtype": dtype, "use_cache": True, "vocab_size": c.V}
    if c.kv_sharing:
        conf["kv_sharing"] = {"enable": True, "base_depth": c.ref.B, "num_recursion": c.n_rec,
                              "sharing": c.sharing, "update_cache": False}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(conf, f, indent=2)
    mor = {"recursive": {"enable": c.n_rec > 1, "num_recursion": c.n_rec, "sharing": c.sharing,
                         "ln_share": True, "initialization": "random"},
           "mor": {"enable": c.router != "none", "type": c.router if c.router != "none" else None,
                   "capacity": ",".join("%g" % x for x in c.capacity), "router_type": "linear",
                   "temp": c.temp, "rand_router": False, "z_loss": c.router == "token",
                   "z_coeff": c.z_coeff,
                   "expert": {"router_func": "sigmoid", "alpha": c.expert_alpha, "sampling": "aux_loss",
                              "coeff": c.aux_coeff, "gating": "weighted"},
                   "token": {"router_func": "softmax", "alpha": c.token_alpha, "balancing": "loss",
                             "coeff": c.bal_coeff, "gating": "weighted"}},
           "kv_sharing": {"enable": c.kv_sharing, "update_cache": False},
           "relaxation": {"enable": bool(c.lora_rank), "method": "lora" if c.lora_rank else None,
                          "lora": {"r": c.lora_rank, "alpha": c.lora_scale * c.lora_rank,
                                   "target_modules": [hf_role[x].split(".")[1] for x in c.lora_roles],
                                   "layers_to_transform": "middle" if c.ref.middle else "all"}},
           "exit_layers": list(c.exit_layers)}
    with open(os.path.join(out_dir, "mor_config.json"), "w") as f:
        json.dump(mor, f, indent=2)
    return out_dir


# ---------------------------------------------------------------------------------------------
# The trained model family
# ---------------------------------------------------------------------------------------------

SHAPE = dict(d=384, n_h=6, n_kv=2, d_ff=1024, V=VOCAB_SIZE, L=8, ctx=512)
FAMILY = [
    ("vanilla", dict(n_rec=1, sharing="cycle", exit_layers=[3, 5])),
    ("recursive", dict(n_rec=3, sharing="middle_cycle", exit_layers=[3, 5])),
    ("mor-expert", dict(n_rec=3, sharing="middle_cycle", router="expert")),
    ("mor-token", dict(n_rec=3, sharing="middle_cycle", router="token")),
]
# Shipped in tests/data/models (default.gguf is the first); chosen from the measured results
# (docs/MODELS.md).
SHIPPED = [("default", "recursive"), ("mor-expert", "mor-expert")]


def family_config(name):
    for n, kw in FAMILY:
        if n == name:
            d = dict(SHAPE)
            d.update(kw)
            return ModelConfig(name=n, **d)
    raise SystemExit("unknown model %s (have %s)" % (name, ", ".join(n for n, _ in FAMILY)))


def load_u16(path):
    from array import array
    a = array("H")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return a


def load_train(work, device):
    torch, nn, F = _torch()
    path = os.path.join(work, "train.u16")
    if device == "cpu":
        return torch.tensor(load_u16(path).tolist(), dtype=torch.long)
    import numpy as np
    return torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64)).to(device)


def load_work(work, device, max_eval_tokens=0):
    """What `prepare` wrote: (tokenizer, data.json, training tokens on device, held-out
    [(file, token ids)] cut to max_eval_tokens each when set)."""
    with open(os.path.join(work, "tokenizer.json")) as f:
        tok = Tokenizer.from_json(json.load(f))
    with open(os.path.join(work, "data.json")) as f:
        dmeta = json.load(f)
    held = [(h["file"], load_u16(os.path.join(work, "heldout", h["file"] + ".u16"))) for h in dmeta["heldout"]]
    if max_eval_tokens:
        held = [(n, ids[:max_eval_tokens]) for n, ids in held]
    return tok, dmeta, load_train(work, device), held


def eval_windows(ids, ctx):
    return [ids[w:w + ctx] for w in range(0, len(ids), ctx) if len(ids[w:w + ctx]) >= 2]


def eval_ppl(model, files, ctx, device, batch=16):
    """Held-out NLL with the trainer's model (float32, causal inference policy): windows of
    ctx tokens, each scoring its tokens 1..n-1. Returns {file: (nll_sum, n_scored)} and the
    depth histogram."""
    torch, nn, F = _torch()
    res, hist = {}, collections.Counter()
    model.eval()
    with torch.no_grad():
        for name, ids in files:
            wins = eval_windows(list(ids), ctx)
            tot, cnt = 0.0, 0
            for i in range(0, len(wins), batch):
                group = {}
                for wdw in wins[i:i + batch]:
                    group.setdefault(len(wdw), []).append(wdw)
                for n, ws in group.items():
                    x = torch.tensor(ws, dtype=torch.long, device=device)
                    o = model(x, policy="eval")
                    lp = F.log_softmax(o["logits"].double(), dim=-1)[:, :-1]
                    tot -= float(lp.gather(-1, x[:, 1:].unsqueeze(-1)).sum())
                    cnt += x.shape[0] * (n - 1)
                    hist.update(o["depth"].flatten().tolist())
            res[name] = (tot, cnt)
    return res, dict(hist)


def ref_ppl(gguf, files, ctx, device, max_seconds=None):
    """The same held-out NLL computed by tools/reference.py (float64) from the GGUF file."""
    torch, nn, F = _torch()
    import reference
    m = reference.Model.from_gguf(gguf, device)
    t0 = time.time()
    res = {}
    for name, ids in files:
        tot, cnt = 0.0, 0
        for wdw in eval_windows(list(ids), ctx):
            if max_seconds and time.time() - t0 > max_seconds:
                break
            r = reference.forward(m, wdw)
            lp = torch.log_softmax(r.logits, dim=-1)[:-1]
            tgt = torch.tensor(wdw[1:], device=lp.device)
            tot -= float(lp.gather(-1, tgt.unsqueeze(-1)).sum())
            cnt += len(wdw) - 1
        res[name] = (tot, cnt)
    return res


def greedy_sample(model, tok, prompt, n, device):
    torch, nn, F = _torch()
    ids = tok.encode(prompt)
    model.eval()
    with torch.no_grad():
        for _ in range(n):
            x = torch.tensor([ids[-model.cfg.ctx:]], dtype=torch.long, device=device)
            nxt = int(model(x, policy="eval")["logits"][0, -1].argmax())
            if nxt == EOT_ID:
                break
            ids.append(nxt)
    return tok.decode(ids)


def train_one(cfg, data, seconds, device, batch, seq, lr, log, seed=1234, model=None, tokens_budget=0,
              ckpt=None, ckpt_every=0.0, resume=False, teacher=None, kd_weight=0.0, kd_temp=1.0,
              warmup=0.04, final_lr=0.1):
    """Train cfg (or `model`, already initialised) for `seconds` of wall-clock time, or for
    `tokens_budget` tokens when that is set. Learning rate: linear warm-up over the first
    `warmup` of the run, cosine decay to `final_lr` of the peak at the end, both driven by
    the fraction of the run done (elapsed time, or tokens seen).

    Checkpoints: with `ckpt` (a path) and `ckpt_every` > 0 the model, optimizer, random
    generator, step, tokens and elapsed time are saved every `ckpt_every` seconds and at the
    end; with `resume` a run continues from that file where it stopped (same schedule, same
    batches from then on). With `teacher` (a model), the loss adds kd_weight * KL(teacher ||
    student) at temperature kd_temp on the final logits (distillation, for uptraining)."""
    torch, nn, F = _torch()
    torch.manual_seed(seed)
    if model is None:
        model = build_model(cfg)
    model = model.to(device)
    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (decay if p.dim() == 2 and "router" not in n_ else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=(device != "cpu"))
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    N = data.numel()
    ar = torch.arange(seq + 1, device=device)
    cuda = device != "cpu"
    amp = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if cuda else None
    step, tokens, hist, done = 0, 0, [], 0.0
    if resume and ckpt and os.path.exists(ckpt):
        st = torch.load(ckpt, map_location=device, weights_only=False)
        if st["config"] != cfg.to_dict():
            raise SystemExit("%s: checkpoint of another configuration" % ckpt)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"].cpu() if hasattr(st["gen"], "cpu") else st["gen"])
        step, tokens, hist, done = st["step"], st["tokens"], st["history"], st["elapsed"]
        log("  %-10s resumed from %s at step %d, %.1f s, %d tokens" % (cfg.name, ckpt, step, done, tokens))

    def save():
        tmp = ckpt + ".tmp"
        torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "step": step, "tokens": tokens, "history": hist,
                    "elapsed": time.time() - t0}, tmp)
        os.replace(tmp, ckpt)

    if teacher is not None:
        teacher = teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    model.train()
    t0 = time.time() - done
    t_ck = time.time()
    last = {}
    while True:
        el = time.time() - t0
        frac = tokens / tokens_budget if tokens_budget else el / seconds
        if frac >= 1.0:
            break
        cur_lr = lr * min(1.0, frac / warmup + 1e-3 if warmup > 0 else 1.0) * \
            (final_lr + (1 - final_lr) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = cur_lr
        off = torch.randint(0, N - seq - 1, (batch,), device=device, generator=gen)
        chunk = data[off.unsqueeze(1) + ar]
        x, y = chunk[:, :-1], chunk[:, 1:]
        with (amp if amp is not None else contextlib.nullcontext()):
            o = model(x, y)
            loss = o["loss"] + o["aux"]
            if teacher is not None and kd_weight > 0:
                with torch.no_grad():
                    tl = teacher(x, policy="eval")["logits"].float() / kd_temp
                sl = o["logits"].float() / kd_temp
                kd = F.kl_div(F.log_softmax(sl, -1).view(-1, sl.shape[-1]),
                              F.log_softmax(tl, -1).view(-1, tl.shape[-1]),
                              log_target=True, reduction="batchmean") * kd_temp * kd_temp
                o["kd"] = kd.detach()
                loss = (1 - kd_weight) * loss + kd_weight * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += batch * seq
        if cuda:
            torch.cuda.synchronize()
        if step % 50 == 0 or step == 1:
            last = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in o.items()
                    if k not in ("logits", "depth")}
            last = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in last.items()}
            hist.append({"step": step, "t": round(time.time() - t0, 2), "lr": cur_lr, **last})
            log("  %-10s step %5d  %6.1fs  lr %.2e  %s" % (cfg.name, step, time.time() - t0, cur_lr,
                                                         " ".join("%s %s" % kv for kv in last.items())))
        if ckpt and ckpt_every > 0 and time.time() - t_ck >= ckpt_every:
            save()
            t_ck = time.time()
    wall = time.time() - t0
    if ckpt and ckpt_every > 0:
        save()
    return model, {"steps": step, "tokens": tokens, "seconds": round(wall, 1), "history": hist,
                   "final": last}


def cmd_train(a):
    torch, nn, F = _torch()
    global USE_SDPA
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(a.out, exist_ok=True)
    logf = open(os.path.join(a.out, "train.log"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    t_start = time.time()
    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        log("device: %s, torch %s" % (torch.cuda.get_device_name(0), torch.__version__))
    if not a.no_selftest:
        ok = selftest(device, log, quick=True)
        if not ok and USE_SDPA:
            USE_SDPA = False
            log("selftest failed with scaled_dot_product_attention; retrying with math attention")
            if not selftest(device, log, quick=True):
                raise SystemExit("selftest failed")
    tok, dmeta, data, held = load_work(a.work, device, a.max_eval_tokens)
    held_txt = [os.path.join(a.work, "heldout", h["file"] + ".txt") for h in dmeta["heldout"]]
    results_path = os.path.join(a.out, "results.json")
    results = {"device": torch.cuda.get_device_name(0) if device != "cpu" else "cpu",
               "torch": torch.__version__, "batch": a.batch, "seq": a.seq, "lr": a.lr,
               "seconds_per_model": a.seconds, "train_tokens_available": int(data.numel()),
               "models": {}}
    bg = []
    names = a.models.split(",")
    for name in names:
        left = a.deadline - (time.time() - t_start) if a.deadline else None
        if left is not None and left < model_seconds(a, name) + 45:
            log("== %s: skipped, %.0f s left before the deadline" % (name, left))
            continue
        try:
            train_eval_export(a, name, tok, data, held, held_txt, device, results, results_path, bg, log)
        except Exception:  # noqa: BLE001
            import traceback
            log("== %s: FAILED\n%s" % (name, traceback.format_exc()))
        if device != "cpu":
            torch.cuda.empty_cache()
    try:
        tok_vectors(tok, a.work, a.out, log)
    except Exception as e:  # noqa: BLE001
        log("tokenizer vectors: %s" % e)
    for name, cf, pr in bg:
        pr.wait()
        cf.close()
        with open(os.path.join(a.out, name + ".c-ppl.txt")) as f:
            if name in results["models"]:
                results["models"][name]["c_ppl_output"] = f.read()
    results["wall_seconds"] = round(time.time() - t_start, 1)
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)
    log("train: done in %.0f s" % (time.time() - t_start))


def model_seconds(a, name):
    """--seconds S (every model) or --seconds NAME=S,NAME=S (missing names: the first value)."""
    spec = str(a.seconds)
    if "=" not in spec:
        return float(spec)
    d = dict(x.split("=", 1) for x in spec.split(","))
    return float(d.get(name, list(d.values())[0]))


def train_eval_export(a, name, tok, data, held, held_txt, device, results, results_path, bg, log):
    torch, nn, F = _torch()
    cfg = family_config(name)
    if a.tiny:
        cfg = ModelConfig(**dict(cfg.to_dict(), d=64, n_h=4, n_kv=2, d_ff=128, ctx=64))
    uniq, unr = cfg.params()
    log("== %s: %s, %d unique params, %d unrolled" % (name, cfg.to_dict(), uniq, unr))
    model, info = train_one(cfg, data, model_seconds(a, name), device, a.batch, min(a.seq, cfg.ctx), a.lr, log,
                            ckpt=os.path.join(a.out, name + ".ckpt"), ckpt_every=a.checkpoint_every,
                            resume=a.resume)
    info.update({"config": cfg.to_dict(), "params_unique": uniq, "params_unrolled": unr})
    gguf = os.path.join(a.out, name + ".gguf")
    info["gguf_bytes"] = export_gguf(model, tok, gguf, name="mor " + name,
                                     description="mor trained model '%s' (tools/train.py)" % name)
    if a.keep_checkpoints:
        torch.save({"config": cfg.to_dict(), "state": model.state_dict()}, os.path.join(a.out, name + ".pt"))
    if a.cppl and os.path.exists(a.cppl):
        import subprocess
        cf = open(os.path.join(a.out, name + ".c-ppl.txt"), "w")
        extra = ["--max-tokens", str(a.max_eval_tokens)] if a.max_eval_tokens else []
        bg.append((name, cf, subprocess.Popen(["nice", a.cppl, gguf] + held_txt + ["-j", str(a.cppl_threads)] + extra,
                                              stdout=cf, stderr=subprocess.STDOUT)))
    te = time.time()
    ev, hist = eval_ppl(model, held, cfg.ctx, device)
    info["heldout_trainer"] = {k: [v[0], v[1], math.exp(v[0] / v[1])] for k, v in ev.items()}
    info["depth_hist_trainer"] = {str(k): v for k, v in sorted(hist.items())}
    log("  %s trainer eval (%.0fs): %s depths %s" % (name, time.time() - te, {k: round(v[2], 3) for k, v in
                                                                               info["heldout_trainer"].items()}, hist))
    if device != "cpu":
        te = time.time()
        rp = ref_ppl(gguf, held, cfg.ctx, device, max_seconds=a.ref_seconds)
        info["heldout_reference"] = {k: [v[0], v[1], math.exp(v[0] / v[1]) if v[1] else None] for k, v in rp.items()}
        log("  %s reference eval (%.0fs): %s" % (name, time.time() - te, {k: (round(v[2], 3) if v[2] else None, v[1])
                                                                          for k, v in info["heldout_reference"].items()}))
    info["samples"] = {}
    for prompt in ("Once upon a time", "The old man looked at the sea and"):
        info["samples"][prompt] = greedy_sample(model, tok, prompt, 48, device)
        log("  sample: %r" % info["samples"][prompt])
    results["models"][name] = info
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)


def cmd_uptrain(a):
    """Uptrain a converted (relaxed recursive) model: every weight trainable, a token budget,
    optionally distilled from the vanilla model it came from; held-out perplexity before and
    after, both with the trainer's float32 model and (on a GPU) the float64 reference."""
    torch, nn, F = _torch()
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
    tok, dmeta, data, held = load_work(a.work, device, a.max_eval_tokens)
    log = print
    model = model_from_gguf(a.gguf, device)
    cfg = model.cfg
    teacher = model_from_gguf(a.teacher, device) if a.teacher else None
    report = {"input": os.path.basename(a.gguf), "teacher": a.teacher and os.path.basename(a.teacher),
              "tokens": a.tokens, "lr": a.lr, "kd": a.kd, "params_unique": cfg.params()[0]}

    def ppl(m, tag):
        ev, _ = eval_ppl(m, held, cfg.ctx, device)
        tot = sum(v[0] for v in ev.values())
        cnt = sum(v[1] for v in ev.values())
        res = {k: math.exp(v[0] / v[1]) for k, v in ev.items()}
        res["all"] = math.exp(tot / cnt)
        log("  %s held-out ppl: %s" % (tag, {k: round(v, 3) for k, v in res.items()}))
        return res

    report["before"] = ppl(model, "before")
    if teacher is not None:
        report["teacher_ppl"] = ppl(teacher, "teacher")
    model, info = train_one(cfg, data, 0, device, a.batch, min(a.seq, cfg.ctx), a.lr, log, model=model,
                            tokens_budget=a.tokens, teacher=teacher, kd_weight=a.kd, kd_temp=a.kd_temp,
                            warmup=0.05, final_lr=0.1)
    report["train"] = {k: v for k, v in info.items() if k != "history"}
    report["after"] = ppl(model, "after")
    export_gguf(model, tok, a.out, name="mor uptrained " + cfg.name,
                description="uptrained from %s (tools/train.py uptrain)" % os.path.basename(a.gguf))
    if device != "cpu":
        rp = ref_ppl(a.out, held, cfg.ctx, device, max_seconds=a.ref_seconds)
        report["after_reference"] = {k: math.exp(v[0] / v[1]) if v[1] else None for k, v in rp.items()}
    with open(a.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    log("uptrain: %s" % json.dumps({k: report[k] for k in ("before", "after")}))


# ---------------------------------------------------------------------------------------------
# Tokenizer test vectors and golden fixtures
# ---------------------------------------------------------------------------------------------

TOK_SEP = "\n__ggml_vocab_test__\n"


def tok_strings(work):
    """Test strings: the strings of tests/data/vocab/pretok.inp (llama.cpp's 46 and more)
    without <|endoftext|>, and two paragraphs of each held-out book."""
    out = []
    inp = os.path.join(HERE, "..", "tests", "data", "vocab", "pretok.inp")
    if os.path.exists(inp):
        with open(inp, encoding="utf-8") as f:
            # Hugging Face always splits out added tokens; the vectors are plain-text tokenization
            out.extend(s for s in f.read().split(TOK_SEP)[:-1] if EOT not in s)
    with open(os.path.join(work, "data.json")) as f:
        dmeta = json.load(f)
    for h in dmeta["heldout"]:
        if not h["name"].startswith("gutenberg/"):
            continue        # only public-domain text goes into the repository
        with open(os.path.join(work, "heldout", h["file"] + ".txt"), encoding="utf-8") as f:
            paras = [p for p in f.read().split("\n\n") if 200 < len(p) < 1500]
        picks = paras[len(paras) // 3::max(1, len(paras) // 3)][:2]
        out.extend(picks)
    return out


def tok_vectors(tok, work, out_dir, log):
    """vocab.gguf.inp / vocab.gguf.out: the test strings and their token ids from Hugging Face
    `tokenizers` (the same BPE as a tokenizers.Tokenizer), checked against this module's own
    encoder. Without the package the ids come from this module (and the .out says so in the
    log only: the format has no comment lines)."""
    strings = tok_strings(work)
    try:
        hf = tok.hf()
        import tokenizers
        src = "tokenizers %s" % tokenizers.__version__
        ids = [hf.encode(s, add_special_tokens=False).ids for s in strings]
    except ImportError:
        src = "tools/train.py encoder (tokenizers not installed)"
        ids = [tok.encode(s) for s in strings]
    bad = [i for i, s in enumerate(strings) if tok.encode(s) != ids[i]]
    log("tokenizer vectors: %d strings from %s; this module's encoder differs on %d %s"
        % (len(strings), src, len(bad), bad[:10]))
    with open(os.path.join(out_dir, "vocab.gguf.inp"), "w", encoding="utf-8", newline="") as f:
        f.write("".join(s + TOK_SEP for s in strings))
    with open(os.path.join(out_dir, "vocab.gguf.out"), "w") as f:
        f.write("".join("".join(" %d" % t for t in row) + "\n" for row in ids))
    return bad


def _fixture_tools():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_fixtures", os.path.join(HERE, "make-fixtures.py"))
    mf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mf)
    return mf


def make_model_fixture(gguf, fix, tok, passages, n_prompt=8, n_greedy=32, device="cpu", log=print):
    """Fixture of a trained model: the first passage (a held-out paragraph) whose first
    n_prompt tokens give greedy margins and router margins above 1e-3 and at least 8 distinct
    greedy tokens (router models: several depths among the greedy steps)."""
    torch, nn, F = _torch()
    import reference
    mf = _fixture_tools()
    model = reference.Model.from_gguf(gguf, device)
    router = model.cfg.router_type != "none"
    for k, text in enumerate(passages):
        prompt = tok.encode(text)[:n_prompt]
        if len(prompt) < n_prompt:
            continue
        ev = mf.evaluate(reference, torch, model, prompt, n_greedy)
        why = []
        if min(ev["margins"]) <= mf.MARGIN:
            why.append("greedy margin %.3g" % min(ev["margins"]))
        if len(set(ev["ids"])) < mf.MIN_DISTINCT:
            why.append("%d distinct" % len(set(ev["ids"])))
        if router and ev["router_margin"] <= mf.MARGIN:
            why.append("router margin %.3g" % ev["router_margin"])
        if router and len(set(ev["all_depths"])) < 2:
            why.append("one depth")
        if why:
            log("  %s: passage %d rejected: %s" % (os.path.basename(gguf), k, ", ".join(why)))
            continue
        logits = ev["res0"].logits.cpu().tolist()
        mf.write_fixture(fix, os.path.basename(gguf), prompt, logits, ev["ids"], ev["depths"] if router else None)
        back = mf.read_fixture(fix)
        assert back["greedy"] == ev["ids"] and back["prompt"] == prompt
        info = {"passage": k, "prompt_text": tok.decode(prompt), "greedy_text": tok.decode(ev["ids"]),
                "min_margin": min(ev["margins"]), "router_margin": ev["router_margin"] if router else None,
                "depths": ev["depths"] if router else None,
                "max_logit": max(abs(x) for row in logits for x in row), "kv_vs_recompute": ev["diff"]}
        log("  %s: %s" % (os.path.basename(fix), info))
        return info
    raise SystemExit("%s: no passage gives a well-conditioned fixture" % gguf)


def cmd_fixtures(a):
    import shutil
    with open(os.path.join(a.work, "tokenizer.json")) as f:
        tok = Tokenizer.from_json(json.load(f))
    os.makedirs(a.dest, exist_ok=True)
    with open(os.path.join(a.work, "heldout", "pg35-The-Time-Machine.txt"), encoding="utf-8") as f:
        paras = [p for p in f.read().split("\n\n") if len(p) > 300]
    passages = paras[5:]
    out = {}
    ships = [tuple(s.split("=")) for s in a.ship.split(",")] if a.ship else SHIPPED
    for dst, src in ships:
        g = os.path.join(a.models, src + ".gguf")
        d = os.path.join(a.dest, dst + ".gguf")
        if os.path.abspath(g) != os.path.abspath(d):
            shutil.copyfile(g, d)
        out[dst] = make_model_fixture(d, os.path.join(a.dest, dst + ".fix"), tok, passages, device=a.device)
        out[dst]["source"] = src
    vi = os.path.join(a.models, "vocab.gguf.inp")
    if os.path.exists(vi):
        with open(vi, encoding="utf-8", newline="") as f:
            strings = f.read().split(TOK_SEP)[:-1]
        with open(os.path.join(a.models, "vocab.gguf.out")) as f:
            rows = f.read().split("\n")[:len(strings)]
        wanted = set(tok_strings(a.work))
        keep = [k for k, s_ in enumerate(strings) if s_ in wanted]
        with open(os.path.join(a.dest, "default.gguf.inp"), "w", encoding="utf-8", newline="") as f:
            f.write("".join(strings[k] + TOK_SEP for k in keep))
        with open(os.path.join(a.dest, "default.gguf.out"), "w") as f:
            f.write("".join(rows[k] + "\n" for k in keep))
        bad = [k for k in keep if [int(x) for x in rows[k].split()] != tok.encode(strings[k])]
        print("tokenizer vectors: %d strings, this module's encoder differs on %d" % (len(keep), len(bad)))
    else:
        tok_vectors(tok, a.work, a.dest, print)
        os.replace(os.path.join(a.dest, "vocab.gguf.inp"), os.path.join(a.dest, "default.gguf.inp"))
        os.replace(os.path.join(a.dest, "vocab.gguf.out"), os.path.join(a.dest, "default.gguf.out"))
    with open(os.path.join(a.models, "fixtures.json"), "w") as f:
        json.dump(out, f, indent=1)


def exit_stats(model, files, ctx, lambdas=(0.5, 0.7, 0.9), device="cpu"):
    """Exit heads of a router-free model on held-out windows: per head (and the final head)
    the NLL and the top-1 agreement with the final head; per softmax-response threshold
    lambda (confidence p1 - p2 of the head, CALM / FREE), the share of tokens leaving at each
    head (the first head with confidence > lambda, else the final one), the agreement of
    their prediction with the final head's, the NLL of the chosen distributions and the mean
    depth in layers. Hidden states of later tokens are the full-depth ones (no state copying):
    this measures the heads, not a decoding schedule."""
    torch, nn, F = _torch()
    c = model.cfg
    depths = list(c.exit_layers) + [c.L]
    nll = collections.Counter()
    agree = collections.Counter()
    ex = {lam: collections.Counter() for lam in lambdas}
    n = 0
    model.eval()
    with torch.no_grad():
        for name, ids in files:
            for w in eval_windows(list(ids), ctx):
                x = torch.tensor([w], dtype=torch.long, device=device)
                lg = model.exit_logits(x)
                lg[c.L] = model(x, policy="eval")["logits"]
                tgt = x[0, 1:]
                final_top = lg[c.L][0, :-1].argmax(-1)
                conf, lp, top = {}, {}, {}
                for dpt in depths:
                    l = F.log_softmax(lg[dpt][0, :-1].double(), -1)
                    lp[dpt] = l.gather(-1, tgt.unsqueeze(-1))[:, 0]
                    t2 = l.exp().topk(2, dim=-1)
                    conf[dpt] = t2.values[:, 0] - t2.values[:, 1]
                    top[dpt] = t2.indices[:, 0]
                    nll[dpt] -= float(lp[dpt].sum())
                    agree[dpt] += int((top[dpt] == final_top).sum())
                for lam in lambdas:
                    done = torch.zeros_like(tgt, dtype=torch.bool)
                    for dpt in depths:
                        take = ~done if dpt == c.L else (~done & (conf[dpt] > lam))
                        ex[lam]["n%d" % dpt] += int(take.sum())
                        ex[lam]["agree"] += int((take & (top[dpt] == final_top)).sum())
                        ex[lam]["nll"] -= float(lp[dpt][take].sum())
                        ex[lam]["layers"] += int(take.sum()) * dpt
                        done = done | take
                n += len(w) - 1
    res = {"tokens": n, "heads": {d: {"ppl": math.exp(nll[d] / n), "agree_final": agree[d] / n} for d in depths},
           "lambda": {}}
    for lam in lambdas:
        e = ex[lam]
        res["lambda"][lam] = {"share": {d: e["n%d" % d] / n for d in depths}, "agree_final": e["agree"] / n,
                              "ppl": math.exp(e["nll"] / n), "mean_layers": e["layers"] / n}
    return res


def cmd_exits(a):
    model = model_from_gguf(a.gguf)
    with open(os.path.join(a.work, "data.json")) as f:
        dmeta = json.load(f)
    files = [(h["file"], load_u16(os.path.join(a.work, "heldout", h["file"] + ".u16"))[:a.max_tokens or None])
             for h in dmeta["heldout"]]
    print(json.dumps(exit_stats(model, files, model.cfg.ctx), indent=1))


# ---------------------------------------------------------------------------------------------
# Self-test: every variant against tools/reference.py
# ---------------------------------------------------------------------------------------------

SELFTEST = [
    ("vanilla-exits", dict(L=4, n_rec=1, sharing="cycle", exit_layers=[1, 3])),
    ("cycle-exits", dict(L=6, n_rec=3, sharing="cycle", exit_layers=[2, 4])),
    ("sequence", dict(L=6, n_rec=3, sharing="sequence")),
    ("middle_cycle-lora", dict(L=8, n_rec=3, sharing="middle_cycle", lora_rank=4)),
    ("middle_sequence-lora-qv", dict(L=8, n_rec=3, sharing="middle_sequence", lora_rank=4,
                                     lora_roles=["attn_q", "attn_v"])),
    ("cycle-kvshare-lora", dict(L=6, n_rec=3, sharing="cycle", kv_sharing=True, lora_rank=2)),
    ("sequence-kvshare", dict(L=6, n_rec=3, sharing="sequence", kv_sharing=True)),
    ("middle_cycle-kvshare", dict(L=8, n_rec=3, sharing="middle_cycle", kv_sharing=True)),
    ("expert", dict(L=8, n_rec=3, sharing="middle_cycle", router="expert")),
    ("expert-cycle", dict(L=6, n_rec=3, sharing="cycle", router="expert")),
    ("expert-kvshare", dict(L=8, n_rec=3, sharing="middle_cycle", router="expert", kv_sharing=True)),
    ("token", dict(L=8, n_rec=3, sharing="middle_cycle", router="token")),
    ("token-kvshare-lora", dict(L=8, n_rec=3, sharing="middle_cycle", router="token", kv_sharing=True,
                                lora_rank=3)),
]


def selftest(device, log=print, quick=False):
    """Tiny models of every variant: a few training steps (every loss term), export to GGUF,
    then the trainer's causal forward in float64 must equal tools/reference.py's forward on
    the file (logits, depths, exit heads), and model_from_gguf must round-trip. Router weights
    are scaled up so that tokens take different depths."""
    torch, nn, F = _torch()
    import reference
    import tempfile
    ok = True
    tmp = tempfile.mkdtemp(prefix="mor-selftest-")
    gen = torch.Generator().manual_seed(7)
    for name, kw in SELFTEST:
        cfg = ModelConfig(name=name, d=32, n_h=4, n_kv=2, d_ff=48, V=96, ctx=48, **kw)
        torch.manual_seed(zlib.crc32(name.encode()) % 1000)
        m = build_model(cfg).to(device)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
        data = torch.randint(0, cfg.V, (4, 25), generator=gen).to(device)
        for _ in range(3):
            o = m(data[:, :-1], data[:, 1:])
            (o["loss"] + o["aux"]).backward()
            opt.step()
            opt.zero_grad()
        with torch.no_grad():
            for p in m.lora_b.values():
                p.normal_(0, 0.1)
            if cfg.router != "none":
                m.router_w.mul_(40.0)
        path = os.path.join(tmp, name + ".gguf")
        export_gguf(m, None, path, ttype=morgguf.F32)
        ref = reference.Model.from_gguf(path, device)
        toks = data[0, :24].tolist()
        rr = reference.forward(ref, toks, exits=bool(cfg.exit_layers))
        md = m.double().eval()
        with torch.no_grad():
            mo = md(torch.tensor([toks], device=device), policy="eval")
            scale = float(rr.logits.abs().max())
            err = float((mo["logits"][0] - rr.logits).abs().max()) / scale
            dep_ok = mo["depth"][0].tolist() == rr.depths.tolist()
            ex_err = 0.0
            if cfg.exit_layers:
                el = md.exit_logits(torch.tensor([toks], device=device))
                for dpt, lg in el.items():
                    ex_err = max(ex_err, float((lg[0] - rr.exits[dpt]).abs().max()) / scale)
            back = model_from_gguf(path, device).double()
            rt = float((back(torch.tensor([toks], device=device), policy="eval")["logits"][0] - rr.logits).abs().max()) / scale
        hist = collections.Counter(rr.depths.tolist())
        good = err < 1e-9 and dep_ok and ex_err < 1e-9 and rt < 1e-9
        ok = ok and good
        log("selftest %-26s %s  logits %.1e  exits %.1e  round-trip %.1e  depths %s%s"
            % (name, "ok  " if good else "FAIL", err, ex_err, rt, dict(sorted(hist.items())),
               "" if dep_ok else " (depths differ)"))
        if quick and not good:
            break
    if not quick:
        # one Hugging Face export for the record
        export_hf(model_from_gguf(os.path.join(tmp, "expert.gguf"), "cpu"), os.path.join(tmp, "hf-expert"))
        log("selftest: HF-style export written to %s" % os.path.join(tmp, "hf-expert"))
    log("selftest: %s" % ("all ok" if ok else "FAILED"))
    return ok


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    corpus_help = ("the training corpus folder, with gutenberg/, brown/, tinyshakespeare/ and tinystories/ "
                   "(required; docs/MODELS.md, \"Training-data licenses\", lists the files)")

    def common_train(p):
        p.add_argument("--work", default=".dev/mor-data", help="output of prepare")
        p.add_argument("--out", default=".dev/mor-models", help="trained models, logs, results.json")
        p.add_argument("--models", default=",".join(n for n, _ in FAMILY))
        p.add_argument("--seconds", default="70", help="training wall-clock time per model: S, or NAME=S,...")
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--seq", type=int, default=512)
        p.add_argument("--lr", type=float, default=2e-3)
        p.add_argument("--device", default=None)
        p.add_argument("--tiny", action="store_true", help="d=64 models (CPU smoke test)")
        p.add_argument("--max-eval-tokens", type=int, default=0)
        p.add_argument("--ref-seconds", type=float, default=45.0, help="time cap of the float64 reference eval")
        p.add_argument("--cppl", default="build/mor-perplexity", help="C perplexity tool run in the background")
        p.add_argument("--cppl-threads", type=int, default=8)
        p.add_argument("--keep-checkpoints", action="store_true")
        p.add_argument("--checkpoint-every", type=float, default=0.0,
                       help="save OUT/NAME.ckpt (model, optimizer, position in the run) every this many seconds")
        p.add_argument("--resume", action="store_true", help="continue each model from OUT/NAME.ckpt when it exists")
        p.add_argument("--no-selftest", action="store_true")
        p.add_argument("--deadline", type=float, default=0, help="skip models that would end after this many seconds")

    def common_fix(p):
        p.add_argument("--models", default=".dev/mor-models", help="where train wrote the GGUF files")
        p.add_argument("--dest", default="tests/data/models")
        p.add_argument("--ship", default="", help="DEST=SOURCE,... (default: %s)"
                       % ",".join("%s=%s" % s for s in SHIPPED))
        p.add_argument("--device", default="cpu")

    p = sub.add_parser("prepare", help="corpus, tokenizer, token files")
    p.add_argument("--corpus", required=True, help=corpus_help)
    p.add_argument("--work", default=".dev/mor-data")
    p.add_argument("--vocab", type=int, default=VOCAB_SIZE)
    p = sub.add_parser("train", help="train, evaluate and export the model family")
    common_train(p)
    p = sub.add_parser("fixtures", help="copy the shipped models to tests/data/models and write their fixtures")
    p.add_argument("--work", default=".dev/mor-data")
    common_fix(p)
    p = sub.add_parser("selftest", help="every variant against tools/reference.py")
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("exits", help="exit-head statistics of a router-free GGUF on the held-out text")
    p.add_argument("gguf")
    p.add_argument("--work", default=".dev/mor-data")
    p.add_argument("--max-tokens", type=int, default=0, help="per held-out file (0: all)")
    p = sub.add_parser("uptrain", help="uptrain a converted recursive model (mor-relax output)")
    p.add_argument("gguf")
    p.add_argument("--out", required=True, help="the uptrained GGUF (a .json report beside it)")
    p.add_argument("--work", default=".dev/mor-data")
    p.add_argument("--tokens", type=int, required=True, help="token budget")
    p.add_argument("--teacher", default="", help="distil from this GGUF (the vanilla model)")
    p.add_argument("--kd", type=float, default=0.5, help="weight of the distillation loss")
    p.add_argument("--kd-temp", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--device", default=None)
    p.add_argument("--max-eval-tokens", type=int, default=0)
    p.add_argument("--ref-seconds", type=float, default=30.0)
    p = sub.add_parser("export-hf", help="a GGUF written by this tool -> Hugging Face style checkpoint")
    p.add_argument("gguf")
    p.add_argument("out_dir")
    p.add_argument("--dtype", default="float32")
    p = sub.add_parser("all", help="prepare + train + fixtures (make models)")
    p.add_argument("--corpus", required=True, help=corpus_help)
    p.add_argument("--vocab", type=int, default=VOCAB_SIZE)
    common_train(p)
    p.add_argument("--dest", default="tests/data/models")
    p.add_argument("--ship", default="")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        cmd_prepare(a)
    elif a.cmd == "train":
        cmd_train(a)
    elif a.cmd == "fixtures":
        cmd_fixtures(a)
    elif a.cmd == "selftest":
        return 0 if selftest(a.device) else 1
    elif a.cmd == "exits":
        cmd_exits(a)
    elif a.cmd == "uptrain":
        cmd_uptrain(a)
    elif a.cmd == "export-hf":
        export_hf(model_from_gguf(a.gguf), a.out_dir, a.dtype)
    elif a.cmd == "all":
        cmd_prepare(a)
        cmd_train(a)
        a.models, a.device = a.out, "cpu"
        cmd_fixtures(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
