"""The mor-convert command line. See docs/CONVERT.md."""

import argparse
import os
import sys
import time

from . import __version__, layout, vocab, writer, yamlmini
from .checkpoint import Checkpoint
from .common import ConvertError, Log

USAGE_EPILOG = """\
examples:
  mor-convert SmolLM-135M/ -o smollm.gguf                      vanilla Llama -> arch llama
  mor-convert ckpt/ --yaml conf/pretrain/run.yaml -o mor.gguf  MoR checkpoint -> arch mor
  mor-convert ckpt/ --sharing middle_cycle --recursions 3 --router-alpha 0.1 -o mor.gguf
settings come from (first wins): these options, the training YAML (--yaml), the MoR key
layout, config.json's kv_sharing; without any, sharing is inferred from identical weights.
"""


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="mor-convert", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a Hugging Face-style checkpoint (config.json + *.safetensors or "
                    "pytorch_model.bin) of a Llama, recursive, relaxed (LoRA, DoRA, recursion "
                    "encodings, adaption prompts) or Mixture-of-"
                    "Recursions model to a GGUF file for mor (arch llama or mor).",
        epilog=USAGE_EPILOG)
    ap.add_argument("input", help="checkpoint directory (or one weights file in it)")
    ap.add_argument("-o", "--outfile", help="output .gguf (default: INPUT/model-TYPE.gguf)")
    ap.add_argument("--type", default="auto", choices=("auto", "f32", "f16", "bf16"),
                    help="type of the weight matrices (norms and routers stay f32); auto keeps "
                         "each tensor's own type (default)")
    ap.add_argument("--arch", default="auto", choices=("auto", "llama", "mor"),
                    help="auto: mor for recursive/MoR/relaxed models, llama otherwise")
    ap.add_argument("--yaml", help="training config (Hydra conf/pretrain/*.yaml): recursive.*, "
                                   "mor.*, kv_sharing.*, relaxation.*")
    g = ap.add_argument_group("settings (override the YAML)")
    g.add_argument("--sharing", choices=layout.SHARINGS)
    g.add_argument("--recursions", type=int, metavar="N", help="number of recursions N_r")
    g.add_argument("--router", choices=("none", "expert", "token"))
    g.add_argument("--router-func", choices=("sigmoid", "tanh", "none", "softmax"))
    g.add_argument("--router-alpha", type=float, metavar="A")
    g.add_argument("--router-temp", type=float, metavar="T")
    g.add_argument("--router-gating", choices=("weighted", "additive"))
    kv = g.add_mutually_exclusive_group()
    kv.add_argument("--kv-sharing", dest="kv_sharing", action="store_true", default=None)
    kv.add_argument("--no-kv-sharing", dest="kv_sharing", action="store_false")
    g.add_argument("--lora-scale", type=float, metavar="S", help="LoRA scale sigma = alpha / r")
    i = ap.add_argument_group("inputs")
    i.add_argument("--weights", metavar="FILE", help="use this weights file instead of the default search")
    i.add_argument("--adapter", metavar="DIR", help="PEFT adapter directory (default: INPUT if it has adapter_config.json)")
    i.add_argument("--no-adapter", action="store_true", help="ignore adapter files in INPUT")
    v = ap.add_argument_group("vocabulary")
    v.add_argument("--pre", metavar="NAME", help="tokenizer.ggml.pre for byte-level BPE "
                                                 "(default: recognised from tokenizer.json, else gpt-2)")
    v.add_argument("--no-vocab", action="store_true", help="write no tokenizer keys")
    o = ap.add_argument_group("output")
    o.add_argument("--name", help="general.name (default: from config.json or the directory)")
    o.add_argument("--check", action="store_true", help="re-read the output and verify every key, "
                                                        "tensor shape, type and checksum")
    pg = o.add_mutually_exclusive_group()
    pg.add_argument("--progress", dest="progress", action="store_true", default=None,
                    help="progress bar on stderr (default: when stderr is a terminal)")
    pg.add_argument("--no-progress", dest="progress", action="store_false")
    o.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    o.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    ap.add_argument("--version", action="version", version="mor-convert " + __version__)
    return ap.parse_args(argv)


def run(a, log):
    t0 = time.time()
    ck = Checkpoint(a.input, weights=a.weights, adapter=a.adapter, use_adapter=not a.no_adapter)
    hp = layout.HParams(ck.config, log)
    st = layout.Settings()
    log.info("input %s: config.json (%s), %s%s" % (
        ck.dir, ", ".join(hp.arches) or "model_type llama", ", ".join(ck.files),
        (", adapter " + ", ".join(ck.adapter_files)) if ck.adapter_files else ""))
    if a.yaml:
        y = yamlmini.load(a.yaml, os.path.basename(a.yaml))
        layout.settings_from_yaml(st, y, os.path.basename(a.yaml), log)
    # command-line settings override the YAML
    if a.sharing or a.recursions is not None:
        if a.recursions is not None and a.recursions < 1:
            raise ConvertError("--recursions must be at least 1")
        sharing = a.sharing or st.sharing
        n_rec = a.recursions if a.recursions is not None else st.n_rec
        if sharing is None:
            raise ConvertError("--recursions needs --sharing (or a YAML with recursive.sharing)")
        if n_rec is None:
            raise ConvertError("--sharing needs --recursions (or a YAML with recursive.num_recursion)")
        st.sharing, st.n_rec, st.sharing_src = sharing, n_rec, "the command line"
    if a.router is not None:
        st.router, st.router_src = a.router, "--router"
    for opt, attr in (("router_func", "router_func"), ("router_alpha", "router_alpha"),
                      ("router_temp", "router_temp"), ("router_gating", "router_gating")):
        v = getattr(a, opt)
        if v is not None:
            setattr(st, attr, v)
            st.router_keys_src[attr] = "--" + opt.replace("_", "-")
    if a.kv_sharing is not None:
        st.kv_sharing, st.kv_src = a.kv_sharing, "the command line"
    if a.lora_scale is not None:
        if not a.lora_scale > 0:
            raise ConvertError("--lora-scale must be positive")
        st.lora_scale, st.lora_scale_src = a.lora_scale, "--lora-scale"
    layout.settings_from_config(st, hp, log)
    opts = {"arch": a.arch, "out_type": "auto" if a.type == "auto" else a.type.upper()}
    plan, parsed = layout.build_plan(ck, hp, st, opts, log)
    for line in plan.report:
        log.info(line)
    V = plan.tensors[0].dims[1]
    vkv, vdesc = ([], None) if a.no_vocab else vocab.vocab_kv(ck.dir, ck.config, V, a.pre, log)
    if vdesc:
        log.info("vocabulary: " + vdesc)
    name = a.name or os.path.basename(str(ck.config.get("_name_or_path") or "").rstrip("/")) \
        or os.path.basename(os.path.abspath(ck.dir))
    kv = [("general.architecture", "STRING", plan.arch), ("general.name", "STRING", name),
          ("general.file_type", "UINT32", layout.FILE_TYPE[plan.file_type])]
    kv += plan.kv + vkv
    total = sum(t.nbytes for t in plan.tensors)
    types = {}
    for t in plan.tensors:
        types[t.ttype] = types.get(t.ttype, 0) + 1
    out = a.outfile or os.path.join(ck.dir, "model-%s.gguf" % plan.file_type.lower())
    log.info("output %s: arch %s, %d keys, %d tensors (%s), %.2f MB of tensor data" % (
        out, plan.arch, len(kv), len(plan.tensors),
        ", ".join("%d %s" % (types[k], k) for k in sorted(types)), total / 1e6))
    if a.dry_run:
        for t in plan.tensors:
            log.info("  %-40s %-5s %-16s <- %s" % (t.name, t.ttype, t.dims, t.src.key))
        return 0
    if os.path.isdir(out):
        raise ConvertError("%s is a directory" % out)
    progress = writer.Progress(len(plan.tensors), total,
                               a.progress if a.progress is not None else sys.stderr.isatty())
    size, crcs = writer.write(out, kv, plan.tensors, progress)
    dt = max(time.time() - t0, 1e-9)
    log.info("wrote %s: %d bytes in %.1f s (%.1f MB/s)" % (out, size, dt, size / 1e6 / dt))
    if a.check:
        log.info(writer.verify(out, kv, plan.tensors, crcs))
    return 0


def main(argv=None):
    a = parse_args(sys.argv[1:] if argv is None else argv)
    log = Log(quiet=a.quiet)
    try:
        return run(a, log)
    except ConvertError as e:
        sys.stderr.write("mor-convert: error: %s\n" % e)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("mor-convert: interrupted\n")
        return 130
    except OSError as e:
        sys.stderr.write("mor-convert: error: %s%s\n" % (
            (e.filename + ": ") if getattr(e, "filename", None) else "", e.strerror or e))
        return 1
