#!/usr/bin/env python3
"""The Python bindings (python/mor.py, ctypes) against lib/libmor.so: loading and errors,
generation, parameters by name, a router written in Python driving the depths, and the
scheduler (many sessions at once) giving each session the tokens it gets alone."""
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

    def test_abort_and_resume(self):
        m = mor.Model(os.path.join(DATA, "stories260K.gguf"))
        prompt = [1] + [260 + (i * 37) % 240 for i in range(1, 40)]
        ref = m.session(n_ctx=128, n_batch=8)
        ref.step(prompt)
        want = ref.logits()
        s = m.session(n_ctx=128, n_batch=8)
        calls = []

        def stop_after_first_chunk(n_done, n_total, layer, n_layer):
            calls.append((n_done, n_total, layer, n_layer))
            return n_done >= 8
        s.set_abort(stop_after_first_chunk)
        with self.assertRaises(mor.Error) as cm:
            s.step(prompt)
        self.assertEqual(cm.exception.status, mor.E_CANCELLED)
        self.assertEqual(s.n_past(), 8)
        self.assertEqual(calls[-1], (8, 40, 0, 5))
        s.set_abort(None)
        s.step(prompt[8:])
        self.assertEqual(s.logits(), want)  # bit-identical floats

        def broken(*args):
            raise KeyError("stop")
        s.reset()
        s.set_abort(broken)
        with self.assertRaises(mor.Error) as cm:
            s.step(prompt)
        self.assertEqual(cm.exception.status, mor.E_CANCELLED)
        self.assertIsInstance(cm.exception.__cause__, KeyError)
        self.assertEqual(s.n_past(), 0)

    def test_constrained_sampling(self):
        m = mor.Model(os.path.join(DATA, "stories260K.gguf"))
        s = m.session(n_ctx=128)
        s.step(m.tokenize("Once upon a time"))
        allowed = [300, 301, 450]
        s.set_allowed_tokens(allowed)
        s.set_sampler(temperature=4.0, top_k=0, top_p=1.0, min_p=0.0)
        for _ in range(50):
            self.assertIn(s.sample(), allowed)
        s.set_sampler()
        best = s.sample()
        s.set_logit_bias({best: float("-inf")})
        self.assertIn(s.sample(), [t for t in allowed if t != best])
        s.set_logit_bias(None)
        s.set_allowed_tokens(None)
        l = s.logits()
        self.assertEqual(s.sample(), max(range(len(l)), key=lambda i: (l[i], -i)))
        with self.assertRaises(mor.Error) as cm:
            s.set_allowed_tokens([5, 512])
        self.assertIn("MOR_E_TOKEN", str(cm.exception))
        self.assertIn("token 512", str(cm.exception))
        with self.assertRaises(mor.Error) as cm:
            s.set_allowed_tokens([])
        self.assertIn("MOR_E_INVALID", str(cm.exception))
        with self.assertRaises(mor.Error):
            s.set_logit_bias({3: float("nan")})

    def test_stop_matcher(self):
        sm = mor.StopMatcher(["END", "\n\n"])
        self.assertEqual(sm.push("abc E"), (b"abc ", -1))
        self.assertEqual(sm.push("N"), (b"", -1))
        self.assertEqual(sm.push("D more"), (b"", 0))
        sm.reset()
        self.assertEqual(sm.push("xyzE"), (b"xyz", -1))
        self.assertEqual(sm.flush(), b"E")
        with self.assertRaises(mor.Error):
            mor.StopMatcher([""])
        sm.close()

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


    def test_scheduler(self):
        m = mor.Model(os.path.join(DATA, "stories260K.gguf"))
        prompts = ["Once upon a time", "The cat sat", "Lily and Ben went to the park"]
        want = []
        for p in prompts:
            s = m.session(n_ctx=64)
            s.step(m.tokenize(p))
            toks = []
            for _ in range(12):
                toks.append(s.sample())
                s.step([toks[-1]])
            want.append(toks)
        means = {}
        for mode in ("continuous", "static", "sequential"):
            sched = mor.Scheduler(m, max_batch=16, mode=mode)
            sessions = [m.session(n_ctx=64, n_batch=8) for _ in prompts]
            for s, p in zip(sessions, prompts):
                sched.submit(s, m.tokenize(p), 12)
            got = {id(s): [] for s in sessions}
            ended = set()
            for s, tok, st in sched.run():
                self.assertEqual(st, 0)
                if tok >= 0:
                    got[id(s)].append(tok)
                else:
                    ended.add(id(s))
            self.assertEqual(len(ended), len(prompts), mode)
            for s, w in zip(sessions, want):
                self.assertEqual(got[id(s)], w, mode)
            c = sched.stats()
            self.assertEqual(c["tokens"], 12 * len(prompts))
            self.assertGreater(c["rounds"], 0)
            means[mode] = c["layer_rows"] / c["layer_runs"]
            sched.close()
        # Batched modes share layers between sessions; sequential runs one session's rows.
        self.assertGreater(means["continuous"], means["sequential"])
        self.assertGreater(means["static"], means["sequential"])

    def test_scheduler_errors(self):
        m = mor.Model(os.path.join(DATA, "middle_cycle.gguf"))
        with self.assertRaises(mor.Error) as cm:
            mor.Scheduler(m, max_batch=0)
        self.assertIn("max_batch", str(cm.exception))
        with self.assertRaises(mor.Error):
            mor.Scheduler(m, no_such_field=1)
        sched = mor.Scheduler(m, kv_budget=1 << 40, prompt_chunk=4)
        good, bad = m.session(n_ctx=64), m.session(n_ctx=64)
        with self.assertRaises(mor.Error) as cm:
            sched.submit(good, [100000], 1)
        self.assertIn("MOR_E_TOKEN", str(cm.exception))

        def broken(step, positions, scores):
            raise ValueError("no")

        bad.set_router(broken)
        sched.submit(good, [1, 2, 3], 8)
        sched.submit(bad, [1, 2, 3], 8)
        n_good, bad_status = 0, 0
        for s, tok, st in sched.run():
            if s is good and tok >= 0:
                n_good += 1
            if s is bad and tok < 0:
                bad_status = st
        self.assertEqual(n_good, 8)
        self.assertLess(bad_status, 0)
        self.assertIn("router callback", bad.last_error())
        sched.remove(bad)
        with self.assertRaises(mor.Error):
            sched.remove(bad)  # not in it any more

    def test_lifetimes(self):
        # A model closed while a session of it is open stays alive for the session.
        m = mor.Model(os.path.join(DATA, "stories260K.gguf"))
        s = m.session(n_ctx=64)
        m.close()
        with self.assertRaises(ValueError):
            m.tokenize("closed")
        with self.assertRaises(ValueError):
            m.session()
        s.step([1, 403])
        self.assertIsNotNone(s.logits())
        self.assertTrue(m.h)  # still loaded: the session uses it
        s.close()
        self.assertFalse(m.h)  # freed with its last session
        with self.assertRaises(ValueError):
            s.step([1])
        s.close()  # twice is fine
        with mor.Model(os.path.join(DATA, "stories260K.gguf")) as m2:
            with m2.session(n_ctx=32) as s2:
                s2.step([1])
        self.assertFalse(m2.h)

    def test_callback_reentry(self):
        m = mor.Model(os.path.join(DATA, "middle_cycle.gguf"))
        s = m.session(n_ctx=64)
        inner = []

        def steps_again(step, positions, scores):
            if not inner:
                try:
                    s.step([1])
                except mor.Error as e:
                    inner.append(e.status)
            return [True] * len(positions)

        s.set_router(steps_again)
        s.step([5, 6, 7])
        self.assertEqual(inner, [-15])  # MOR_E_BUSY
        self.assertEqual(s.n_past(), 3)

        def closes(step, positions, scores):
            s.close()
            return [True] * len(positions)

        s.set_router(closes)
        with self.assertRaises(mor.Error) as cm:
            s.step([8])
        self.assertEqual(cm.exception.status, -12)  # MOR_E_CANCELLED: freed as the step returned
        with self.assertRaises(ValueError):
            s.n_past()

        def fails(step, positions, scores):
            raise KeyError("mine")

        s = m.session(n_ctx=64)
        s.set_router(fails)
        with self.assertRaises(mor.Error) as cm:
            s.step([8])
        self.assertIsInstance(cm.exception.__cause__, KeyError)

        # A scheduler closed by a callback of its own round.
        sched = mor.Scheduler(m)
        a = m.session(n_ctx=64)

        def closes_sched(step, positions, scores):
            sched.close()
            return [True] * len(positions)

        a.set_router(closes_sched)
        sched.submit(a, [1, 2], 2)
        for _ in range(4):
            if not sched.h:
                break
            sched.step()
        self.assertFalse(sched.h)
        a.set_router(None)
        a.step([3])  # the session outlives its scheduler

    def test_bad_arguments(self):
        m = mor.Model(os.path.join(DATA, "stories260K.gguf"))
        s = m.session(n_ctx=64)
        for bad in ([2 ** 40], [-(2 ** 31) - 1], [2 ** 31]):
            with self.assertRaises(ValueError):
                s.step(bad)
        with self.assertRaises(TypeError):
            s.step([1.5])
        self.assertEqual(s.n_past(), 0)  # nothing was stepped
        with self.assertRaises(ValueError):
            m.detokenize([2 ** 40])
        with self.assertRaises(ValueError):
            mor.Model(os.path.join(DATA, "stories260K.gguf") + "\0junk")
        sched = mor.Scheduler(m)
        with self.assertRaises(ValueError):
            sched.submit(s, [2 ** 33], 1)
        with self.assertRaises(ValueError):
            sched.submit(s, [1], 2 ** 40)


if __name__ == "__main__":
    unittest.main(verbosity=2)
