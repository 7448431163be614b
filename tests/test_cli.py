#!/usr/bin/env python3
"""mor-run's command line: the common option names and meanings, the deprecated spellings and
their warnings, error messages and exit statuses, stop strings and reverse prompts, interactive
mode on piped stdin, and depth colors. Greedy runs, so the outputs are exact.

Runs build/mor-run (or $MOR_RUN) on tests/data/stories260K.gguf and the shipped default model;
skipped when mor-run is not built. Standard library only.
"""
import os
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOR_RUN = os.environ.get("MOR_RUN") or os.path.join(ROOT, "build", "mor-run")
STORIES = os.path.join(ROOT, "tests", "data", "stories260K.gguf")
DEFAULT = os.path.join(ROOT, "tests", "data", "models", "default.gguf")
PROMPT = "Once upon a time"
STORY30 = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day,\n"
ESC = "\033["


def run(*args, stdin=None):
    p = subprocess.run([MOR_RUN] + list(args), input=(stdin or "").encode(), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


@unittest.skipUnless(os.path.exists(MOR_RUN), "mor-run not built (run make)")
class Cli(unittest.TestCase):
    def ok(self, *args, stdin=None):
        rc, out, err = run(*args, stdin=stdin)
        self.assertEqual(rc, 0, err)
        return out, err

    def fails(self, rc_want, *args, stdin=None):
        rc, out, err = run(*args, stdin=stdin)
        self.assertEqual(rc, rc_want, "stdout %r stderr %r" % (out, err))
        return out, err

    def test_llama_cpp_options(self):
        out, err = self.ok("-m", STORIES, "-p", PROMPT, "-n", "30")
        self.assertEqual(out, STORY30)
        self.assertNotIn("warning", err)
        out2, _ = self.ok("--model", STORIES, "--prompt", PROMPT, "--n-predict", "30", "-t", "2", "-c", "64",
                          "--temp", "0", "--top-k", "40", "--top-p", "0.95", "--min-p", "0.05",
                          "--repeat-penalty", "1.0", "--seed", "42")
        self.assertEqual(out2, STORY30)  # 2 threads: the same greedy text
        out3, _ = self.ok("-m", STORIES, "-p", PROMPT, "-n", "30", "--threads", "3", "--ctx-size", "64")
        self.assertEqual(out3, STORY30)

    def test_sampling_is_seeded(self):
        args = ["-m", STORIES, "-p", PROMPT, "-n", "30", "--temp", "0.9", "--seed"]
        a, _ = self.ok(*args, "7")
        b, _ = self.ok(*args, "7")
        self.assertEqual(a, b)
        self.assertTrue(a.startswith(PROMPT))

    def test_help(self):
        out, _ = self.ok("-h")
        for opt in ("-m, --model", "-f, --file", "-t, --threads", "--ids-prompt", "-r, --reverse-prompt",
                    "--stop", "-i, --interactive", "--color", "exit status"):
            self.assertIn(opt, out)

    def test_deprecated_spellings_warn(self):
        out, err = self.ok(STORIES, "-p", PROMPT, "-n", "30", "-j", "2")
        self.assertEqual(out, STORY30)
        warnings = [l for l in err.splitlines() if "deprecated" in l]
        self.assertEqual(len(warnings), 2, err)
        self.assertIn("use -m MODEL", warnings[0])
        self.assertIn("use -t", warnings[1])
        out, err = self.ok("-m", STORIES, "-p", PROMPT, "-n", "30", "--no-stop")
        self.assertIn("use --ignore-eos", err)

    def test_ids_prompt(self):
        out, _ = self.ok("-m", DEFAULT, "--ids-prompt", "1 403 407", "-n", "8", "--ids")
        self.assertEqual(out, "263 824 3846 927 403 398 318 407 \n")

    def test_bad_threads_names_the_new_option(self):
        _, err = self.fails(2, "-m", DEFAULT, "-t", "1 403 407", "-n", "8")
        self.assertIn("-t takes a thread count", err)
        self.assertIn("--ids-prompt", err)
        _, err = self.fails(2, "-m", DEFAULT, "-t", "0")
        self.assertIn("thread count", err)

    def test_missing_model(self):
        _, err = self.fails(2, "-p", PROMPT)
        self.assertIn("-m MODEL", err)
        self.fails(2, "-m", DEFAULT, "--bogus")
        self.fails(2, "-m", DEFAULT, "--stop", "")
        self.fails(1, "-m", "/nonexistent/model.gguf")

    def test_prompt_file(self):
        with tempfile.TemporaryDirectory() as d:
            f = os.path.join(d, "prompt.txt")
            with open(f, "w") as fh:
                fh.write(PROMPT + "\n")  # one trailing newline is dropped
            out, _ = self.ok("-m", STORIES, "-f", f, "-n", "30")
            self.assertEqual(out, STORY30)
            missing = os.path.join(d, "missing.txt")
            _, err = self.fails(1, "-m", STORIES, "-f", missing)
            self.assertIn(missing, err)
            _, err = self.fails(1, "-m", STORIES, "-f", d)  # a directory cannot be read
            self.assertIn(d, err)
        out, _ = self.ok("-m", STORIES, "-f", "-", "-n", "30", stdin=PROMPT)
        self.assertEqual(out, STORY30)
        self.fails(2, "-m", STORIES, "-f", "-", "-i")

    def test_escapes(self):
        out, _ = self.ok("-m", STORIES, "-p", "Hi\\nthere", "-n", "0")
        self.assertEqual(out, "Hi\nthere\n")

    def test_full_context_fails_with_right_counts(self):
        out, err = self.fails(1, "-m", DEFAULT, "-p", PROMPT, "-n", "20", "-c", "8")
        self.assertEqual(out, "Once upon a time, there was a\n")  # 4 prompt + 4 generated tokens
        self.assertIn("the context is full: 8 of its 8 tokens", err)
        self.assertIn("raise it with -c N (the model was trained on 512)", err)
        self.assertIn("generated 4 tokens", err)
        self.assertIn("mean depth 3.00 of 3", err)
        _, err = self.fails(1, "-m", DEFAULT, "-p", PROMPT, "-c", "2")  # the prompt does not fit
        self.assertIn("4 more do not fit", err)
        # -n -1: until the context is full, which is then no error
        out, err = self.ok("-m", DEFAULT, "-p", PROMPT, "-n", "-1", "-c", "8")
        self.assertEqual(out, "Once upon a time, there was a\n")
        self.assertIn("stopped at the end of the context (8 tokens)", err)

    def test_stop_strings(self):
        base = ["-m", STORIES, "-p", PROMPT, "-n", "30"]
        out, _ = self.ok(*base, "--stop", "day,")
        self.assertEqual(out, STORY30[:STORY30.index("day,")] + "\n")
        out, _ = self.ok(*base, "-r", "day,")
        self.assertEqual(out, STORY30)  # a reverse prompt is printed
        out, _ = self.ok(*base, "-r", "Lily")
        self.assertEqual(out, "Once upon a time, there was a little girl named Lily\n")
        # a stop string that spans tokens: "Li|ly|." in stories260K's vocabulary
        out, _ = self.ok(*base, "--stop", "ly. Sh")
        self.assertEqual(out, "Once upon a time, there was a little girl named Li\n")
        out, _ = self.ok(*base, "--stop", "nothing like this", "--stop", "park", "--stop", "girl")
        self.assertEqual(out, "Once upon a time, there was a little \n")  # the earliest one
        out, _ = self.ok(*base, "--stop", "One day,!")  # a prefix that never completes is printed
        self.assertEqual(out, STORY30)

    def test_interactive(self):
        out, err = self.ok("-m", STORIES, "-p", PROMPT, "-n", "10", "-i",
                           stdin="Then a dragon came.\n\n")
        # three turns: the prompt's, the typed line's (echoed, since it is piped), the empty
        # line's (generate on); then end of input
        self.assertEqual(out, "Once upon a time, there was a little girl named LilyThen a dragon came.\n"
                              "One day, Lily's mommy told her that they were going\n")
        self.assertIn("generated 30 tokens", err)
        self.assertIn("plain continuation", self.ok("-h")[0].lower())
        # a reverse prompt hands the turn back early
        out, _ = self.ok("-m", STORIES, "-p", PROMPT, "-n", "30", "-i", "-r", "Lily", stdin="Tom\n")
        self.assertTrue(out.startswith("Once upon a time, there was a little girl named LilyTom\n"), out)
        self.assertEqual(out.count("Lily"), 2, out)
        out, _ = self.ok("-m", STORIES, "-p", PROMPT, "-n", "5", "-i", stdin="")  # EOF at once
        self.assertEqual(out, "Once upon a time, there was a little\n")

    def test_color(self):
        base = ["-m", DEFAULT, "-p", PROMPT, "-n", "12", "--policy", "confidence", "--threshold", "0.4"]
        plain, err = self.ok(*base)
        self.assertNotIn(ESC, plain + err)
        out, err = self.ok(*base, "--color")  # auto: stdout is a pipe here
        self.assertEqual(out, plain)
        self.assertNotIn(ESC, err)
        out, err = self.ok(*base, "--color=always")
        self.assertIn("colors show the depth each token ran, of 3 steps", err)
        self.assertTrue(out.startswith(PROMPT + ESC), out)  # the prompt is not colored
        self.assertTrue(out.endswith(ESC + "0m\n"), out)
        for code in ("34m", "32m", "31m"):  # depths 1, 2 and 3 all occur under this policy
            self.assertIn(ESC + code, out)
        stripped = out
        for code in ("34m", "36m", "32m", "33m", "31m", "0m"):
            stripped = stripped.replace(ESC + code, "")
        self.assertEqual(stripped, plain)
        out, _ = self.ok(*base, "--color=never")
        self.assertEqual(out, plain)


if __name__ == "__main__":
    unittest.main()
