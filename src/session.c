// session.c: sessions: creation (all buffers allocated once), stepping in batches, context
// limits, rewind and reset, exit policy, and the state save/load format.
#include "session.h"

#include <math.h>
#include <stdio.h>

int mor__session_fail(mor_session *s, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
    return status;
}

void mor_session_free(mor_session *s) {
    if (!s) return;
    mor__pool_free(s->pool);
    if (s->slots)
        for (int32_t l = 0; l < s->model->hp.n_layer; l++) {
            free(s->slots[l].k);
            free(s->slots[l].v);
            free(s->slots[l].pos);
        }
    free(s->slots);
    void *bufs[] = {s->tokens, s->logits, s->depths, s->depth_all, s->x, s->xb, s->q, s->k, s->v,
                    s->ao, s->hb, s->hb2, s->tmp, s->lora, s->att, s->row, s->rope_cos,
                    s->rope_sin, s->h_in, s->xa, s->gate, s->router_h, s->act, s->act_pos,
                    s->tok_depth, s->tok_choice, s->alive, s->probs, s->cand};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s);
}

static void *alloc_n(size_t n, size_t elem, int *fail) {
    void *p = calloc(n ? n : 1, elem);
    if (!p) *fail = 1;
    return p;
}

static void default_policy(const mor_model *m, mor__policy *p) {
    p->policy = m->hp.router != MOR_ROUTER_NONE ? MOR_EXIT_ROUTER : MOR_EXIT_FULL;
    p->depth = m->hp.n_rec;
    p->threshold = 0.5f;
    p->min_depth = 0;
}

static void sampler_from(mor__sampler *d, const mor_sampler_params *p) {
    mor_sampler_params q;
    mor_sampler_params_init(&q);
    if (p) memcpy(&q, p, MOR__MIN(p->size, sizeof q));
    d->temperature = q.temperature;
    d->top_k = q.top_k;
    d->top_p = q.top_p;
    d->min_p = q.min_p;
    d->repeat_penalty = q.repeat_penalty;
    d->repeat_last_n = q.repeat_last_n;
    d->seed = q.seed;
}

int mor_session_create(const mor_model *m, const mor_session_params *params, mor_session **out,
                       char *err, size_t err_n) {
    if (err && err_n) err[0] = 0;
    if (!out) return mor__errf(err, err_n, MOR_E_INVALID, "out is NULL");
    *out = NULL;
    if (!m) return mor__errf(err, err_n, MOR_E_INVALID, "model is NULL");
    if (m->vocab_only) return mor__errf(err, err_n, MOR_E_INVALID, "the model was loaded vocab-only: it has no weights");
    if (params && params->kind != MOR_PARAMS_SESSION)
        return mor__errf(err, err_n, MOR_E_INVALID, "params is not a mor_session_params (kind %u)", params->kind);
    mor_session_params p;
    mor_session_params_init(&p);
    if (params) memcpy(&p, params, MOR__MIN(params->size, sizeof p));
    const mor__hparams *hp = &m->hp;
    if (p.n_ctx == 0) p.n_ctx = hp->n_ctx_train;
    if (p.n_ctx < 1 || p.n_ctx > (1 << 20))
        return mor__errf(err, err_n, MOR_E_INVALID, "n_ctx = %d: must be 1..1048576 (0 = trained context %d)",
                         p.n_ctx, hp->n_ctx_train);
    if (p.n_batch < 1 || p.n_batch > 8192)
        return mor__errf(err, err_n, MOR_E_INVALID, "n_batch = %d: must be 1..8192", p.n_batch);
    if (p.n_threads < 1 || p.n_threads > 256)
        return mor__errf(err, err_n, MOR_E_INVALID, "n_threads = %d: must be 1..256", p.n_threads);
    if (p.n_batch > p.n_ctx) p.n_batch = p.n_ctx;

    mor_session *s = calloc(1, sizeof *s);
    if (!s) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    s->model = m;
    s->kern = p.flags & MOR_SESSION_REF_KERNELS ? mor__kernels_ref() : mor__kernels_best();
    s->n_ctx = p.n_ctx;
    s->n_batch = p.n_batch;
    s->n_threads = p.n_threads;
    s->flags = p.flags;
    const size_t nb = (size_t)p.n_batch, d = (size_t)hp->n_embd, kvdim = (size_t)hp->n_head_kv * hp->head_dim,
                 qdim = (size_t)hp->n_head * hp->head_dim, V = (size_t)hp->n_vocab;
    size_t wide = MOR__MAX(MOR__MAX((size_t)hp->n_ff, 2 * d), MOR__MAX(qdim, kvdim));
    size_t maxcols = MOR__MAX(MOR__MAX((size_t)hp->n_ff, 2 * d), qdim);
    int fail = 0;
    s->slots = alloc_n((size_t)hp->n_layer, sizeof *s->slots, &fail);
    for (int32_t l = 0; !fail && l < hp->n_layer; l++) {
        if (!m->layers[l].kv_write) continue;
        s->slots[l].k = alloc_n((size_t)p.n_ctx * kvdim, sizeof(float), &fail);
        s->slots[l].v = alloc_n((size_t)p.n_ctx * kvdim, sizeof(float), &fail);
        s->slots[l].pos = alloc_n((size_t)p.n_ctx, sizeof(int32_t), &fail);
    }
    s->tokens = alloc_n((size_t)p.n_ctx, sizeof(int32_t), &fail);
    s->logits = alloc_n((p.flags & MOR_SESSION_LOGITS_ALL ? nb : 1) * V, sizeof(float), &fail);
    s->depths = alloc_n(nb, sizeof(int32_t), &fail);
    s->depth_all = alloc_n(nb, sizeof(int32_t), &fail);
    s->x = alloc_n(nb * d, sizeof(float), &fail);
    s->xb = alloc_n(nb * d, sizeof(float), &fail);
    s->q = alloc_n(nb * qdim, sizeof(float), &fail);
    s->k = alloc_n(nb * kvdim, sizeof(float), &fail);
    s->v = alloc_n(nb * kvdim, sizeof(float), &fail);
    s->ao = alloc_n(nb * qdim, sizeof(float), &fail);
    s->hb = alloc_n(nb * wide, sizeof(float), &fail);
    s->hb2 = alloc_n(nb * wide, sizeof(float), &fail);
    s->tmp = alloc_n(nb * wide, sizeof(float), &fail);
    s->lora = alloc_n(nb * (size_t)MOR__MAX(hp->lora_rank, 1), sizeof(float), &fail);
    s->att = alloc_n((size_t)p.n_ctx * (size_t)p.n_threads, sizeof(float), &fail);
    s->row_stride = (MOR__MAX(maxcols, (size_t)MOR__MAX(hp->lora_rank, 1)) + 15) & ~(size_t)15;
    s->row = alloc_n(s->row_stride * (size_t)p.n_threads, sizeof(float), &fail);
    s->rope_cos = alloc_n(nb * (size_t)(hp->head_dim / 2), sizeof(float), &fail);
    s->rope_sin = alloc_n(nb * (size_t)(hp->head_dim / 2), sizeof(float), &fail);
    s->h_in = alloc_n(nb * d, sizeof(float), &fail);
    s->xa = alloc_n(nb * d, sizeof(float), &fail);
    s->gate = alloc_n(nb, sizeof(float), &fail);
    s->router_h = alloc_n(nb * (size_t)MOR__MAX(hp->n_rec, 2), sizeof(float), &fail);
    s->act = alloc_n(nb, sizeof(int32_t), &fail);
    s->act_pos = alloc_n(nb, sizeof(int32_t), &fail);
    s->tok_depth = alloc_n(nb, sizeof(int32_t), &fail);
    s->tok_choice = alloc_n(nb, sizeof(int32_t), &fail);
    s->alive = alloc_n(nb, 1, &fail);
    s->probs = alloc_n(V, sizeof(float), &fail);
    s->cand = alloc_n(V, sizeof(int32_t), &fail);
    if (fail) {
        mor_session_free(s);
        return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory allocating a session of %d tokens", p.n_ctx);
    }
    int ps = mor__pool_create(&s->pool, p.n_threads);
    if (ps) {
        mor_session_free(s);
        return mor__errf(err, err_n, ps, "cannot start %d compute threads", p.n_threads);
    }
    sampler_from(&s->sampler, NULL);
    s->rng = s->sampler.seed;
    default_policy(m, &s->policy);
    *out = s;
    return MOR_OK;
}

const char *mor_session_last_error(const mor_session *s) { return s ? s->err : "session is NULL"; }

int mor_session_step(mor_session *s, const int32_t *tokens, int32_t n) {
    if (!s) return MOR_E_INVALID;
    s->err[0] = 0;
    if (!tokens) return mor__session_fail(s, MOR_E_INVALID, "tokens is NULL");
    if (n < 1) return mor__session_fail(s, MOR_E_INVALID, "n_tokens = %d: must be at least 1", n);
    int all = (s->flags & MOR_SESSION_LOGITS_ALL) != 0;
    if (all && n > s->n_batch)
        return mor__session_fail(s, MOR_E_INVALID,
                                 "%d tokens with MOR_SESSION_LOGITS_ALL: at most n_batch = %d per step", n,
                                 s->n_batch);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->model->hp.n_vocab)
            return mor__session_fail(s, MOR_E_TOKEN, "token %d at index %d is outside the vocabulary [0, %d)",
                                     tokens[i], i, s->model->hp.n_vocab);
    if (n > s->n_ctx - s->n_past)
        return mor__session_fail(s, MOR_E_CONTEXT_FULL,
                                 "%d tokens do not fit: %d of the context of %d are used", n, s->n_past,
                                 s->n_ctx);
    s->n_last = 0;
    s->n_logits = 0;
    for (int32_t off = 0; off < n; off += s->n_batch) {
        int32_t T = MOR__MIN(s->n_batch, n - off);
        int st = mor__forward(s, tokens + off, T, all);
        if (st) return mor__session_fail(s, st, "forward pass failed");
        for (int32_t i = 0; i < T; i++) {
            s->tokens[s->n_past + i] = tokens[off + i];
            if (off + i < s->n_batch) s->depth_all[off + i] = s->depths[i];
        }
        s->n_past += T;
    }
    s->n_last = n;
    return MOR_OK;
}

const float *mor_session_logits(const mor_session *s, int32_t i) {
    if (!s || s->n_logits == 0) return NULL;
    if (i == -1) i = s->n_last - 1;
    if (i < 0 || i >= s->n_last) return NULL;
    int32_t row = i - (s->n_last - s->n_logits);
    if (row < 0) return NULL;
    return s->logits + (size_t)row * (size_t)s->model->hp.n_vocab;
}

int32_t mor_session_depth(const mor_session *s, int32_t i) {
    if (!s || s->n_last == 0) return -1;
    if (i == -1) i = s->n_last - 1;
    if (i < 0 || i >= s->n_last) return -1;
    if (i < s->n_batch) return s->depth_all[i];
    // Tokens of earlier chunks beyond the first n_batch are not kept; the last chunk is.
    int32_t last_chunk = (s->n_last - 1) / s->n_batch * s->n_batch;
    return i >= last_chunk ? s->depths[i - last_chunk] : -1;
}

int32_t mor_session_n_past(const mor_session *s) { return s ? s->n_past : -1; }
int32_t mor_session_n_ctx(const mor_session *s) { return s ? s->n_ctx : -1; }
int32_t mor_session_n_last(const mor_session *s) { return s ? s->n_last : -1; }

static void truncate_slots(mor_session *s, int32_t n_keep) {
    for (int32_t l = 0; l < s->model->hp.n_layer; l++) {
        mor__kv_slot *sl = &s->slots[l];
        while (sl->len > 0 && sl->pos[sl->len - 1] >= n_keep) sl->len--;
    }
}

int mor_session_rewind(mor_session *s, int32_t n_keep) {
    if (!s) return MOR_E_INVALID;
    s->err[0] = 0;
    if (n_keep < 0 || n_keep > s->n_past)
        return mor__session_fail(s, MOR_E_INVALID, "n_keep = %d: must be 0..%d", n_keep, s->n_past);
    truncate_slots(s, n_keep);
    s->n_past = n_keep;
    s->n_last = 0;
    s->n_logits = 0;
    return MOR_OK;
}

void mor_session_reset(mor_session *s) {
    if (!s) return;
    mor_session_rewind(s, 0);
    s->rng = s->sampler.seed;
}

int mor_session_set_exit_policy(mor_session *s, const mor_exit_policy *pol) {
    if (!s) return MOR_E_INVALID;
    s->err[0] = 0;
    const mor__hparams *hp = &s->model->hp;
    mor__policy np;
    default_policy(s->model, &np);
    if (!pol) {
        s->policy = np;
        return MOR_OK;
    }
    if (pol->kind != MOR_PARAMS_EXIT)
        return mor__session_fail(s, MOR_E_INVALID, "policy is not a mor_exit_policy (kind %u)", pol->kind);
    mor_exit_policy q;
    mor_exit_policy_init(&q);
    memcpy(&q, pol, MOR__MIN(pol->size, sizeof q));
    if (q.policy == -1) q.policy = np.policy;
    switch (q.policy) {
    case MOR_EXIT_FULL:
        break;
    case MOR_EXIT_FIXED:
        if (q.depth < 1 || q.depth > hp->n_rec)
            return mor__session_fail(s, MOR_E_INVALID, "fixed depth %d: must be 1..%d (the model's recursions)",
                                     q.depth, hp->n_rec);
        break;
    case MOR_EXIT_ROUTER:
        if (hp->router == MOR_ROUTER_NONE)
            return mor__session_fail(s, MOR_E_UNSUPPORTED, "the router policy needs a model with a router; this one has none");
        break;
    default:
        return mor__session_fail(s, MOR_E_INVALID, "unknown exit policy %d", q.policy);
    }
    if (!(q.threshold >= 0.0f && q.threshold <= 1.0f))
        return mor__session_fail(s, MOR_E_INVALID, "threshold %g: must be within [0, 1]", q.threshold);
    if (q.min_depth < 0 || q.min_depth > hp->n_rec)
        return mor__session_fail(s, MOR_E_INVALID, "min_depth %d: must be 0..%d", q.min_depth, hp->n_rec);
    np.policy = q.policy;
    np.depth = q.policy == MOR_EXIT_FIXED ? q.depth : hp->n_rec;
    np.threshold = q.threshold;
    np.min_depth = q.min_depth;
    s->policy = np;
    return MOR_OK;
}

// ---- state ---------------------------------------------------------------------------------
// Layout (little-endian): "MORS", u32 version (1), u32 n_layer, u32 kv_dim, u32 n_vocab,
// u32 n_past, u32 policy[4] (policy, depth, threshold bits, min_depth), sampler (6 x u32 +
// u64 seed), u64 rng, tokens[n_past] (i32), then per slot: u32 len, pos[len] (i32),
// k[len*kv_dim] (f32), v[len*kv_dim] (f32). A slot that writes nothing has len 0.

#define STATE_MAGIC   0x53524f4du  // "MORS"
#define STATE_VERSION 1u

typedef struct {
    uint8_t *p;
    size_t   n, cap;
} wbuf;

static void put(wbuf *w, const void *src, size_t n) {
    if (w->p && w->n + n <= w->cap) memcpy(w->p + w->n, src, n);
    w->n += n;
}
static void put_u32(wbuf *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}
static void put_u64(wbuf *w, uint64_t v) {
    put_u32(w, (uint32_t)v);
    put_u32(w, (uint32_t)(v >> 32));
}
static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
// Arrays of 32-bit values are written element by element so the format is little-endian on
// any host.
static void put_arr32(wbuf *w, const void *src, size_t n) {
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, p + 4 * i, 4);
        put_u32(w, v);
    }
}

static size_t serialize(const mor_session *s, void *buf, size_t cap) {
    const mor__hparams *hp = &s->model->hp;
    uint32_t kvdim = (uint32_t)(hp->n_head_kv * hp->head_dim);
    wbuf w = {buf, 0, cap};
    put_u32(&w, STATE_MAGIC);
    put_u32(&w, STATE_VERSION);
    put_u32(&w, (uint32_t)hp->n_layer);
    put_u32(&w, kvdim);
    put_u32(&w, (uint32_t)hp->n_vocab);
    put_u32(&w, (uint32_t)s->n_past);
    put_u32(&w, (uint32_t)s->policy.policy);
    put_u32(&w, (uint32_t)s->policy.depth);
    put_u32(&w, f2u(s->policy.threshold));
    put_u32(&w, (uint32_t)s->policy.min_depth);
    put_u32(&w, f2u(s->sampler.temperature));
    put_u32(&w, (uint32_t)s->sampler.top_k);
    put_u32(&w, f2u(s->sampler.top_p));
    put_u32(&w, f2u(s->sampler.min_p));
    put_u32(&w, f2u(s->sampler.repeat_penalty));
    put_u32(&w, (uint32_t)s->sampler.repeat_last_n);
    put_u64(&w, s->sampler.seed);
    put_u64(&w, s->rng);
    put_arr32(&w, s->tokens, (size_t)s->n_past);
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const mor__kv_slot *sl = &s->slots[l];
        uint32_t len = sl->k ? (uint32_t)sl->len : 0;
        put_u32(&w, len);
        put_arr32(&w, sl->pos, len);
        put_arr32(&w, sl->k, (size_t)len * kvdim);
        put_arr32(&w, sl->v, (size_t)len * kvdim);
    }
    return w.n;
}

size_t mor_session_state_size(const mor_session *s) { return s ? serialize(s, NULL, 0) : 0; }

int mor_session_state_save(const mor_session *s, void *buf, size_t cap, size_t *n_written) {
    if (!s || (!buf && cap)) return MOR_E_INVALID;
    size_t need = serialize(s, NULL, 0);
    if (n_written) *n_written = need;
    if (need > cap) return MOR_E_BUFFER_SMALL;
    serialize(s, buf, cap);
    return MOR_OK;
}

typedef struct {
    const uint8_t *p;
    size_t         n, off;
    int            bad;
} rbuf;

static uint32_t get_u32(rbuf *r) {
    if (r->bad || r->n - r->off < 4) {
        r->bad = 1;
        return 0;
    }
    const uint8_t *b = r->p + r->off;
    r->off += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}
static uint64_t get_u64(rbuf *r) {
    uint64_t lo = get_u32(r);
    return lo | (uint64_t)get_u32(r) << 32;
}
static int get_arr32(rbuf *r, void *dst, size_t n) {
    if (r->bad || (r->n - r->off) / 4 < n) return r->bad = 1, 0;
    uint8_t *d = dst;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = get_u32(r);
        memcpy(d + 4 * i, &v, 4);
    }
    return 1;
}

int mor_session_state_load(mor_session *s, const void *buf, size_t size) {
    if (!s) return MOR_E_INVALID;
    s->err[0] = 0;
    if (!buf) return mor__session_fail(s, MOR_E_INVALID, "buffer is NULL");
    const mor__hparams *hp = &s->model->hp;
    uint32_t kvdim = (uint32_t)(hp->n_head_kv * hp->head_dim);
    // Pass 1: validate everything without touching the session.
    rbuf r = {buf, size, 0, 0};
    if (get_u32(&r) != STATE_MAGIC) return mor__session_fail(s, MOR_E_STATE, "state: bad magic");
    uint32_t ver = get_u32(&r);
    if (ver != STATE_VERSION) return mor__session_fail(s, MOR_E_STATE, "state: version %u, expected %u", ver, STATE_VERSION);
    uint32_t nl = get_u32(&r), kd = get_u32(&r), nv = get_u32(&r), np = get_u32(&r);
    if (r.bad || nl != (uint32_t)hp->n_layer || kd != kvdim || nv != (uint32_t)hp->n_vocab)
        return mor__session_fail(s, MOR_E_STATE,
                                 "state: saved for a model with %u layers, kv dim %u, vocab %u; this one has "
                                 "%d, %u, %d",
                                 nl, kd, nv, hp->n_layer, kvdim, hp->n_vocab);
    if (np > (uint32_t)s->n_ctx)
        return mor__session_fail(s, MOR_E_STATE, "state: %u tokens do not fit the context of %d", np, s->n_ctx);
    mor__policy pol;
    pol.policy = (int32_t)get_u32(&r);
    pol.depth = (int32_t)get_u32(&r);
    pol.threshold = u2f(get_u32(&r));
    pol.min_depth = (int32_t)get_u32(&r);
    mor__sampler sm;
    sm.temperature = u2f(get_u32(&r));
    sm.top_k = (int32_t)get_u32(&r);
    sm.top_p = u2f(get_u32(&r));
    sm.min_p = u2f(get_u32(&r));
    sm.repeat_penalty = u2f(get_u32(&r));
    sm.repeat_last_n = (int32_t)get_u32(&r);
    sm.seed = get_u64(&r);
    uint64_t rng = get_u64(&r);
    if (r.bad || pol.policy < MOR_EXIT_FULL || pol.policy > MOR_EXIT_ROUTER || pol.depth < 1 ||
        pol.depth > hp->n_rec || !(pol.threshold >= 0 && pol.threshold <= 1) || pol.min_depth < 0 ||
        pol.min_depth > hp->n_rec || (pol.policy == MOR_EXIT_ROUTER && hp->router == MOR_ROUTER_NONE))
        return mor__session_fail(s, MOR_E_STATE, "state: truncated or invalid policy/sampler fields");
    size_t tok_off = r.off;
    if ((r.n - r.off) / 4 < np) return mor__session_fail(s, MOR_E_STATE, "state: truncated token list");
    r.off += (size_t)np * 4;
    for (uint32_t i = 0; i < np; i++) {
        rbuf tr = {r.p + tok_off + 4 * i, 4, 0, 0};
        int32_t t = (int32_t)get_u32(&tr);
        if (t < 0 || t >= hp->n_vocab) return mor__session_fail(s, MOR_E_STATE, "state: token %d out of range", t);
    }
    size_t slot_off = r.off;
    for (int32_t l = 0; l < hp->n_layer; l++) {
        uint32_t len = get_u32(&r);
        if (r.bad || len > np || (len && !s->slots[l].k))
            return mor__session_fail(s, MOR_E_STATE, "state: slot %d has %u entries (at most %u)", l, len, np);
        int32_t prev = -1;
        for (uint32_t e = 0; e < len; e++) {
            int32_t p = (int32_t)get_u32(&r);
            if (r.bad || p <= prev || p >= (int32_t)np)
                return mor__session_fail(s, MOR_E_STATE, "state: slot %d: positions not increasing within 0..%u", l, np);
            prev = p;
        }
        size_t skip = (size_t)len * kvdim * 2;
        if ((r.n - r.off) / 4 < skip) return mor__session_fail(s, MOR_E_STATE, "state: slot %d truncated", l);
        r.off += skip * 4;
    }
    if (r.off != r.n) return mor__session_fail(s, MOR_E_STATE, "state: %zu trailing bytes", r.n - r.off);
    // Pass 2: apply.
    s->policy = pol;
    s->sampler = sm;
    s->rng = rng;
    s->n_past = (int32_t)np;
    s->n_last = 0;
    s->n_logits = 0;
    rbuf t2 = {r.p, r.n, tok_off, 0};
    get_arr32(&t2, s->tokens, np);
    rbuf s2 = {r.p, r.n, slot_off, 0};
    for (int32_t l = 0; l < hp->n_layer; l++) {
        mor__kv_slot *sl = &s->slots[l];
        uint32_t len = get_u32(&s2);
        if (sl->k) {
            get_arr32(&s2, sl->pos, len);
            get_arr32(&s2, sl->k, (size_t)len * kvdim);
            get_arr32(&s2, sl->v, (size_t)len * kvdim);
            sl->len = (int32_t)len;
        }
    }
    return MOR_OK;
}
