"""The vocabulary: tokenizer.ggml.* keys from a Hugging Face tokenizer.

* tokenizer.json with a byte-level BPE model (GPT-2 style: SmolLM, GPT-NeoX, Llama 3, ...)
  -> `gpt2`: tokens by id, merges in rank order, token types (added special tokens are
  CONTROL, other added tokens USER_DEFINED, ids without a token UNUSED `[PAD<id>]`), the
  pre-tokenizer name (--pre, else recognised from the pre_tokenizer section, else `gpt-2`).
* tokenizer.model (SentencePiece BPE, Llama 2 / TinyLlama style) -> `llama`: pieces, scores
  and types as the protobuf gives them, plus the added tokens of tokenizer.json.
* Special ids and add_bos/add_eos come from tokenizer_config.json, then config.json (ids), then
  the SentencePiece trainer spec; chat_template from tokenizer_config.json.
"""

import os
import struct

from .common import ConvertError
from .checkpoint import read_json

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
             r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
            r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _pretoks(pt):
    if not isinstance(pt, dict):
        return []
    if pt.get("type") == "Sequence":
        out = []
        for x in pt.get("pretokenizers") or []:
            out.extend(_pretoks(x))
        return out
    return [pt]


def detect_pre(tj):
    """(name, how) for the pre_tokenizer section of a byte-level tokenizer.json."""
    steps = _pretoks(tj.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2", "ByteLevel pre-tokenizer"
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return "smollm", "Digits(individual) + ByteLevel pre-tokenizer (SmolLM / StarCoder)"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pat = steps[0].get("pattern") or {}
        rx = pat.get("Regex") if isinstance(pat, dict) else None
        if rx == LLAMA3_RE:
            return "llama-bpe", "Llama 3 split expression"
        if rx == QWEN2_RE:
            return "qwen2", "Qwen2 split expression"
    return None, "pre_tokenizer %s" % (kinds or "none")


def _content(v):
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _special_ids(dirpath, config, lookup, log):
    """tokenizer.ggml.*_token_id and add_*_token keys."""
    out = []
    tc_path = os.path.join(dirpath, "tokenizer_config.json")
    tc = read_json(tc_path) if os.path.exists(tc_path) else {}
    if not isinstance(tc, dict):
        tc = {}
    cfg_ids = {"bos": config.get("bos_token_id"), "eos": config.get("eos_token_id"),
               "pad": config.get("pad_token_id")}
    ids = {}
    for name in ("bos", "eos", "unk", "pad"):
        text = _content(tc.get(name + "_token"))
        tid = lookup.get(text) if text is not None else None
        if tid is None:
            v = cfg_ids.get(name)
            if isinstance(v, list):
                v = v[0] if v else None
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                tid = v
        if tid is not None:
            ids[name] = tid
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(tc.get(key), bool):
            out.append(("tokenizer.ggml." + key, "BOOL", tc[key]))
    ct = tc.get("chat_template")
    if isinstance(ct, list):
        ct = next((x.get("template") for x in ct if isinstance(x, dict) and x.get("name") == "default"), None)
    if isinstance(ct, str) and ct:
        out.append(("tokenizer.chat_template", "STRING", ct))
    return ids, out


def _id_keys(ids, n):
    out = []
    for name in ("bos", "eos", "unk", "pad"):
        if name in ids:
            if not 0 <= ids[name] < n:
                raise ConvertError("the %s token id %d is outside the vocabulary of %d tokens"
                                   % (name, ids[name], n))
            out.append(("tokenizer.ggml.%s_token_id" % name, "UINT32", ids[name]))
    return out


def _gpt2(tj, dirpath, config, V, pre, log):
    model = tj["model"]
    vocab = model.get("vocab")
    merges = model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise ConvertError("tokenizer.json: model.vocab / model.merges are missing")
    by_id = {}
    for tok, i in vocab.items():
        if not isinstance(i, int) or i < 0:
            raise ConvertError("tokenizer.json: bad id %r for token %r" % (i, tok))
        by_id[i] = tok
    types = {}
    for a in tj.get("added_tokens") or []:
        i, c = a.get("id"), a.get("content")
        if not isinstance(i, int) or not isinstance(c, str):
            raise ConvertError("tokenizer.json: bad added token %r" % (a,))
        by_id[i] = c
        types[i] = CONTROL if a.get("special") else USER_DEFINED
    n = max(by_id) + 1 if by_id else 0
    if n > V:
        raise ConvertError("tokenizer.json has %d tokens but the embedding has %d rows; use "
                           "--no-vocab to convert the weights alone" % (n, V))
    tokens, ttypes = [], []
    for i in range(V):
        t = by_id.get(i)
        if t is None:
            tokens.append("[PAD%d]" % i)
            ttypes.append(UNUSED)
        else:
            tokens.append(t)
            ttypes.append(types.get(i, NORMAL))
    mlist = []
    for m in merges:
        if isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            mlist.append("%s %s" % (m[0], m[1]))
        elif isinstance(m, str) and " " in m:
            mlist.append(m)
        else:
            raise ConvertError("tokenizer.json: bad merge %r" % (m,))
    how = "--pre"
    if pre is None:
        pre, how = detect_pre(tj)
        if pre is None:
            log.warn("tokenizer.json: unrecognised %s; writing tokenizer.ggml.pre = gpt-2 (pass "
                     "--pre NAME to choose another, see docs/TOKENIZER.md)" % how)
            pre, how = "gpt-2", "default"
    lookup = dict((t, i) for i, t in enumerate(tokens))
    ids, extra = _special_ids(dirpath, config, lookup, log)
    kv = [("tokenizer.ggml.model", "STRING", "gpt2"), ("tokenizer.ggml.pre", "STRING", pre),
          ("tokenizer.ggml.tokens", "ARRAY:STRING", tokens),
          ("tokenizer.ggml.token_type", "ARRAY:INT32", ttypes),
          ("tokenizer.ggml.merges", "ARRAY:STRING", mlist)]
    kv += _id_keys(ids, V) + extra
    return kv, "gpt2 (byte-level BPE from tokenizer.json), %d tokens, %d merges, pre-tokenizer %s (%s)" % (
        n, len(mlist), pre, how)


# ---- SentencePiece ----------------------------------------------------------------------------

def _varint(b, i):
    v = shift = 0
    while True:
        if i >= len(b):
            raise ConvertError("tokenizer.model: truncated protobuf")
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if not c & 0x80:
            return v, i
        shift += 7
        if shift > 63:
            raise ConvertError("tokenizer.model: bad varint")


def _fields(b):
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        f, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        else:
            raise ConvertError("tokenizer.model: unsupported protobuf wire type %d" % wt)
        if i > len(b):
            raise ConvertError("tokenizer.model: truncated protobuf")
        yield f, wt, v


def _spm(path, tj, dirpath, config, V, log):
    with open(path, "rb") as f:
        data = f.read()
    pieces = []
    trainer = {}
    add_prefix = True
    for f, wt, v in _fields(data):
        if f == 1 and wt == 2:
            piece, score, typ = None, 0.0, NORMAL
            for g, wt2, w in _fields(v):
                if g == 1 and wt2 == 2:
                    try:
                        piece = w.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ConvertError("tokenizer.model: piece %d is not UTF-8" % len(pieces))
                elif g == 2 and wt2 == 5:
                    score = struct.unpack("<f", w)[0]
                elif g == 3 and wt2 == 0:
                    typ = w
            if piece is None:
                raise ConvertError("tokenizer.model: a piece without text")
            pieces.append((piece, score, typ))
        elif f == 2 and wt == 2:
            for g, wt2, w in _fields(v):
                if wt2 == 0:
                    trainer[g] = w - (1 << 64) if w >= 1 << 63 else w
        elif f == 3 and wt == 2:
            for g, wt2, w in _fields(v):
                if g == 3 and wt2 == 0:
                    add_prefix = bool(w)
    if trainer.get(3, 1) != 2:
        log.warn("tokenizer.model is not a BPE SentencePiece model (model_type %s); no vocabulary "
                 "written" % trainer.get(3, 1))
        return [], None
    tokens = [p[0] for p in pieces]
    scores = [p[1] for p in pieces]
    types = [p[2] if 1 <= p[2] <= 6 else NORMAL for p in pieces]
    for a in (tj or {}).get("added_tokens") or []:
        i, c = a.get("id"), a.get("content")
        if isinstance(i, int) and isinstance(c, str) and i >= len(tokens):
            while len(tokens) < i:
                tokens.append("[PAD%d]" % len(tokens))
                scores.append(-1000.0)
                types.append(UNUSED)
            tokens.append(c)
            scores.append(-1000.0)
            types.append(CONTROL if a.get("special") else USER_DEFINED)
    if len(tokens) > V:
        raise ConvertError("tokenizer.model has %d pieces but the embedding has %d rows; use "
                           "--no-vocab to convert the weights alone" % (len(tokens), V))
    n = len(tokens)
    while len(tokens) < V:
        tokens.append("[PAD%d]" % len(tokens))
        scores.append(-1000.0)
        types.append(UNUSED)
    ids = {}
    for name, field in (("unk", 40), ("bos", 41), ("eos", 42), ("pad", 43)):
        v = trainer.get(field, {40: 0, 41: 1, 42: 2, 43: -1}[field])
        if v >= 0:
            ids[name] = v
    lookup = dict((t, i) for i, t in enumerate(tokens))
    ids2, extra = _special_ids(dirpath, config, lookup, log)
    ids.update(ids2)
    kv = [("tokenizer.ggml.model", "STRING", "llama"),
          ("tokenizer.ggml.tokens", "ARRAY:STRING", tokens),
          ("tokenizer.ggml.scores", "ARRAY:FLOAT32", scores),
          ("tokenizer.ggml.token_type", "ARRAY:INT32", types),
          ("tokenizer.ggml.add_space_prefix", "BOOL", add_prefix)]
    kv += _id_keys(ids, V) + extra
    return kv, "llama (SentencePiece BPE from tokenizer.model), %d pieces" % n


def vocab_kv(dirpath, config, V, pre, log):
    """(list of (key, vtype, value), description) or ([], None) when no vocabulary is written."""
    tj_path = os.path.join(dirpath, "tokenizer.json")
    spm_path = os.path.join(dirpath, "tokenizer.model")
    tj = read_json(tj_path) if os.path.exists(tj_path) else None
    if tj is not None:
        if not isinstance(tj, dict) or not isinstance(tj.get("model"), dict):
            raise ConvertError("tokenizer.json has no model section")
        m = tj["model"]
        steps = _pretoks(tj.get("pre_tokenizer"))
        dec = tj.get("decoder") or {}
        byte_level = (any(s.get("type") == "ByteLevel" for s in steps)
                      or (isinstance(dec, dict) and dec.get("type") == "ByteLevel"))
        if m.get("type", "BPE") == "BPE" and byte_level and not m.get("byte_fallback"):
            return _gpt2(tj, dirpath, config, V, pre, log)
        if not os.path.exists(spm_path):
            log.warn("tokenizer.json is not a byte-level BPE tokenizer (model %s) and there is no "
                     "tokenizer.model; the GGUF file gets no vocabulary" % m.get("type"))
            return [], None
    if os.path.exists(spm_path):
        return _spm(spm_path, tj, dirpath, config, V, log)
    log.warn("no tokenizer.json or tokenizer.model: the GGUF file gets no vocabulary "
             "(give token ids to the engine)")
    return [], None
