// state.c: save and restore a session's state (tokens, KV cache, sampler and RNG, exit policy,
// the KV_SYNC stack and the per-token telemetry) in a versioned little-endian byte format.
#include "session.h"

#include <math.h>

// Layout (little-endian): "MORS", u32 version (4), u32 n_layer, u32 kv_dim, u32 n_vocab,
// u32 n_past, u32 n_embd, u32 kv element (0 F32, 1 F16: entries then packed two per word),
// u64 model fingerprint (version 4 only; see model_fingerprint), policy (the fields of
// mor_exit_policy after size and kind, in declaration order, as u32 bits: policy, depth,
// threshold, min_depth, metric, decay_tau, decay_len, shallow, adaptive, kv, budget,
// budget_window, rollback; see put_policy: a field appended to the struct changes the
// format, so it comes with a new version), sampler (6 x u32 + u64 seed), u64 rng,
// tokens[n_past] (i32), per position depth (i32), score (f32), kv status (u32), u32 n_stack and
// per stacked token pos, step, top (i32), conf (f32), h[n_embd] (f32), then per slot: u32 len,
// pos[len] (i32), k[len*kv_dim] (f32), v[len*kv_dim] (f32).
//
// Version 3 is the same without the fingerprint; it is still read (checked on shape only).

#define STATE_MAGIC   0x53524f4du  // "MORS"
#define STATE_VERSION 4u
#define STATE_VERSION_NO_FINGERPRINT 3u

// ---- model fingerprint ---------------------------------------------------------------------
// A 64-bit hash of what makes a state meaningful for a model: the architecture, every
// hyperparameter, the sharing map (stored layer, recursion and step of each unrolled layer,
// the step ranges and exit heads) and the tensor table (name, type and shape of every tensor;
// the table's order does not matter). The tensor data is not hashed: reading every weight at
// each save and load would cost as much as a forward pass over the whole model, so two files
// with the same layout and different weights (two fine-tunes of one model) share a
// fingerprint. Computed from the model's read-only fields at each call (nothing is cached in
// the model, which threads share).

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME  0x100000001b3ull

static void fnv_bytes(uint64_t *h, const void *src, size_t n) {
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) *h = (*h ^ p[i]) * FNV_PRIME;
}
static void fnv_u32(uint64_t *h, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    fnv_bytes(h, b, 4);
}
static void fnv_u64(uint64_t *h, uint64_t v) {
    fnv_u32(h, (uint32_t)v);
    fnv_u32(h, (uint32_t)(v >> 32));
}
static void fnv_f32(uint64_t *h, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    fnv_u32(h, u);
}
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t model_fingerprint(const mor_model *m) {
    const mor__hparams *hp = &m->hp;
    uint64_t h = FNV_OFFSET;
    fnv_bytes(&h, m->arch, strnlen(m->arch, sizeof m->arch));
    fnv_u32(&h, 0xffffffffu);  // end of the name
    const int32_t iv[] = {hp->n_vocab, hp->n_ctx_train, hp->n_embd, hp->n_ff, hp->n_head, hp->n_head_kv,
                          hp->head_dim, hp->n_layer, hp->n_rec, hp->n_stored, hp->block, hp->sharing,
                          hp->n_first, hp->rope_neox, hp->kv_sharing, hp->router, hp->router_mlp,
                          hp->router_func, hp->router_additive, hp->lora_rank};
    for (size_t i = 0; i < sizeof iv / sizeof iv[0]; i++) fnv_u32(&h, (uint32_t)iv[i]);
    const float fv[] = {hp->rms_eps, hp->rope_theta, hp->lora_scale, hp->router_alpha, hp->router_temp};
    for (size_t i = 0; i < sizeof fv / sizeof fv[0]; i++) fnv_f32(&h, fv[i]);
    // sharing map and depth steps
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const mor__layer *ly = &m->layers[l];
        fnv_u32(&h, (uint32_t)ly->stored);
        fnv_u32(&h, (uint32_t)ly->rec);
        fnv_u32(&h, (uint32_t)ly->in_middle);
        fnv_u32(&h, (uint32_t)m->layer_step[l]);
    }
    fnv_u32(&h, (uint32_t)m->n_steps);
    for (int32_t k = 0; k < m->n_steps; k++) {
        fnv_u32(&h, (uint32_t)m->step_begin[k]);
        fnv_u32(&h, (uint32_t)m->step_end[k]);
        fnv_u32(&h, (uint32_t)m->step_exit[k]);
    }
    fnv_u32(&h, (uint32_t)m->steps_interleaved);
    fnv_u32(&h, (uint32_t)m->has_last);
    fnv_u32(&h, (uint32_t)m->n_exits);
    for (int32_t e = 0; e < m->n_exits; e++) fnv_u32(&h, (uint32_t)m->exits[e].after_layer);
    // tensor table: a sum of per-tensor hashes, so the order of the file's table is irrelevant
    uint64_t sum = 0;
    for (uint64_t i = 0; i < m->gguf.n_tensors; i++) {
        const mor__gguf_tensor *t = &m->gguf.tensors[i];
        uint64_t th = FNV_OFFSET;
        fnv_bytes(&th, t->name, strnlen(t->name, sizeof t->name));
        fnv_u32(&th, 0xffffffffu);
        fnv_u32(&th, t->type);
        fnv_u32(&th, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims && d < 4; d++) fnv_u64(&th, t->dims[d]);
        sum += mix64(th);
    }
    fnv_u64(&h, m->gguf.n_tensors);
    fnv_u64(&h, sum);
    return mix64(h);
}

// The exit policy in the state: the fields of mor_exit_policy after size and kind, in their
// declaration order, from the one field table (status.c); each as its bits, u32 or u64.
static int wide_field(const mor__field *f) { return f->type == MOR__F_U64 || f->type == MOR__F_I64; }

static void put_policy(mor__wbuf *w, const mor_exit_policy *p) {
    size_t n;
    const mor__field *f = mor__params_fields(&n);
    for (size_t i = 0; i < n; i++) {
        if (f[i].kind != MOR_PARAMS_EXIT) continue;
        const char *at = (const char *)p + f[i].offset;
        if (wide_field(&f[i])) {
            uint64_t v;
            memcpy(&v, at, 8);
            mor__put_u64(w, v);
        } else {
            uint32_t v;
            memcpy(&v, at, 4);
            mor__put_u32(w, v);
        }
    }
}

static void get_policy(mor__rbuf *r, mor_exit_policy *p) {
    size_t n;
    const mor__field *f = mor__params_fields(&n);
    for (size_t i = 0; i < n; i++) {
        if (f[i].kind != MOR_PARAMS_EXIT) continue;
        char *at = (char *)p + f[i].offset;
        if (wide_field(&f[i])) {
            uint64_t v = mor__get_u64(r);
            memcpy(at, &v, 8);
        } else {
            uint32_t v = mor__get_u32(r);
            memcpy(at, &v, 4);
        }
    }
}

static size_t serialize(const mor_session *s, uint64_t fingerprint, void *buf, size_t cap) {
    const mor__hparams *hp = &s->model->hp;
    uint32_t kvdim = (uint32_t)(hp->n_head_kv * hp->head_dim);
    mor__wbuf w = {buf, 0, cap};
    mor__put_u32(&w, STATE_MAGIC);
    mor__put_u32(&w, STATE_VERSION);
    mor__put_u32(&w, (uint32_t)hp->n_layer);
    mor__put_u32(&w, kvdim);
    mor__put_u32(&w, (uint32_t)hp->n_vocab);
    mor__put_u32(&w, (uint32_t)s->n_past);
    mor__put_u32(&w, (uint32_t)hp->n_embd);
    mor__put_u32(&w, (uint32_t)s->kv.f16);  // K/V element: 0 F32, 1 F16
    mor__put_u64(&w, fingerprint);
    put_policy(&w, &s->policy);
    mor__put_u32(&w, mor__f32_bits(s->sampler.temperature));
    mor__put_u32(&w, (uint32_t)s->sampler.top_k);
    mor__put_u32(&w, mor__f32_bits(s->sampler.top_p));
    mor__put_u32(&w, mor__f32_bits(s->sampler.min_p));
    mor__put_u32(&w, mor__f32_bits(s->sampler.repeat_penalty));
    mor__put_u32(&w, (uint32_t)s->sampler.repeat_last_n);
    mor__put_u64(&w, s->sampler.seed);
    mor__put_u64(&w, s->rng);
    mor__put_arr32(&w, s->tokens, (size_t)s->n_past);
    for (int32_t i = 0; i < s->n_past; i++) {
        mor__put_u32(&w, (uint32_t)(int32_t)s->trace.depth[i]);
        mor__put_u32(&w, mor__f32_bits(s->trace.score[i]));
        mor__put_u32(&w, s->trace.kv[i] | (uint32_t)s->trace.given[i] << 8);
    }
    mor__put_u32(&w, (uint32_t)s->stack.n);
    for (int32_t j = 0; j < s->stack.n; j++) {
        mor__put_u32(&w, (uint32_t)s->stack.pos[j]);
        mor__put_u32(&w, (uint32_t)s->stack.step[j]);
        mor__put_u32(&w, (uint32_t)s->stack.top[j]);
        mor__put_u32(&w, mor__f32_bits(s->stack.conf[j]));
        mor__put_arr32(&w, s->stack.h + (size_t)j * hp->n_embd, (size_t)hp->n_embd);
    }
    mor__kv_save(&s->kv, &w);
    return w.n;
}

size_t mor_session_state_size(const mor_session *s) { return s ? serialize(s, 0, NULL, 0) : 0; }

int mor_session_state_save(const mor_session *s, void *buf, size_t cap, size_t *n_written) {
    if (!s || (!buf && cap)) return MOR_E_INVALID;
    size_t need = serialize(s, 0, NULL, 0);
    if (n_written) *n_written = need;
    if (need > cap) return MOR_E_BUFFER_SMALL;
    serialize(s, model_fingerprint(s->model), buf, cap);
    return MOR_OK;
}

// Loading validates the whole buffer first (pass 1) without writing to the session, then
// applies it (pass 2): a refused state leaves every part of the session as it was, including
// its policy, budget window and FREE calibration.
int mor_session_state_load(mor_session *s, const void *buf, size_t size) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (!buf) return mor__session_fail(s, MOR_E_INVALID, "buffer is NULL");
    if (s->ps.active) return mor__session_fail(s, MOR_E_INVALID, "a token of this session is being computed by its scheduler");
    const mor__hparams *hp = &s->model->hp;
    uint32_t kvdim = (uint32_t)(hp->n_head_kv * hp->head_dim);
    // Pass 1: validate everything without touching the session.
    mor__rbuf r = {buf, size, 0, 0};
    if (mor__get_u32(&r) != STATE_MAGIC) return mor__session_fail(s, MOR_E_STATE, "state: bad magic");
    uint32_t ver = mor__get_u32(&r);
    if (r.bad || (ver != STATE_VERSION && ver != STATE_VERSION_NO_FINGERPRINT))
        return mor__session_fail(s, MOR_E_STATE, "state: version %u, expected %u (or %u)", ver, STATE_VERSION,
                                 STATE_VERSION_NO_FINGERPRINT);
    uint32_t nl = mor__get_u32(&r), kd = mor__get_u32(&r), nv = mor__get_u32(&r), np = mor__get_u32(&r), ne = mor__get_u32(&r);
    uint32_t kv16 = mor__get_u32(&r);
    if (!r.bad && kv16 != (uint32_t)s->kv.f16)
        return mor__session_fail(s, MOR_E_STATE, "state: K/V saved in %s, this session keeps %s", kv16 ? "F16" : "F32",
                                 s->kv.f16 ? "F16" : "F32");
    if (r.bad || nl != (uint32_t)hp->n_layer || kd != kvdim || nv != (uint32_t)hp->n_vocab || ne != (uint32_t)hp->n_embd)
        return mor__session_fail(s, MOR_E_STATE,
                                 "state: saved for a model with %u layers, kv dim %u, vocab %u, width %u; this one has "
                                 "%d, %u, %d, %d",
                                 nl, kd, nv, ne, hp->n_layer, kvdim, hp->n_vocab, hp->n_embd);
    if (ver == STATE_VERSION) {
        uint64_t fp = mor__get_u64(&r), mine = model_fingerprint(s->model);
        if (r.bad) return mor__session_fail(s, MOR_E_STATE, "state: truncated header");
        if (fp != mine)
            return mor__session_fail(s, MOR_E_STATE,
                                     "state: saved from a different model (fingerprint %016llx; this model's is %016llx)",
                                     (unsigned long long)fp, (unsigned long long)mine);
    }
    if (np > (uint32_t)s->n_ctx)
        return mor__session_fail(s, MOR_E_STATE, "state: %u tokens do not fit the context of %d", np, s->n_ctx);
    mor_exit_policy q;
    mor_exit_policy_init(&q);
    get_policy(&r, &q);
    mor__sampler sm;
    sm.temperature = mor__bits_f32(mor__get_u32(&r));
    sm.top_k = (int32_t)mor__get_u32(&r);
    sm.top_p = mor__bits_f32(mor__get_u32(&r));
    sm.min_p = mor__bits_f32(mor__get_u32(&r));
    sm.repeat_penalty = mor__bits_f32(mor__get_u32(&r));
    sm.repeat_last_n = (int32_t)mor__get_u32(&r);
    sm.seed = mor__get_u64(&r);
    uint64_t rng = mor__get_u64(&r);
    if (r.bad) return mor__session_fail(s, MOR_E_STATE, "state: truncated header");
    if (q.policy == MOR_EXIT_CUSTOM && !s->has_router)
        return mor__session_fail(s, MOR_E_STATE, "state: saved with a custom router; set one on this session first");
    // The policy and the sampler pass the checks of mor_session_set_exit_policy and
    // mor_session_set_sampler. The KV strategy may differ from the session's: the state
    // replaces its tokens and K/V.
    char why[sizeof s->err];
    mor_exit_policy pol;
    if (mor__policy_check(s->model, &q, s->has_router, s->n_batch, &pol, why, sizeof why))
        return mor__session_fail(s, MOR_E_STATE, "state: invalid policy: %s", why);
    if (mor__sampler_check(&sm, why, sizeof why))
        return mor__session_fail(s, MOR_E_STATE, "state: invalid sampler: %s", why);
    size_t tok_off = r.off;
    if ((r.n - r.off) / 4 < np) return mor__session_fail(s, MOR_E_STATE, "state: truncated token list");
    r.off += (size_t)np * 4;
    for (uint32_t i = 0; i < np; i++) {
        mor__rbuf tr = {r.p + tok_off + 4 * i, 4, 0, 0};
        int32_t t = (int32_t)mor__get_u32(&tr);
        if (t < 0 || t >= hp->n_vocab) return mor__session_fail(s, MOR_E_STATE, "state: token %d out of range", t);
    }
    size_t trace_off = r.off;
    if ((r.n - r.off) / 12 < np) return mor__session_fail(s, MOR_E_STATE, "state: truncated trace");
    r.off += (size_t)np * 12;
    uint32_t ns = mor__get_u32(&r);
    if (r.bad || ns > (uint32_t)s->n_batch || ns > np)
        return mor__session_fail(s, MOR_E_STATE, "state: %u stacked tokens (at most %d)", ns, s->n_batch);
    if (ns > 0 && pol.kv != MOR_KV_SYNC)
        return mor__session_fail(s, MOR_E_STATE, "state: %u stacked tokens without the KV_SYNC strategy", ns);
    size_t stack_off = r.off, per = 16 + (size_t)hp->n_embd * 4;
    if ((r.n - r.off) / per < ns) return mor__session_fail(s, MOR_E_STATE, "state: truncated stack");
    for (int32_t j = 0, prev = -1; j < (int32_t)ns; j++) {
        mor__rbuf e = {r.p + r.off + (size_t)j * per, 8, 0, 0};
        int32_t sp = (int32_t)mor__get_u32(&e), ss = (int32_t)mor__get_u32(&e);
        if (sp <= prev || sp >= (int32_t)np || ss < 0 || ss > s->model->n_steps)
            return mor__session_fail(s, MOR_E_STATE, "state: stacked token %d out of range or order", j);
        prev = sp;
    }
    r.off += ns * per;
    size_t slot_off = r.off;
    if (mor__kv_check(&s->kv, &r, np, s->err, sizeof s->err)) return MOR_E_STATE;
    if (r.off != r.n) return mor__session_fail(s, MOR_E_STATE, "state: %zu trailing bytes", r.n - r.off);
    // Pass 2: apply. The policy is installed as mor_session_set_exit_policy would.
    mor__policy_install(s, &pol);
    s->sampler = sm;
    s->rng = rng;
    s->n_past = (int32_t)np;
    s->n_last = 0;
    s->n_logits = 0;
    mor__rbuf t2 = {r.p, r.n, tok_off, 0};
    mor__get_arr32(&t2, s->tokens, np);
    mor__rbuf tr = {r.p, r.n, trace_off, 0};
    for (uint32_t i = 0; i < np; i++) {
        s->trace.depth[i] = (int8_t)(int32_t)mor__get_u32(&tr);
        s->trace.score[i] = mor__bits_f32(mor__get_u32(&tr));
        uint32_t kvg = mor__get_u32(&tr);
        s->trace.kv[i] = (uint8_t)(kvg & 0xff);
        s->trace.given[i] = (uint8_t)((kvg >> 8) & 1);
    }
    mor__rbuf st = {r.p, r.n, stack_off, 0};
    s->stack.n = (int32_t)ns;
    for (uint32_t j = 0; j < ns; j++) {
        s->stack.pos[j] = (int32_t)mor__get_u32(&st);
        s->stack.step[j] = (int32_t)mor__get_u32(&st);
        s->stack.top[j] = (int32_t)mor__get_u32(&st);
        s->stack.conf[j] = mor__bits_f32(mor__get_u32(&st));
        mor__get_arr32(&st, s->stack.h + (size_t)j * hp->n_embd, (size_t)hp->n_embd);
    }
    mor__rbuf s2 = {r.p, r.n, slot_off, 0};
    mor__kv_load(&s->kv, &s2);
    return MOR_OK;
}
