// sched.c: continuous depth-wise batching of many sessions of one model (docs/DESIGN.md).
//
// Each session under the scheduler has a queue of tokens (prompts, then the tokens it samples)
// and, while a token is computed, a pass in progress (forward.c: a cursor over the unrolled
// layers with the session's own rows, policy and KV). A round:
//   1. admits work: a session with queued tokens and no pass starts one (its rows join the
//      batch); one that finished a token samples the next one or reports the end;
//   2. picks the session that has waited longest and runs its next layer for every session
//      whose next layer uses the same stored weights, as one batch (mor__run_layers): the
//      shared block at recursion r of one session and at recursion r' of another is the same
//      matrix product;
//   3. advances those sessions; a session whose layers are done gets its logits, samples, and
//      is free to start its next token in the next round: the batch refills as tokens exit.
// A failing session (router callback, context) gets its error as an event; the others go on.
#include "session.h"
#include "thread.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    mor_session *s;
    int32_t     *queue;         // tokens waiting to be stepped
    uint8_t     *given;         // per queued token: part of a multi-token submit
    int32_t      q_head, q_len, q_cap;
    int32_t      gen;           // tokens still to sample
    int          active;        // a request is open (a done event is owed)
    int          in_pass;
    int          fresh_logits;  // the last pass left logits to sample from
    int32_t      pass_T;
    int64_t      last_round;    // when it last ran a layer (fairness: oldest first)
} entry;

typedef struct {
    mor_session *s;
    int32_t      token, status;
} event;

struct mor_sched {
    mor_allocator     alloc;         // every buffer of the scheduler comes from it
    const mor_model  *model;
    mor_sched_params  p;
    entry            *e;
    int32_t           n, cap;
    mor__work         w;             // the batch's workspace, in one block (work_mem)
    void             *work_mem;
    uint64_t          work_bytes;
    mor__pool        *pool;
    event            *ev;
    int32_t           ev_head, ev_len, ev_cap;
    mor__layer_rows  *parts;         // [max_batch] the rows of the layer being run
    mor_session     **part_s;        // [max_batch] the session of each (NULL: advanced)
    int32_t          *head;          // [max_batch] entries whose logits are batched
    float            *logits;        // [max_batch][n_vocab]
    int32_t          *conf_tmp;      // [3][max_batch] scratch of conf_heads()
    int32_t          *first_use;     // [n_stored] first unrolled layer of each stored layer
    int32_t           sweep;         // first_use of the stored layer run last
    int32_t           tail_begin;    // first unrolled layer after the last depth step
    double            tail_share;    // the tail's (last layers + head) share of the weight bytes
    double            bytes[3];      // weight bytes streamed by the first layers, one step, the tail
    double           *depths;        // [n_steps + 1] recent decoded tokens by depth (decaying counts)
    double            n_depths;
    int64_t           rounds, rows, layers, head_runs, head_rows, tokens;
    int32_t           refill;
    int               busy;          // mor_sched_step() is running (callbacks may call back in)
    int               free_pending;  // mor_sched_free() came from a callback: freed on return
    int               model_ref;     // holds a reference to the model
};


// Calls that change the scheduler are refused while its round runs a session's callback.
#define REFUSE_BUSY(sc, s)                                                                        \
    do {                                                                                          \
        if ((sc)->busy)                                                                           \
            return (s) ? mor__session_fail((s), MOR_E_BUSY, "%s() called from a callback during the scheduler's round", \
                                           __func__)                                              \
                       : MOR_E_BUSY;                                                              \
    } while (0)

// (Re)plans the batch workspace: max_batch rows attending to up to att_len entries.
static int alloc_work(mor_sched *sc, size_t att_len) {
    const mor__hparams *hp = &sc->model->hp;
    mor__work w;
    mor__plan c = {0};
    mor__work_plan(&c, &w, hp, sc->p.max_batch, att_len, sc->p.n_threads);
    void *mem = !c.fail && c.bytes <= SIZE_MAX ? mor__alloc(&sc->alloc, (size_t)c.bytes, 1, 0) : NULL;
    if (!mem) return MOR_E_NOMEM;
    c = (mor__plan){.base = mem};
    mor__work_plan(&c, &w, hp, sc->p.max_batch, att_len, sc->p.n_threads);
    mor__plan_free(&sc->alloc, sc->work_mem, sc->work_bytes);
    sc->work_mem = mem;
    sc->work_bytes = c.bytes;
    w.pool = sc->pool;
    w.kern = mor__kernels_best();
    sc->w = w;
    return MOR_OK;
}

static double mat_bytes(const mor__mat *w) {
    return w->data ? (double)w->rows * (double)mor__dtype_row_bytes(w->type, w->cols) : 0.0;
}

static double layer_bytes(const mor__layer *ly) {
    double b = 0;
    for (int r = 0; r < MOR__N_PROJ; r++) b += mat_bytes(&ly->w[r]) + mat_bytes(&ly->lora_a[r]) + mat_bytes(&ly->lora_b[r]);
    return b + 2.0 * ly->adapt_len * (double)ly->w[MOR__ROLE_K].rows * sizeof(float);  // prompt keys and values
}

int mor_sched_create(const mor_model *m, const mor_sched_params *params, mor_sched **out, char *err, size_t err_n) {
    if (err && err_n) err[0] = 0;
    if (!out) return mor__errf(err, err_n, MOR_E_INVALID, "out is NULL");
    *out = NULL;
    if (!m || m->vocab_only) return mor__errf(err, err_n, MOR_E_INVALID, "a model with weights is needed");
    if (params && params->kind != MOR_PARAMS_SCHED)
        return mor__errf(err, err_n, MOR_E_INVALID, "params is not a mor_sched_params (kind %u)", params->kind);
    mor_sched_params p;
    mor_sched_params_init(&p);
    if (params) memcpy(&p, params, MOR__MIN(params->size, sizeof p));
    if (p.max_batch < 1 || p.max_batch > 8192)
        return mor__errf(err, err_n, MOR_E_INVALID, "max_batch = %d: must be 1..8192", p.max_batch);
    if (p.n_threads < 1 || p.n_threads > 256)
        return mor__errf(err, err_n, MOR_E_INVALID, "n_threads = %d: must be 1..256", p.n_threads);
    if (p.kv_budget < 0) return mor__errf(err, err_n, MOR_E_INVALID, "kv_budget must be >= 0");
    if (p.mode < MOR_SCHED_CONTINUOUS || p.mode > MOR_SCHED_SEQUENTIAL)
        return mor__errf(err, err_n, MOR_E_INVALID, "unknown scheduler mode %d", p.mode);
    if (p.prompt_chunk < 1) return mor__errf(err, err_n, MOR_E_INVALID, "prompt_chunk = %d: must be >= 1", p.prompt_chunk);
    const mor_allocator *a = mor__alloc_custom(&p.allocator) ? &p.allocator : &m->alloc;
    mor_sched *sc = mor__alloc(a, 1, sizeof *sc, 1);
    if (!sc) return mor__errf(err, err_n, MOR_E_NOMEM, "out of memory");
    sc->alloc = *a;
    sc->model = m;
    sc->p = p;
    int st = mor__pool_create_with(&sc->pool, p.n_threads, &sc->alloc);
    if (!st) st = alloc_work(sc, 1);
    sc->parts = mor__alloc(a, (size_t)p.max_batch, sizeof *sc->parts, 1);
    sc->part_s = mor__alloc(a, (size_t)p.max_batch, sizeof *sc->part_s, 1);
    sc->head = mor__alloc(a, (size_t)p.max_batch, sizeof *sc->head, 1);
    sc->logits = mor__alloc(a, (size_t)p.max_batch * (size_t)m->hp.n_vocab, sizeof(float), 1);
    sc->first_use = mor__alloc(a, (size_t)m->hp.n_stored, sizeof *sc->first_use, 0);
    sc->conf_tmp = mor__alloc(a, 3 * (size_t)p.max_batch, sizeof *sc->conf_tmp, 0);
    sc->depths = mor__alloc(a, (size_t)m->n_steps + 1, sizeof *sc->depths, 1);
    if (!st && (!sc->parts || !sc->part_s || !sc->head || !sc->logits || !sc->first_use || !sc->depths || !sc->conf_tmp)) st = MOR_E_NOMEM;
    if (!st) {
        for (int32_t l = m->hp.n_layer - 1; l >= 0; l--) sc->first_use[m->layers[l].stored] = l;
        sc->sweep = m->hp.n_layer - 1;  // the first sweep starts at the first layer
        sc->tail_begin = 0;
        for (int32_t l = 0; l < m->hp.n_layer; l++)
            if (m->layer_step[l] >= 0) sc->tail_begin = l + 1;
        double all = mat_bytes(&m->output);
        for (int32_t k = 0; k < m->hp.n_stored; k++) all += layer_bytes(&m->layers[sc->first_use[k]]);
        sc->bytes[2] = mat_bytes(&m->output);
        for (int32_t l = 0; l < m->hp.n_layer; l++) {
            double b = layer_bytes(&m->layers[l]);
            sc->bytes[m->layer_step[l] >= 0 ? 1 : l < sc->tail_begin ? 0 : 2] += b;
        }
        sc->bytes[1] /= MOR__MAX(m->n_steps, 1);
        sc->tail_share = sc->bytes[2] / all;
        sc->refill = 1;
    }
    if (st) {
        mor_sched_free(sc);
        return mor__errf(err, err_n, st, "cannot create the scheduler's workspace");
    }
    mor__model_ref(m);
    sc->model_ref = 1;
    *out = sc;
    return MOR_OK;
}

static entry *find(mor_sched *sc, const mor_session *s) {
    for (int32_t i = 0; i < sc->n; i++)
        if (sc->e[i].s == s) return &sc->e[i];
    return NULL;
}

// Ends the pass in flight (if any) without committing it: the session is left as after its
// last finished token.
static void drop_pass(entry *e) {
    if (!e->in_pass) return;
    mor__session_abandon(e->s);
    e->in_pass = 0;
}

// The scheduler as its sessions' owner (session.h): a session reaches it only through these.
static int owner_busy(const void *owner) { return ((const mor_sched *)owner)->busy; }
static void owner_detach(void *owner, mor_session *s) { mor_sched_remove(owner, s); }

void mor_sched_free(mor_sched *sc) {
    if (!sc) return;
    if (sc->busy) {  // from a callback of its own round: mor_sched_step() frees it on return
        sc->free_pending = 1;
        return;
    }
    for (int32_t i = 0; i < sc->n; i++) {
        drop_pass(&sc->e[i]);
        sc->e[i].s->owner = (mor__session_owner){0};
        mor__free(&sc->alloc, sc->e[i].queue);
        mor__free(&sc->alloc, sc->e[i].given);
    }
    mor__free(&sc->alloc, sc->e);
    mor__plan_free(&sc->alloc, sc->work_mem, sc->work_bytes);
    void *bufs[] = {sc->ev, sc->parts, sc->part_s, sc->head, sc->logits, sc->first_use, sc->depths,
                    sc->conf_tmp};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mor__free(&sc->alloc, bufs[i]);
    mor__pool_free(sc->pool);
    const mor_allocator a = sc->alloc;
    const mor_model *m = sc->model;
    int counted = sc->model_ref;
    mor__free(&a, sc);
    if (counted) mor__model_unref(m);
}

int mor_sched_add(mor_sched *sc, mor_session *s) {
    if (!sc || !s) return MOR_E_INVALID;
    REFUSE_BUSY(sc, s);
    s->err[0] = 0;
    if (s->model != sc->model) return mor__session_fail(s, MOR_E_INVALID, "the session is of another model");
    if (s->owner.owner) return mor__session_fail(s, MOR_E_INVALID, "the session already belongs to a scheduler");
    if (s->n_batch > sc->p.max_batch)
        return mor__session_fail(s, MOR_E_INVALID, "the session's n_batch %d exceeds the scheduler's max_batch %d",
                                 s->n_batch, sc->p.max_batch);
    if ((size_t)s->n_ctx > sc->w.att_stride) {
        int st = alloc_work(sc, (size_t)s->n_ctx);
        if (st) return mor__session_fail(s, st, "out of memory growing the scheduler's workspace");
    }
    if (sc->n == sc->cap) {
        int32_t nc = sc->cap ? 2 * sc->cap : 8;
        entry *ne = mor__realloc(&sc->alloc, sc->e, (size_t)sc->cap, (size_t)nc, sizeof *ne);
        if (!ne) return mor__session_fail(s, MOR_E_NOMEM, "out of memory");
        sc->e = ne;
        sc->cap = nc;
    }
    entry *e = &sc->e[sc->n++];
    memset(e, 0, sizeof *e);
    e->s = s;
    e->last_round = sc->rounds;
    s->owner = (mor__session_owner){sc, owner_busy, owner_detach};
    return MOR_OK;
}

static int reserve_events(mor_sched *sc, int64_t more) {
    int64_t need = sc->ev_len + more;
    if (need <= sc->ev_cap) return MOR_OK;
    int32_t nc = sc->ev_cap ? sc->ev_cap : 64;
    while (nc < need) nc *= 2;
    event *ne = mor__alloc(&sc->alloc, (size_t)nc, sizeof *ne, 0);
    if (!ne) return MOR_E_NOMEM;
    for (int32_t i = 0; i < sc->ev_len; i++) ne[i] = sc->ev[(sc->ev_head + i) % sc->ev_cap];
    mor__free(&sc->alloc, sc->ev);
    sc->ev = ne;
    sc->ev_cap = nc;
    sc->ev_head = 0;
    return MOR_OK;
}

static int push_event(mor_sched *sc, mor_session *s, int32_t token, int32_t status) {
    if (reserve_events(sc, 1)) return MOR_E_NOMEM;  // grows rarely: submit reserves room for its events
    sc->ev[(sc->ev_head + sc->ev_len++) % sc->ev_cap] = (event){s, token, status};
    return MOR_OK;
}

static void clear_request(entry *e) {
    e->q_head = e->q_len = 0;
    e->gen = 0;
}

int mor_sched_remove(mor_sched *sc, mor_session *s) {
    if (!sc || !s) return MOR_E_INVALID;
    REFUSE_BUSY(sc, s);
    entry *e = find(sc, s);
    if (!e) return mor__session_fail(s, MOR_E_INVALID, "the session is not in this scheduler");
    drop_pass(e);
    mor__free(&sc->alloc, e->queue);
    mor__free(&sc->alloc, e->given);
    s->owner = (mor__session_owner){0};
    *e = sc->e[--sc->n];
    for (int32_t i = 0; i < sc->ev_len; i++) {  // its events go too
        event *v = &sc->ev[(sc->ev_head + i) % sc->ev_cap];
        if (v->s == s) v->s = NULL;
    }
    return MOR_OK;
}

int mor_sched_submit(mor_sched *sc, mor_session *s, const int32_t *tokens, int32_t n, int32_t n_generate) {
    if (!sc || !s) return MOR_E_INVALID;
    REFUSE_BUSY(sc, s);
    s->err[0] = 0;
    entry *e = find(sc, s);
    if (!e) return mor__session_fail(s, MOR_E_INVALID, "the session is not in this scheduler");
    if (n < 0 || n_generate < 0) return mor__session_fail(s, MOR_E_INVALID, "negative token counts");
    if (n == 0 && n_generate == 0) return MOR_OK;
    if (s->policy.rollback > 0)
        return mor__session_fail(s, MOR_E_UNSUPPORTED, "rollback cannot take back tokens already reported by a scheduler");
    int32_t queued = e->q_len - e->q_head + e->gen;
    if (n > 0) {
        int st = mor__session_check(s, tokens, n, queued);
        if (st) return st;
    }
    if ((int64_t)s->n_past + queued + n + n_generate > s->n_ctx)
        return mor__session_fail(s, MOR_E_CONTEXT_FULL, "%d + %d tokens do not fit: %d of the context of %d are used or queued",
                                 n, n_generate, s->n_past + queued, s->n_ctx);
    if (n == 0 && queued == 0 && !e->fresh_logits && !mor_session_logits(s, -1))
        return mor__session_fail(s, MOR_E_INVALID, "nothing to generate from: submit tokens first");
    int32_t need = e->q_len + n + n_generate;
    if (need > e->q_cap) {
        int32_t nc = MOR__MAX(need, 2 * e->q_cap);
        // Both grow before either is replaced: a failure leaves the request queue as it was.
        int32_t *nq = mor__alloc(&sc->alloc, (size_t)nc, sizeof *nq, 0);
        uint8_t *ng = mor__alloc(&sc->alloc, (size_t)nc, 1, 0);
        if (!nq || !ng) {
            mor__free(&sc->alloc, nq);
            mor__free(&sc->alloc, ng);
            return mor__session_fail(s, MOR_E_NOMEM, "out of memory");
        }
        if (e->q_len) {
            memcpy(nq, e->queue, (size_t)e->q_len * sizeof *nq);
            memcpy(ng, e->given, (size_t)e->q_len);
        }
        mor__free(&sc->alloc, e->queue);
        mor__free(&sc->alloc, e->given);
        e->queue = nq, e->given = ng;
        e->q_cap = nc;
    }
    if (reserve_events(sc, (int64_t)n_generate + 2)) return mor__session_fail(s, MOR_E_NOMEM, "out of memory");
    memcpy(e->queue + e->q_len, tokens, (size_t)n * sizeof(int32_t));
    memset(e->given + e->q_len, n > 1, (size_t)n);
    e->q_len += n;
    e->gen += n_generate;
    if (!e->active) e->fresh_logits = mor_session_logits(s, -1) != NULL;
    e->active = 1;
    return MOR_OK;
}

int mor_sched_cancel(mor_sched *sc, mor_session *s) {
    if (!sc || !s) return MOR_E_INVALID;
    REFUSE_BUSY(sc, s);
    entry *e = find(sc, s);
    if (!e) return mor__session_fail(s, MOR_E_INVALID, "the session is not in this scheduler");
    drop_pass(e);
    clear_request(e);
    if (e->active) push_event(sc, s, -1, MOR_E_CANCELLED);
    e->active = 0;
    return MOR_OK;
}

int32_t mor_sched_pending(const mor_sched *sc) {
    if (!sc) return 0;
    int32_t n = 0;
    for (int32_t i = 0; i < sc->n; i++) n += sc->e[i].active || sc->e[i].in_pass;
    return n;
}

int mor_sched_poll(mor_sched *sc, mor_session **s, int32_t *token, int32_t *status) {
    if (!sc) return MOR_E_INVALID;
    REFUSE_BUSY(sc, NULL);
    while (sc->ev_len) {
        event v = sc->ev[sc->ev_head];
        sc->ev_head = (sc->ev_head + 1) % sc->ev_cap;
        sc->ev_len--;
        if (!v.s) continue;  // its session was removed
        if (s) *s = v.s;
        if (token) *token = v.token;
        if (status) *status = v.status;
        return MOR_OK;
    }
    return MOR_E_NOT_FOUND;
}

int mor_sched_get_counters(const mor_sched *sc, mor_sched_counters *c) {
    if (!sc || !c || c->size < 8) return MOR_E_INVALID;
    mor_sched_counters v = {sizeof v, 0, sc->rounds, sc->layers, sc->rows, sc->head_runs, sc->head_rows, sc->tokens,
                            sc->refill};
    uint32_t n = MOR__MIN(c->size, (uint32_t)sizeof v);
    v.size = c->size;
    memcpy(c, &v, n);
    return MOR_OK;
}

int mor_sched_stats(const mor_sched *sc, int64_t *rounds, int64_t *rows, double *mean) {
    if (!sc) return MOR_E_INVALID;
    if (rounds) *rounds = sc->rounds;
    if (rows) *rows = sc->rows;
    if (mean) *mean = sc->layers ? (double)sc->rows / (double)sc->layers : 0.0;
    return MOR_OK;
}

// ---- a round -------------------------------------------------------------------------------

static int64_t kv_held(const mor_sched *sc) {
    int64_t b = 0;
    for (int32_t i = 0; i < sc->n; i++) b += mor__kv_bytes(&sc->e[i].s->kv);
    return b;
}

static void fail_entry(mor_sched *sc, entry *e, int st) {
    clear_request(e);
    e->active = 0;
    push_event(sc, e->s, -1, st);
}

// Samples, reports, or closes the request of a session between passes; then starts a pass
// when it has tokens queued and there is room. rows_in: rows in flight; returns rows added.
static int32_t admit(mor_sched *sc, entry *e, int32_t rows_in, int may_start) {
    mor_session *s = e->s;
    if (e->in_pass || !e->active) return 0;
    if (e->q_head == e->q_len && e->gen > 0 && e->fresh_logits) {
        int32_t tok;
        int st = mor_session_sample(s, &tok);
        if (st) {
            fail_entry(sc, e, st);
            return 0;
        }
        e->fresh_logits = 0;
        e->gen--;
        sc->tokens++;
        push_event(sc, s, tok, MOR_OK);
        e->queue[e->q_len] = tok;  // appended to the sequence, as a sample-then-step loop does
        e->given[e->q_len] = 0;
        e->q_len++;
    }
    if (e->q_head == e->q_len) {
        if (e->gen == 0) {  // the request is complete
            e->active = 0;
            e->q_head = e->q_len = 0;
            push_event(sc, s, -1, MOR_OK);
        } else if (!e->fresh_logits) {
            fail_entry(sc, e, mor__session_fail(s, MOR_E_INVALID, "nothing to generate from"));
        }
        return 0;
    }
    if (!may_start) return 0;
    int32_t n = e->q_len - e->q_head, T = MOR__MIN(mor__session_chunk(s, n, 0), sc->p.prompt_chunk);
    int32_t R = T + (s->policy.kv == MOR_KV_SYNC ? s->stack.n : 0);
    if (rows_in > 0 && rows_in + R > sc->p.max_batch) return 0;  // wait for room
    if (sc->p.kv_budget > 0) {
        const mor__hparams *hp = &sc->model->hp;
        int64_t grow = (int64_t)T * hp->n_layer * mor__kv_entry_bytes(&s->kv);
        if (kv_held(sc) + grow > sc->p.kv_budget) {
            if (rows_in > 0) return 0;  // retry when nothing else is in flight
            fail_entry(sc, e, mor__session_fail(s, MOR_E_CONTEXT_FULL, "the scheduler's K/V budget of %lld bytes is used up",
                                                (long long)sc->p.kv_budget));
            return 0;
        }
    }
    s->err[0] = 0;
    s->n_last = 0;
    s->n_logits = 0;
    s->rolled_back = 0;
    int given = e->given[e->q_head];
    mor__session_prepare(s, e->queue + e->q_head, T, given, 0);
    int st = mor__pass_begin(s, T, (s->flags & MOR_SESSION_LOGITS_ALL) != 0);
    if (st) {
        mor__session_abort(s, st);
        fail_entry(sc, e, st);
        return 0;
    }
    e->in_pass = 1;
    e->pass_T = T;
    e->last_round = sc->rounds;
    return R;
}

// Whether refilling pays, from the weight bytes a round streams and the recent depths of
// decoded tokens (D: a token's depth, M: the deepest of n tokens). With every session in flight,
// refilling sweeps the first layers, one step of the block and the tail once per step a token
// runs: E[D] x (first + step + tail) bytes per n tokens. Running the batch to its deepest token
// streams first + E[M] x step + tail. Refill when it streams at least a fifth less: the bytes
// leave out that a round's cost also grows with its rows once its products are bound by
// arithmetic (from about 6 rows for F16 on one core), which favours the fewer, fuller rounds
// of refilling less than the bytes say (docs/PERFORMANCE.md has the measurements).
static int refill_pays(const mor_sched *sc, int32_t n) {
    const int32_t N = sc->model->n_steps;
    if (sc->n_depths < 8 || n < 2) return 1;
    double mean = 0, deepest = 0, cdf_prev = 0, cum = 0;
    for (int32_t k = 1; k <= N; k++) {
        cum += sc->depths[k] / sc->n_depths;
        double cdf = k == N ? 1.0 : MOR__MIN(cum, 1.0);
        mean += k * sc->depths[k] / sc->n_depths;
        deepest += k * (pow(cdf, n) - pow(cdf_prev, n));
        cdf_prev = cdf;
    }
    const double *b = sc->bytes;
    return 1.25 * mean * (b[0] + b[1] + b[2]) < b[0] + deepest * b[1] + b[2];
}

// Whether the tail (the last layers and the head) may run now: in continuous mode, once its
// rows are at least tail_share of the rows in flight when refilling pays, else (and always
// once nothing else is in flight) when all rows in flight are in it.
static int tail_ready(mor_sched *sc) {
    if (sc->p.mode != MOR_SCHED_CONTINUOUS) return 1;
    int64_t all = 0, tail = 0;
    int32_t n = 0;
    for (int32_t i = 0; i < sc->n; i++) {
        const entry *e = &sc->e[i];
        if (!e->in_pass) continue;
        int32_t next = mor__pass_next(e->s);
        all += e->s->ps.R;
        n++;
        if (next < 0 || next >= sc->tail_begin) tail += e->s->ps.R;
    }
    if (n > 1) sc->refill = refill_pays(sc, n);
    return tail == all || ((double)tail >= sc->tail_share * (double)all && sc->refill);
}

// Counts the depth of a decoded token (recent tokens weigh more: counts halve past 4096).
static void count_depth(mor_sched *sc, const mor_session *s) {
    int32_t d = mor_session_depth(s, -1);
    if (d < 1 || d > sc->model->n_steps) return;
    if (sc->n_depths >= 4096) {
        for (int32_t k = 0; k <= sc->model->n_steps; k++) sc->depths[k] *= 0.5;
        sc->n_depths *= 0.5;
    }
    sc->depths[d] += 1;
    sc->n_depths += 1;
}

static void complete(mor_sched *sc, entry *e, const float *logits) {
    mor_session *s = e->s;
    if (logits) mor__pass_finish_with(s, logits);
    else mor__pass_finish(s);
    mor__session_commit(s, e->pass_T, 0);
    if (e->pass_T == 1) count_depth(sc, s);
    e->q_head += e->pass_T;
    if (e->q_head == e->q_len) e->q_head = e->q_len = 0;
    e->in_pass = 0;
    e->fresh_logits = 1;
}

static void advance(mor_sched *sc, mor_session *s) {
    entry *e = find(sc, s);
    int st = mor__pass_advance(s);
    if (st) {
        mor__session_abort(s, st);
        e->in_pass = 0;
        fail_entry(sc, e, st);
    }
}

// Exit-head products the policies read at the end of a step (confidence exits), batched over
// the np parts just run like the final head: one product per head for all their rows; those
// sessions then advance (their parts are cleared).
static void conf_heads(mor_sched *sc, int32_t np) {
    const mor_model *m = sc->model;
    const int d = m->hp.n_embd;
    int32_t *cnt = sc->conf_tmp, *hd = cnt + sc->p.max_batch, *off = hd + sc->p.max_batch;
    int any = 0;
    for (int32_t i = 0; i < np; i++) {
        cnt[i] = mor__pass_conf_rows(sc->part_s[i], NULL, &hd[i]);
        if (cnt[i] > sc->p.max_batch) cnt[i] = 0;  // (cannot happen) computed by the session
        any |= cnt[i] > 0;
    }
    while (any) {
        int32_t h = 0, rows = 0;
        any = 0;
        for (int32_t i = 0; i < np; i++) {
            if (cnt[i] <= 0) continue;
            if (rows == 0) h = hd[i];
            if (hd[i] != h || rows + cnt[i] > sc->p.max_batch) {
                any = 1;  // another head, or no room: a later product
                continue;
            }
            off[i] = rows;
            mor__pass_conf_rows(sc->part_s[i], sc->w.xb + (size_t)rows * d, &h);
            rows += cnt[i];
            cnt[i] = -1;  // in this product
        }
        mor__matmul(&sc->w, h >= 0 ? &m->exits[h].out : &m->output, sc->w.xb, rows, sc->logits);
        mor__arch_softcap(sc->logits, (int64_t)rows * m->hp.n_vocab, m->hp.final_softcap);
        sc->head_runs++;
        sc->head_rows += rows;
        for (int32_t i = 0; i < np; i++) {
            if (cnt[i] != -1) continue;
            mor__pass_conf_logits(sc->part_s[i], sc->logits + (size_t)off[i] * m->hp.n_vocab);
            advance(sc, sc->part_s[i]);
            sc->part_s[i] = NULL;
            cnt[i] = 0;
        }
    }
}

static void round_run(mor_sched *sc);

int mor_sched_step(mor_sched *sc) {
    if (!sc) return MOR_E_INVALID;
    REFUSE_BUSY(sc, NULL);
    sc->busy = 1;
    round_run(sc);
    sc->busy = 0;
    // Frees that callbacks asked for during the round happen now, when nothing uses the memory.
    for (int32_t i = 0; i < sc->n;) {
        mor_session *s = sc->e[i].s;
        if (!s->free_pending) {
            i++;
            continue;
        }
        s->free_pending = 0;
        mor_session_free(s);  // removes it from sc->e (the last entry moves to i) and its events
    }
    if (sc->free_pending) {
        sc->free_pending = 0;
        mor_sched_free(sc);
    }
    return MOR_OK;
}

// One round: admit work, run one batched layer, finish the tokens that are done.
static void round_run(mor_sched *sc) {
    sc->rounds++;
    int32_t rows_in = 0, in_flight = 0;
    for (int32_t i = 0; i < sc->n; i++)
        if (sc->e[i].in_pass) rows_in += sc->e[i].s->ps.R, in_flight++;
    int may = sc->p.mode == MOR_SCHED_CONTINUOUS || in_flight == 0;
    for (int32_t i = 0; i < sc->n; i++) {
        int32_t r = admit(sc, &sc->e[i], rows_in, may && !(sc->p.mode == MOR_SCHED_SEQUENTIAL && rows_in > 0));
        rows_in += r;
    }
    // The next layer to run. The stored layers are swept in the order they first occur in the
    // unrolled stack (first unique layers, the shared block, the last ones), from the layer run
    // last: the next stored layer in that cyclic order that has rows waiting runs for all of
    // them. A token that exits early goes through the tail (last layers and output head) and
    // the first layers while the deeper ones wait one pass of the sweep, then starts the block
    // with them: the shared block runs with nearly every session in it. Whether exits may run
    // the tail before the batch's deepest token is done is tail_ready()'s call: a large head
    // (a 49152-token vocabulary is 8 layers' worth) costs about as much for 2 rows as for 8.
    // Each stored layer with work comes up within a sweep, or once every row in flight waits
    // for the tail, so nobody starves (admission keeps the rows in flight within max_batch).
    // Static batching runs its batch down the unrolled stack: the lowest next layer first, so
    // tokens that exit wait at the last layers for the deepest one. Sequential: the session
    // that waited longest.
    int tail_ok = tail_ready(sc);
    entry *first = NULL;
    int32_t best = INT32_MAX;
    for (int32_t i = 0; i < sc->n; i++) {
        entry *e = &sc->e[i];
        int32_t next = e->in_pass ? mor__pass_next(e->s) : -1;
        if (next < 0 || (!tail_ok && next >= sc->tail_begin)) continue;
        int32_t dist = 0;
        if (sc->p.mode == MOR_SCHED_STATIC) {  // one pass of the batch down the unrolled stack
            dist = next;
        } else if (sc->p.mode == MOR_SCHED_CONTINUOUS) {
            int32_t pos = sc->first_use[sc->model->layers[next].stored];
            dist = (pos - sc->sweep + sc->model->hp.n_layer) % sc->model->hp.n_layer;
        }
        if (dist < best || (dist == best && e->last_round < first->last_round)) best = dist, first = e;
    }
    if (first) sc->sweep = sc->first_use[sc->model->layers[mor__pass_next(first->s)].stored];
    if (first) {
        const mor_model *m = sc->model;
        int32_t key = m->layers[mor__pass_next(first->s)].stored, np = 0, rows = 0;
        for (int32_t i = 0; i < sc->n && np < sc->p.max_batch; i++) {
            entry *e = &sc->e[i];
            if (!e->in_pass || mor__pass_next(e->s) < 0) continue;
            if (m->layers[mor__pass_next(e->s)].stored != key) continue;
            if (sc->p.mode == MOR_SCHED_SEQUENTIAL && e != first) continue;
            mor__layer_rows p;
            mor__pass_rows(e->s, &p);
            if (e != first && rows + p.n > sc->p.max_batch) continue;
            sc->part_s[np] = e->s;
            sc->parts[np++] = p;
            rows += p.n;
            e->last_round = sc->rounds;
        }
        for (int32_t i = 1; i < np; i++)  // equal layers next to each other: they share products
            for (int32_t j = i; j > 0 && sc->parts[j - 1].l > sc->parts[j].l; j--) {
                mor__layer_rows t = sc->parts[j];
                mor_session *ts = sc->part_s[j];
                sc->parts[j] = sc->parts[j - 1], sc->part_s[j] = sc->part_s[j - 1];
                sc->parts[j - 1] = t, sc->part_s[j - 1] = ts;
            }
        mor__run_layers(&sc->w, m, sc->parts, np);
        sc->rows += rows;
        sc->layers++;
        conf_heads(sc, np);
        for (int32_t i = 0; i < np; i++)
            if (sc->part_s[i]) advance(sc, sc->part_s[i]);
    }
    // Tokens whose layers are done: one output projection for all whose logits come from the
    // final head, then each finishes (telemetry, stack, sampling next round).
    const mor__hparams *hp = &sc->model->hp;
    int32_t nh = 0;
    tail_ok = tail_ready(sc);
    for (int32_t i = 0; i < sc->n && tail_ok; i++) {
        entry *e = &sc->e[i];
        if (!e->in_pass || mor__pass_next(e->s) >= 0) continue;
        if (nh < sc->p.max_batch && mor__pass_head_row(e->s, sc->w.xb + (size_t)nh * hp->n_embd)) {
            sc->head[nh++] = i;
        } else {
            complete(sc, e, NULL);
        }
    }
    if (nh) {
        mor__matmul(&sc->w, &sc->model->output, sc->w.xb, nh, sc->logits);
        mor__arch_softcap(sc->logits, (int64_t)nh * hp->n_vocab, hp->final_softcap);
        sc->head_runs++;
        sc->head_rows += nh;
        for (int32_t j = 0; j < nh; j++) complete(sc, &sc->e[sc->head[j]], sc->logits + (size_t)j * hp->n_vocab);
    }
}
