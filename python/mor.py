"""mor: Python bindings over ctypes for libmor (adaptive-depth inference).

No struct is mirrored: parameter blocks are allocated with mor_params_size() and set by
field name, so the bindings keep working when the library appends fields.

    import mor
    model = mor.Model("tests/data/stories260K.gguf")
    sess = model.session(n_ctx=256)
    print(sess.generate("Once upon a time", 32))

The library is found through $MOR_LIB, then ../lib/libmor.so next to this file, then the
system loader path.
"""
import ctypes as C
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load():
    cands = [os.environ.get("MOR_LIB"), os.path.join(_HERE, "..", "lib", "libmor.so"), "libmor.so.0"]
    errs = []
    for c in cands:
        if not c:
            continue
        try:
            return C.CDLL(c)
        except OSError as e:
            errs.append("%s: %s" % (c, e))
    raise OSError("libmor not found: " + "; ".join(errs))


lib = _load()

PARAMS_MODEL, PARAMS_SESSION, PARAMS_SAMPLER, PARAMS_EXIT, PARAMS_SCHED = 1, 2, 3, 4, 5
SCHED = {"continuous": 0, "static": 1, "sequential": 2}
EXIT = {"full": 0, "fixed": 1, "router": 2, "capacity": 3, "confidence": 4, "saturation": 5,
        "free": 6, "custom": 7}
KV = {"auto": 0, "skip": 1, "share": 2, "propagate": 3, "sync": 4}
INFO_N_VOCAB, INFO_N_RECURSION, INFO_N_STEPS = 0, 8, 21

ROUTE_FN = C.CFUNCTYPE(C.c_int32, C.c_void_p, C.c_void_p, C.POINTER(C.c_uint8))
# mor_abort_fn(user, n_done, n_total, layer, n_layer)
ABORT_FN = C.CFUNCTYPE(C.c_int32, C.c_void_p, C.c_int32, C.c_int32, C.c_int32, C.c_int32)


class RouteBatch(C.Structure):
    """mor_route_batch: read-only view handed to a Python router. Only the fields that exist in
    every version of the structure are declared (the library appends, never reorders)."""
    _fields_ = [("size", C.c_uint32), ("step", C.c_int32), ("n_steps", C.c_int32),
                ("n_tokens", C.c_int32), ("n_embd", C.c_int32),
                ("positions", C.POINTER(C.c_int32)), ("hidden", C.POINTER(C.c_float)),
                ("router_score", C.POINTER(C.c_float)), ("confidence", C.POINTER(C.c_float))]


def _sig(name, res, *args):
    f = getattr(lib, name)
    f.restype = res
    f.argtypes = list(args)
    return f


_sig("mor_version", C.c_char_p)
_sig("mor_status_name", C.c_char_p, C.c_int)
_sig("mor_params_size", C.c_size_t, C.c_uint32)
_sig("mor_params_init", C.c_int, C.c_void_p, C.c_uint32)
_sig("mor_params_set", C.c_int, C.c_void_p, C.c_char_p, C.c_double)
_sig("mor_model_load", C.c_int, C.c_char_p, C.c_void_p, C.POINTER(C.c_void_p), C.c_char_p, C.c_size_t)
_sig("mor_model_free", None, C.c_void_p)
_sig("mor_model_get_int", C.c_int64, C.c_void_p, C.c_int32)
_sig("mor_session_create", C.c_int, C.c_void_p, C.c_void_p, C.POINTER(C.c_void_p), C.c_char_p, C.c_size_t)
_sig("mor_session_free", None, C.c_void_p)
_sig("mor_session_last_error", C.c_char_p, C.c_void_p)
_sig("mor_session_step", C.c_int, C.c_void_p, C.POINTER(C.c_int32), C.c_int32)
_sig("mor_session_logits", C.POINTER(C.c_float), C.c_void_p, C.c_int32)
_sig("mor_session_depth", C.c_int32, C.c_void_p, C.c_int32)
_sig("mor_session_n_past", C.c_int32, C.c_void_p)
_sig("mor_session_sample", C.c_int, C.c_void_p, C.POINTER(C.c_int32))
_sig("mor_session_reset", None, C.c_void_p)
_sig("mor_session_set_sampler", C.c_int, C.c_void_p, C.c_void_p)
_sig("mor_session_set_exit_policy", C.c_int, C.c_void_p, C.c_void_p)
_sig("mor_session_set_router_fn", C.c_int, C.c_void_p, ROUTE_FN, C.c_void_p, C.c_int32)
_sig("mor_session_set_abort", C.c_int, C.c_void_p, ABORT_FN, C.c_void_p)
_sig("mor_session_set_logit_bias", C.c_int, C.c_void_p, C.POINTER(C.c_int32), C.POINTER(C.c_float), C.c_int32)
_sig("mor_session_set_allowed_tokens", C.c_int, C.c_void_p, C.POINTER(C.c_int32), C.c_int32)
_sig("mor_stop_create", C.c_int, C.POINTER(C.c_char_p), C.c_int32, C.c_void_p, C.POINTER(C.c_void_p))
_sig("mor_stop_push", C.c_int, C.c_void_p, C.c_char_p, C.c_size_t, C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t),
     C.POINTER(C.c_int32))
_sig("mor_stop_flush", C.c_int, C.c_void_p, C.c_char_p, C.c_size_t, C.POINTER(C.c_size_t))
_sig("mor_stop_reset", None, C.c_void_p)
_sig("mor_stop_free", None, C.c_void_p)
_sig("mor_session_token_info", C.c_int, C.c_void_p, C.c_int32, C.POINTER(C.c_int32), C.POINTER(C.c_float),
     C.POINTER(C.c_int32))
_sig("mor_sched_create", C.c_int, C.c_void_p, C.c_void_p, C.POINTER(C.c_void_p), C.c_char_p, C.c_size_t)
_sig("mor_sched_free", None, C.c_void_p)
_sig("mor_sched_add", C.c_int, C.c_void_p, C.c_void_p)
_sig("mor_sched_remove", C.c_int, C.c_void_p, C.c_void_p)
_sig("mor_sched_submit", C.c_int, C.c_void_p, C.c_void_p, C.POINTER(C.c_int32), C.c_int32, C.c_int32)
_sig("mor_sched_cancel", C.c_int, C.c_void_p, C.c_void_p)
_sig("mor_sched_step", C.c_int, C.c_void_p)
_sig("mor_sched_pending", C.c_int32, C.c_void_p)
_sig("mor_sched_poll", C.c_int, C.c_void_p, C.POINTER(C.c_void_p), C.POINTER(C.c_int32), C.POINTER(C.c_int32))
_sig("mor_sched_get_counters", C.c_int, C.c_void_p, C.c_void_p)
_sig("mor_tokenize", C.c_int, C.c_void_p, C.c_char_p, C.c_size_t, C.POINTER(C.c_int32), C.c_size_t, C.c_uint32,
     C.POINTER(C.c_size_t))
_sig("mor_detokenize", C.c_int, C.c_void_p, C.POINTER(C.c_int32), C.c_size_t, C.c_char_p, C.c_size_t, C.c_uint32,
     C.POINTER(C.c_size_t))

E_BUFFER_SMALL = -9
E_CANCELLED = -12
E_ENCODING = -16
_I32_MIN, _I32_MAX = -(1 << 31), (1 << 31) - 1


class Error(RuntimeError):
    def __init__(self, status, message):
        super().__init__("%s: %s" % (lib.mor_status_name(status).decode(), message))
        self.status = status


def _token_array(tokens):
    """A C int32 array of token ids; ValueError for anything that is not an int32 (ctypes would
    wrap 2**40 to 0 and step a token nobody asked for)."""
    tokens = list(tokens)
    for i, t in enumerate(tokens):
        if not isinstance(t, int) or isinstance(t, bool):
            raise TypeError("token %d is %r, not an int" % (i, t))
        if t < _I32_MIN or t > _I32_MAX:
            raise ValueError("token %d = %d does not fit a 32-bit id" % (i, t))
    return (C.c_int32 * max(len(tokens), 1))(*tokens), len(tokens)


def _path(path):
    b = os.fsencode(path)
    if b"\0" in b:
        raise ValueError("path %r holds a NUL byte" % (path,))
    return b


def _params(kind, **fields):
    buf = C.create_string_buffer(lib.mor_params_size(kind))
    lib.mor_params_init(buf, kind)
    for k, v in fields.items():
        st = lib.mor_params_set(buf, k.encode(), float(v))
        if st:
            raise Error(st, "bad parameter %s=%r" % (k, v))
    return buf


class _Handle:
    """A library object: a context manager whose calls raise ValueError once it is closed."""
    _what = "object"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open(self):
        return bool(self.h)

    def _handle(self):
        if not self._open():
            raise ValueError("the %s is closed" % self._what)
        return self.h


class Model(_Handle):
    """A loaded model. Sessions and schedulers keep their model alive: close() on a model that
    still has open ones only marks it closed (no new sessions, no tokenizer calls) and the
    library's model is freed when the last of them closes."""

    def __init__(self, path, **params):
        self._free = lib.mor_model_free  # bound now: safe at interpreter shutdown
        self.h = None
        self._users = 0  # open sessions and schedulers of this model
        self._closed = False
        err = C.create_string_buffer(512)
        h = C.c_void_p()
        st = lib.mor_model_load(_path(path), _params(PARAMS_MODEL, **params) if params else None,
                                C.byref(h), err, len(err))
        if st:
            raise Error(st, err.value.decode(errors="replace"))
        self.h = h

    _what = "model"

    def _open(self):
        return not self._closed and bool(self.h)

    def _use(self):
        h = self._handle()
        self._users += 1
        return h

    def _release(self):
        self._users -= 1
        if self._closed and self._users == 0:
            self._really_free()

    def info(self, key):
        return lib.mor_model_get_int(self._handle(), key)

    def tokenize(self, text, add_special=True):
        h = self._handle()
        b = text.encode() if isinstance(text, str) else bytes(text)
        n = C.c_size_t(0)
        st = lib.mor_tokenize(h, b, len(b), None, 0, 1 if add_special else 0, C.byref(n))
        if st == E_ENCODING:
            raise Error(st, "byte 0x%02x at offset %d has no token in this vocabulary" % (b[n.value], n.value)
                        if n.value < len(b) else "tokenize")
        if st not in (0, E_BUFFER_SMALL):
            raise Error(st, "tokenize")
        out = (C.c_int32 * max(n.value, 1))()
        st = lib.mor_tokenize(h, b, len(b), out, n.value, 1 if add_special else 0, C.byref(n))
        if st:
            raise Error(st, "tokenize")
        return list(out[:n.value])

    def detokenize(self, ids):
        h = self._handle()
        arr, count = _token_array(ids)
        n = C.c_size_t(0)
        st = lib.mor_detokenize(h, arr, count, None, 0, 0, C.byref(n))
        if st not in (0, E_BUFFER_SMALL):
            raise Error(st, "detokenize")
        buf = C.create_string_buffer(n.value + 1)
        st = lib.mor_detokenize(h, arr, count, buf, len(buf), 0, C.byref(n))
        if st:
            raise Error(st, "detokenize")
        return buf.raw[:n.value].decode(errors="replace")

    def session(self, **params):
        return Session(self, **params)

    def close(self):
        """Free the model now, or when its last session or scheduler closes."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._users == 0:
            self._really_free()

    def _really_free(self):
        if self.h:
            self._free(self.h)
            self.h = None

    def __del__(self):
        if getattr(self, "h", None) and getattr(self, "_users", 0) == 0:
            self._really_free()


class Session(_Handle):
    """One sequence of a model. A session keeps its model alive. Calls made from inside its own
    router callback that would change it raise Error (MOR_E_BUSY); close() from there ends the
    running step (it raises Error with MOR_E_CANCELLED) and frees the session as it returns."""

    def __init__(self, model, **params):
        self._free = lib.mor_session_free
        self.h = None
        self.model = model  # keeps the model alive while the session lives
        self._sched = None
        self._router = None
        self._router_exc = None
        self._abort = None
        err = C.create_string_buffer(512)
        h = C.c_void_p()
        st = lib.mor_session_create(model._use(), _params(PARAMS_SESSION, **params), C.byref(h), err, len(err))
        if st:
            model._release()
            raise Error(st, err.value.decode(errors="replace"))
        self.h = h
        self._n_vocab = lib.mor_model_get_int(model.h, INFO_N_VOCAB)

    _what = "session"

    def _check(self, st):
        if st:
            if not self.h:  # closed meanwhile (by its own callback)
                raise Error(st, "the session was closed during the call")
            err = Error(st, lib.mor_session_last_error(self.h).decode(errors="replace"))
            cause, self._router_exc = self._router_exc, None
            raise err from cause

    def step(self, tokens):
        arr, n = _token_array(tokens)
        h = self._handle()
        self._router_exc = None
        self._check(lib.mor_session_step(h, arr, n))

    def logits(self, i=-1):
        p = lib.mor_session_logits(self._handle(), i)
        if not p:
            return None
        return p[:self._n_vocab]

    def depth(self, i=-1):
        return lib.mor_session_depth(self._handle(), i)

    def n_past(self):
        return lib.mor_session_n_past(self._handle())

    def sample(self):
        t = C.c_int32()
        self._check(lib.mor_session_sample(self._handle(), C.byref(t)))
        return t.value

    def reset(self):
        lib.mor_session_reset(self._handle())

    def set_sampler(self, **fields):
        self._check(lib.mor_session_set_sampler(self._handle(), _params(PARAMS_SAMPLER, **fields)))

    def set_exit_policy(self, policy="full", kv="auto", **fields):
        fields["policy"] = EXIT[policy] if isinstance(policy, str) else policy
        fields["kv"] = KV[kv] if isinstance(kv, str) else kv
        self._check(lib.mor_session_set_exit_policy(self._handle(), _params(PARAMS_EXIT, **fields)))

    def set_router(self, fn, wants_confidence=False):
        """fn(step, positions, router_scores) -> list of bools (continue?) per token; None
        restores the default policy. An exception in fn fails the step (MOR_E_CALLBACK)."""
        h = self._handle()
        if fn is None:
            self._check(lib.mor_session_set_router_fn(h, ROUTE_FN(), None, 0))
            self._router = None
            return

        def trampoline(user, batch, keep):
            try:
                b = C.cast(batch, C.POINTER(RouteBatch)).contents
                pos = b.positions[:b.n_tokens]
                scores = b.router_score[:b.n_tokens] if b.router_score else None
                out = fn(b.step, pos, scores)
                for i in range(b.n_tokens):
                    keep[i] = 1 if out[i] else 0
                return 0
            except BaseException as e:  # reported to the library as a failed callback; the
                self._router_exc = e    # exception becomes the cause of the step's Error
                return 1

        router = ROUTE_FN(trampoline)
        self._check(lib.mor_session_set_router_fn(h, router, None, 1 if wants_confidence else 0))
        self._router = router  # kept alive as long as the session uses it

    def set_abort(self, fn):
        """fn(n_done, n_total, layer, n_layer) -> true to stop the running step(), which then
        raises Error with status E_CANCELLED after accepting exactly the first n_done tokens
        (a multiple of n_batch; n_past() grew by that much): step the rest to resume, with the
        same logits as an uncancelled step. Called before every layer of every pass; None
        removes it. An exception in fn stops the step and becomes the cause of its Error."""
        h = self._handle()
        if fn is None:
            self._check(lib.mor_session_set_abort(h, ABORT_FN(), None))
            self._abort = None
            return

        def trampoline(user, n_done, n_total, layer, n_layer):
            try:
                return 1 if fn(n_done, n_total, layer, n_layer) else 0
            except BaseException as e:
                self._router_exc = e
                return 1

        cb = ABORT_FN(trampoline)
        self._check(lib.mor_session_set_abort(h, cb, None))
        self._abort = cb  # kept alive as long as the session uses it

    def set_logit_bias(self, bias):
        """bias: {token id: additive bias} (float("-inf") bans a token); {} or None removes
        every bias. Applied by sample() to a copy of the logits."""
        items = list((bias or {}).items())
        ids, n = _token_array(k for k, _ in items)
        vals = (C.c_float * max(n, 1))(*[float(v) for _, v in items])
        self._check(lib.mor_session_set_logit_bias(self._handle(), ids, vals, n))

    def set_allowed_tokens(self, ids):
        """Only these ids may be sampled (a non-empty iterable); None allows every token again."""
        h = self._handle()
        if ids is None:
            self._check(lib.mor_session_set_allowed_tokens(h, None, 0))
            return
        arr, n = _token_array(ids)
        self._check(lib.mor_session_set_allowed_tokens(h, arr, n))

    def last_error(self):
        return lib.mor_session_last_error(self._handle()).decode(errors="replace")

    def token_info(self, pos):
        d, s, k = C.c_int32(), C.c_float(), C.c_int32()
        self._check(lib.mor_session_token_info(self._handle(), pos, C.byref(d), C.byref(s), C.byref(k)))
        return d.value, s.value, k.value

    def generate(self, prompt, n):
        ids = self.model.tokenize(prompt)
        self.step(ids)
        out = []
        for _ in range(n):
            t = self.sample()
            out.append(t)
            self.step([t])
        return self.model.detokenize(out)

    def close(self):
        """Free the session (inside its own router callback: when the running step returns)."""
        h = getattr(self, "h", None)
        if not h:
            return
        self.h = None
        if self._sched is not None:
            self._sched._forget(h)
            self._sched = None
        self._free(h)  # the library defers it while a callback of the session runs
        self.model._release()

    __del__ = close


class StopMatcher:
    """Stop strings over a stream of text pieces (mor_stop_*): push(piece) returns (bytes that
    are safe to emit, index of the stop string reached or -1); flush() returns the held bytes
    at the end of a stream that never matched. Pieces and stop strings are bytes or str
    (UTF-8)."""

    def __init__(self, stops):
        bs = [s.encode() if isinstance(s, str) else bytes(s) for s in stops]
        arr = (C.c_char_p * max(len(bs), 1))(*bs)
        h = C.c_void_p()
        st = lib.mor_stop_create(arr, len(bs), None, C.byref(h))
        if st:
            raise Error(st, "stop strings must be 1..4096 bytes without NUL")
        self.h = h

    def push(self, piece):
        b = piece.encode() if isinstance(piece, str) else bytes(piece)
        out = C.create_string_buffer(len(b) + 4097)
        n, which = C.c_size_t(), C.c_int32()
        st = lib.mor_stop_push(self.h, b, len(b), out, len(out), C.byref(n), C.byref(which))
        if st:
            raise Error(st, "mor_stop_push failed")
        return out.raw[:n.value], which.value

    def flush(self):
        out = C.create_string_buffer(4097)
        n = C.c_size_t()
        st = lib.mor_stop_flush(self.h, out, len(out), C.byref(n))
        if st:
            raise Error(st, "mor_stop_flush failed")
        return out.raw[:n.value]

    def reset(self):
        lib.mor_stop_reset(self.h)

    def close(self):
        h, self.h = getattr(self, "h", None), None
        if h:
            lib.mor_stop_free(h)

    __del__ = close


class Scheduler(_Handle):
    """Many sessions of one model stepped together (continuous depth-wise batching).

        sched = mor.Scheduler(model, max_batch=32)
        for s in npcs:
            sched.submit(s, model.tokenize(line), 24)
        for sess, token, status in sched.run():
            ...   # token >= 0: a generated token; token == -1: the request ended (status 0)
                  # or failed (status < 0, the message in sess.last_error())

    Parameters by name: max_batch, n_threads, kv_budget, mode ("continuous", "static",
    "sequential" or the number), prompt_chunk. A session is added by its first submit and
    stays until remove(); the scheduler keeps it (and the model) alive meanwhile."""

    def __init__(self, model, **params):
        self._free = lib.mor_sched_free
        self.h = None
        self.model = model
        self._sessions = {}  # handle -> Session
        if isinstance(params.get("mode"), str):
            params["mode"] = SCHED[params["mode"]]
        err = C.create_string_buffer(512)
        h = C.c_void_p()
        st = lib.mor_sched_create(model._use(), _params(PARAMS_SCHED, **params), C.byref(h), err, len(err))
        if st:
            model._release()
            raise Error(st, err.value.decode(errors="replace"))
        self.h = h

    _what = "scheduler"

    def _forget(self, h):
        self._sessions.pop(h.value, None)

    def add(self, session):
        session._check(lib.mor_sched_add(self._handle(), session._handle()))
        self._sessions[session.h.value] = session
        session._sched = self

    def remove(self, session):
        session._check(lib.mor_sched_remove(self._handle(), session._handle()))
        self._sessions.pop(session.h.value, None)
        session._sched = None

    def submit(self, session, tokens, n_generate=0):
        """Queue a prompt (token ids) and n_generate tokens to sample after it."""
        arr, n = _token_array(tokens)
        if not isinstance(n_generate, int) or not 0 <= n_generate <= _I32_MAX:
            raise ValueError("n_generate = %r: must be an int in 0 .. 2**31-1" % (n_generate,))
        if session._handle().value not in self._sessions:
            self.add(session)
        session._check(lib.mor_sched_submit(self._handle(), session.h, arr, n, n_generate))

    def cancel(self, session):
        session._check(lib.mor_sched_cancel(self._handle(), session._handle()))

    def pending(self):
        return lib.mor_sched_pending(self._handle())

    def step(self):
        """One round; returns the events it produced as (session, token, status) tuples."""
        st = lib.mor_sched_step(self._handle())
        if not self.h:  # closed by a callback during the round (freed as the round returned)
            return []
        if st:
            raise Error(st, "mor_sched_step")
        return self.poll()

    def poll(self):
        out = []
        h = self._handle()
        who, tok, st = C.c_void_p(), C.c_int32(), C.c_int32()
        while lib.mor_sched_poll(h, C.byref(who), C.byref(tok), C.byref(st)) == 0:
            out.append((self._sessions.get(who.value), tok.value, st.value))
        return out

    def run(self):
        """Rounds until no work is left, yielding every event."""
        while self.pending() > 0:
            for ev in self.step():
                yield ev
        for ev in self.poll():
            yield ev

    def stats(self):
        """Counters since creation: rounds, layer_runs, layer_rows, head_runs, head_rows,
        tokens, refill (see mor_sched_counters)."""
        names = ["rounds", "layer_runs", "layer_rows", "head_runs", "head_rows", "tokens"]
        buf = (C.c_int64 * 16)()  # room for fields a newer library may append
        C.cast(buf, C.POINTER(C.c_uint32))[0] = C.sizeof(buf)
        st = lib.mor_sched_get_counters(self._handle(), buf)
        if st:
            raise Error(st, "mor_sched_get_counters")
        out = {k: buf[1 + i] for i, k in enumerate(names)}  # after the size/kind header
        out["refill"] = C.cast(buf, C.POINTER(C.c_int32))[2 * (1 + len(names))]
        return out

    def close(self):
        """Free the scheduler (its sessions stay open); inside a callback of its round: when
        the round returns."""
        h = getattr(self, "h", None)
        if not h:
            return
        self.h = None
        for sess in self._sessions.values():
            sess._sched = None
        self._sessions = {}
        self._free(h)
        self.model._release()

    __del__ = close
