"""From checkpoint keys to a GGUF plan.

1. HParams: the Llama hyperparameters of config.json (refusing what the engine cannot run).
2. parse_keys: every key is classified -- globals, a layer tensor of an unrolled layer l
   (plain `model.layers.{l}.*`, MoR expert-choice `model.layers.{i}.block.{j}.*`, MoR
   token-choice `model.layers[.{i}].block_list.{r}.{j}.*`), a LoRA factor (in-checkpoint
   `...base_layer.weight` / `...lora_A.<adapter>.weight`, or PEFT adapter files) or DoRA
   magnitude (`...lora_magnitude_vector[.<adapter>][.weight]`), a recursion encoding (the
   wrapped layer's `...block.<sub>` keys and `...recursion_encoding`), an adaption prompt
   (`...self_attn.model.<x>_proj.weight`, `...self_attn.adaption_prompt` / `adaption_gate`), a
   router -- or refused with an error naming it.
3. Settings: sharing, recursion count, router, KV sharing and LoRA scale come from (first
   wins) the command line, the training YAML, the MoR key layout, config.json's kv_sharing;
   for a plain layout without a declaration the sharing is inferred from which layers hold
   byte-identical FFN weights.
4. The plan: arch `mor` (stored layers once, per-recursion overrides only where a tensor
   differs from the stored one, LoRA and the other relaxations per (stored layer, recursion),
   routers) or arch `llama` (Q/K rows permuted to the adjacent-pair RoPE convention), with
   every shape checked.
"""

import math
import re

from . import floats
from .common import ConvertError, DTYPE_SIZE, fmt_shape

ROLES = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
         "ffn_up", "ffn_down")
NORM_ROLES = ("attn_norm", "ffn_norm")
PROJ_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
FFN_ROLES = ("ffn_gate", "ffn_up", "ffn_down")
HF_SUB = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
SUB_OF_ROLE = dict((v, k) for k, v in HF_SUB.items())
SHARINGS = ("cycle", "sequence", "middle_cycle", "middle_sequence")
RELAX_METHODS = ("lora", "dora", "recursion_encoding", "adaption_prompt")
GGUF_TYPE = {"F32": 0, "F16": 1, "BF16": 30}
FILE_TYPE = {"F32": 0, "F16": 1, "BF16": 32}
KNOWN_ARCHES = ("LlamaForCausalLM", "MoRLlamaForCausalLM", "RecursiveLlamaForCausalLM")

_RE_EXPERT = re.compile(r"^model\.layers\.(\d+)\.block\.(\d+)\.(.+)$")
_RE_TOKEN = re.compile(r"^model\.layers\.(?:(\d+)\.)?block_list\.(\d+)\.(\d+)\.(.+)$")
_RE_PLAIN = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_RE_ROUTER = re.compile(r"^model\.layers\.(?:(\d+)\.)?(mor_router|mlp_router)\.router\.(weight|0\.weight|2\.weight)$")
_RE_RBIAS = re.compile(r"^model\.layers\.(?:(\d+)\.)?router_bias$")
_RE_SUB = re.compile(r"^(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj|input_layernorm|"
                     r"post_attention_layernorm)\.(.+)$")
_RE_LORA = re.compile(r"^lora_([AB])(?:\.([A-Za-z0-9_\-]+))?\.weight$")
# PEFT's DoRA magnitude: `.default.weight` in a model's state dict (`.default` before PEFT moved
# it into a module), no suffix in adapter files
_RE_MAG = re.compile(r"^lora_magnitude_vector(?:\.([A-Za-z0-9_\-]+))?(?:\.weight)?$")
GLOBALS = {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm",
           "lm_head.weight": "lm_head"}


def _hint(key):
    if key.endswith(".bias"):
        return " (biases are not supported: the engine runs bias-free Llama blocks)"
    if "lora_embedding" in key or "lora_" in key:
        return " (LoRA and DoRA are supported on the seven projections only)"
    if "recursion_encoding" in key or "adaption_" in key:
        return " (recursion encodings and adaption prompts belong to a layer: model.layers.N...)"
    if "prompt_embeddings" in key or "prompt_encoder" in key:
        return " (prompt tuning is not supported)"
    if "modules_to_save" in key or "original_module" in key:
        return " (PEFT modules_to_save are not supported)"
    return ""


# ---------------------------------------------------------------------------------------------
# Hyperparameters
# ---------------------------------------------------------------------------------------------

class HParams(object):
    def __init__(self, cfg, log):
        arches = cfg.get("architectures") or []
        if not isinstance(arches, list):
            raise ConvertError("config.json: architectures must be a list, found %r" % (arches,))
        if arches:
            bad = [a for a in arches if a not in KNOWN_ARCHES]
            if bad or not any(a in KNOWN_ARCHES for a in arches):
                raise ConvertError("config.json: unsupported architecture %s (supported: %s)"
                                   % (", ".join(map(str, bad or arches)), ", ".join(KNOWN_ARCHES)))
        mt = cfg.get("model_type")
        if mt is not None and mt != "llama":
            raise ConvertError("config.json: model_type %r is not supported (only llama)" % (mt,))
        if not arches and mt is None:
            raise ConvertError("config.json has neither architectures nor model_type")
        self.arches = arches
        self.mor_class = "MoRLlamaForCausalLM" in arches

        def pos_int(key, default=None):
            v = cfg.get(key, default)
            if v is None:
                raise ConvertError("config.json: %s is missing" % key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConvertError("config.json: %s must be a positive integer, found %r" % (key, v))
            return v

        self.d = pos_int("hidden_size")
        self.d_ff = pos_int("intermediate_size")
        self.L = pos_int("num_hidden_layers")
        self.n_h = pos_int("num_attention_heads")
        self.n_kv = pos_int("num_key_value_heads", self.n_h)
        self.ctx = pos_int("max_position_embeddings", 2048)
        self.vocab = cfg.get("vocab_size")
        if self.d % self.n_h:
            raise ConvertError("config.json: hidden_size %d is not a multiple of num_attention_heads %d"
                               % (self.d, self.n_h))
        self.d_h = self.d // self.n_h
        hd = cfg.get("head_dim")
        if hd is not None and hd != self.d_h:
            raise ConvertError("config.json: head_dim %r differs from hidden_size / num_attention_heads "
                               "= %d; the engine needs head_dim = hidden_size / heads" % (hd, self.d_h))
        if self.d_h % 2:
            raise ConvertError("config.json: the head size %d is odd" % self.d_h)
        if self.n_h % self.n_kv:
            raise ConvertError("config.json: num_attention_heads %d is not a multiple of "
                               "num_key_value_heads %d" % (self.n_h, self.n_kv))
        eps = cfg.get("rms_norm_eps")
        if eps is None:
            log.warn("config.json has no rms_norm_eps; using the LlamaConfig default 1e-6")
            eps = 1e-6
        theta = cfg.get("rope_theta", 10000.0)
        for key, v in (("rms_norm_eps", eps), ("rope_theta", theta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConvertError("config.json: %s must be a positive number, found %r" % (key, v))
        self.eps, self.theta = float(eps), float(theta)
        rs = cfg.get("rope_scaling")
        if rs:
            kind = rs.get("rope_type", rs.get("type")) if isinstance(rs, dict) else rs
            raise ConvertError("config.json: rope_scaling (%s) is not supported" % (kind,))
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ConvertError("config.json: hidden_act %r is not supported (only silu)" % (act,))
        for key in ("attention_bias", "mlp_bias"):
            if cfg.get(key):
                raise ConvertError("config.json: %s = true is not supported" % key)
        tie = cfg.get("tie_word_embeddings", False)
        if not isinstance(tie, bool):
            raise ConvertError("config.json: tie_word_embeddings must be true or false")
        self.tie = tie
        kv = cfg.get("kv_sharing")
        self.kv_sharing = kv if isinstance(kv, dict) else None
        if kv is not None and not isinstance(kv, dict):
            raise ConvertError("config.json: kv_sharing must be an object, found %r" % (kv,))

    def role_shape(self, role):
        d, dq, dkv = self.d, self.n_h * self.d_h, self.n_kv * self.d_h
        return {"attn_norm": (d,), "ffn_norm": (d,), "attn_q": (dq, d), "attn_k": (dkv, d),
                "attn_v": (dkv, d), "attn_output": (d, dq), "ffn_gate": (self.d_ff, d),
                "ffn_up": (self.d_ff, d), "ffn_down": (d, self.d_ff)}[role]


# ---------------------------------------------------------------------------------------------
# Key parsing
# ---------------------------------------------------------------------------------------------

class Parsed(object):
    def __init__(self):
        self.enc = {}           # l -> SrcTensor: recursion encoding of unrolled layer l
        self.prompt = {}        # l -> dict(P, g): adaption prompt and gate of unrolled layer l
        self.glob = {}          # embed / norm / lm_head -> SrcTensor
        self.entries = []       # (position, role, kind, tensor, origin) kind: w | A | B
        self.routers = []       # (index or None, which, part, tensor)
        self.rbias = []         # (index or None, tensor)
        self.ignored = []
        self.adapters = set()
        self.kind = "plain"
        self.struct = None      # for MoR layouts: dict(sharing, n_rec, B, L)
        self.layers = {}        # l -> role -> SrcTensor (base weight)
        self.lora = {}          # l -> role -> dict(A, B, module, origin)
        self.router = {}        # GGUF router name -> SrcTensor
        self.router_arch = None
        self.has_aux = False


def _parse_sub(rest):
    """(role, kind, adapter) of a layer key's rest: kind w (weight), A / B (LoRA), M (DoRA
    magnitude), enc (recursion encoding), P / g (adaption prompt and gate; role None)."""
    if rest.startswith("block.") and not rest[6:7].isdigit():
        rest = rest[6:]                 # a layer wrapped by a recursion encoding: its .block
    if rest == "recursion_encoding":
        return None, "enc", None
    if rest in ("self_attn.adaption_prompt", "self_attn.adaption_gate"):
        return None, "P" if rest.endswith("prompt") else "g", None
    if rest.startswith("self_attn.model."):
        rest = "self_attn." + rest[len("self_attn.model."):]   # the attention an adaption prompt wraps
    m = _RE_SUB.match(rest)
    if not m:
        return None
    role = HF_SUB[m.group(1)]
    suf = m.group(2)
    if suf in ("weight", "base_layer.weight"):
        return role, "w", None
    lm = _RE_LORA.match(suf)
    if lm:
        return role, lm.group(1), lm.group(2)
    mm = _RE_MAG.match(suf)
    if mm:
        return role, "M", None if mm.group(1) in (None, "weight") else mm.group(1)
    return None


def parse_keys(ck, log):
    p = Parsed()
    sources = [(k, t, "checkpoint") for k, t in ck.tensors.items()]
    for k, t in ck.adapter_tensors.items():
        if not k.startswith("base_model.model."):
            raise ConvertError("unsupported tensor %s in %s (PEFT adapter keys start with "
                               "base_model.model.)%s" % (k, t.file, _hint(k)))
        sources.append((k[len("base_model.model."):], t, "adapter"))
    unknown = []
    for key, t, origin in sources:
        k = key
        if origin == "checkpoint" and k.startswith("base_model.model."):
            k = k[len("base_model.model."):]
        if k in GLOBALS and origin == "checkpoint":
            p.glob[GLOBALS[k]] = t
            continue
        if k.endswith("rotary_emb.inv_freq") and origin == "checkpoint":
            p.ignored.append(key)
            continue
        pos = rest = None
        m = _RE_TOKEN.match(k)
        if m:
            pos = ("token", None if m.group(1) is None else int(m.group(1)), int(m.group(2)), int(m.group(3)))
            rest = m.group(4)
        else:
            m = _RE_EXPERT.match(k)
            if m:
                pos = ("expert", int(m.group(1)), int(m.group(2)))
                rest = m.group(3)
            else:
                m = _RE_ROUTER.match(k)
                if m and origin == "checkpoint":
                    idx = None if m.group(1) is None else int(m.group(1))
                    p.routers.append((idx, m.group(2), m.group(3), t))
                    continue
                m = _RE_RBIAS.match(k)
                if m and origin == "checkpoint":
                    p.rbias.append((None if m.group(1) is None else int(m.group(1)), t))
                    continue
                m = _RE_PLAIN.match(k)
                if m:
                    pos = ("plain", int(m.group(1)))
                    rest = m.group(2)
        sub = _parse_sub(rest) if rest is not None else None
        if sub is None:
            unknown.append((key, t))
            continue
        role, kind, adapter = sub
        if kind in ("A", "B", "M") and role in NORM_ROLES:
            unknown.append((key, t))
            continue
        if kind in ("w", "enc") and origin == "adapter":
            unknown.append((key, t))
            continue
        if adapter is not None:
            p.adapters.add(adapter)
        p.entries.append((pos, role, kind, t, origin))
    if unknown:
        key, t = unknown[0]
        more = " (and %d more)" % (len(unknown) - 1) if len(unknown) > 1 else ""
        raise ConvertError("unsupported tensor %s in %s%s%s" % (key, t.file, _hint(key), more))
    if len(p.adapters) > 1:
        raise ConvertError("the checkpoint holds several LoRA adapters (%s); only one can be "
                           "converted" % ", ".join(sorted(p.adapters)))
    for name in ("embed", "norm"):
        if name not in p.glob:
            raise ConvertError("missing tensor %s" % {"embed": "model.embed_tokens.weight",
                                                      "norm": "model.norm.weight"}[name])
    if p.ignored:
        log.info("ignoring %d rotary_emb.inv_freq buffers (recomputed by the engine)" % len(p.ignored))
    return p


def _layout(p, hp):
    """Decide the key layout and map every entry to its unrolled layer."""
    kinds = set(e[0][0] for e in p.entries)
    if "token" in kinds and "expert" in kinds:
        raise ConvertError("the checkpoint mixes expert-choice (.block.) and token-choice "
                           "(.block_list.) layer keys")
    plain_idx = sorted(set(e[0][1] for e in p.entries if e[0][0] == "plain"))
    if "token" in kinds:
        p.kind = "token"
        conts = set(e[0][1] for e in p.entries if e[0][0] == "token")
        if len(conts) != 1:
            raise ConvertError("token-choice keys under several layers: %s"
                               % ", ".join("model.layers.%s.block_list" % c for c in sorted(conts, key=str)))
        c = conts.pop()
        rs = sorted(set(e[0][2] for e in p.entries if e[0][0] == "token"))
        js = sorted(set(e[0][3] for e in p.entries if e[0][0] == "token"))
        # Saving to safetensors drops the tied copies block_list.{r >= 1}: the recursion count
        # is the router's output size.
        n_rec = rs[-1] + 1
        for idx, which, part, t in p.routers:
            if which == "mor_router" and part in ("weight", "2.weight") and len(t.shape) == 2:
                n_rec = t.shape[0]
        for idx, t in p.rbias:
            if len(t.shape) == 1:
                n_rec = t.shape[0]
        B = len(js)
        if js != list(range(B)) or rs[-1] >= n_rec:
            raise ConvertError("token-choice block_list indices do not fit %d recursions of "
                               "contiguous layers: recursions %s, layers %s" % (n_rec, rs, js))
        if c is None:
            sharing = "cycle"
            if plain_idx:
                raise ConvertError("model.layers.%d.* next to a cycle token-choice layout "
                                   "(model.layers.block_list)" % plain_idx[0])
        else:
            sharing = "middle_cycle"
            if c != 1 or plain_idx != [0, 2]:
                raise ConvertError("token-choice middle-cycle layout expects model.layers.0, "
                                   "model.layers.1.block_list and model.layers.2; found block_list "
                                   "under model.layers.%d and plain layers %s" % (c, plain_idx))
        L = n_rec * B + (2 if c is not None else 0)

        def unrolled(pos):
            if pos[0] == "token":
                return (1 if c is not None else 0) + pos[2] * B + pos[3]
            return 0 if pos[1] == 0 else L - 1
        blocks = {}
    elif "expert" in kinds:
        p.kind = "expert"
        # recursion blocks: the layers with .block. keys or a router (a block whose tensors all
        # are dropped aliases still has its router)
        idx = sorted(set(e[0][1] for e in p.entries if e[0][0] == "expert")
                     | set(r[0] for r in p.routers if r[1] == "mor_router" and r[0] is not None))
        js = sorted(set(e[0][2] for e in p.entries if e[0][0] == "expert"))
        n_rec, B = len(idx), len(js)
        if js != list(range(B)):
            raise ConvertError("expert-choice block indices are not contiguous: %s" % js)
        if plain_idx:
            sharing = "middle_cycle"
            if idx != list(range(1, n_rec + 1)) or plain_idx != [0, n_rec + 1]:
                raise ConvertError("expert-choice middle-cycle layout expects model.layers.0, "
                                   "model.layers.{1..N_r}.block and model.layers.{N_r+1}; found "
                                   "blocks under %s and plain layers %s" % (idx, plain_idx))
        else:
            sharing = "cycle"
            if idx != list(range(n_rec)):
                raise ConvertError("expert-choice cycle layout expects model.layers.{0..N_r-1}.block; "
                                   "found %s" % idx)
        L = n_rec * B + (2 if sharing == "middle_cycle" else 0)
        off = 1 if sharing == "middle_cycle" else 0
        blocks = dict((i, r) for r, i in enumerate(idx))

        def unrolled(pos):
            if pos[0] == "expert":
                return off + blocks[pos[1]] * B + pos[2]
            return 0 if pos[1] == 0 else L - 1
    else:
        p.kind = "plain"
        if plain_idx and plain_idx[-1] >= hp.L:
            raise ConvertError("model.layers.%d.* is beyond num_hidden_layers = %d (config.json)"
                               % (plain_idx[-1], hp.L))

        def unrolled(pos):
            return pos[1]
        blocks = {}
        L = hp.L
    if p.kind != "plain":
        if L != hp.L:
            raise ConvertError("config.json says num_hidden_layers = %d, but the %s-choice layout "
                               "holds %d unrolled layers (%d recursions of %d%s)"
                               % (hp.L, p.kind, L, n_rec, B, " + 2" if "middle" in sharing else ""))
        p.struct = {"sharing": sharing, "n_rec": n_rec, "B": B, "L": L}
    for pos, role, kind, t, origin in p.entries:
        l = unrolled(pos)
        if kind == "w":
            if role in p.layers.setdefault(l, {}):
                raise ConvertError("two tensors for %s of unrolled layer %d: %s and %s"
                                   % (SUB_OF_ROLE[role], l, p.layers[l][role].key, t.key))
            p.layers[l][role] = t
        elif kind in ("enc", "P", "g"):
            slot = p.enc if kind == "enc" else p.prompt.setdefault(l, {})
            k = l if kind == "enc" else kind
            prev = slot.get(k)
            if prev is not None and not prev.same(t):
                raise ConvertError("%s and %s (of the same layer) differ" % (prev.where(), t.where()))
            slot[k] = t
        else:
            slot = p.lora.setdefault(l, {}).setdefault(role, {})
            prev = slot.get(kind)
            if prev is not None:
                if not prev.same(t):
                    raise ConvertError("LoRA tensors %s and %s (of the same module) differ"
                                       % (prev.where(), t.where()))
                continue
            slot[kind] = t
            slot["module"] = "model.layers.%d.%s" % (l, SUB_OF_ROLE[role])
    for l, roles in p.lora.items():
        for role, s in roles.items():
            if "A" not in s or "B" not in s:
                have = s.get("A") or s.get("B") or s.get("M")
                raise ConvertError("%s has no matching lora_%s" % (have.where(), "B" if "A" in s else "A"))
    for l, pr in p.prompt.items():
        if "P" not in pr or "g" not in pr:
            have = pr.get("P") or pr.get("g")
            raise ConvertError("%s has no matching adaption_%s" % (have.where(), "gate" if "P" in pr else "prompt"))
    # routers
    for idx, which, part, t in p.routers:
        if p.kind == "plain":
            raise ConvertError("router tensor %s without a MoR layer layout (.block. or .block_list.)" % t.key)
        if p.kind == "expert":
            if idx not in blocks:
                raise ConvertError("router %s is not on a recursion block" % t.key)
            r = blocks[idx]
            base = "%s.%d" % ("router" if which == "mor_router" else "router_aux", r)
        else:
            want = None if p.struct["sharing"] == "cycle" else 1
            if idx != want:
                raise ConvertError("router %s is not on the token-choice layer" % t.key)
            if which != "mor_router":
                raise ConvertError("unsupported tensor %s (token-choice has no auxiliary router)" % t.key)
            base = "router"
        if which == "mlp_router":
            p.has_aux = True
        arch = "linear" if part == "weight" else "mlp"
        if p.router_arch is None:
            p.router_arch = arch
        elif p.router_arch != arch:
            raise ConvertError("router tensors mix linear (router.weight) and MLP (router.0/2) "
                               "routers, e.g. %s" % t.key)
        name = base + {"weight": ".weight", "0.weight": ".fc1.weight", "2.weight": ".fc2.weight"}[part]
        p.router[name] = t
    for idx, t in p.rbias:
        if p.kind != "token":
            raise ConvertError("%s: router_bias belongs to token-choice checkpoints" % t.key)
        want = None if p.struct["sharing"] == "cycle" else 1
        if idx != want:
            raise ConvertError("router bias %s is not on the token-choice layer" % t.key)
        p.router["router.bias"] = t
    return p


# ---------------------------------------------------------------------------------------------
# Settings (command line > YAML > layout > config.json) and sharing inference
# ---------------------------------------------------------------------------------------------

class Settings(object):
    def __init__(self):
        self.sharing = self.n_rec = None
        self.sharing_src = None
        self.router = None           # none / expert / token
        self.router_src = None
        self.router_arch = None
        self.router_func = self.router_alpha = self.router_temp = self.router_gating = None
        self.router_keys_src = {}
        self.kv_sharing = None
        self.kv_src = None
        self.lora_scale = None
        self.lora_scale_src = None
        self.yaml_lora = None        # dict(r, alpha, alpha_pattern) from relaxation.lora
        self.relax_method = None     # relaxation.method of the YAML (lora, dora, ...)
        self.relax_src = None
        self.prompt_len = None       # relaxation.prompt.len of the YAML
        self.base_depth = None


def _yaml_section(y, name, path):
    v = y.get(name)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConvertError("%s: %s must be a mapping" % (path, name))
    return v


def settings_from_yaml(st, y, path, log):
    if not isinstance(y, dict):
        raise ConvertError("%s: the training config must be a YAML mapping" % path)
    rec = _yaml_section(y, "recursive", path)
    if rec.get("enable"):
        n = rec.get("num_recursion")
        sh = rec.get("sharing")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConvertError("%s: recursive.num_recursion must be a positive integer, found %r" % (path, n))
        if sh not in SHARINGS:
            raise ConvertError("%s: recursive.sharing %r is not one of %s" % (path, sh, ", ".join(SHARINGS)))
        st.sharing, st.n_rec, st.sharing_src = sh, n, "%s recursive.*" % path
        if n == 1:
            bd = rec.get("base_depth")
            if not isinstance(bd, int) or bd < 1:
                raise ConvertError("%s: recursive.num_recursion = 1 needs recursive.base_depth" % path)
            st.base_depth = bd
    mor = _yaml_section(y, "mor", path)
    if mor.get("enable"):
        typ = mor.get("type")
        if typ not in ("expert", "token"):
            raise ConvertError("%s: mor.type %r is not expert or token" % (path, typ))
        if mor.get("rand_router"):
            raise ConvertError("%s: mor.rand_router = true (random routing) cannot be converted" % path)
        st.router, st.router_src = typ, "%s mor.type" % path
        ra = mor.get("router_type", "linear")
        if ra not in ("linear", "mlp", "wide_mlp"):
            raise ConvertError("%s: mor.router_type %r is not linear, mlp or wide_mlp" % (path, ra))
        st.router_arch = "mlp" if ra == "wide_mlp" else ra
        temp = mor.get("temp", 1.0)
        st.router_temp = 1.0 if temp is None else temp
        sub = mor.get(typ) or {}
        if not isinstance(sub, dict):
            raise ConvertError("%s: mor.%s must be a mapping" % (path, typ))
        if typ == "expert":
            func = sub.get("router_func", "sigmoid")
            st.router_func = "none" if func is None else func
            st.router_alpha = sub.get("alpha", 0.1)
        else:
            func = sub.get("router_func")
            st.router_func = "sigmoid" if func == "sigmoid" else "softmax"
            st.router_alpha = sub.get("alpha", 0.1 if func == "sigmoid" else 1.0)
            if func not in (None, "sigmoid", "softmax"):
                raise ConvertError("%s: mor.token.router_func %r is not softmax or sigmoid" % (path, func))
        st.router_gating = sub.get("gating", "weighted")
        for k in ("router_func", "router_alpha", "router_temp", "router_gating", "router_arch"):
            st.router_keys_src[k] = path
    elif mor and mor.get("enable") is False:
        st.router, st.router_src = "none", "%s mor.enable" % path
    kv = _yaml_section(y, "kv_sharing", path)
    if "enable" in kv:
        st.kv_sharing, st.kv_src = bool(kv.get("enable")), "%s kv_sharing.enable" % path
        if kv.get("enable") and kv.get("update_cache"):
            raise ConvertError("%s: kv_sharing.update_cache = true is not supported" % path)
    rel = _yaml_section(y, "relaxation", path)
    if rel.get("enable"):
        method = rel.get("method", "lora")
        if method not in RELAX_METHODS:
            raise ConvertError("%s: relaxation.method %r is not supported (%s)" % (path, method, ", ".join(RELAX_METHODS)))
        st.relax_method, st.relax_src = method, "%s relaxation.method" % path
        lo = rel.get("lora") or {}
        if method in ("lora", "dora"):
            st.yaml_lora = {"r": lo.get("r"), "alpha": lo.get("alpha"), "alpha_pattern": lo.get("alpha_pattern"),
                            "src": path}
        if method == "adaption_prompt":
            n = (rel.get("prompt") or {}).get("len")
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
                raise ConvertError("%s: relaxation.prompt.len must be a positive integer, found %r" % (path, n))
            st.prompt_len = n
            st.relax_src = "%s relaxation.prompt.len" % path


def settings_from_config(st, hp, log):
    kv = hp.kv_sharing
    if kv is None:
        return
    if st.kv_sharing is None and "enable" in kv:
        st.kv_sharing, st.kv_src = bool(kv.get("enable")), "config.json kv_sharing.enable"
        if kv.get("enable") and kv.get("update_cache"):
            raise ConvertError("config.json: kv_sharing.update_cache = true is not supported")
    if kv.get("enable") and st.sharing is None and kv.get("sharing") in SHARINGS \
            and isinstance(kv.get("num_recursion"), int):
        st.sharing, st.n_rec = kv["sharing"], kv["num_recursion"]
        st.sharing_src = "config.json kv_sharing"


def split(L, sharing, n_rec):
    """(B, n_store) of a sharing, or None when L does not split."""
    n = L - 2 if sharing.startswith("middle") else L
    if n_rec < 1 or n < 1 or n % n_rec:
        return None
    B = n // n_rec
    return B, (B + 2 if sharing.startswith("middle") else B)


def s_r(l, L, sharing, n_rec):
    """FORMAT.md §3.2: stored layer and recursion index of unrolled layer l."""
    B = split(L, sharing, n_rec)[0]
    if sharing == "cycle":
        return l % B, l // B
    if sharing == "sequence":
        return l // n_rec, l % n_rec
    if l == 0:
        return 0, 0
    if l == L - 1:
        return B + 1, 0
    if sharing == "middle_cycle":
        return 1 + (l - 1) % B, (l - 1) // B
    return 1 + (l - 1) // n_rec, (l - 1) % n_rec


def infer_sharing(layers, L):
    """The strategy that explains which unrolled layers hold identical FFN weights, as
    (sharing, n_rec), or None. A candidate must map every pair of layers that share a stored
    slot to byte-identical gate/up/down weights; the one with the fewest stored layers wins
    (cycle first on ties, as cycle and sequence coincide when B = 1)."""
    if any(l not in layers or any(r not in layers[l] for r in FFN_ROLES) for l in range(L)):
        return None
    key = [tuple(layers[l][r].digest() for r in FFN_ROLES) for l in range(L)]
    best = None
    for sharing in SHARINGS:
        for n_rec in range(2, L + 1):
            sp = split(L, sharing, n_rec)
            if sp is None:
                continue
            owner = {}
            ok = True
            for l in range(L):
                s = s_r(l, L, sharing, n_rec)[0]
                if s in owner:
                    if key[owner[s]] != key[l]:
                        ok = False
                        break
                else:
                    owner[s] = l
            if ok and (best is None or sp[1] < best[2]):
                best = (sharing, n_rec, sp[1])
    return best[:2] if best else None


def peft_pattern(patterns, module):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches a module name when the name
    is the key or ends with '.' + key (keys are regular expressions)."""
    if not isinstance(patterns, dict):
        return None
    for k, v in patterns.items():
        try:
            if re.fullmatch(r"(.*\.)?(%s)" % k, module):
                return v
        except re.error:
            if module == k or module.endswith("." + k):
                return v
    return None


def lora_sigma(module, rank, ck, st):
    """The PEFT scale of one LoRA module and where it came from."""
    if st.lora_scale is not None:
        return st.lora_scale, st.lora_scale_src
    ac = ck.adapter_config
    if ac is not None:
        pt = ac.get("peft_type", "LORA")
        if pt != "LORA":
            raise ConvertError("adapter_config.json: peft_type %r is not supported (only LORA)" % (pt,))
        r = peft_pattern(ac.get("rank_pattern"), module)
        if r is None:
            r = ac.get("r", 8)
        alpha = peft_pattern(ac.get("alpha_pattern"), module)
        if alpha is None:
            alpha = ac.get("lora_alpha", 8)
        for key, v in (("r", r), ("lora_alpha", alpha)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ConvertError("adapter_config.json: bad %s %r for %s" % (key, v, module))
        if int(r) != rank:
            raise ConvertError("adapter_config.json gives rank %s for %s, but its LoRA tensors have "
                               "rank %d" % (r, module, rank))
        if ac.get("use_rslora"):
            return float(alpha) / math.sqrt(r), "adapter_config.json (rsLoRA)"
        return float(alpha) / r, "adapter_config.json"
    yl = st.yaml_lora
    if yl is not None:
        ap = yl.get("alpha_pattern")
        if ap:
            return float(rank * ap) / rank, "%s relaxation.lora.alpha_pattern" % yl["src"]
        if yl.get("alpha"):
            return float(yl["alpha"]) / rank, "%s relaxation.lora.alpha" % yl["src"]
    raise ConvertError("the checkpoint has LoRA tensors (e.g. %s) but no scale: give "
                       "adapter_config.json, the training YAML (relaxation.lora) or --lora-scale" % module)


# ---------------------------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------------------------

class OutTensor(object):
    """One GGUF tensor: name, dims (innermost first), ttype (F32 / F16 / BF16), the source
    tensor and how to transform it (dtype, Q/K row permutation, scale)."""

    __slots__ = ("name", "dims", "ttype", "src", "perm_heads", "scale", "head_dim")

    def __init__(self, name, src, ttype, perm_heads=None, head_dim=None, scale=None, shape=None):
        """shape: the tensor's shape when it differs from the source's by dimensions of 1."""
        self.name = name
        self.src = src
        shape = src.shape if shape is None else shape
        self.dims = list(reversed(shape)) if shape else [1]
        self.ttype = ttype
        self.perm_heads = perm_heads
        self.head_dim = head_dim
        self.scale = scale

    @property
    def nbytes(self):
        n = 1
        for x in self.dims:
            n *= x
        return n * (4 if self.ttype == "F32" else 2)

    def chunks(self, size=1 << 22):
        """The converted bytes in pieces of about `size` source bytes (the whole tensor at once
        when rows are permuted or scaled). Memory holds one piece and its conversion; the source
        pages of a piece are released once it is converted, so a mapped checkpoint does not
        accumulate in resident memory."""
        src = self.src
        if self.perm_heads or self.scale is not None:
            yield self.produce()
            src.release(0, src.nbytes)
            return
        raw = src.data()
        es = DTYPE_SIZE[src.dtype]
        step = max(1, size // es) * es
        what = "%s (from %s)" % (self.name, src.key)
        for off in range(0, max(len(raw), 1), step):
            out = floats.convert(raw[off:off + step], src.dtype, self.ttype, what)
            src.release(off, off + step)
            yield out

    def produce(self):
        src = self.src
        what = "%s (from %s)" % (self.name, src.key)
        raw = src.data()
        if self.scale is not None:
            vals = floats.to_floats(raw, src.dtype)
            raw = floats.from_floats([v * self.scale for v in vals], "F32", what)
            data = floats.convert(raw, "F32", self.ttype, what)
        else:
            data = floats.convert(raw, src.dtype, self.ttype, what)
        if self.perm_heads:
            data = permute_rows(data, self.dims[1], self.dims[0] * (4 if self.ttype == "F32" else 2),
                                self.perm_heads, self.head_dim)
        return data


def permute_rows(data, rows, row_bytes, n_heads, d_h):
    """Q/K rows from Hugging Face's rotate_half order (pair i with i + d_h/2) to the adjacent
    pair order (2i, 2i+1) of arch llama: new row h*d_h + 2i + j = old row h*d_h + j*d_h/2 + i,
    as llama.cpp's converter permutes them."""
    if rows != n_heads * d_h:
        raise ConvertError("cannot permute %d rows into %d heads of %d" % (rows, n_heads, d_h))
    half = d_h // 2
    mv = memoryview(data)
    out = []
    for h in range(n_heads):
        for i in range(half):
            for j in range(2):
                r = h * d_h + j * half + i
                out.append(mv[r * row_bytes:(r + 1) * row_bytes])
    return b"".join(out)


class Plan(object):
    def __init__(self):
        self.arch = None
        self.kv = []            # (key, vtype name, value)
        self.tensors = []       # OutTensor
        self.report = []        # lines for the summary
        self.file_type = None

    def add_kv(self, key, vtype, value):
        self.kv.append((key, vtype, value))


def _check_shape(t, want, what):
    if tuple(t.shape) != tuple(want):
        raise ConvertError("tensor %s has shape %s, expected %s%s"
                           % (t.where(), fmt_shape(t.shape), fmt_shape(want), what))


def build_plan(ck, hp, st, opts, log):
    """opts: arch (auto/llama/mor), out_type (auto/F32/F16/BF16), name."""
    p = parse_keys(ck, log)
    p = _layout(p, hp)
    plan = Plan()
    L = hp.L
    # ---- sharing
    if p.struct:
        s = p.struct
        if st.sharing is not None and (st.sharing, st.n_rec) != (s["sharing"], s["n_rec"]):
            raise ConvertError("the checkpoint's %s-choice layout is %s with %d recursions, but %s "
                               "says %s with %d" % (p.kind, s["sharing"], s["n_rec"], st.sharing_src,
                                                    st.sharing, st.n_rec))
        st.sharing, st.n_rec = s["sharing"], s["n_rec"]
        st.sharing_src = st.sharing_src or "the %s-choice key layout" % p.kind
        if st.router not in (None, p.kind):
            raise ConvertError("%s says router %s, but the checkpoint has the %s-choice layout"
                               % (st.router_src, st.router, p.kind))
        st.router = p.kind
        st.router_src = st.router_src or "the key layout"
    else:
        if st.router not in (None, "none"):
            raise ConvertError("%s says router %s, but the checkpoint has no MoR layer layout "
                               "(model.layers.N.block.* / block_list.*)" % (st.router_src, st.router))
        st.router = "none"
        if st.sharing is not None and st.base_depth is not None and st.n_rec == 1:
            if st.base_depth != L:
                raise ConvertError("%s: recursive.base_depth %d differs from num_hidden_layers %d"
                                   % (st.sharing_src, st.base_depth, L))
        if st.sharing is None:
            found = infer_sharing(p.layers, L)
            if found:
                st.sharing, st.n_rec = found
                st.sharing_src = "inferred from identical FFN weights"
            else:
                st.sharing, st.n_rec = "cycle", 1
                st.sharing_src = "no shared layers found"
    sp = split(L, st.sharing, st.n_rec)
    if sp is None:
        raise ConvertError("num_hidden_layers %d does not split into %d recursions of %s (%s)"
                           % (L, st.n_rec, st.sharing, st.sharing_src))
    B, n_store = sp
    if st.router in ("expert", "token") and st.sharing not in ("cycle", "middle_cycle"):
        raise ConvertError("routers need cycle or middle_cycle sharing, not %s" % st.sharing)
    if st.kv_sharing is None:
        st.kv_sharing = False
    has_lora = any(p.lora.values())
    has_dora = any("M" in e for roles in p.lora.values() for e in roles.values())
    has_relax = bool(has_dora or p.enc or p.prompt)
    _check_relax(p, st, has_lora, has_dora, ck)
    # ---- arch
    arch = opts.get("arch", "auto")
    if arch == "auto":
        arch = "mor" if (st.n_rec > 1 or has_lora or has_relax or st.router != "none" or st.kv_sharing) else "llama"
    if arch == "llama":
        why = [w for w, c in (("a router", st.router != "none"), ("LoRA tensors", has_lora),
                              ("DoRA, recursion encodings or adaption prompts", has_relax),
                              ("KV sharing", st.kv_sharing)) if c]
        if why:
            raise ConvertError("arch llama cannot hold %s; convert to arch mor" % " and ".join(why))
    plan.arch = arch
    # ---- globals
    emb = p.glob["embed"]
    if len(emb.shape) != 2 or emb.shape[1] != hp.d:
        raise ConvertError("tensor %s has shape %s, expected [vocab, %d]" % (emb.where(), fmt_shape(emb.shape), hp.d))
    V = emb.shape[0]
    if hp.vocab is not None and hp.vocab != V:
        log.warn("config.json vocab_size %r differs from the %d rows of %s; using %d"
                 % (hp.vocab, V, emb.key, V))
    _check_shape(p.glob["norm"], (hp.d,), "")
    head = p.glob.get("lm_head")
    tied = hp.tie
    if head is not None:
        _check_shape(head, (V, hp.d), "")
        if hp.tie and not head.same(emb):
            log.warn("config.json ties the embeddings (tie_word_embeddings), so %s is ignored "
                     "although it differs from model.embed_tokens.weight" % head.key)
    elif not hp.tie:
        raise ConvertError("missing tensor lm_head.weight (config.json has tie_word_embeddings = false)")
    out_type = opts.get("out_type", "auto")

    def mtype(t):
        t.require_float()
        return t.dtype if out_type == "auto" else out_type

    plan.file_type = mtype(emb)
    tensors = plan.tensors
    tensors.append(OutTensor("token_embd.weight", emb, mtype(emb)))
    tensors.append(OutTensor("output_norm.weight", p.glob["norm"], "F32"))
    if not tied:
        tensors.append(OutTensor("output.weight", head, mtype(head)))
    # ---- per-layer tensors, checked
    for l, roles in sorted(p.layers.items()):
        for role in ROLES:
            if role in roles:
                _check_shape(roles[role], hp.role_shape(role), " (config.json: hidden_size %d, heads "
                             "%d/%d, intermediate_size %d)" % (hp.d, hp.n_h, hp.n_kv, hp.d_ff))
    layer_of = {}          # (l, role) -> SrcTensor, aliases filled from the sharing map
    filled = 0
    for l in range(L):
        s, r = s_r(l, L, st.sharing, st.n_rec)
        for role in ROLES:
            t = p.layers.get(l, {}).get(role)
            if t is None:
                # a dropped alias: take the tensor of another unrolled layer of the same slot
                for l2 in range(L):
                    if s_r(l2, L, st.sharing, st.n_rec)[0] == s and role in p.layers.get(l2, {}):
                        t = p.layers[l2][role]
                        filled += 1
                        break
            if t is None:
                raise ConvertError("missing tensor model.layers.%d.%s.weight (no other layer of "
                                   "stored slot %d under %s sharing holds it)"
                                   % (l, SUB_OF_ROLE[role], s, st.sharing))
            layer_of[(l, role)] = t
    # ---- report the layout
    lay = {"plain": "Llama layer keys (model.layers.N.*)",
           "expert": "MoR expert-choice (model.layers.N.block.M.*)",
           "token": "MoR token-choice (model.layers[.N].block_list.R.M.*)"}[p.kind]
    plan.report.append("layout: %s, %d unrolled layers" % (lay, L))
    if arch == "llama":
        if st.n_rec > 1:
            plan.report.append("sharing: %s with %d recursions (%s), written unrolled"
                               % (st.sharing, st.n_rec, st.sharing_src))
        else:
            plan.report.append("sharing: none (%s): a vanilla model" % st.sharing_src)
        for l in range(L):
            for role in ROLES:
                t = layer_of[(l, role)]
                name = "blk.%d.%s.weight" % (l, role)
                if role in NORM_ROLES:
                    tensors.append(OutTensor(name, t, "F32"))
                elif role in ("attn_q", "attn_k"):
                    tensors.append(OutTensor(name, t, mtype(t), perm_heads=hp.n_h if role == "attn_q" else hp.n_kv,
                                             head_dim=hp.d_h))
                else:
                    tensors.append(OutTensor(name, t, mtype(t)))
        _llama_keys(plan, hp, V, opts)
        return plan, p
    # ---- arch mor
    n_over = {}
    ffn_diff = 0
    ffn_pairs = 0
    for i in range(n_store):
        pos = sorted((s_r(l, L, st.sharing, st.n_rec)[1], l) for l in range(L)
                     if s_r(l, L, st.sharing, st.n_rec)[0] == i)
        for role in ROLES:
            r0, l0 = pos[0]
            # the stored tensor: the lowest recursion that the file really holds
            stored_l = next((l for r, l in pos if role in p.layers.get(l, {})), l0)
            stored = layer_of[(stored_l, role)]
            tensors.append(OutTensor("blk.%d.%s.weight" % (i, role), stored,
                                     "F32" if role in NORM_ROLES else mtype(stored)))
            for r, l in pos:
                t = layer_of[(l, role)]
                if role in FFN_ROLES and l != stored_l:
                    ffn_pairs += 1
                if t is stored or t.same(stored):
                    continue
                if role in FFN_ROLES:
                    ffn_diff += 1
                n_over[role] = n_over.get(role, 0) + 1
                tensors.append(OutTensor("blk.%d.rec.%d.%s.weight" % (i, r, role), t,
                                         "F32" if role in NORM_ROLES else mtype(t)))
    if ffn_pairs and ffn_diff * 2 > ffn_pairs:
        log.warn("%d of %d FFN weights differ from their stored layer under %s sharing with %d "
                 "recursions (%s); they are kept as per-recursion overrides -- is the sharing right?"
                 % (ffn_diff, ffn_pairs, st.sharing, st.n_rec, st.sharing_src))
    plan.report.append("sharing: %s, %d recursion%s, block of %d (%s): %d stored layers for %d unrolled"
                       % (st.sharing, st.n_rec, "" if st.n_rec == 1 else "s", B, st.sharing_src,
                          n_store, L))
    if filled:
        plan.report.append("aliases: %d layer tensors absent from the file were taken from their "
                           "stored layer" % filled)
    if n_over:
        plan.report.append("per-recursion overrides (tensors that differ from the stored layer): %s"
                           % ", ".join("%s x%d" % (r, n_over[r]) for r in ROLES if r in n_over))
    else:
        plan.report.append("per-recursion overrides: none (every tied tensor is identical)")
    # ---- LoRA
    sigmas = []
    lora_items = []
    for l in sorted(p.lora):
        s, r = s_r(l, L, st.sharing, st.n_rec)
        for role in PROJ_ROLES:
            e = p.lora[l].get(role)
            if not e:
                continue
            A, Bm = e["A"], e["B"]
            out_, in_ = hp.role_shape(role)
            if len(A.shape) != 2 or A.shape[1] != in_ or not 1 <= A.shape[0] <= min(in_, out_):
                raise ConvertError("LoRA tensor %s has shape %s, expected [rank, %d]"
                                   % (A.where(), fmt_shape(A.shape), in_))
            rank = A.shape[0]
            _check_shape(Bm, (out_, rank), " (lora_B of %s)" % A.key)
            sig, src = lora_sigma(e["module"], rank, ck, st)
            sigmas.append(sig)
            lora_items.append((s, r, role, A, Bm, sig, src))
    if lora_items:
        counts = {}
        for x in sigmas:
            counts[x] = counts.get(x, 0) + 1
        sigma = max(counts, key=lambda x: (counts[x], -sigmas.index(x)))
        folded = 0
        for s, r, role, A, Bm, sig, src in lora_items:
            base = "blk.%d.rec.%d.%s." % (s, r, role)
            tensors.append(OutTensor(base + "lora_a", A, mtype(A)))
            scale = None
            if sig != sigma:
                scale = sig / sigma     # sigma B' = sig B: W + sigma B' A, and so its DoRA norm, unchanged
                folded += 1
            tensors.append(OutTensor(base + "lora_b", Bm, mtype(Bm), scale=scale))
        plan.report.append("LoRA: %d adapted projections (%s), rank %s, scale %g (%s)"
                           % (len(lora_items), ", ".join(sorted(set(x[2] for x in lora_items))),
                              "/".join(str(x) for x in sorted(set(x[3].shape[0] for x in lora_items))),
                              sigma, lora_items[0][6]))
        if folded:
            log.warn("%d LoRA modules have a scale other than %g; their lora_b is multiplied by "
                     "the ratio" % (folded, sigma))
        st.lora_scale = sigma
    # ---- the other relaxations, per (stored layer, recursion) of their unrolled layer
    _plan_relax(plan, p, hp, st, L, mtype)
    # ---- routers
    if st.router != "none":
        _plan_routers(plan, p, hp, st, log)
    _mor_keys(plan, hp, st, V, B, has_lora, opts)
    return plan, p


def _check_relax(p, st, has_lora, has_dora, ck):
    """The relaxations against the settings and the router (docs/DESIGN.md, Relaxations)."""
    ac = ck.adapter_config or {}
    if st.relax_method == "dora" and not has_dora:
        raise ConvertError("%s is dora, but the checkpoint has no lora_magnitude_vector tensors"
                           % st.relax_src)
    if ac.get("use_dora") and has_lora and not has_dora:
        raise ConvertError("adapter_config.json says use_dora = true, but the LoRA modules have no "
                           "lora_magnitude_vector")
    if ac.get("peft_type") == "ADAPTION_PROMPT":
        if not p.prompt:
            raise ConvertError("adapter_config.json: peft_type ADAPTION_PROMPT, but there are no "
                               "adaption_prompt tensors")
        al = ac.get("adapter_len")
        if st.prompt_len is None and al is not None:
            st.prompt_len, st.relax_src = al, "adapter_config.json adapter_len"
    if st.relax_method == "recursion_encoding" and not p.enc:
        raise ConvertError("%s is recursion_encoding, but the checkpoint has no recursion_encoding "
                           "tensors" % st.relax_src)
    if st.relax_method == "adaption_prompt" and not p.prompt:
        raise ConvertError("%s is adaption_prompt, but the checkpoint has no adaption_prompt "
                           "tensors" % st.relax_src)
    if st.router == "expert" and (p.enc or p.prompt):
        raise ConvertError("%s with an expert-choice router is not defined: the MoR code's expert-choice "
                           "transform replaces the attention of every block layer, which fails on %s"
                           % ("recursion encodings" if p.enc else "adaption prompts",
                              "an encoded layer" if p.enc else "a prompt-adapted attention"))
    if st.router == "token" and p.prompt:
        raise ConvertError("adaption prompts with a token-choice router are not defined: the MoR code "
                           "rotates the adapter's query by each token's index among the routed tokens, "
                           "not by its position")


def _plan_relax(plan, p, hp, st, L, mtype):
    """DoRA magnitudes, recursion encodings and adaption prompts: each belongs to one unrolled
    layer l and is written for its (s(l), r(l))."""
    ac_len = None
    n_dora = 0
    for l in sorted(p.lora):
        s, r = s_r(l, L, st.sharing, st.n_rec)
        for role in PROJ_ROLES:
            e = p.lora[l].get(role)
            if e and "M" in e:
                _check_shape(e["M"], (hp.role_shape(role)[0],), " (the DoRA magnitude of %s)" % e["module"])
                plan.tensors.append(OutTensor("blk.%d.rec.%d.%s.dora_m" % (s, r, role), e["M"], "F32"))
                n_dora += 1
    for l, t in sorted(p.enc.items()):
        s, r = s_r(l, L, st.sharing, st.n_rec)
        _check_shape(t, (hp.d,), " (a recursion encoding)")
        plan.tensors.append(OutTensor("blk.%d.rec.%d.rec_enc" % (s, r), t, "F32"))
    for l, pr in sorted(p.prompt.items()):
        s, r = s_r(l, L, st.sharing, st.n_rec)
        P, g = pr["P"], pr["g"]
        shp = tuple(P.shape)
        if len(shp) == 3 and shp[0] == 1:
            shp = shp[1:]
        if len(shp) != 2 or shp[1] != hp.d or shp[0] < 1:
            raise ConvertError("tensor %s has shape %s, expected [1, len, %d]" % (P.where(), fmt_shape(P.shape), hp.d))
        if ac_len is None:
            ac_len = shp[0]
        if st.prompt_len is not None and shp[0] != st.prompt_len:
            raise ConvertError("tensor %s holds %d prompt slots, but %s says %r"
                               % (P.where(), shp[0], st.relax_src, st.prompt_len))
        if tuple(g.shape) not in ((1,), ()):
            raise ConvertError("tensor %s has shape %s, expected [1]" % (g.where(), fmt_shape(g.shape)))
        plan.tensors.append(OutTensor("blk.%d.rec.%d.adapt_prompt" % (s, r), P, mtype(P), shape=shp))
        plan.tensors.append(OutTensor("blk.%d.rec.%d.adapt_gate" % (s, r), g, "F32", shape=(1,)))
    parts = []
    if n_dora:
        parts.append("DoRA magnitudes on %d projections" % n_dora)
    if p.enc:
        parts.append("recursion encodings on %d layers" % len(p.enc))
    if p.prompt:
        parts.append("adaption prompts of %d slots on %d layers" % (ac_len, len(p.prompt)))
    if parts:
        plan.report.append("relaxations: %s" % ", ".join(parts))


def _plan_routers(plan, p, hp, st, log):
    d, N = hp.d, st.n_rec
    arch = p.router_arch
    if arch is None:
        raise ConvertError("the %s-choice checkpoint has no router tensors (mor_router.router.*)" % p.kind)
    if st.router_arch is not None and st.router_arch != arch:
        raise ConvertError("%s says mor.router_type %s, but the router tensors are %s"
                           % (st.router_keys_src.get("router_arch", "the settings"), st.router_arch, arch))
    st.router_arch = arch
    want = {}
    if st.router == "expert":
        for pre in ("router", "router_aux") if p.has_aux else ("router",):
            for r in range(N):
                if arch == "linear":
                    want["%s.%d.weight" % (pre, r)] = (1, d)
                else:
                    want["%s.%d.fc1.weight" % (pre, r)] = (2 * d, d)
                    want["%s.%d.fc2.weight" % (pre, r)] = (1, 2 * d)
    else:
        if arch == "linear":
            want["router.weight"] = (N, d)
        else:
            want["router.fc1.weight"] = (2 * d, d)
            want["router.fc2.weight"] = (N, 2 * d)
        if "router.bias" in p.router:
            want["router.bias"] = (N,)
    for name, shape in want.items():
        t = p.router.get(name)
        if t is None:
            raise ConvertError("missing router tensor for %s (%s router, %d recursions)" % (name, arch, N))
        _check_shape(t, shape, "")
        plan.tensors.append(OutTensor(name, t, "F32"))
    extra = set(p.router) - set(want)
    if extra:
        raise ConvertError("unexpected router tensor %s" % p.router[sorted(extra)[0]].key)
    defaults = {"expert": ("sigmoid", 0.1), "token": ("softmax", 1.0)}[st.router]
    assumed = []
    if st.router_func is None:
        st.router_func = defaults[0]
        assumed.append("func %s" % defaults[0])
    if st.router_alpha is None:
        st.router_alpha = defaults[1]
        assumed.append("alpha %g" % defaults[1])
    if st.router_temp is None:
        st.router_temp = 1.0
    if st.router_gating is None:
        st.router_gating = "weighted"
    if assumed:
        log.warn("no training YAML or --router-* options: assuming the official defaults for a %s "
                 "router (%s, temp 1, weighted gating)" % (st.router, ", ".join(assumed)))
    funcs = {"expert": ("sigmoid", "tanh", "none"), "token": ("softmax", "sigmoid")}[st.router]
    if st.router_func not in funcs:
        raise ConvertError("router func %r is not valid for a %s router (%s)"
                           % (st.router_func, st.router, ", ".join(funcs)))
    if st.router_gating not in ("weighted", "additive"):
        raise ConvertError("router gating %r is not weighted or additive" % (st.router_gating,))
    for k in ("router_alpha", "router_temp"):
        v = getattr(st, k)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConvertError("router %s must be a number, found %r" % (k[7:], v))
    if not st.router_temp > 0:
        raise ConvertError("router temp must be positive, found %r" % st.router_temp)
    plan.report.append("router: %s-choice, %s, %s, alpha %g, temp %g, %s gating%s%s"
                       % (st.router, arch, st.router_func, st.router_alpha, st.router_temp,
                          st.router_gating, ", decision router (mlp_router)" if p.has_aux else "",
                          ", router bias" if "router.bias" in p.router else ""))


def _llama_keys(plan, hp, V, opts):
    a = "llama."
    plan.add_kv(a + "context_length", "UINT32", hp.ctx)
    plan.add_kv(a + "embedding_length", "UINT32", hp.d)
    plan.add_kv(a + "feed_forward_length", "UINT32", hp.d_ff)
    plan.add_kv(a + "block_count", "UINT32", hp.L)
    plan.add_kv(a + "attention.head_count", "UINT32", hp.n_h)
    plan.add_kv(a + "attention.head_count_kv", "UINT32", hp.n_kv)
    plan.add_kv(a + "attention.layer_norm_rms_epsilon", "FLOAT32", hp.eps)
    plan.add_kv(a + "rope.freq_base", "FLOAT32", hp.theta)
    plan.add_kv(a + "rope.dimension_count", "UINT32", hp.d_h)
    plan.add_kv(a + "vocab_size", "UINT32", V)


def _mor_keys(plan, hp, st, V, B, has_lora, opts):
    a = "mor."
    plan.add_kv(a + "format_version", "UINT32", 1)
    plan.add_kv(a + "context_length", "UINT32", hp.ctx)
    plan.add_kv(a + "embedding_length", "UINT32", hp.d)
    plan.add_kv(a + "feed_forward_length", "UINT32", hp.d_ff)
    plan.add_kv(a + "block_count", "UINT32", hp.L)
    plan.add_kv(a + "attention.head_count", "UINT32", hp.n_h)
    plan.add_kv(a + "attention.head_count_kv", "UINT32", hp.n_kv)
    plan.add_kv(a + "attention.key_length", "UINT32", hp.d_h)
    plan.add_kv(a + "attention.layer_norm_rms_epsilon", "FLOAT32", hp.eps)
    plan.add_kv(a + "rope.freq_base", "FLOAT32", hp.theta)
    plan.add_kv(a + "rope.type", "STRING", "neox")
    plan.add_kv(a + "recursion.count", "UINT32", st.n_rec)
    plan.add_kv(a + "recursion.sharing", "STRING", st.sharing)
    if st.kv_sharing:
        plan.add_kv(a + "kv_sharing", "BOOL", True)
        plan.report.append("KV sharing: on (%s)" % st.kv_src)
    if has_lora:
        plan.add_kv(a + "lora.scale", "FLOAT32", st.lora_scale)
    if st.router != "none":
        plan.add_kv(a + "router.type", "STRING", st.router)
        plan.add_kv(a + "router.arch", "STRING", st.router_arch)
        plan.add_kv(a + "router.func", "STRING", st.router_func)
        plan.add_kv(a + "router.alpha", "FLOAT32", float(st.router_alpha))
        plan.add_kv(a + "router.temp", "FLOAT32", float(st.router_temp))
        plan.add_kv(a + "router.gating", "STRING", st.router_gating)
