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
    del torch


if __name__ == "__main__":
    main()
