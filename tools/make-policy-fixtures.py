#!/usr/bin/env python3
"""Golden fixtures for depth policies, from the PyTorch reference (tools/reference.py).

For each (model, depth) pair: the reference run with every token capped at `depth`
recursions (max_depth), written as tests/data/<model>-depth<k>.fix with a `policy fixed <k>`
line that tests/test-model.c applies (MOR_EXIT_FIXED). This is what "fixed depth k equals the
reference model cut at k" is checked against.

    python3 tools/make-policy-fixtures.py --data tests/data
"""
import argparse
import importlib.util
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as ref  # noqa: E402

spec = importlib.util.spec_from_file_location("mkfix", os.path.join(HERE, "make-fixtures.py"))
mkfix = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mkfix)

CASES = [("middle_cycle", 1), ("middle_cycle", 2), ("cycle", 1), ("middle_cycle-kvshare", 2),
         ("expert", 2), ("token", 1), ("middle_sequence", 2)]

# Recursive KV sharing forced on models trained without it (the engine's MOR_KV_SHARE policy):
# (file under the data folder, its fixture for the prompt, output fixture).
KV_SHARE_CASES = [("middle_cycle.gguf", "middle_cycle.fix", "middle_cycle-kvforced.fix"),
                  ("models/mor-expert.gguf", "models/mor-expert.fix", "models/mor-expert-kvshare.fix")]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "..", "tests", "data"))
    ap.add_argument("--steps", type=int, default=32)
    a = ap.parse_args(argv)
    import torch
    for name, k in CASES:
        model = ref.Model.load(os.path.join(a.data, name + ".gguf"))
        prompt = mkfix.prompt_ids()
        res0, ids, depths, margins, _ = ref.greedy(model, prompt, a.steps, max_depth=k)
        if min(margins) < 1e-3:
            print("warning: %s depth %d: greedy margin %.2g" % (name, k, min(margins)))
        logits = [[float(x) for x in row] for row in res0.logits]
        out = os.path.join(a.data, "%s-depth%d.fix" % (name, k))
        mkfix.write_fixture(out, name + ".gguf", prompt, logits, ids, depths)
        with open(out) as f:
            body = f.read()
        body = body.replace("\nend\n", "\npolicy fixed %d\nend\n" % k)
        with open(out, "w") as f:
            f.write(body)
        print("%s: depth %d, greedy %s... min margin %.3g" % (out, k, ids[:8], min(margins)))
    for gguf, src_fix, out_fix in KV_SHARE_CASES:
        path = os.path.join(a.data, gguf)
        if not os.path.exists(path):
            continue
        model = ref.Model.load(path)
        model.cfg.kv_sharing = True
        prompt = mkfix.read_fixture(os.path.join(a.data, src_fix))["prompt"]
        res0, ids, depths, margins, _ = ref.greedy(model, prompt, a.steps)
        logits = [[float(x) for x in row] for row in res0.logits]
        out = os.path.join(a.data, out_fix)
        mkfix.write_fixture(out, os.path.basename(gguf), prompt, logits, ids,
                            depths if model.cfg.router_type != "none" else None)
        with open(out) as f:
            body = f.read()
        with open(out, "w") as f:
            f.write(body.replace("\nend\n", "\npolicy kv share\nend\n"))
        print("%s: KV sharing forced, greedy %s... min margin %.3g" % (out, ids[:8], min(margins)))
    del torch


if __name__ == "__main__":
    main()
