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


class Error(RuntimeError):
    def __init__(self, status, message):
        super().__init__("%s: %s" % (lib.mor_status_name(status).decode(), message))
        self.status = status


def _params(kind, **fields):
    buf = C.create_string_buffer(lib.mor_params_size(kind))
    lib.mor_params_init(buf, kind)
    for k, v in fields.items():
        st = lib.mor_params_set(buf, k.encode(), float(v))
        if st:
            raise Error(st, "bad parameter %s=%r" % (k, v))
    return buf


class Model:
    def __init__(self, path, **params):
        self._free = lib.mor_model_free  # bound now: safe at interpreter shutdown
        err = C.create_string_buffer(512)
        h = C.c_void_p()
        st = lib.mor_model_load(path.encode(), _params(PARAMS_MODEL, **params) if params else None,
                                C.byref(h), err, len(err))
        if st:
            raise Error(st, err.value.decode(errors="replace"))
        self.h = h

    def info(self, key):
        return lib.mor_model_get_int(self.h, key)

    def tokenize(self, text, add_special=True):
        b = text.encode()
        n = C.c_size_t(0)
        st = lib.mor_tokenize(self.h, b, len(b), None, 0, 1 if add_special else 0, C.byref(n))
        if st not in (0, E_BUFFER_SMALL):
            raise Error(st, "tokenize")
        out = (C.c_int32 * max(n.value, 1))()
        st = lib.mor_tokenize(self.h, b, len(b), out, n.value, 1 if add_special else 0, C.byref(n))
        if st:
            raise Error(st, "tokenize")
        return list(out[:n.value])

    def detokenize(self, ids):
        arr = (C.c_int32 * max(len(ids), 1))(*ids)
        n = C.c_size_t(0)
        lib.mor_detokenize(self.h, arr, len(ids), None, 0, 0, C.byref(n))
        buf = C.create_string_buffer(n.value + 1)
        st = lib.mor_detokenize(self.h, arr, len(ids), buf, len(buf), 0, C.byref(n))
        if st:
            raise Error(st, "detokenize")
        return buf.raw[:n.value].decode(errors="replace")

    def session(self, **params):
        return Session(self, **params)

    def close(self):
        if getattr(self, "h", None):
            self._free(self.h)
            self.h = None

    __del__ = close


class Session:
    def __init__(self, model, **params):
        self._free = lib.mor_session_free
        self.model = model  # keeps the model alive while the session lives
        err = C.create_string_buffer(512)
        h = C.c_void_p()
        st = lib.mor_session_create(model.h, _params(PARAMS_SESSION, **params), C.byref(h), err, len(err))
        if st:
            raise Error(st, err.value.decode(errors="replace"))
        self.h = h
        self._router = None

    def _check(self, st):
        if st:
            raise Error(st, lib.mor_session_last_error(self.h).decode(errors="replace"))

    def step(self, tokens):
        arr = (C.c_int32 * len(tokens))(*tokens)
        self._check(lib.mor_session_step(self.h, arr, len(tokens)))

    def logits(self, i=-1):
        p = lib.mor_session_logits(self.h, i)
        if not p:
            return None
        return p[:self.model.info(INFO_N_VOCAB)]

    def depth(self, i=-1):
        return lib.mor_session_depth(self.h, i)

    def n_past(self):
        return lib.mor_session_n_past(self.h)

    def sample(self):
        t = C.c_int32()
        self._check(lib.mor_session_sample(self.h, C.byref(t)))
        return t.value

    def reset(self):
        lib.mor_session_reset(self.h)

    def set_sampler(self, **fields):
        self._check(lib.mor_session_set_sampler(self.h, _params(PARAMS_SAMPLER, **fields)))

    def set_exit_policy(self, policy="full", kv="auto", **fields):
        fields["policy"] = EXIT[policy] if isinstance(policy, str) else policy
        fields["kv"] = KV[kv] if isinstance(kv, str) else kv
        self._check(lib.mor_session_set_exit_policy(self.h, _params(PARAMS_EXIT, **fields)))

    def set_router(self, fn, wants_confidence=False):
        """fn(step, positions, router_scores) -> list of bools (continue?) per token; None
        restores the default policy. An exception in fn fails the step (MOR_E_CALLBACK)."""
        if fn is None:
            self._check(lib.mor_session_set_router_fn(self.h, ROUTE_FN(), None, 0))
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
            except Exception:  # reported to the library as a failed callback
                return 1

        self._router = ROUTE_FN(trampoline)  # kept alive as long as the session uses it
        self._check(lib.mor_session_set_router_fn(self.h, self._router, None, 1 if wants_confidence else 0))

    def last_error(self):
        return lib.mor_session_last_error(self.h).decode(errors="replace")

    def token_info(self, pos):
        d, s, k = C.c_int32(), C.c_float(), C.c_int32()
        self._check(lib.mor_session_token_info(self.h, pos, C.byref(d), C.byref(s), C.byref(k)))
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
        if getattr(self, "h", None):
            self._free(self.h)
            self.h = None

    __del__ = close


class Scheduler:
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
        self.model = model
        if isinstance(params.get("mode"), str):
            params["mode"] = SCHED[params["mode"]]
        err = C.create_string_buffer(512)
        h = C.c_void_p()
        st = lib.mor_sched_create(model.h, _params(PARAMS_SCHED, **params), C.byref(h), err, len(err))
        if st:
            raise Error(st, err.value.decode(errors="replace"))
        self.h = h
        self._sessions = {}  # handle -> Session

    def add(self, session):
        session._check(lib.mor_sched_add(self.h, session.h))
        self._sessions[session.h.value] = session

    def remove(self, session):
        session._check(lib.mor_sched_remove(self.h, session.h))
        self._sessions.pop(session.h.value, None)

    def submit(self, session, tokens, n_generate=0):
        """Queue a prompt (token ids) and n_generate tokens to sample after it."""
        if session.h.value not in self._sessions:
            self.add(session)
        arr = (C.c_int32 * max(len(tokens), 1))(*tokens)
        session._check(lib.mor_sched_submit(self.h, session.h, arr, len(tokens), n_generate))

    def cancel(self, session):
        session._check(lib.mor_sched_cancel(self.h, session.h))

    def pending(self):
        return lib.mor_sched_pending(self.h)

    def step(self):
        """One round; returns the events it produced as (session, token, status) tuples."""
        st = lib.mor_sched_step(self.h)
        if st:
            raise Error(st, "mor_sched_step")
        return self.poll()

    def poll(self):
        out = []
        who, tok, st = C.c_void_p(), C.c_int32(), C.c_int32()
        while lib.mor_sched_poll(self.h, C.byref(who), C.byref(tok), C.byref(st)) == 0:
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
        st = lib.mor_sched_get_counters(self.h, buf)
        if st:
            raise Error(st, "mor_sched_get_counters")
        out = {k: buf[1 + i] for i, k in enumerate(names)}  # after the size/kind header
        out["refill"] = C.cast(buf, C.POINTER(C.c_int32))[2 * (1 + len(names))]
        return out

    def close(self):
        if getattr(self, "h", None):
            self._free(self.h)
            self.h = None
        self._sessions = {}

    __del__ = close
