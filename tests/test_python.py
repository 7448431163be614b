#!/usr/bin/env python3
"""The Python bindings (python/mor.py, ctypes) against lib/libmor.so: loading and errors,
generation, parameters by name, and a router written in Python driving the depths."""
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))
import mor  # noqa: E402

DATA = os.environ.get("MOR_TEST_DATA", os.path.join(ROOT, "tests", "data"))


class Bindings(unittest.TestCase):
    def test_load_errors(self):
        with self.assertRaises(mor.Error) as cm:
            mor.Model("/nonexistent.gguf")
        self.assertIn("MOR_E_IO", str(cm.exception))
        self.assertIn("/nonexistent.gguf", str(cm.exception))

    def test_generate_stories(self):
        m = mor.Model(os.path.join(DATA, "stories260K.gguf"))
        s = m.session(n_ctx=128)
        text = s.generate("Once upon a time", 24)
        self.assertTrue(text.startswith(", there was a little girl"), text)
        with self.assertRaises(mor.Error) as cm:
            s.step([100000])
        self.assertIn("MOR_E_TOKEN", str(cm.exception))
        with self.assertRaises(mor.Error):
            m.session(n_ctx=-1)

    def test_python_router(self):
        m = mor.Model(os.path.join(DATA, "middle_cycle.gguf"))
        s = m.session(n_ctx=64)
        seen = []

        def router(step, positions, scores):
            seen.append(step)
            # depth = 1 + position mod 3
            return [step <= p % 3 for p in positions]

        s.set_router(router)
        s.step([5, 6, 7, 8, 9, 10, 11])
        for _ in range(5):
            s.step([s.sample()])
        for p in range(s.n_past()):
            depth, _, _ = s.token_info(p)
            self.assertEqual(depth, 1 + p % 3, "position %d" % p)
        self.assertIn(2, seen)

        def broken(step, positions, scores):
            raise ValueError("no")

        before = s.n_past()
        s.set_router(broken)
        with self.assertRaises(mor.Error) as cm:
            s.step([3])
        self.assertIn("MOR_E_CALLBACK", str(cm.exception))
        self.assertEqual(s.n_past(), before)
        s.set_router(None)
        s.step([3])
        self.assertEqual(s.depth(), 3)

    def test_policy_by_name(self):
        m = mor.Model(os.path.join(DATA, "middle_cycle.gguf"))
        s = m.session(n_ctx=64)
        s.set_exit_policy("fixed", depth=2)
        s.step([1, 2, 3])
        self.assertEqual(s.depth(), 2)
        with self.assertRaises(mor.Error) as cm:
            s.set_exit_policy("fixed", depth=9)
        self.assertIn("fixed depth 9", str(cm.exception))
        with self.assertRaises(mor.Error):
            s.set_exit_policy("full", no_such_field=1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
