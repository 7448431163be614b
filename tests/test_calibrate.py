#!/usr/bin/env python3
"""Tests of tools/mor-calibrate (build/mor-calibrate, or $MOR_BUILD_DIR/mor-calibrate):

* on the shipped default model and tests/data/timemachine-5k.txt: exit status 0, a threshold
  chosen whose printed empirical risk is within the tolerance, the table in fixed-sequence
  order (every row before the choice rejected, at most one row after it);
* the written GGUF keeps every key and tensor of the input byte for byte, adds the
  mor.policy.* keys, loads, and its sessions start with the chosen policy (the same depths and
  logits as the input model with that policy set by hand, through python/mor.py);
* --policy-file writes the same policy as field=value lines; -o onto the input is refused;
  a tolerance nothing meets exits 1 with advice;
* the Hoeffding-Bentkus p-value (--pvalue) against an independent computation with Python's
  math module (exact binomial sums with math.comb).
Without the built tool every test is skipped (run `make` first)."""
import math
import os
import re
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("MOR_BUILD_DIR") or os.path.join(ROOT, "build")
TOOL = os.path.join(BUILD, "mor-calibrate")
DATA = os.path.join(ROOT, "tests", "data")
MODEL = os.path.join(DATA, "models", "default.gguf")
TEXT = os.path.join(DATA, "timemachine-5k.txt")
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "python"))
import morgguf  # noqa: E402

TOL = 0.3
# Small and quick: 1024 tokens in windows of 32 (32 windows), four candidates.
ARGS = ["--tolerance", str(TOL), "--ctx", "32", "--tokens", "1024", "--thresholds", "0.9,0.7,0.5,0.3"]


def hb_pvalue(rhat, n, t):
    """min(exp(-n h(min(rhat, t), t)), e * P(Binom(n, t) <= ceil(n rhat))), exactly summed."""
    a = min(rhat, t)
    h = (a * math.log(a / t) if a > 0 else 0.0) + ((1 - a) * math.log((1 - a) / (1 - t)) if a < 1 else 0.0)
    k = math.ceil(n * rhat - 1e-9)
    cdf = sum(math.comb(n, i) * t ** i * (1 - t) ** (n - i) for i in range(0, min(k, n) + 1))
    return min(1.0, math.exp(-n * h), math.e * cdf)


@unittest.skipUnless(os.path.exists(TOOL), "build/mor-calibrate not built (run make)")
class Calibrate(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = os.path.join(cls.tmp.name, "calibrated.gguf")
        cls.res = subprocess.run([TOOL, MODEL, TEXT] + ARGS + ["-o", cls.out, "--check", TEXT],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def chosen(self):
        m = re.search(r"^chosen: --policy (\w+) --threshold ([0-9.e-]+) --min-depth (\d+) "
                      r"\(empirical disagree risk ([0-9.]+)", self.res.stdout, re.M)
        self.assertIsNotNone(m, self.res.stdout)
        return m.group(1), float(m.group(2)), int(m.group(3)), float(m.group(4))

    def test_choice_and_table(self):
        self.assertEqual(self.res.returncode, 0, self.res.stdout + self.res.stderr)
        pol, th, md, risk = self.chosen()
        self.assertEqual((pol, md), ("confidence", 1))
        self.assertLessEqual(risk, TOL)
        n = int(re.search(r"(\d+) windows of 32 tokens", self.res.stdout).group(1))
        self.assertEqual(n, 32)  # 1024 tokens in windows of 32
        table = [r for r in re.findall(r"^(0\.\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(yes|no)$", self.res.stdout, re.M)]
        self.assertGreater(len(table), 0)
        ths = [float(r[0]) for r in table]
        self.assertEqual(ths, [0.9, 0.7, 0.5, 0.3][:len(ths)])
        rejected = [r[5] == "yes" for r in table]
        # fixed-sequence: rejections, then at most one non-rejection that stops the sequence
        self.assertTrue(all(rejected[:-1]))
        last_yes = max(i for i, r in enumerate(rejected) if r)
        self.assertEqual(float(table[last_yes][0]), th)
        self.assertAlmostEqual(float(table[last_yes][3]), risk, places=4)
        for r in table:  # printed p-values agree with the formula on the printed risks
            self.assertAlmostEqual(float(r[4]), hb_pvalue(float(r[3]), n, TOL), delta=2e-3 + 1e-3 * float(r[4]))
            self.assertEqual(r[5] == "yes", float(r[4]) <= 0.1)
        self.assertIn("check: ", self.res.stdout)

    def test_written_model(self):
        self.assertEqual(self.res.returncode, 0, self.res.stderr)
        pol, th, md, _ = self.chosen()
        a, b = morgguf.GGUFReader(MODEL), morgguf.GGUFReader(self.out)
        for k, f in a.fields.items():
            if not k.startswith("mor.policy."):
                self.assertIn(k, b.fields)
                self.assertEqual(b.fields[k].vtype, f.vtype, k)
                self.assertEqual(b.get(k), a.get(k), k)
        self.assertEqual(a.tensor_names(), b.tensor_names())
        for n in a.tensor_names():
            self.assertEqual(a.tensor_bytes(n), b.tensor_bytes(n), n)
        self.assertEqual(b.get("mor.policy.policy"), 4)
        self.assertAlmostEqual(b.get("mor.policy.threshold"), th, places=6)
        self.assertEqual(b.get("mor.policy.min_depth"), md)
        self.assertEqual(b.get("mor.policy.metric"), 0)
        if not os.environ.get("MOR_LIB"):
            self.skipTest("MOR_LIB not set: the session check needs lib/libmor.so (make test sets it)")
        import mor
        prompt = "The Time Traveller (for so it will be convenient to speak of him) was expounding"
        m1, m0 = mor.Model(self.out), mor.Model(MODEL)
        s1, s0 = m1.session(n_ctx=64), m0.session(n_ctx=64)
        s0.set_exit_policy("confidence", threshold=th, min_depth=md)
        toks = m0.tokenize(prompt)
        s1.step(toks)
        s0.step(toks)
        depths = []
        for i in range(len(toks)):
            d1, _, _ = s1.token_info(i)
            d0, _, _ = s0.token_info(i)
            self.assertEqual(d1, d0)
            depths.append(d1)
        self.assertLess(min(depths), 3, depths)  # the policy does exit some tokens early
        self.assertEqual(list(s1.logits()), list(s0.logits()))
        s1.close(), s0.close(), m1.close(), m0.close()

    def test_policy_file_and_refusals(self):
        with tempfile.TemporaryDirectory() as d:
            pf = os.path.join(d, "policy.txt")
            quick = ARGS[:-1] + ["0.9"]  # one candidate: the same procedure, half the time
            r = subprocess.run([TOOL, MODEL, TEXT] + quick + ["--policy-file", pf], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(pf) as f:
                lines = dict(l.split("=") for l in f.read().split())
            self.assertEqual(lines["policy"], "4")
            self.assertEqual(lines["min_depth"], "1")
            th = float(re.search(r"--threshold ([0-9.]+)", r.stdout).group(1))
            self.assertAlmostEqual(float(lines["threshold"]), th, places=6)
        r = subprocess.run([TOOL, MODEL, TEXT] + ARGS + ["-o", MODEL], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("refusing to overwrite", r.stderr)
        r = subprocess.run([TOOL, MODEL, TEXT, "--tolerance", "0.001", "--ctx", "32", "--tokens", "256",
                            "--thresholds", "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("larger --tolerance", r.stderr)
        r = subprocess.run([TOOL, MODEL, TEXT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("--tolerance", r.stderr)

    def test_pvalue(self):
        cases = [(0.0, 33, 0.3), (0.05, 100, 0.1), (0.1, 100, 0.1), (0.02, 1000, 0.05), (0.3, 50, 0.2),
                 (0.01, 5000, 0.02), (0.0, 1, 0.5), (0.123, 400, 0.15), (0.5, 10, 0.9)]
        for rhat, n, t in cases:
            out = subprocess.run([TOOL, "--pvalue", str(n), repr(rhat), repr(t)], stdout=subprocess.PIPE,
                                 universal_newlines=True, check=True).stdout
            got, want = float(out), hb_pvalue(rhat, n, t)
            self.assertTrue(0 <= got <= 1)
            if want > 1e-300:
                self.assertAlmostEqual(got / want, 1.0, delta=1e-9, msg=(rhat, n, t, got, want))
            else:
                self.assertLess(got, 1e-290)


if __name__ == "__main__":
    unittest.main()
