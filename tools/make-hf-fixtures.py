#!/usr/bin/env python3
"""make-hf-fixtures: tiny random checkpoints in the official Hugging Face / MoR layouts, with
the outputs they must give, for tests/test_convert.py (the mor-convert tests).

    python3 tools/make-hf-fixtures.py [--out tests/data/hf] [--only NAME,...]

Needs PyTorch (CPU is enough) and tools/reference.py. For every layout it draws a model with
torch (seeded by the layout name and an attempt number), saves it the way the official code
saves such a model (key names, aliasing, file kinds, config.json, training YAML, PEFT files),
then loads the saved files back with torch and runs them through the float64 reference
*unrolled*: every unrolled layer with its own weights, so nothing of the converter's sharing
detection is assumed. The reference results go to <layout>/expected.fix (the format of
docs/REFERENCE.md; `model converted.gguf` names the file the test converts to). A model is
re-drawn until every greedy step has a top-1/top-2 margin above 1e-3, router decisions are
more than 1e-3 from their thresholds, and router models show several depths (expert-choice:
every depth 0..N_r, at most a third of the positions at depth 0).

Layouts (d = 32, 4 heads, 2 KV heads, d_ff = 64, vocab 64 unless said otherwise):

  llama              LlamaForCausalLM, 3 layers, separate lm_head, BF16 model.safetensors,
                     vocab 320 with a byte-level BPE tokenizer.json (SmolLM pre-tokenizer)
  mor-expert         MoRLlamaForCausalLM expert-choice, middle-cycle, N_r = 3, B = 2 (L = 8),
                     linear routers, attention untied per recursion (as the released code
                     leaves it), F32 pytorch_model.bin with every unrolled / aliased key, YAML
  mor-expert-cycle   expert-choice, cycle, N_r = 3, B = 1, MLP routers + aux (mlp_router)
                     decision routers, separate lm_head, BF16 model.safetensors with aliases
                     dropped, YAML
  mor-token          MoRLlamaForCausalLM token-choice, middle-cycle, N_r = 3, B = 1 (L = 5),
                     linear router + router_bias (loss-free balancing), F32 model.safetensors
                     with aliases (tied copies, lm_head) dropped, kv_sharing in config.json, YAML
  recursive          RecursiveLlamaForCausalLM (plain Llama keys), cycle, N_r = 3, B = 2
                     (L = 6), ln_share false (norms differ per recursion), F16 sharded
                     safetensors + index, no YAML (the converter must infer the sharing)
  relaxed            cycle, N_r = 2, B = 2 (L = 4) with PEFT LoRA on q_proj and v_proj
                     (rank 4, alpha 8, sigma 2) at every unrolled layer: F32 pytorch_model.bin
                     of base_model.model (base_layer / lora_A.default keys) + adapter_model.
                     safetensors + adapter_config.json (rank_pattern / alpha_pattern as the
                     MoR code sets them) + YAML
  relaxed-dora       the same with DoRA (use_dora): lora_magnitude_vector.default.weight in the
                     state dict, lora_magnitude_vector in the adapter file; YAML method dora.
                     Checked here: the reference's unmerged DoRA equals the merged weights
                     m * (W + sigma B A) / |W + sigma B A|_row (PEFT's merge) run as plain layers
  recenc             RecursiveLlamaForCausalLM, middle-cycle, N_r = 2, B = 2 (L = 6) with recursion
                     encodings: the last layer of each recursion block wrapped (its keys under
                     model.layers.N.block., its model.layers.N.recursion_encoding), F32
                     pytorch_model.bin with every unrolled key, YAML method recursion_encoding
  adapt              cycle, N_r = 2, B = 2 (L = 4) with adaption prompts of 4 slots on every layer
                     (model.layers.N.self_attn.model.*_proj, adaption_prompt [1, 4, d],
                     adaption_gate [1]) in pytorch_model.bin, the prompts and gates again in a
                     PEFT adapter_model.safetensors + adapter_config.json (ADAPTION_PROMPT); YAML
                     method adaption_prompt
"""

import argparse
import collections
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import reference as ref  # noqa: E402
from morconvert.safetensors import write_safetensors  # noqa: E402

D, N_H, N_KV, D_FF, V, CTX = 32, 4, 2, 64, 64, 128
D_H = D // N_H
N_PROMPT, N_GREEDY = 8, 24
MARGIN = 1e-3
MIN_DISTINCT = 6
MAX_ATTEMPTS = 200
SUBS = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm"}
ATTN = ("attn_q", "attn_k", "attn_v", "attn_output")
MLP = ("ffn_gate", "ffn_up", "ffn_down")
NORMS = ("attn_norm", "ffn_norm")
STD = {"attn_q": 0.35, "attn_k": 0.35, "attn_v": 0.08, "attn_output": 0.08, "ffn_gate": 0.18,
       "ffn_up": 0.18, "ffn_down": 0.18}


# ---------------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------------

class Rng(object):
    def __init__(self, name, attempt):
        seed = 0
        for c in "%s:%d" % (name, attempt):
            seed = (seed * 131 + ord(c)) % (2 ** 61 - 1)
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape, std):
        return torch.randn(shape, generator=self.g, dtype=torch.float32) * std

    def norm(self, n):
        return 1.0 + self.normal((n,), 0.1)


def shape_of(role):
    dq, dkv = N_H * D_H, N_KV * D_H
    return {"attn_q": (dq, D), "attn_k": (dkv, D), "attn_v": (dkv, D), "attn_output": (D, dq),
            "ffn_gate": (D_FF, D), "ffn_up": (D_FF, D), "ffn_down": (D, D_FF), "attn_norm": (D,),
            "ffn_norm": (D,)}[role]


def draw_layer(rng, roles=None):
    out = {}
    for role in roles or (NORMS + ATTN + MLP):
        out[role] = rng.norm(D) if role in NORMS else rng.normal(shape_of(role), STD[role])
    return out


def config_json(arch, L, vocab=V, tie=True, dtype="float32", extra=None):
    c = collections.OrderedDict([
        ("architectures", [arch]), ("attention_bias", False), ("attention_dropout", 0.0),
        ("bos_token_id", 0), ("eos_token_id", 0), ("head_dim", D_H), ("hidden_act", "silu"),
        ("hidden_size", D), ("initializer_range", 0.02), ("intermediate_size", D_FF),
        ("max_position_embeddings", CTX), ("mlp_bias", False), ("model_type", "llama"),
        ("num_attention_heads", N_H), ("num_hidden_layers", L), ("num_key_value_heads", N_KV),
        ("pretraining_tp", 1), ("rms_norm_eps", 1e-05), ("rope_scaling", None),
        ("rope_theta", 10000.0), ("tie_word_embeddings", tie), ("torch_dtype", dtype),
        ("transformers_version", "4.50.0"), ("use_cache", True), ("vocab_size", vocab)])
    if extra:
        c.update(extra)
    return c


YAML = """\
name: {name}
wandb: false
wandb_mode: offline
output_dir: null
wandb_run_id: null  # generated per run
dataset: fineweb_edu
total_batch_size: 1024
per_device_train_batch_size: 16
max_length: 2048
add_bos_token: false
tokenizer: smollm
model: smollm
model_name_or_path: HuggingFaceTB/SmolLM-360M
model_config:
  num_hidden_layers: {L}
attn_implementation: flash_attention_2
use_pretrained_weights: false
recursive:
  enable: {rec_enable}
  base_depth: null
  num_recursion: {n_rec}
  sharing: {sharing}  # cycle, sequence, middle_cycle, middle_sequence
  ln_share: {ln_share}
  initialization: random
kv_sharing:
  enable: {kv}
  base_depth: null
  num_recursion: null
  sharing: null
  update_cache: false
relaxation:
  enable: {relax}
  skip_first_loop: false
  method: {method}  # lora, dora, adaption_prompt, recursion_encoding
  lora:
    r: {lora_r}
    alpha: 32
    dropout: 0.1
    target_modules: ['q_proj', 'v_proj']
    rank_pattern: null
    alpha_pattern: 2.0  # alpha will be set to rank * alpha_pattern
    svd_init: false
  prompt:
    len: {prompt_len}
mor:
  enable: {mor}
  type: {mor_type}  # expert, token
  capacity: null
  rand_router: false
  router_type: {router_type}  # linear, mlp, wide_mlp
  z_loss: false
  z_coeff: 0.00001
  temp: 1.0
  expert:
    cap_warmup_step: 0
    router_func: sigmoid  # null, sigmoid, tanh
    alpha: 0.1
    sampling: {sampling}  # null, aux_router, aux_loss
    include_first: true
    coeff: 0.001
    gating: weighted  # weighted, additive
  token:
    bal_warmup_step: 0
    router_func: softmax  # sigmoid, softmax
    alpha: 1.0
    balancing: {balancing}  # loss, loss_free
    coeff: 0.1
    u: 0.001
    gating: weighted
lr_scheduler_type: warmup_stable_decay
lr_scheduler_kwargs:
  num_decay_steps: 0
  decay_type: linear
learning_rate: 3e-3
adam_beta1: 0.9
adam_beta2: 0.95
precision: bf16
fixed_save_steps: '1373,3433,11328'
evaluation:
  enable: false
  tasks: lambada_openai,hellaswag,piqa
"""


def yaml_text(name, L, n_rec=1, sharing="cycle", ln_share=True, kv=False, relax=False, lora_r=16,
              mor=False, mor_type="expert", router_type="linear", sampling="aux_loss",
              balancing="loss", rec_enable=True, method="lora", prompt_len=16):
    b = lambda x: "true" if x else "false"  # noqa: E731
    return YAML.format(name=name, L=L, rec_enable=b(rec_enable), n_rec=n_rec, sharing=sharing,
                       ln_share=b(ln_share), kv=b(kv), relax=b(relax), lora_r=lora_r, mor=b(mor),
                       mor_type=mor_type, router_type=router_type, sampling=sampling,
                       balancing=balancing, method=method, prompt_len=prompt_len)


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------

def st_dtype(t):
    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[t.dtype]


def raw(t):
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def save_safetensors(path, sd, drop_aliases=False):
    """sd: key -> tensor (aliases are the same tensor object). drop_aliases keeps the first
    key of each tensor, as Hugging Face's safetensors saving does for tied weights."""
    seen = set()
    items = []
    for k, t in sd.items():
        if drop_aliases:
            if id(t) in seen:
                continue
            seen.add(id(t))
        items.append((k, st_dtype(t), tuple(t.shape), raw(t)))
    write_safetensors(path, items, {"format": "pt"})


def save_sharded(dirpath, sd, n_shards):
    keys = list(sd)
    per = (len(keys) + n_shards - 1) // n_shards
    wm = collections.OrderedDict()
    total = 0
    for s in range(n_shards):
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, n_shards)
        part = collections.OrderedDict((k, sd[k]) for k in keys[s * per:(s + 1) * per])
        save_safetensors(os.path.join(dirpath, fn), part)
        for k, t in part.items():
            wm[k] = fn
            total += t.numel() * t.element_size()
    with open(os.path.join(dirpath, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
        f.write("\n")


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def load_back(dirpath):
    """Everything the directory's weight files hold, as float64 tensors (torch reads them)."""
    out = {}
    for fn in sorted(os.listdir(dirpath)):
        p = os.path.join(dirpath, fn)
        if fn.endswith(".bin"):
            for k, t in torch.load(p, map_location="cpu").items():
                out[k] = t.to(torch.float64)
        elif fn.endswith(".safetensors"):
            out.update(read_safetensors_torch(p, prefix="adapter:" if fn.startswith("adapter") else ""))
    return out


def read_safetensors_torch(path, prefix=""):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for k, e in header.items():
        b, end = e["data_offsets"]
        buf = bytearray(data[8 + n + b:8 + n + end])
        dt = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[e["dtype"]]
        out[prefix + k] = torch.frombuffer(buf, dtype=dt).reshape(e["shape"]).to(torch.float64)
    return out


# ---------------------------------------------------------------------------------------------
# the reference model of a saved checkpoint (unrolled)
# ---------------------------------------------------------------------------------------------

def ref_model(cfg_kw, W):
    cfg = ref.Config(arch="mor", d=D, d_ff=D_FF, n_h=N_H, n_kv=N_KV, d_h=D_H, ctx=CTX,
                     eps=ref.f32(1e-5), rope_base=10000.0, rope_type="neox")
    cfg.__dict__.update(cfg_kw)
    cfg.V = W["token_embd.weight"].shape[0]
    return ref.Model(cfg, W, "cpu", "fixture")


def unrolled_W(get, L, n_rec, sharing, first_last=False, tied=True):
    """W for the reference with stored layers = recursion 0 and an override of every role at
    every (slot, recursion): numerically the unrolled model. get(l, role) -> tensor."""
    cfg = ref.Config(L=L, n_rec=n_rec, sharing=sharing)
    W = {}
    for l in range(L):
        s, r = cfg.s_r(l)
        for role in SUBS:
            t = get(l, role)
            if r == 0:
                W["blk.%d.%s.weight" % (s, role)] = t
            W["blk.%d.rec.%d.%s.weight" % (s, r, role)] = t
    return W


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


CORPUS = ("the quick brown fox jumps over the lazy dog. the dog sleeps; the fox runs. "
          "there is a theory that the other brother thinks the weather is rather hot. "
          "recursion runs the same block again and again, then the router decides. ") * 3


def tiny_bpe(n_merges):
    """A byte-level BPE trained on CORPUS: (vocab list, merges list of (a, b))."""
    b2u = bytes_to_unicode()
    words = {}
    for w in CORPUS.replace(".", " .").replace(";", " ;").split(" "):
        if w:
            key = tuple(b2u[c] for c in (" " + w).encode())
            words[key] = words.get(key, 0) + 1
    merges = []
    for _ in range(n_merges):
        pairs = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        nw = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nw[tuple(out)] = nw.get(tuple(out), 0) + c
        words = nw
    return merges


def write_tokenizer(dirpath, vocab_size):
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    b2u = bytes_to_unicode()
    vocab = collections.OrderedDict()
    for s in specials:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    merges = tiny_bpe(vocab_size - len(vocab))
    for a, b in merges:
        vocab[a + b] = len(vocab)
    assert len(vocab) == vocab_size, len(vocab)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    tj = collections.OrderedDict([
        ("version", "1.0"), ("truncation", None), ("padding", None), ("added_tokens", added),
        ("normalizer", None),
        ("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}),
        ("post_processor", {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                            "use_regex": True}),
        ("decoder", {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}),
        ("model", collections.OrderedDict([
            ("type", "BPE"), ("dropout", None), ("unk_token", None), ("continuing_subword_prefix", None),
            ("end_of_word_suffix", None), ("fuse_unk", False), ("byte_fallback", False),
            ("ignore_merges", False), ("vocab", vocab), ("merges", ["%s %s" % m for m in merges])]))])
    with open(os.path.join(dirpath, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    write_json(os.path.join(dirpath, "tokenizer_config.json"), collections.OrderedDict([
        ("add_prefix_space", False),
        ("added_tokens_decoder", dict((str(a["id"]), {k: a[k] for k in a if k != "id"}) for a in added)),
        ("bos_token", "<|endoftext|>"), ("clean_up_tokenization_spaces", False),
        ("eos_token", "<|endoftext|>"), ("model_max_length", 2048), ("tokenizer_class", "GPT2Tokenizer"),
        ("unk_token", "<|endoftext|>"), ("vocab_size", vocab_size)]))


def make_llama(d, rng):
    L, vocab = 3, 320
    emb = rng.normal((vocab, D), 0.4).bfloat16()
    head = rng.normal((vocab, D), 0.12).bfloat16()
    layers = [dict((k, v.bfloat16()) for k, v in draw_layer(rng).items()) for _ in range(L)]
    sd = collections.OrderedDict()
    sd["model.embed_tokens.weight"] = emb
    for l in range(L):
        for role in NORMS + ATTN + MLP:
            sd["model.layers.%d.%s.weight" % (l, SUBS[role])] = layers[l][role]
    sd["model.norm.weight"] = rng.norm(D).bfloat16()
    sd["lm_head.weight"] = head
    save_safetensors(os.path.join(d, "model.safetensors"), sd)
    write_json(os.path.join(d, "config.json"),
               config_json("LlamaForCausalLM", L, vocab=vocab, tie=False, dtype="bfloat16"))
    write_tokenizer(d, vocab)
    w = load_back(d)
    W = unrolled_W(lambda l, role: w["model.layers.%d.%s.weight" % (l, SUBS[role])], L, 1, "cycle")
    W.update({"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"],
              "output.weight": w["lm_head.weight"]})
    return ref_model(dict(L=L, n_rec=1, sharing="cycle"), W)


def make_mor_expert(d, rng):
    n_rec, B = 3, 2
    L = n_rec * B + 2
    first, last = draw_layer(rng), draw_layer(rng)
    shared = [draw_layer(rng, NORMS + MLP) for _ in range(B)]        # tied across recursions
    sd = collections.OrderedDict()
    emb = rng.normal((V, D), 0.4)
    sd["model.embed_tokens.weight"] = emb
    for role in NORMS + ATTN + MLP:
        sd["model.layers.0.%s.weight" % SUBS[role]] = first[role]
    for r in range(n_rec):
        for j in range(B):
            attn = draw_layer(rng, ATTN)                             # a fresh MoRLlamaAttention
            for role in NORMS + ATTN + MLP:
                t = attn[role] if role in ATTN else shared[j][role]
                sd["model.layers.%d.block.%d.%s.weight" % (1 + r, j, SUBS[role])] = t
        sd["model.layers.%d.mor_router.router.weight" % (1 + r)] = rng.normal((1, D), 0.6)
    for role in NORMS + ATTN + MLP:
        sd["model.layers.%d.%s.weight" % (n_rec + 1, SUBS[role])] = last[role]
    sd["model.norm.weight"] = rng.norm(D)
    sd["lm_head.weight"] = emb                                       # tied
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    write_json(os.path.join(d, "config.json"), config_json("MoRLlamaForCausalLM", L))
    with open(os.path.join(d, "train.yaml"), "w") as f:
        f.write(yaml_text("tiny_rec3_middle_cycle_mor_expert_linear_alpha_0.1_sigmoid_aux_loss_0.001",
                          L, n_rec=n_rec, sharing="middle_cycle", mor=True, mor_type="expert"))
    w = load_back(d)

    def get(l, role):
        if l == 0:
            return w["model.layers.0.%s.weight" % SUBS[role]]
        if l == L - 1:
            return w["model.layers.%d.%s.weight" % (n_rec + 1, SUBS[role])]
        r, j = (l - 1) // B, (l - 1) % B
        return w["model.layers.%d.block.%d.%s.weight" % (1 + r, j, SUBS[role])]
    W = unrolled_W(get, L, n_rec, "middle_cycle")
    W.update({"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"]})
    for r in range(n_rec):
        W["router.%d.weight" % r] = w["model.layers.%d.mor_router.router.weight" % (1 + r)]
    return ref_model(dict(L=L, n_rec=n_rec, sharing="middle_cycle", router_type="expert",
                          router_arch="linear", router_func="sigmoid", router_alpha=ref.f32(0.1),
                          router_temp=1.0, router_gating="weighted"), W)


def make_mor_expert_cycle(d, rng):
    n_rec, B = 3, 1
    L = n_rec * B
    shared = draw_layer(rng, NORMS + MLP)
    sd = collections.OrderedDict()
    emb = rng.normal((V, D), 0.4).bfloat16()
    sd["model.embed_tokens.weight"] = emb
    sharedb = dict((k, v.bfloat16()) for k, v in shared.items())
    for r in range(n_rec):
        attn = draw_layer(rng, ATTN)
        for role in NORMS + ATTN + MLP:
            t = attn[role].bfloat16() if role in ATTN else sharedb[role]
            sd["model.layers.%d.block.0.%s.weight" % (r, SUBS[role])] = t
        for which, std in (("mor_router", 0.25), ("mlp_router", 0.25)):
            sd["model.layers.%d.%s.router.0.weight" % (r, which)] = rng.normal((2 * D, D), std).bfloat16()
            sd["model.layers.%d.%s.router.2.weight" % (r, which)] = rng.normal((1, 2 * D), std).bfloat16()
    sd["model.norm.weight"] = rng.norm(D).bfloat16()
    sd["lm_head.weight"] = rng.normal((V, D), 0.3).bfloat16()     # untied here (a plain cycle of
    save_safetensors(os.path.join(d, "model.safetensors"), sd,   # one layer with tied embeddings
                     drop_aliases=True)                          # just repeats its input token)
    write_json(os.path.join(d, "config.json"),
               config_json("MoRLlamaForCausalLM", L, tie=False, dtype="bfloat16"))
    with open(os.path.join(d, "train.yaml"), "w") as f:
        f.write(yaml_text("tiny_rec3_cycle_mor_expert_mlp_aux_router", L, n_rec=n_rec, sharing="cycle",
                          mor=True, mor_type="expert", router_type="mlp", sampling="aux_router"))
    w = load_back(d)

    def get(l, role):
        k = "model.layers.%d.block.0.%s.weight" % (l, SUBS[role])
        return w[k] if k in w else w["model.layers.0.block.0.%s.weight" % SUBS[role]]
    W = unrolled_W(get, L, n_rec, "cycle")
    W.update({"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"],
              "output.weight": w["lm_head.weight"]})
    for r in range(n_rec):
        for which, pre in (("mor_router", "router"), ("mlp_router", "router_aux")):
            W["%s.%d.fc1.weight" % (pre, r)] = w["model.layers.%d.%s.router.0.weight" % (r, which)]
            W["%s.%d.fc2.weight" % (pre, r)] = w["model.layers.%d.%s.router.2.weight" % (r, which)]
    return ref_model(dict(L=L, n_rec=n_rec, sharing="cycle", router_type="expert", router_arch="mlp",
                          router_func="sigmoid", router_alpha=ref.f32(0.1), router_temp=1.0,
                          router_gating="weighted"), W)


def make_mor_token(d, rng):
    n_rec, B = 3, 1
    L = n_rec * B + 2
    first, last, mid = draw_layer(rng), draw_layer(rng), draw_layer(rng)
    sd = collections.OrderedDict()
    emb = rng.normal((V, D), 0.4)
    sd["model.embed_tokens.weight"] = emb
    for role in NORMS + ATTN + MLP:
        sd["model.layers.0.%s.weight" % SUBS[role]] = first[role]
    for r in range(n_rec):
        for role in NORMS + ATTN + MLP:
            sd["model.layers.1.block_list.%d.0.%s.weight" % (r, SUBS[role])] = mid[role]   # fully tied
    sd["model.layers.1.mor_router.router.weight"] = rng.normal((n_rec, D), 0.25)
    sd["model.layers.1.router_bias"] = rng.normal((n_rec,), 0.15)
    for role in NORMS + ATTN + MLP:
        sd["model.layers.2.%s.weight" % SUBS[role]] = last[role]
    sd["model.norm.weight"] = rng.norm(D)
    sd["lm_head.weight"] = emb
    save_safetensors(os.path.join(d, "model.safetensors"), sd, drop_aliases=True)
    kvs = collections.OrderedDict([("enable", True), ("base_depth", B), ("num_recursion", n_rec),
                                   ("sharing", "middle_cycle"), ("update_cache", False)])
    write_json(os.path.join(d, "config.json"), config_json("MoRLlamaForCausalLM", L, extra={"kv_sharing": kvs}))
    with open(os.path.join(d, "train.yaml"), "w") as f:
        f.write(yaml_text("tiny_kv-share_rec3_middle_cycle_mor_token_softmax_loss_free", L, n_rec=n_rec,
                          sharing="middle_cycle", kv=True, mor=True, mor_type="token",
                          balancing="loss_free"))
    w = load_back(d)

    def get(l, role):
        if l == 0:
            return w["model.layers.0.%s.weight" % SUBS[role]]
        if l == L - 1:
            return w["model.layers.2.%s.weight" % SUBS[role]]
        return w["model.layers.1.block_list.0.0.%s.weight" % SUBS[role]]    # the only copy saved
    W = unrolled_W(get, L, n_rec, "middle_cycle")
    W.update({"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"],
              "router.weight": w["model.layers.1.mor_router.router.weight"],
              "router.bias": w["model.layers.1.router_bias"]})
    return ref_model(dict(L=L, n_rec=n_rec, sharing="middle_cycle", kv_sharing=True, router_type="token",
                          router_arch="linear", router_func="softmax", router_alpha=1.0, router_temp=1.0,
                          router_gating="weighted"), W)


def make_recursive(d, rng):
    n_rec, B = 3, 2
    L = n_rec * B
    slots = [dict((k, v.half()) for k, v in draw_layer(rng, ATTN + MLP).items()) for _ in range(B)]
    sd = collections.OrderedDict()
    emb = rng.normal((V, D), 0.4).half()
    sd["model.embed_tokens.weight"] = emb
    for l in range(L):
        s = l % B
        norms = draw_layer(rng, NORMS)                               # ln_share: false
        for role in NORMS + ATTN + MLP:
            t = norms[role].half() if role in NORMS else slots[s][role].clone()   # equal copies
            sd["model.layers.%d.%s.weight" % (l, SUBS[role])] = t
    sd["model.norm.weight"] = rng.norm(D).half()
    save_sharded(d, sd, 2)
    write_json(os.path.join(d, "config.json"), config_json("LlamaForCausalLM", L, dtype="float16"))
    w = load_back(d)
    W = unrolled_W(lambda l, role: w["model.layers.%d.%s.weight" % (l, SUBS[role])], L, 1, "cycle")
    W.update({"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"]})
    return ref_model(dict(L=L, n_rec=1, sharing="cycle"), W)


def make_relaxed(d, rng, dora=False):
    n_rec, B, rank, alpha = 2, 2, 4, 8.0
    L = n_rec * B
    slots = [draw_layer(rng) for _ in range(B)]
    sd = collections.OrderedDict()
    emb = rng.normal((V, D), 0.4)
    sd["model.embed_tokens.weight"] = emb
    adapter = collections.OrderedDict()
    rank_pattern, alpha_pattern = collections.OrderedDict(), collections.OrderedDict()
    for l in range(L):
        s = l % B
        for role in NORMS + ATTN + MLP:
            sub = SUBS[role]
            if role in ("attn_q", "attn_v"):
                out_, in_ = shape_of(role)
                a = rng.normal((rank, in_), 0.15)
                b = rng.normal((out_, rank), 0.15)
                sd["model.layers.%d.%s.base_layer.weight" % (l, sub)] = slots[s][role]
                sd["model.layers.%d.%s.lora_A.default.weight" % (l, sub)] = a
                sd["model.layers.%d.%s.lora_B.default.weight" % (l, sub)] = b
                adapter["base_model.model.model.layers.%d.%s.lora_A.weight" % (l, sub)] = a
                adapter["base_model.model.model.layers.%d.%s.lora_B.weight" % (l, sub)] = b
                if dora:   # magnitudes around the row norms of W + sigma B A they start from
                    norm = torch.linalg.norm(slots[s][role] + (alpha / rank) * (b @ a), dim=1)
                    m = norm * (1.0 + rng.normal((out_,), 0.2))
                    sd["model.layers.%d.%s.lora_magnitude_vector.default.weight" % (l, sub)] = m
                    adapter["base_model.model.model.layers.%d.%s.lora_magnitude_vector" % (l, sub)] = m
                rank_pattern["model.layers.%d.%s" % (l, sub)] = rank
                alpha_pattern["model.layers.%d.%s" % (l, sub)] = rank * 2.0
            else:
                sd["model.layers.%d.%s.weight" % (l, sub)] = slots[s][role]
    sd["model.norm.weight"] = rng.norm(D)
    sd["lm_head.weight"] = emb
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    save_safetensors(os.path.join(d, "adapter_model.safetensors"), adapter)
    write_json(os.path.join(d, "adapter_config.json"), collections.OrderedDict([
        ("alpha_pattern", alpha_pattern), ("auto_mapping", None),
        ("base_model_name_or_path", "HuggingFaceTB/SmolLM-360M"), ("bias", "none"),
        ("fan_in_fan_out", False), ("inference_mode", True), ("init_lora_weights", True),
        ("layer_replication", None), ("layers_pattern", None), ("layers_to_transform", list(range(L))),
        ("loftq_config", {}), ("lora_alpha", 8), ("lora_bias", False), ("lora_dropout", 0.1),
        ("megatron_config", None), ("megatron_core", "megatron.core"), ("modules_to_save", None),
        ("peft_type", "LORA"), ("r", rank), ("rank_pattern", rank_pattern), ("revision", None),
        ("target_modules", ["q_proj", "v_proj"]), ("task_type", "CAUSAL_LM"), ("use_dora", dora),
        ("use_rslora", False)]))
    write_json(os.path.join(d, "config.json"), config_json("LlamaForCausalLM", L))
    with open(os.path.join(d, "train.yaml"), "w") as f:
        f.write(yaml_text("tiny_rec2_cycle_%s_r4" % ("dora" if dora else "lora"), L, n_rec=n_rec, sharing="cycle",
                          relax=True, lora_r=rank, method="dora" if dora else "lora"))
    w = load_back(d)

    def get(l, role):
        sub = SUBS[role]
        k = "model.layers.%d.%s.weight" % (l, sub)
        return w[k] if k in w else w["model.layers.%d.%s.base_layer.weight" % (l, sub)]
    W = unrolled_W(get, L, 1, "cycle")
    W.update({"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"]})
    for l in range(L):
        for role in ("attn_q", "attn_v"):
            sub = SUBS[role]
            W["blk.%d.rec.0.%s.lora_a" % (l, role)] = w["model.layers.%d.%s.lora_A.default.weight" % (l, sub)]
            W["blk.%d.rec.0.%s.lora_b" % (l, role)] = w["model.layers.%d.%s.lora_B.default.weight" % (l, sub)]
            assert torch.equal(w["adapter:base_model.model.model.layers.%d.%s.lora_A.weight" % (l, sub)],
                               W["blk.%d.rec.0.%s.lora_a" % (l, role)])
            if dora:
                W["blk.%d.rec.0.%s.dora_m" % (l, role)] = w["model.layers.%d.%s.lora_magnitude_vector.default.weight"
                                                             % (l, sub)]
                assert torch.equal(w["adapter:base_model.model.model.layers.%d.%s.lora_magnitude_vector" % (l, sub)],
                                   W["blk.%d.rec.0.%s.dora_m" % (l, role)])
    model = ref_model(dict(L=L, n_rec=1, sharing="cycle", lora_scale=alpha / rank), W)
    if dora:
        check_dora_merged(model)
    return model


def make_relaxed_dora(d, rng):
    return make_relaxed(d, rng, dora=True)


def check_dora_merged(model):
    """The reference's DoRA (row scale times the unmerged W x + sigma B (A x)) against the same
    model with PEFT's merged weights m * (W + sigma B A) / |W + sigma B A|_row as plain layers."""
    c = model.cfg
    W2 = {}
    for k, t in model.W.items():
        if k.endswith(".lora_a") or k.endswith(".lora_b") or k.endswith(".dora_m"):
            continue
        W2[k] = t
    for k in model.W:
        if not k.endswith(".dora_m"):
            continue
        base = k[:-len("dora_m")]
        i, r, role = int(k.split(".")[1]), int(k.split(".")[3]), k.split(".")[4]
        w = model.W.get("blk.%d.rec.%d.%s.weight" % (i, r, role), model.W["blk.%d.%s.weight" % (i, role)])
        full = w + c.lora_scale * (model.W[base + "lora_b"] @ model.W[base + "lora_a"])
        W2["blk.%d.rec.%d.%s.weight" % (i, r, role)] = model.W[k][:, None] * full / torch.linalg.norm(
            full, dim=1, keepdim=True)
    merged = ref.Model(c, W2, model.device, "merged")
    prompt = prompt_ids(c.V)
    a, b = ref.forward(model, prompt).logits, ref.forward(merged, prompt).logits
    diff = float((a - b).abs().max()) / float(a.abs().max())
    print("relaxed-dora      unmerged DoRA against merged weights: max|diff|/max|logit| %.2g" % diff)
    if diff > 1e-10:
        raise SystemExit("relaxed-dora: the reference's DoRA differs from the merged weights")


def make_recenc(d, rng):
    n_rec, B = 2, 2
    L = n_rec * B + 2
    first, last = draw_layer(rng), draw_layer(rng)
    slots = [draw_layer(rng) for _ in range(B)]
    sd = collections.OrderedDict()
    emb = rng.normal((V, D), 0.4)
    sd["model.embed_tokens.weight"] = emb
    wrapped = []
    for l in range(L):
        lay = first if l == 0 else last if l == L - 1 else slots[(l - 1) % B]
        pre = "model.layers.%d." % l
        if 0 < l < L - 1 and l % B == 0:          # middle index l - 1 with (l - 1 + 1) mod B == 0
            wrapped.append(l)
            sd[pre + "recursion_encoding"] = 1.0 + rng.normal((D,), 0.3)
            pre += "block."
        for role in NORMS + ATTN + MLP:
            sd[pre + "%s.weight" % SUBS[role]] = lay[role]
    sd["model.norm.weight"] = rng.norm(D)
    sd["lm_head.weight"] = emb
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    write_json(os.path.join(d, "config.json"), config_json("LlamaForCausalLM", L))
    with open(os.path.join(d, "train.yaml"), "w") as f:
        f.write(yaml_text("tiny_rec2_middle_cycle_recursion_encoding", L, n_rec=n_rec, sharing="middle_cycle",
                          relax=True, method="recursion_encoding"))
    w = load_back(d)

    def get(l, role):
        k = "model.layers.%d.%s%s.weight" % (l, "block." if l in wrapped else "", SUBS[role])
        return w[k]
    W = unrolled_W(get, L, 1, "cycle")
    W.update({"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"]})
    for l in wrapped:
        W["blk.%d.rec.0.rec_enc" % l] = w["model.layers.%d.recursion_encoding" % l]
    assert wrapped == [2, 4], wrapped
    return ref_model(dict(L=L, n_rec=1, sharing="cycle"), W)


def make_adapt(d, rng):
    n_rec, B, n = 2, 2, 4
    L = n_rec * B
    slots = [draw_layer(rng) for _ in range(B)]
    sd = collections.OrderedDict()
    emb = rng.normal((V, D), 0.4)
    sd["model.embed_tokens.weight"] = emb
    adapter = collections.OrderedDict()
    for l in range(L):
        for role in NORMS + ATTN + MLP:
            sub = SUBS[role]
            if role in ATTN:
                sub = "self_attn.model." + sub[len("self_attn."):]
            sd["model.layers.%d.%s.weight" % (l, sub)] = slots[l % B][role]
        p = rng.normal((1, n, D), 1.0)
        g = rng.normal((1,), 0.6)
        sd["model.layers.%d.self_attn.adaption_prompt" % l] = p
        sd["model.layers.%d.self_attn.adaption_gate" % l] = g
        adapter["base_model.model.model.layers.%d.self_attn.adaption_prompt" % l] = p
        adapter["base_model.model.model.layers.%d.self_attn.adaption_gate" % l] = g
    sd["model.norm.weight"] = rng.norm(D)
    sd["lm_head.weight"] = emb
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    save_safetensors(os.path.join(d, "adapter_model.safetensors"), adapter)
    write_json(os.path.join(d, "adapter_config.json"), collections.OrderedDict([
        ("adapter_layers", L), ("adapter_len", n), ("base_model_name_or_path", "HuggingFaceTB/SmolLM-360M"),
        ("inference_mode", True), ("peft_type", "ADAPTION_PROMPT"), ("revision", None),
        ("target_modules", "self_attn"), ("task_type", "CAUSAL_LM")]))
    write_json(os.path.join(d, "config.json"), config_json("LlamaForCausalLM", L))
    with open(os.path.join(d, "train.yaml"), "w") as f:
        f.write(yaml_text("tiny_rec2_cycle_adaption_prompt", L, n_rec=n_rec, sharing="cycle", relax=True,
                          method="adaption_prompt", prompt_len=n))
    w = load_back(d)

    def get(l, role):
        sub = SUBS[role]
        if role in ATTN:
            sub = "self_attn.model." + sub[len("self_attn."):]
        return w["model.layers.%d.%s.weight" % (l, sub)]
    W = unrolled_W(get, L, 1, "cycle")
    W.update({"token_embd.weight": w["model.embed_tokens.weight"], "output_norm.weight": w["model.norm.weight"]})
    for l in range(L):
        W["blk.%d.rec.0.adapt_prompt" % l] = w["model.layers.%d.self_attn.adaption_prompt" % l][0]
        W["blk.%d.rec.0.adapt_gate" % l] = w["model.layers.%d.self_attn.adaption_gate" % l]
        assert torch.equal(w["adapter:base_model.model.model.layers.%d.self_attn.adaption_prompt" % l][0],
                           W["blk.%d.rec.0.adapt_prompt" % l])
    return ref_model(dict(L=L, n_rec=1, sharing="cycle"), W)


LAYOUTS = [
    ("llama", make_llama),
    ("mor-expert", make_mor_expert),
    ("mor-expert-cycle", make_mor_expert_cycle),
    ("mor-token", make_mor_token),
    ("recursive", make_recursive),
    ("relaxed", make_relaxed),
    ("relaxed-dora", make_relaxed_dora),
    ("recenc", make_recenc),
    ("adapt", make_adapt),
]


# ---------------------------------------------------------------------------------------------
# evaluation and fixtures
# ---------------------------------------------------------------------------------------------

def prompt_ids(V_):
    g = torch.Generator().manual_seed(20240601)
    return [int(x) for x in torch.randint(0, V_, (N_PROMPT,), generator=g)]


def evaluate(model, prompt):
    res0, ids, depths, margins, steps = ref.greedy(model, prompt, N_GREEDY)
    full = ref.forward(model, prompt + ids[:-1])
    inc = torch.cat([res0.logits] + [s.logits for s in steps], dim=0)
    if float((full.logits - inc).abs().max()) > 1e-9:
        raise SystemExit("KV-cache decoding and recomputation differ")
    why = []
    if min(margins) <= MARGIN:
        why.append("greedy margin %.2g" % min(margins))
    if len(set(ids)) < MIN_DISTINCT:
        why.append("%d distinct tokens" % len(set(ids)))
    c = model.cfg
    all_depths = [int(x) for x in full.depths]
    if c.router_type == "expert":
        rm = min(float(i["z_decision"][i["candidates"]].abs().min()) for i in full.router
                 if bool(i["candidates"].any()))
        if rm <= MARGIN:
            why.append("router margin %.2g" % rm)
        if (set(all_depths) != set(range(c.n_rec + 1)) or all_depths.count(0) * 3 > len(all_depths)
                or len(set(depths)) < 2):
            why.append("depths %s" % sorted(set(all_depths)))
    elif c.router_type == "token":
        top = torch.topk(full.router[0]["score"], 2, dim=-1).values
        rm = float((top[:, 0] - top[:, 1]).min())
        if rm <= MARGIN:
            why.append("router margin %.2g" % rm)
        if len(set(all_depths)) < 3 or len(set(depths)) < 2:
            why.append("depths %s" % sorted(set(all_depths)))
    return res0, ids, depths, margins, all_depths, why


def write_fixture(path, prompt, logits, ids, depths=None):
    lines = ["mor-fixture 1", "model converted.gguf",
             "prompt %d %s" % (len(prompt), " ".join(map(str, prompt))),
             "logits %d %d" % (len(logits), len(logits[0]))]
    lines += [" ".join("%.9e" % x for x in row) for row in logits]
    lines.append("greedy %d %s" % (len(ids), " ".join(map(str, ids))))
    if depths is not None:
        lines.append("depths %d %s" % (len(depths), " ".join(map(str, depths))))
    lines.append("end")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def make(name, fn, out):
    d = os.path.join(out, name)
    for attempt in range(MAX_ATTEMPTS):
        if os.path.isdir(d):
            for fn_ in os.listdir(d):
                os.unlink(os.path.join(d, fn_))
        else:
            os.makedirs(d)
        model = fn(d, Rng(name, attempt))
        prompt = prompt_ids(model.cfg.V)
        res0, ids, depths, margins, all_depths, why = evaluate(model, prompt)
        if why:
            continue
        routed = model.cfg.router_type != "none"
        write_fixture(os.path.join(d, "expected.fix"), prompt, res0.logits.tolist(), ids,
                      depths if routed else None)
        size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        hist = dict((k, all_depths.count(k)) for k in sorted(set(all_depths)))
        print("%-17s attempt %d, %d files, %d bytes, min margin %.4f, %d distinct tokens%s"
              % (name, attempt, len(os.listdir(d)), size, min(margins), len(set(ids)),
                 (", depths %s" % hist) if routed else ""))
        return size
    raise SystemExit("%s: no acceptable model in %d attempts" % (name, MAX_ATTEMPTS))


def main(argv=None):
    ap = argparse.ArgumentParser(description="tiny official-layout checkpoints for the converter tests")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "tests", "data", "hf"))
    ap.add_argument("--only", default="")
    a = ap.parse_args(argv)
    only = set(x for x in a.only.split(",") if x)
    torch.set_num_threads(1)
    print("torch %s" % torch.__version__)
    total = 0
    for name, fn in LAYOUTS:
        if not only or name in only:
            total += make(name, fn, a.out)
    print("total %d bytes" % total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
