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
    // From inside a callback of the session (or of its scheduler's round) the memory is still
    // in use: the call that runs the callback frees it on its way out.
    if (s->busy || (s->sched && mor__sched_busy(s->sched))) {
        s->free_pending = 1;
        return;
    }
    if (s->sched) mor_sched_remove(s->sched, s);
    mor__router_release(s);
    mor__pool_free(s->pool);
    if (s->slots)
        for (int32_t l = 0; l < s->model->hp.n_layer; l++) {
            mor__free(&s->alloc, s->slots[l].k);
            mor__free(&s->alloc, s->slots[l].v);
            mor__free(&s->alloc, s->slots[l].k16);
            mor__free(&s->alloc, s->slots[l].v16);
            mor__free(&s->alloc, s->slots[l].pos);
        }
    mor__free(&s->alloc, s->slots);
    void *bufs[] = {s->tokens, s->logits, s->depths, s->depth_all, s->x, s->xb, s->q, s->k, s->v,
                    s->ao, s->hb, s->hb2, s->tmp, s->lora, s->att, s->row, s->rope_cos,
                    s->rope_sin, s->h_in, s->xa, s->gate, s->router_h, s->act, s->act_pos,
                    s->tok_depth, s->tok_choice, s->alive, s->probs, s->cand, s->tpos, s->row_start,
                    s->joined, s->exit_step, s->conf, s->cosv, s->rscore, s->cap, s->h_step, s->h_exit,
                    s->vocab_buf, s->shallow_top, s->slot_of, s->slot_write, s->stack_pos,
                    s->stack_step, s->stack_top, s->stack_h, s->stack_conf, s->row_head,
                    s->trace.depth, s->trace.score, s->trace.kv, s->trace.given, s->budget_ring, s->bmm};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mor__free(&s->alloc, bufs[i]);
    const mor_allocator a = s->alloc;
    const mor_model *m = s->model;
    int counted = s->model_ref;
    mor__free(&a, s);
    if (counted) mor__model_unref(m);
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

// The session's memory plan. session_plan() walks every buffer a session owns once, with the
// same sizes whether it only counts (mor_session_memory_size, the cap check) or allocates
// (mor_session_create), so the estimate is exact by construction.
typedef struct {
    mor_session *s;      // NULL: count only
    uint64_t     bytes;  // bytes counted so far (each buffer rounded up to whole cache lines)
    int          fail;   // overflow or out of memory
} plan;

static void *take(plan *c, uint64_t n, size_t elem, int zero) {
    uint64_t b;
    if (c->fail || mor__mul_u64(n ? n : 1, elem, &b) || b > SIZE_MAX - 64) {
        c->fail = 1;
        return NULL;
    }
    c->bytes += (b + 63) & ~(uint64_t)63;
    if (!c->s) return NULL;
    void *p = mor__alloc(&c->s->alloc, (size_t)n, elem, zero);
    if (!p) c->fail = 1;
    return p;
}

// p: validated parameters. Writes the buffers into c->s when it is not NULL.
static void session_plan(plan *c, const mor_model *m, const mor_session_params *p) {
    mor_session dummy, *s = c->s ? c->s : &dummy;
    const mor__hparams *hp = &m->hp;
    const uint64_t nb = (uint64_t)p->n_batch, d = (uint64_t)hp->n_embd, kvdim = (uint64_t)hp->n_head_kv * hp->head_dim,
                   qdim = (uint64_t)hp->n_head * hp->head_dim, V = (uint64_t)hp->n_vocab, ctx = (uint64_t)p->n_ctx;
    const uint64_t wide = MOR__MAX(MOR__MAX((uint64_t)hp->n_ff, 2 * d), MOR__MAX(qdim, kvdim));
    const uint64_t maxcols = MOR__MAX(MOR__MAX((uint64_t)hp->n_ff, 2 * d), qdim);
    const uint64_t rank = (uint64_t)MOR__MAX(hp->lora_rank, 1);
    c->bytes += (sizeof(mor_session) + 63) & ~(uint64_t)63;
    s->slots = take(c, (uint64_t)hp->n_layer, sizeof *s->slots, 1);
    // K/V entries are written before they are read (a slot's length bounds every read), so
    // they are not zeroed: a context that is never filled costs address space, not memory.
    const int f16 = (p->flags & MOR_SESSION_KV_F16) != 0;
    for (int32_t l = 0; l < hp->n_layer && !c->fail; l++) {
        void *k = take(c, ctx * kvdim, f16 ? sizeof(uint16_t) : sizeof(float), 0);
        void *v = take(c, ctx * kvdim, f16 ? sizeof(uint16_t) : sizeof(float), 0);
        void *pos = take(c, ctx, sizeof(int32_t), 0);
        if (!c->s) continue;
        s->slots[l].pos = pos;
        if (f16) s->slots[l].k16 = k, s->slots[l].v16 = v;
        else s->slots[l].k = k, s->slots[l].v = v;
    }
    s->tokens = take(c, ctx, sizeof(int32_t), 1);
    s->logits = take(c, (p->flags & MOR_SESSION_LOGITS_ALL ? nb : 1) * V, sizeof(float), 1);
    s->depths = take(c, nb, sizeof(int32_t), 1);
    s->depth_all = take(c, nb, sizeof(int32_t), 1);
    s->x = take(c, nb * d, sizeof(float), 1);
    s->xb = take(c, nb * d, sizeof(float), 1);
    s->q = take(c, nb * qdim, sizeof(float), 1);
    s->k = take(c, nb * kvdim, sizeof(float), 1);
    s->v = take(c, nb * kvdim, sizeof(float), 1);
    s->ao = take(c, nb * qdim, sizeof(float), 1);
    s->hb = take(c, nb * wide, sizeof(float), 1);
    s->hb2 = take(c, nb * wide, sizeof(float), 1);
    s->tmp = take(c, nb * wide, sizeof(float), 1);
    s->lora = take(c, nb * rank, sizeof(float), 1);
    s->att = take(c, ctx * (uint64_t)p->n_threads, sizeof(float), 1);
    s->row_stride = (size_t)((MOR__MAX(maxcols, rank) + 15) & ~(uint64_t)15);
    s->row = take(c, (uint64_t)s->row_stride * (uint64_t)p->n_threads, sizeof(float), 1);
    s->rope_cos = take(c, nb * (uint64_t)(hp->head_dim / 2), sizeof(float), 1);
    s->rope_sin = take(c, nb * (uint64_t)(hp->head_dim / 2), sizeof(float), 1);
    s->h_in = take(c, nb * d, sizeof(float), 1);
    s->xa = take(c, nb * d, sizeof(float), 1);
    s->gate = take(c, nb, sizeof(float), 1);
    s->router_h = take(c, nb * (uint64_t)MOR__MAX(hp->n_rec, 2), sizeof(float), 1);
    s->act = take(c, nb, sizeof(int32_t), 1);
    s->act_pos = take(c, nb, sizeof(int32_t), 1);
    s->tok_depth = take(c, nb, sizeof(int32_t), 1);
    s->tok_choice = take(c, nb, sizeof(int32_t), 1);
    s->alive = take(c, 2 * nb, 1, 1);
    s->tpos = take(c, nb, sizeof(int32_t), 1);
    s->row_start = take(c, nb, sizeof(int32_t), 1);
    s->joined = take(c, nb, 1, 1);
    s->exit_step = take(c, nb, sizeof(int32_t), 1);
    s->conf = take(c, nb, sizeof(float), 1);
    s->cosv = take(c, nb, sizeof(float), 1);
    s->rscore = take(c, nb, sizeof(float), 1);
    s->cap = take(c, 2 * nb, sizeof(int32_t), 1);
    s->h_step = take(c, nb * d, sizeof(float), 1);
    s->h_exit = take(c, nb * d, sizeof(float), 1);
    s->vocab_buf = take(c, V, sizeof(float), 1);
    s->shallow_top = take(c, nb, sizeof(int32_t), 1);
    s->row_head = take(c, nb, sizeof(int32_t), 1);
    s->slot_of = take(c, (uint64_t)hp->n_layer, sizeof(int32_t), 1);
    s->slot_write = take(c, (uint64_t)hp->n_layer, 1, 1);
    s->stack_pos = take(c, nb, sizeof(int32_t), 1);
    s->stack_step = take(c, nb, sizeof(int32_t), 1);
    s->stack_top = take(c, nb, sizeof(int32_t), 1);
    s->stack_conf = take(c, nb, sizeof(float), 1);
    s->stack_h = take(c, nb * d, sizeof(float), 1);
    s->trace.depth = take(c, ctx, 1, 1);
    s->trace.score = take(c, ctx, sizeof(float), 1);
    s->trace.kv = take(c, ctx, 1, 1);
    s->trace.given = take(c, ctx, 1, 1);
    s->budget_ring = take(c, MOR__BUDGET_MAX_WINDOW, sizeof(int32_t), 1);
    s->bmm = take(c, 1, sizeof(mor__bmm), 1);
    s->probs = take(c, V, sizeof(float), 1);
    s->cand = take(c, V, sizeof(int32_t), 1);
}

// Parameters with their defaults filled in and checked; the message goes to err.
static int session_params(const mor_model *m, const mor_session_params *params, mor_session_params *p,
                          char *err, size_t err_n) {
    if (!m) return mor__errf(err, err_n, MOR_E_INVALID, "model is NULL");
    if (m->vocab_only) return mor__errf(err, err_n, MOR_E_INVALID, "the model was loaded vocab-only: it has no weights");
    if (params && params->kind != MOR_PARAMS_SESSION)
        return mor__errf(err, err_n, MOR_E_INVALID, "params is not a mor_session_params (kind %u)", params->kind);
    mor_session_params_init(p);
    if (params) memcpy(p, params, MOR__MIN(params->size, sizeof *p));
    p->size = sizeof *p;
    const mor__hparams *hp = &m->hp;
    // A file may claim any trained context; the default stays at what an interactive session
    // needs unless the caller asks for more.
    if (p->n_ctx == 0) p->n_ctx = MOR__MIN(hp->n_ctx_train > 0 ? hp->n_ctx_train : MOR_SESSION_DEFAULT_CTX,
                                           MOR_SESSION_DEFAULT_CTX);
    if (p->n_ctx < 1 || p->n_ctx > (1 << 20))
        return mor__errf(err, err_n, MOR_E_INVALID, "n_ctx = %d: must be 1..1048576 (0 = min(trained context %d, %d))",
                         p->n_ctx, hp->n_ctx_train, MOR_SESSION_DEFAULT_CTX);
    if (p->n_batch < 1 || p->n_batch > 8192)
        return mor__errf(err, err_n, MOR_E_INVALID, "n_batch = %d: must be 1..8192", p->n_batch);
    if (p->n_threads < 1 || p->n_threads > 256)
        return mor__errf(err, err_n, MOR_E_INVALID, "n_threads = %d: must be 1..256", p->n_threads);
    if (p->max_bytes < -1)
        return mor__errf(err, err_n, MOR_E_INVALID, "max_bytes = %lld: must be -1 (no cap), 0 (default) or a byte count",
                         (long long)p->max_bytes);
    if (p->n_batch > p->n_ctx) p->n_batch = p->n_ctx;
    return MOR_OK;
}

// The default cap: 1 GiB, or the model's weight bytes for a model larger than that (a file
// cannot make a session reserve much more than the file's own size without the caller's say).
static uint64_t default_cap(const mor_model *m) {
    return MOR__MAX((uint64_t)MOR_SESSION_DEFAULT_MAX_BYTES, (uint64_t)m->weight_bytes);
}

int mor_session_memory_size(const mor_model *m, const mor_session_params *params, uint64_t *bytes, char *err,
                            size_t err_n) {
    if (err && err_n) err[0] = 0;
    if (!bytes) return mor__errf(err, err_n, MOR_E_INVALID, "bytes is NULL");
    *bytes = 0;
    mor_session_params p;
    int st = session_params(m, params, &p, err, err_n);
    if (st) return st;
    plan c = {0};
    session_plan(&c, m, &p);
    if (c.fail) return mor__errf(err, err_n, MOR_E_LIMIT, "a session of %d tokens overflows the address space", p.n_ctx);
    *bytes = c.bytes;
    return MOR_OK;
}

int mor_session_create(const mor_model *m, const mor_session_params *params, mor_session **out,
                       char *err, size_t err_n) {
    if (err && err_n) err[0] = 0;
    if (!out) return mor__errf(err, err_n, MOR_E_INVALID, "out is NULL");
    *out = NULL;
    mor_session_params p;
    int st = session_params(m, params, &p, err, err_n);
    if (st) return st;
    const mor__hparams *hp = &m->hp;
    // Count before allocating: a file claiming a huge context or depth is refused here, with
    // the figure, instead of exhausting the host's memory.
    plan c = {0};
    session_plan(&c, m, &p);
    const uint64_t cap = p.max_bytes == 0 ? default_cap(m) : p.max_bytes < 0 ? UINT64_MAX : (uint64_t)p.max_bytes;
    if (c.fail || c.bytes > cap)
        return mor__errf(err, err_n, MOR_E_LIMIT,
                         "a session of %d tokens over %d layers needs %.1f MiB, over the cap of %.1f MiB "
                         "(set mor_session_params.max_bytes to allow more, or lower n_ctx)",
                         p.n_ctx, hp->n_layer, c.fail ? INFINITY : (double)c.bytes / 1048576.0, (double)cap / 1048576.0);

    const mor_allocator *a = mor__alloc_custom(&p.allocator) ? &p.allocator : &m->alloc;
    mor_session *s = mor__alloc(a, 1, sizeof *s, 1);
    if (!s) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    s->alloc = *a;
    s->model = m;
    s->kern = p.flags & MOR_SESSION_REF_KERNELS ? mor__kernels_ref() : mor__kernels_best();
    s->n_ctx = p.n_ctx;
    s->n_batch = p.n_batch;
    s->n_threads = p.n_threads;
    s->flags = p.flags;
    c = (plan){.s = s};
    session_plan(&c, m, &p);
    s->conf_group = 1;
    if (c.fail) {
        mor_session_free(s);
        return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory allocating a session of %d tokens (%.1f MiB)", p.n_ctx,
                         (double)c.bytes / 1048576.0);
    }
    int ps = mor__pool_create_with(&s->pool, p.n_threads, &s->alloc);
    if (ps) {
        mor_session_free(s);
        return mor__errf(err, err_n, ps, "cannot start %d compute threads", p.n_threads);
    }
    s->w = (mor__work){s->xb, s->q, s->k, s->v, s->ao, s->hb, s->hb2, s->tmp, s->lora, s->att, (size_t)p.n_ctx,
                       s->row, s->row_stride, s->pool, s->kern, p.n_batch};
    sampler_from(&s->sampler, NULL);
    s->rng = s->sampler.seed;
    mor__policy_default(m, &s->policy);
    mor__apply_kv(s);
    s->rollback_to = -1;
    mor__model_ref(m);
    s->model_ref = 1;
    *out = s;
    return MOR_OK;
}

const char *mor_session_last_error(const mor_session *s) { return s ? s->err : "session is NULL"; }

int mor__session_check(mor_session *s, const int32_t *tokens, int32_t n, int32_t queued) {
    if (!tokens) return mor__session_fail(s, MOR_E_INVALID, "tokens is NULL");
    if (n < 1) return mor__session_fail(s, MOR_E_INVALID, "n_tokens = %d: must be at least 1", n);
    int all = (s->flags & MOR_SESSION_LOGITS_ALL) != 0;
    if (all && n > s->n_batch)
        return mor__session_fail(s, MOR_E_INVALID,
                                 "%d tokens with MOR_SESSION_LOGITS_ALL: at most n_batch = %d per step", n,
                                 s->n_batch);
    // The count first: a wrong n_tokens must not make us read far past the caller's array.
    if (n > s->n_ctx - s->n_past - queued)
        return mor__session_fail(s, MOR_E_CONTEXT_FULL,
                                 "%d tokens do not fit: %d of the context of %d are used", n, s->n_past + queued,
                                 s->n_ctx);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->model->hp.n_vocab)
            return mor__session_fail(s, MOR_E_TOKEN, "token %d at index %d is outside the vocabulary [0, %d)",
                                     tokens[i], i, s->model->hp.n_vocab);
    return MOR_OK;
}

// Tokens a pass takes from a request of n tokens starting at off.
int32_t mor__session_chunk(const mor_session *s, int32_t n, int32_t off) {
    // Synchronized parallel decoding (FREE, docs/DESIGN.md) runs one new token per pass: a
    // token that exits waits on the stack for the next token that goes deep.
    int32_t room = s->policy.kv == MOR_KV_SYNC ? 1 : s->n_batch;
    return MOR__MIN(room, n - off);
}

void mor__session_prepare(mor_session *s, const int32_t *tokens, int32_t T, int given, int32_t off) {
    int all = (s->flags & MOR_SESSION_LOGITS_ALL) != 0;
    s->logit_row0 = all && s->policy.kv == MOR_KV_SYNC ? off : 0;
    s->ring_save_next = s->budget_next, s->ring_save_n = s->budget_n;
    for (int32_t i = 0; i < T; i++) {
        s->trace.given[s->n_past + i] = (uint8_t)given;
        s->tokens[s->n_past + i] = tokens[i];
    }
}

int mor__session_abort(mor_session *s, int st) {
    mor__truncate_slots(s, s->n_past);  // drop what the pass appended, keep the session usable
    s->budget_next = s->ring_save_next, s->budget_n = s->ring_save_n;
    s->n_last = 0;
    s->n_logits = 0;
    if (!s->err[0]) mor__session_fail(s, st, "forward pass failed");
    return st;
}

int mor__session_commit(mor_session *s, int32_t T, int32_t off) {
    for (int32_t i = 0; i < T; i++)
        if (off + i < s->n_batch) s->depth_all[off + i] = s->depths[i];
    s->n_past += T;
    s->n_last = off + T;
    if (s->logit_row0) s->n_logits = off + T;
    if (s->rollback_to < 0) return 0;
    // The deep pass disagreed with an emitted token: back to it, with the deep logits there.
    int32_t to = s->rollback_to;
    s->rolled_back = s->n_past - to;
    s->st_rollbacks++;
    mor__truncate_slots(s, to);
    s->n_past = to;
    s->n_last = 1;
    s->n_logits = 1;  // the deep logits at the new end were left in row 0
    s->depth_all[0] = s->model->n_steps;
    s->rollback_to = -1;
    return 1;
}

// The end of a call that ran callbacks: a free they asked for happens now.
static int finish_call(mor_session *s, int st) {
    if (!s->free_pending) return st;
    s->free_pending = 0;
    mor_session_free(s);
    return MOR_E_CANCELLED;
}

int mor_session_step(mor_session *s, const int32_t *tokens, int32_t n) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (s->sched) return mor__session_fail(s, MOR_E_INVALID, "the session belongs to a scheduler: submit work there");
    int st = mor__session_check(s, tokens, n, 0);
    if (st) return st;
    s->n_last = 0;
    s->n_logits = 0;
    s->rolled_back = 0;
    int all = (s->flags & MOR_SESSION_LOGITS_ALL) != 0;
    for (int32_t off = 0; off < n;) {
        int32_t T = mor__session_chunk(s, n, off);
        mor__session_prepare(s, tokens + off, T, n > 1, off);
        st = mor__forward(s, s->tokens + s->n_past, T, all);
        if (st) return finish_call(s, mor__session_abort(s, st));
        if (mor__session_commit(s, T, off)) return MOR_OK;
        off += T;
    }
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

int mor_session_token_at(const mor_session *s, int32_t pos, int32_t *token) {
    if (!s || !token || pos < 0 || pos >= s->n_past) return MOR_E_INVALID;
    *token = s->tokens[pos];
    return MOR_OK;
}

const mor_model *mor_session_model(const mor_session *s) { return s ? s->model : NULL; }
int32_t mor_session_n_past(const mor_session *s) { return s ? s->n_past : -1; }
int32_t mor_session_n_ctx(const mor_session *s) { return s ? s->n_ctx : -1; }
int32_t mor_session_n_last(const mor_session *s) { return s ? s->n_last : -1; }

int64_t mor__session_kv_bytes(const mor_session *s) {
    const mor__hparams *hp = &s->model->hp;
    const int64_t per = (int64_t)hp->n_head_kv * hp->head_dim * 2 * (int64_t)sizeof(float);
    int64_t b = 0;
    for (int32_t l = 0; l < hp->n_layer; l++) b += (int64_t)s->slots[l].len * per;
    return b;
}

void mor__truncate_slots(mor_session *s, int32_t n_keep) {
    for (int32_t l = 0; l < s->model->hp.n_layer; l++) {
        mor__kv_slot *sl = &s->slots[l];
        while (sl->len > 0 && sl->pos[sl->len - 1] >= n_keep) sl->len--;
    }
    int32_t k = 0;  // stacked tokens past the cut go too
    for (int32_t j = 0; j < s->n_stack; j++) {
        if (s->stack_pos[j] >= n_keep) continue;
        if (k != j) {
            s->stack_pos[k] = s->stack_pos[j], s->stack_step[k] = s->stack_step[j];
            s->stack_top[k] = s->stack_top[j], s->stack_conf[k] = s->stack_conf[j];
            memmove(s->stack_h + (size_t)k * s->model->hp.n_embd, s->stack_h + (size_t)j * s->model->hp.n_embd,
                    (size_t)s->model->hp.n_embd * sizeof(float));
        }
        k++;
    }
    s->n_stack = k;
}

int mor_session_rewind(mor_session *s, int32_t n_keep) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (s->ps.active) return mor__session_fail(s, MOR_E_INVALID, "a token of this session is being computed by its scheduler");
    if (n_keep < 0 || n_keep > s->n_past)
        return mor__session_fail(s, MOR_E_INVALID, "n_keep = %d: must be 0..%d", n_keep, s->n_past);
    mor__truncate_slots(s, n_keep);
    s->n_past = n_keep;
    s->n_last = 0;
    s->n_logits = 0;
    s->rolled_back = 0;
    if (s->has_router && s->router.reset) {
        s->busy++;
        s->router.reset(s->router_user);
        s->busy--;
    }
    return finish_call(s, MOR_OK);
}

void mor_session_reset(mor_session *s) {
    if (!s || s->ps.active) return;  // a scheduler is computing one of its tokens
    if (s->busy) {
        mor__session_fail(s, MOR_E_BUSY, "mor_session_reset() called from a callback of the same session");
        return;
    }
    if (mor_session_rewind(s, 0) == MOR_E_CANCELLED) return;  // its reset callback freed it
    s->rng = s->sampler.seed;
    s->n_stack = 0;
    s->st_tokens = s->st_steps = s->st_evals = s->st_evals_full = s->st_deep = s->st_rollbacks = 0;
    memset(s->st_hist, 0, sizeof s->st_hist);
    s->budget_n = s->budget_next = 0;
    if (s->policy.policy == MOR_EXIT_FREE && s->policy.adaptive) mor__bmm_refit(s);  // a new sequence
}

