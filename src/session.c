// session.c: sessions: the memory plan and creation (one block), stepping in chunks, context
// limits, rewind and reset. The exit policy lives in policy.c, the state format in state.c.
#include "session.h"
#include "layer.h"

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
    // From inside a callback of the session (or of its owner's round) the memory is still in
    // use: the call that runs the callback frees it on its way out.
    if (s->busy || (s->owner.owner && s->owner.busy(s->owner.owner))) {
        s->free_pending = 1;
        return;
    }
    if (s->owner.owner) s->owner.detach(s->owner.owner, s);
    mor__router_release(s);
    mor__pool_free(s->pool);
    mor__free(&s->alloc, s->bias);     // sampling constraints: outside the block
    mor__free(&s->alloc, s->allowed);
    if (s->conf_group > 1) mor__free(&s->alloc, s->vocab_buf);  // grown outside the block
    const mor_allocator a = s->alloc;
    const mor_model *m = s->model;
    int counted = s->model_ref;
    mor__plan_free(&a, s, s->block_bytes);  // this struct and every buffer of the plan
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

// The session's memory plan: one walk over every buffer a session owns, with the same sizes
// whether it only counts (mor_session_memory_size, the cap check) or carves the session's one
// block (mor_session_create), so the estimate is exact by construction. The block:
//
//   struct mor_session | K/V cache (kv.c) | sequence and telemetry [n_ctx] | last step |
//   pass rows [n_batch] (route.h) | routing scratch | stacks | workspace (work.h) | policy
//   state | sampler scratch [n_vocab]
//
// Only the K/V entries are left unzeroed (a slot's length bounds every read): a context that
// is never filled costs address space, not memory.
// Pass rows: n_batch of each (route.h).
static void plan_rows(mor__plan *c, mor__rows *r, const mor__hparams *hp, uint64_t nb) {
    const uint64_t d = (uint64_t)hp->n_embd, half = (uint64_t)(hp->head_dim / 2);
    r->x = mor__plan_take(c, nb * d, sizeof(float), 1);            // [n_batch][d]
    r->xa = mor__plan_take(c, nb * d, sizeof(float), 1);           // [n_batch][d]
    r->h_step = mor__plan_take(c, nb * d, sizeof(float), 1);       // [n_batch][d]
    r->h_exit = mor__plan_take(c, nb * d, sizeof(float), 1);       // [n_batch][d]
    r->h_in = mor__plan_take(c, nb * d, sizeof(float), 1);         // [n_batch][d]
    r->rope_cos = mor__plan_take(c, nb * half, sizeof(float), 1);  // [n_batch][head_dim / 2]
    r->rope_sin = mor__plan_take(c, nb * half, sizeof(float), 1);  // [n_batch][head_dim / 2]
    r->depth_p = mor__plan_take(c, nb * (uint64_t)MOR__MAX(hp->n_rec, 2), sizeof(float), 1);
    float **rf[] = {&r->gate, &r->conf, &r->cosv, &r->rscore};  // [n_batch] each
    for (size_t i = 0; i < sizeof rf / sizeof rf[0]; i++) *rf[i] = mor__plan_take(c, nb, sizeof(float), 1);
    int32_t **ri[] = {&r->tpos, &r->row_start, &r->exit_step, &r->step_cap, &r->shallow_top,
                      &r->row_head, &r->tok_depth, &r->tok_choice, &r->act, &r->act_pos};  // [n_batch] each
    for (size_t i = 0; i < sizeof ri / sizeof ri[0]; i++) *ri[i] = mor__plan_take(c, nb, sizeof(int32_t), 1);
    r->alive = mor__plan_take(c, nb, 1, 1);                        // [n_batch]
    r->joined = mor__plan_take(c, nb, 1, 1);                       // [n_batch]
}

// Routing scratch (route.h).
static void plan_route_tmp(mor__plan *c, mor__route_tmp *t, const mor__hparams *hp, uint64_t nb) {
    const uint64_t d = (uint64_t)hp->n_embd, n_rec = (uint64_t)MOR__MAX(hp->n_rec, 1);
    t->z = mor__plan_take(c, nb * n_rec, sizeof(float), 1);        // [n_batch][n_rec]
    t->z_aux = mor__plan_take(c, nb * n_rec, sizeof(float), 1);    // [n_batch][n_rec]
    t->hid = mor__plan_take(c, nb * (hp->router_mlp ? 2 * d : d), sizeof(float), 1);
    t->score = mor__plan_take(c, nb, sizeof(float), 1);            // [n_batch]
    t->conf = mor__plan_take(c, nb, sizeof(float), 1);             // [n_batch]
    t->pos = mor__plan_take(c, nb, sizeof(int32_t), 1);            // [n_batch]
    t->keep = mor__plan_take(c, nb, 1, 1);                         // [n_batch]
}

// A KV_SYNC stack of up to n_batch tokens.
static void plan_stack(mor__plan *c, mor__stack *k, uint64_t d, uint64_t nb) {
    k->pos = mor__plan_take(c, nb, sizeof(int32_t), 1);            // [n_batch]
    k->step = mor__plan_take(c, nb, sizeof(int32_t), 1);           // [n_batch]
    k->top = mor__plan_take(c, nb, sizeof(int32_t), 1);            // [n_batch]
    k->conf = mor__plan_take(c, nb, sizeof(float), 1);             // [n_batch]
    k->h = mor__plan_take(c, nb * d, sizeof(float), 1);            // [n_batch][d]
}

static void session_plan(mor__plan *c, mor_session *s, const mor_model *m, const mor_session_params *p) {
    const mor__hparams *hp = &m->hp;
    const uint64_t nb = (uint64_t)p->n_batch, V = (uint64_t)hp->n_vocab, ctx = (uint64_t)p->n_ctx;
    mor__plan_take(c, 1, sizeof(mor_session), 1);  // the struct itself, at the start
    mor__kv_plan(c, &s->kv, hp->n_layer, p->n_ctx, hp->n_head_kv * hp->head_dim, (p->flags & MOR_SESSION_KV_F16) != 0);
    // the sequence
    s->tokens = mor__plan_take(c, ctx, sizeof(int32_t), 1);        // [n_ctx]
    s->trace.depth = mor__plan_take(c, ctx, 1, 1);                 // [n_ctx]
    s->trace.score = mor__plan_take(c, ctx, sizeof(float), 1);     // [n_ctx]
    s->trace.kv = mor__plan_take(c, ctx, 1, 1);                    // [n_ctx]
    s->trace.given = mor__plan_take(c, ctx, 1, 1);                 // [n_ctx]
    // the last step
    s->logits = mor__plan_take(c, (p->flags & MOR_SESSION_LOGITS_ALL ? nb : 1) * V, sizeof(float), 1);
    s->depths = mor__plan_take(c, nb, sizeof(int32_t), 1);         // [n_batch]
    s->depth_all = mor__plan_take(c, nb, sizeof(int32_t), 1);      // [n_batch]
    // the pass
    plan_rows(c, &s->r, hp, nb);
    plan_route_tmp(c, &s->rt, hp, nb);
    plan_stack(c, &s->stack, (uint64_t)hp->n_embd, nb);
    plan_stack(c, &s->stack_next, (uint64_t)hp->n_embd, nb);
    mor__work_plan(c, &s->w, hp, p->n_batch, (size_t)p->n_ctx, p->n_threads);
    // policy state
    s->vocab_row = mor__plan_take(c, V, sizeof(float), 1);         // [n_vocab] exit-head logits
    s->budget.ring = mor__plan_take(c, MOR__BUDGET_MAX_WINDOW, sizeof(int32_t), 1);
    s->bmm = mor__plan_take(c, 1, sizeof(mor__bmm), 1);
    // sampler scratch
    s->probs = mor__plan_take(c, V, sizeof(float), 1);             // [n_vocab]
    s->cand = mor__plan_take(c, V, sizeof(int32_t), 1);            // [n_vocab]
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
    mor_session dummy = {0};
    mor__plan c = {0};
    session_plan(&c, &dummy, m, &p);
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
    mor_session dummy = {0};
    mor__plan c = {0};
    session_plan(&c, &dummy, m, &p);
    const uint64_t cap = p.max_bytes == 0 ? default_cap(m) : p.max_bytes < 0 ? UINT64_MAX : (uint64_t)p.max_bytes;
    if (c.fail || c.bytes > cap)
        return mor__errf(err, err_n, MOR_E_LIMIT,
                         "a session of %d tokens over %d layers needs %.1f MiB, over the cap of %.1f MiB "
                         "(set mor_session_params.max_bytes to allow more, or lower n_ctx)",
                         p.n_ctx, hp->n_layer, c.fail ? INFINITY : (double)c.bytes / 1048576.0, (double)cap / 1048576.0);

    const mor_allocator *a = mor__alloc_custom(&p.allocator) ? &p.allocator : &m->alloc;
    // One block for everything the plan counted (this struct at its start).
    char *block = c.bytes <= SIZE_MAX ? mor__alloc(a, (size_t)c.bytes, 1, 0) : NULL;
    if (!block)
        return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory allocating a session of %d tokens (%.1f MiB)", p.n_ctx,
                         (double)c.bytes / 1048576.0);
    mor_session *s = (mor_session *)block;
    c = (mor__plan){.base = block};
    session_plan(&c, s, m, &p);
    s->alloc = *a;
    s->block_bytes = c.bytes;
    s->model = m;
    s->kern = p.flags & MOR_SESSION_REF_KERNELS ? mor__kernels_ref() : mor__kernels_best();
    s->n_ctx = p.n_ctx;
    s->n_batch = p.n_batch;
    s->n_threads = p.n_threads;
    s->flags = p.flags;
    s->conf_group = 1;
    s->vocab_buf = s->vocab_row;
    int ps = mor__pool_create_with(&s->pool, p.n_threads, &s->alloc);
    if (ps) {
        mor_session_free(s);
        return mor__errf(err, err_n, ps, "cannot start %d compute threads", p.n_threads);
    }
    s->w.pool = s->pool;
    s->w.kern = s->kern;
    sampler_from(&s->sampler, NULL);
    s->rng = s->sampler.seed;
    mor_exit_policy dp;
    mor__policy_default(m, &dp);
    if (m->has_file_policy) {  // checked at load for n_batch >= 2; this session's n_batch may be 1
        char why[200];
        if (mor__policy_check(m, &dp, 0, s->n_batch, &dp, why, sizeof why)) {
            mor_session_free(s);
            return mor__errf(err, err_n, MOR_E_INVALID, "the model's default exit policy (mor.policy.* keys): %s", why);
        }
        mor__policy_install(s, &dp);
    } else {
        s->policy = dp;
        mor__kv_map(&s->kv, m, s->policy.kv == MOR_KV_SHARE);
    }
    s->rollback_to = -1;
    mor__model_ref(m);
    s->model_ref = 1;
    *out = s;
    mor__log(MOR_LOG_DEBUG,
             "session create %p: n_ctx %d, n_batch %d, n_threads %d, %.2f MiB in one block (cap %.2f MiB), K/V %s, "
             "%s kernels, exit policy %s, KV %s",
             (void *)s, s->n_ctx, s->n_batch, s->n_threads, (double)c.bytes / 1048576.0,
             cap == UINT64_MAX ? INFINITY : (double)cap / 1048576.0, p.flags & MOR_SESSION_KV_F16 ? "f16" : "f32",
             p.flags & MOR_SESSION_REF_KERNELS ? "reference" : "best", mor__policy_name(s->policy.policy),
             mor__kv_name(s->policy.kv));
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
    s->budget.save_next = s->budget.next, s->budget.save_n = s->budget.n;
    for (int32_t i = 0; i < T; i++) {
        s->trace.given[s->n_past + i] = (uint8_t)given;
        s->tokens[s->n_past + i] = tokens[i];
    }
}

void mor__session_abandon(mor_session *s) {
    s->ps.active = 0;
    mor__session_truncate(s, s->n_past);  // drop what the pass appended, keep the session usable
    s->budget.next = s->budget.save_next, s->budget.n = s->budget.save_n;
    s->n_last = 0;
    s->n_logits = 0;
}

int mor__session_abort(mor_session *s, int st) {
    mor__session_abandon(s);
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
    s->st.rollbacks++;
    mor__session_truncate(s, to);
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

int mor_session_set_abort(mor_session *s, mor_abort_fn fn, void *user) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    s->abort_fn = fn;
    s->abort_user = fn ? user : NULL;
    return MOR_OK;
}

// Asks the abort callback whether to go on (1: stop). The session is busy meanwhile, so the
// callback cannot change it.
static int abort_asked(mor_session *s, int32_t done, int32_t n, int32_t layer) {
    if (!s->abort_fn) return 0;
    s->busy++;
    int32_t r = s->abort_fn(s->abort_user, done, n, layer, s->model->hp.n_layer);
    s->busy--;
    return r != 0 || s->free_pending;
}

// The abort callback asked before a layer of the pass that steps tokens [done, ...) of n.
typedef struct {
    mor_session *s;
    int32_t      done, n;
} abort_at;

static int abort_at_layer(void *ctx, int32_t layer) {
    const abort_at *a = ctx;
    return abort_asked(a->s, a->done, a->n, layer);
}

int mor_session_step(mor_session *s, const int32_t *tokens, int32_t n) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (s->owner.owner) return mor__session_fail(s, MOR_E_INVALID, "the session belongs to a scheduler: submit work there");
    int st = mor__session_check(s, tokens, n, 0);
    if (st) return st;
    // What a step cancelled before its first token restores: the previous step's results.
    const int32_t prev_last = s->n_last, prev_logits = s->n_logits, prev_rolled = s->rolled_back;
    s->n_last = 0;
    s->n_logits = 0;
    s->rolled_back = 0;
    int all = (s->flags & MOR_SESSION_LOGITS_ALL) != 0;
    for (int32_t off = 0; off < n;) {
        int32_t T = mor__session_chunk(s, n, off);
        int stop = abort_asked(s, off, n, 0);
        const int32_t last = s->n_last, nlog = s->n_logits;
        if (!stop) {
            mor__session_prepare(s, tokens + off, T, n > 1, off);
            abort_at at = {s, off, n};
            int stopped = 0;
            st = mor__forward_until(s, s->tokens + s->n_past, T, all, s->abort_fn ? abort_at_layer : NULL, &at,
                                    &stopped);
            if (stopped) {
                mor__session_abandon(s);  // what the pass appended goes
                stop = 1;
            }
            if (st) return finish_call(s, mor__session_abort(s, st));
        }
        if (stop) {
            // As if the call had stepped the first `off` tokens (none: as if never called).
            s->n_last = off ? last : prev_last;
            s->n_logits = off ? nlog : prev_logits;
            s->rolled_back = off ? 0 : prev_rolled;
            mor__session_fail(s, MOR_E_CANCELLED, "step cancelled by the abort callback after %d of %d tokens",
                              off, n);
            return finish_call(s, MOR_E_CANCELLED);
        }
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

void mor__session_truncate(mor_session *s, int32_t n_keep) {
    mor__kv_truncate(&s->kv, n_keep);
    mor__stack *k = &s->stack;  // stacked tokens past the cut go too
    const size_t d = (size_t)s->model->hp.n_embd;
    int32_t n = 0;
    for (int32_t j = 0; j < k->n; j++) {
        if (k->pos[j] >= n_keep) continue;
        if (n != j) {
            k->pos[n] = k->pos[j], k->step[n] = k->step[j], k->top[n] = k->top[j], k->conf[n] = k->conf[j];
            memmove(k->h + (size_t)n * d, k->h + (size_t)j * d, d * sizeof(float));
        }
        n++;
    }
    k->n = n;
}

int mor_session_rewind(mor_session *s, int32_t n_keep) {
    if (!s) return MOR_E_INVALID;
    MOR__REFUSE_BUSY(s);
    s->err[0] = 0;
    if (s->ps.active) return mor__session_fail(s, MOR_E_INVALID, "a token of this session is being computed by its scheduler");
    if (n_keep < 0 || n_keep > s->n_past)
        return mor__session_fail(s, MOR_E_INVALID, "n_keep = %d: must be 0..%d", n_keep, s->n_past);
    mor__session_truncate(s, n_keep);
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
    s->stack.n = 0;
    s->st.tokens = s->st.steps = s->st.evals = s->st.evals_full = s->st.deep = s->st.rollbacks = 0;
    memset(s->st.hist, 0, sizeof s->st.hist);
    s->budget.n = s->budget.next = 0;
    if (s->policy.policy == MOR_EXIT_FREE && s->policy.adaptive) mor__bmm_refit(s);  // a new sequence
}

