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
    if (s->sched) mor_sched_remove(s->sched, s);
    if (s->has_router && s->router.free) s->router.free(s->router_user);
    mor__pool_free(s->pool);
    if (s->slots)
        for (int32_t l = 0; l < s->model->hp.n_layer; l++) {
            free(s->slots[l].k);
            free(s->slots[l].v);
            free(s->slots[l].k16);
            free(s->slots[l].v16);
            free(s->slots[l].pos);
        }
    free(s->slots);
    void *bufs[] = {s->tokens, s->logits, s->depths, s->depth_all, s->x, s->xb, s->q, s->k, s->v,
                    s->ao, s->hb, s->hb2, s->tmp, s->lora, s->att, s->row, s->rope_cos,
                    s->rope_sin, s->h_in, s->xa, s->gate, s->router_h, s->act, s->act_pos,
                    s->tok_depth, s->tok_choice, s->alive, s->probs, s->cand, s->tpos, s->row_start,
                    s->joined, s->exit_step, s->conf, s->cosv, s->rscore, s->cap, s->h_step, s->h_exit,
                    s->vocab_buf, s->shallow_top, s->slot_of, s->slot_write, s->stack_pos,
                    s->stack_step, s->stack_top, s->stack_h, s->stack_conf, s->row_head,
                    s->trace.depth, s->trace.score, s->trace.kv, s->trace.given, s->budget_ring, s->bmm};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    free(s);
}

// Zeroed and 64-byte aligned (whole cache lines: the SIMD kernels load rows at full speed).
void *mor__alloc_zero(size_t n, size_t elem) {
    size_t bytes;
    if (__builtin_mul_overflow(n ? n : 1, elem, &bytes) || bytes > SIZE_MAX - 64) return NULL;
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

static void *alloc_n(size_t n, size_t elem, int *fail) {
    void *p = mor__alloc_zero(n, elem);
    if (!p) *fail = 1;
    return p;
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
        if (p.flags & MOR_SESSION_KV_F16) {
            s->slots[l].k16 = alloc_n((size_t)p.n_ctx * kvdim, sizeof(uint16_t), &fail);
            s->slots[l].v16 = alloc_n((size_t)p.n_ctx * kvdim, sizeof(uint16_t), &fail);
        } else {
            s->slots[l].k = alloc_n((size_t)p.n_ctx * kvdim, sizeof(float), &fail);
            s->slots[l].v = alloc_n((size_t)p.n_ctx * kvdim, sizeof(float), &fail);
        }
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
    s->alive = alloc_n(2 * nb, 1, &fail);
    s->tpos = alloc_n(nb, sizeof(int32_t), &fail);
    s->row_start = alloc_n(nb, sizeof(int32_t), &fail);
    s->joined = alloc_n(nb, 1, &fail);
    s->exit_step = alloc_n(nb, sizeof(int32_t), &fail);
    s->conf = alloc_n(nb, sizeof(float), &fail);
    s->cosv = alloc_n(nb, sizeof(float), &fail);
    s->rscore = alloc_n(nb, sizeof(float), &fail);
    s->cap = alloc_n(2 * nb, sizeof(int32_t), &fail);
    s->h_step = alloc_n(nb * d, sizeof(float), &fail);
    s->h_exit = alloc_n(nb * d, sizeof(float), &fail);
    s->vocab_buf = alloc_n(V, sizeof(float), &fail);
    s->conf_group = 1;
    s->shallow_top = alloc_n(nb, sizeof(int32_t), &fail);
    s->row_head = alloc_n(nb, sizeof(int32_t), &fail);
    s->slot_of = alloc_n((size_t)hp->n_layer, sizeof(int32_t), &fail);
    s->slot_write = alloc_n((size_t)hp->n_layer, 1, &fail);
    s->stack_pos = alloc_n(nb, sizeof(int32_t), &fail);
    s->stack_step = alloc_n(nb, sizeof(int32_t), &fail);
    s->stack_top = alloc_n(nb, sizeof(int32_t), &fail);
    s->stack_conf = alloc_n(nb, sizeof(float), &fail);
    s->stack_h = alloc_n(nb * d, sizeof(float), &fail);
    s->trace.depth = alloc_n((size_t)p.n_ctx, 1, &fail);
    s->trace.score = alloc_n((size_t)p.n_ctx, sizeof(float), &fail);
    s->trace.kv = alloc_n((size_t)p.n_ctx, 1, &fail);
    s->trace.given = alloc_n((size_t)p.n_ctx, 1, &fail);
    s->budget_ring = alloc_n(MOR__BUDGET_MAX_WINDOW, sizeof(int32_t), &fail);
    s->bmm = alloc_n(1, sizeof(mor__bmm), &fail);
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
    s->w = (mor__work){s->xb, s->q, s->k, s->v, s->ao, s->hb, s->hb2, s->tmp, s->lora, s->att, (size_t)p.n_ctx,
                       s->row, s->row_stride, s->pool, s->kern, p.n_batch};
    sampler_from(&s->sampler, NULL);
    s->rng = s->sampler.seed;
    mor__policy_default(m, &s->policy);
    mor__apply_kv(s);
    s->rollback_to = -1;
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
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= s->model->hp.n_vocab)
            return mor__session_fail(s, MOR_E_TOKEN, "token %d at index %d is outside the vocabulary [0, %d)",
                                     tokens[i], i, s->model->hp.n_vocab);
    if (n > s->n_ctx - s->n_past - queued)
        return mor__session_fail(s, MOR_E_CONTEXT_FULL,
                                 "%d tokens do not fit: %d of the context of %d are used", n, s->n_past + queued,
                                 s->n_ctx);
    return MOR_OK;
}

// Tokens a pass takes from a request of n tokens starting at off.
int32_t mor__session_chunk(const mor_session *s, int32_t n, int32_t off) {
    // Synchronized parallel decoding runs one new token per pass (SEED.md §6.2): a token that
    // exits waits on the stack for the next token that goes deep.
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

int mor_session_step(mor_session *s, const int32_t *tokens, int32_t n) {
    if (!s) return MOR_E_INVALID;
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
        if (st) return mor__session_abort(s, st);
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
    s->err[0] = 0;
    if (s->ps.active) return mor__session_fail(s, MOR_E_INVALID, "a token of this session is being computed by its scheduler");
    if (n_keep < 0 || n_keep > s->n_past)
        return mor__session_fail(s, MOR_E_INVALID, "n_keep = %d: must be 0..%d", n_keep, s->n_past);
    mor__truncate_slots(s, n_keep);
    s->n_past = n_keep;
    s->n_last = 0;
    s->n_logits = 0;
    s->rolled_back = 0;
    if (s->has_router && s->router.reset) s->router.reset(s->router_user);
    return MOR_OK;
}

void mor_session_reset(mor_session *s) {
    if (!s || s->ps.active) return;  // a scheduler is computing one of its tokens
    mor_session_rewind(s, 0);
    s->rng = s->sampler.seed;
    s->n_stack = 0;
    s->st_tokens = s->st_steps = s->st_evals = s->st_evals_full = s->st_deep = s->st_rollbacks = 0;
    memset(s->st_hist, 0, sizeof s->st_hist);
    s->budget_n = s->budget_next = 0;
    if (s->policy.policy == MOR_EXIT_FREE && s->policy.adaptive) mor__bmm_refit(s);  // a new sequence
}

