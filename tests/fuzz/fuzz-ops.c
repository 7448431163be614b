// fuzz-ops.c: random sequences of session and scheduler calls decoded from the input.
//
// Input: byte 0 picks the model (cycle.gguf: recursive, no router; expert.gguf: expert-choice
// router; vanilla-tied.gguf: plain llama); the rest is a list of operations on up to four
// session slots and one scheduler: create / free a session with varied parameters, step
// (random ids, some out of range), sample, rewind, reset, set an exit policy or a sampler with
// random fields, set / clear a custom router, save and reload the state (into the same or
// another session), query telemetry, and create / free / add / submit / step / poll / cancel /
// remove on the scheduler.
//
// Properties: every call returns MOR_OK or one of its documented statuses; ids reported are in
// the vocabulary; a request ends with one end event; the state of a session reloads into it;
// no crash, no leak (ASan), and at the end, after the scheduler is freed and the router
// cleared, every session still steps and samples.
#define MOR_NO_DEPRECATION_WARNINGS  // mor_sched_stats, deprecated, is still exercised
#include "fuzz.h"

#define N_MODELS 3
static const char *const model_files[N_MODELS] = {"cycle.gguf", "expert.gguf", "vanilla-tied.gguf"};
static mor_model *models[N_MODELS];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    for (int i = 0; i < N_MODELS; i++) models[i] = fz_load(model_files[i], 0);
    return 0;
}

#define SLOTS 4
typedef struct {
    mor_session *s;
    int          in;      // under the scheduler
    int          active;  // has a request that has not ended
    int          router;  // a custom router is set
    uint32_t     rng;     // the router's state
} slot;

// A custom router: keeps a pseudo-random subset; fails now and then (MOR_E_CALLBACK).
static int32_t route(void *user, const mor_route_batch *b, uint8_t *keep) {
    uint32_t *r = user;
    for (int32_t i = 0; i < b->n_tokens; i++) {
        *r = *r * 1103515245u + 12345u;
        keep[i] = (uint8_t)((*r >> 16) % 3 != 0);
    }
    *r = *r * 1103515245u + 12345u;
    return (*r >> 16) % 23 == 0 ? 1 : 0;
}

static int32_t pick_ctx(fz_in *in) {
    int32_t v = fz_int(in, 40);
    return v > 4096 && v <= (1 << 20) ? 4096 : v;  // valid but huge contexts only cost memory
}
static int32_t pick_threads(fz_in *in) {
    static const int32_t v[8] = {1, 1, 1, 2, 0, -1, 257, INT32_MAX};
    return v[fz_u8(in) & 7];
}

static int32_t pick_token(fz_in *in, int32_t nv) {
    uint8_t k = fz_u8(in);
    if (k < 8) return k == 0 ? -1 : k == 1 ? nv : k == 2 ? INT32_MIN : nv + k;
    return (int32_t)(fz_u16(in) % (uint32_t)nv);
}

static void random_policy(fz_in *in, mor_exit_policy *ep) {
    mor_exit_policy_init(ep);
    ep->policy = fz_int(in, 8);
    uint8_t which = fz_u8(in);
    if (which & 1) ep->depth = fz_int(in, 4);
    if (which & 2) ep->threshold = fz_float(in);
    if (which & 4) ep->min_depth = fz_int(in, 4);
    if (which & 8) ep->metric = fz_int(in, 3);
    if (which & 16) ep->decay_tau = fz_float(in), ep->decay_len = fz_int(in, 64);
    if (which & 32) ep->shallow = fz_int(in, 4), ep->adaptive = fz_int(in, 1);
    if (which & 64) ep->kv = fz_int(in, 5);
    if (which & 128) ep->budget = fz_float(in) * 3, ep->budget_window = fz_int(in, 40), ep->rollback = fz_float(in);
}

static void random_sampler(fz_in *in, mor_sampler_params *sp) {
    mor_sampler_params_init(sp);
    uint8_t which = fz_u8(in);
    if (which & 1) sp->temperature = fz_float(in);
    if (which & 2) sp->top_k = fz_int(in, 200);
    if (which & 4) sp->top_p = fz_float(in);
    if (which & 8) sp->min_p = fz_float(in);
    if (which & 16) sp->repeat_penalty = fz_float(in);
    if (which & 32) sp->repeat_last_n = fz_int(in, 100);
    if (which & 64) sp->seed = fz_u64(in);
}

// Drains the scheduler's events, checking them against the slots.
static void poll_all(mor_sched *sc, slot *sl, int32_t nv) {
    mor_session *who;
    int32_t tok, st;
    int guard = 0;
    while (mor_sched_poll(sc, &who, &tok, &st) == MOR_OK) {
        FZ_CHECK(++guard < 100000, "poll never ends");
        int j = 0;
        while (j < SLOTS && sl[j].s != who) j++;
        FZ_CHECK(j < SLOTS && sl[j].in, "event for a session not under the scheduler");
        if (tok >= 0) {
            FZ_CHECK(tok < nv && st == MOR_OK, "event token %d status %d", tok, st);
            FZ_CHECK(sl[j].active, "token for a session without a request");
            continue;
        }
        FZ_CHECK(tok == -1, "event token %d", tok);
        if (st != MOR_OK) FZ_CHECK(st == MOR_E_CANCELLED || mor_session_last_error(who)[0] != 0, "error %d without a message", st);
        sl[j].active = 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    fz_in in = {data, size, 0};
    mor_model *m = models[fz_u8(&in) % N_MODELS];
    const int32_t nv = (int32_t)mor_model_get_int(m, MOR_INFO_N_VOCAB);
    slot sl[SLOTS];
    memset(sl, 0, sizeof sl);
    mor_sched *sc = NULL;
    char err[256];
    for (int op = 0; op < 300 && fz_left(&in); op++) {
        uint8_t b = fz_u8(&in);
        int i = b >> 6 & 3, what = b & 31;
        slot *x = &sl[i];
        mor_session *s = x->s;
        if (!s && what < 24) what = 0;  // most operations need a session: create it first
        switch (what) {
        case 0: {  // create (or free) a session
            if (s) {
                mor_session_free(s);
                memset(x, 0, sizeof *x);
                break;
            }
            mor_session_params p;
            mor_session_params_init(&p);
            uint8_t which = fz_u8(&in);
            p.n_ctx = (which & 1) ? pick_ctx(&in) : 32;
            p.n_batch = (which & 2) ? fz_int(&in, 16) : 8;
            p.n_threads = (which & 4) ? pick_threads(&in) : 1;
            p.flags = (which >> 3) & 7;
            int st = mor_session_create(m, &p, &x->s, err, sizeof err);
            FZ_STATUS(st, MOR_OK, MOR_E_INVALID, MOR_E_LIMIT);
            FZ_CHECK((st == MOR_OK) == (x->s != NULL), "create: status %d, session %p", st, (void *)x->s);
            if (st != MOR_OK) FZ_CHECK(err[0] != 0, "create failed without a message");
            break;
        }
        case 1: case 2: case 3: case 4: {  // step
            int32_t t[16], n = (int32_t)(fz_u8(&in) % 17), bad = 0;
            for (int32_t k = 0; k < n; k++) {
                t[k] = pick_token(&in, nv);
                bad |= t[k] < 0 || t[k] >= nv;
            }
            int32_t np = mor_session_n_past(s);
            int st = mor_session_step(s, n ? t : NULL, n);
            FZ_STATUS(st, MOR_OK, MOR_E_TOKEN, MOR_E_CONTEXT_FULL, MOR_E_INVALID, MOR_E_CALLBACK);
            if (st != MOR_OK) FZ_CHECK(mor_session_last_error(s)[0] != 0, "step %s without a message", mor_status_name(st));
            if (bad && !x->in && n > 0) FZ_CHECK(st != MOR_OK, "step accepted a bad id");
            if (x->in) FZ_CHECK(st != MOR_OK, "step accepted on a scheduled session");
            if (st == MOR_E_TOKEN || st == MOR_E_CONTEXT_FULL) FZ_CHECK(mor_session_n_past(s) == np, "failed step changed n_past");
            if (st == MOR_OK) FZ_CHECK(mor_session_n_past(s) <= mor_session_n_ctx(s), "n_past beyond n_ctx");
            break;
        }
        case 5: case 6: {  // sample
            int32_t tok = -1;
            int st = mor_session_sample(s, &tok);
            FZ_STATUS(st, MOR_OK, MOR_E_INVALID);
            if (st == MOR_OK) FZ_CHECK(tok >= 0 && tok < nv, "sampled %d of %d", tok, nv);
            break;
        }
        case 7: {  // rewind
            int32_t np = mor_session_n_past(s), k = fz_int(&in, np + 1);
            int st = mor_session_rewind(s, k);
            FZ_STATUS(st, MOR_OK, MOR_E_INVALID);
            if (k < 0 || k > np) FZ_CHECK(st == MOR_E_INVALID, "rewind(%d) with n_past %d accepted", k, np);
            if (st == MOR_OK && !x->in) FZ_CHECK(mor_session_n_past(s) == k, "rewind(%d) left n_past %d", k, mor_session_n_past(s));
            break;
        }
        case 8:  // reset
            mor_session_reset(s);
            break;
        case 9: case 10: {  // exit policy with random fields (or the default)
            mor_exit_policy ep;
            random_policy(&in, &ep);
            int st = mor_session_set_exit_policy(s, (fz_u8(&in) & 15) ? &ep : NULL);
            FZ_STATUS(st, MOR_OK, MOR_E_INVALID, MOR_E_UNSUPPORTED);
            break;
        }
        case 11: {  // sampler with random fields (or the default)
            mor_sampler_params sp;
            random_sampler(&in, &sp);
            int st = mor_session_set_sampler(s, (fz_u8(&in) & 15) ? &sp : NULL);
            FZ_STATUS(st, MOR_OK, MOR_E_INVALID);
            break;
        }
        case 12: {  // custom router on / off
            int st;
            if (fz_u8(&in) & 1) {
                x->rng = fz_u32(&in);
                st = mor_session_set_router_fn(s, route, &x->rng, fz_u8(&in) & 1);
                FZ_STATUS(st, MOR_OK, MOR_E_UNSUPPORTED, MOR_E_INVALID);
                if (st == MOR_OK) x->router = 1;
            } else {
                st = mor_session_set_router(s, NULL, NULL);
                FZ_STATUS(st, MOR_OK, MOR_E_INVALID);
                if (st == MOR_OK) x->router = 0;
            }
            break;
        }
        case 13: case 14: {  // state save and reload (into itself, or into another slot)
            size_t need = mor_session_state_size(s), got = 0;
            uint8_t *buf = malloc(need ? need : 1);
            if (!buf) abort();
            int st = mor_session_state_save(s, buf, need, &got);
            FZ_STATUS(st, MOR_OK);
            FZ_CHECK(got == need, "saved %zu bytes, state_size %zu", got, need);
            slot *y = &sl[fz_u8(&in) % SLOTS];
            if (y->s) {
                int ls = mor_session_state_load(y->s, buf, got);
                if (y == x && !x->in)
                    FZ_CHECK(ls == MOR_OK, "a session does not reload its own state: %s", mor_session_last_error(s));
                FZ_STATUS(ls, MOR_OK, MOR_E_STATE, MOR_E_INVALID);
            }
            free(buf);
            break;
        }
        case 15: {  // telemetry and queries
            int32_t np = mor_session_n_past(s), pos = fz_int(&in, np);
            (void)mor_session_logits(s, -1);
            (void)mor_session_logits(s, fz_int(&in, 4));
            (void)mor_session_depth(s, fz_int(&in, 4));
            int32_t t = -1, d = 0, kvs = 0;
            float sc_ = 0;
            int st = mor_session_token_at(s, pos, &t);
            FZ_STATUS(st, MOR_OK, MOR_E_INVALID);
            if (st == MOR_OK) FZ_CHECK(t >= 0 && t < nv, "token_at %d", t);
            FZ_STATUS(mor_session_token_info(s, pos, &d, &sc_, &kvs), MOR_OK, MOR_E_INVALID);
            mor_session_stats stats;
            memset(&stats, 0, sizeof stats);
            stats.size = sizeof stats;
            FZ_STATUS(mor_session_get_stats(s, &stats), MOR_OK);
            (void)mor_session_rollback(s);
            (void)mor_session_n_last(s);
            break;
        }
        case 16: case 17: {  // scheduler: create or free
            if (sc) {
                if (fz_u8(&in) & 1) break;
                mor_sched_free(sc);
                sc = NULL;
                for (int j = 0; j < SLOTS; j++) sl[j].in = sl[j].active = 0;
                break;
            }
            mor_sched_params p;
            mor_sched_params_init(&p);
            uint8_t which = fz_u8(&in);
            if (which & 1) p.max_batch = fz_int(&in, 24);
            if (which & 2) p.n_threads = pick_threads(&in);
            if (which & 4) p.kv_budget = (int64_t)fz_int(&in, 64) * 997;
            if (which & 8) p.mode = fz_int(&in, 3);
            if (which & 16) p.prompt_chunk = fz_int(&in, 20);
            int st = mor_sched_create(m, &p, &sc, err, sizeof err);
            FZ_STATUS(st, MOR_OK, MOR_E_INVALID);
            FZ_CHECK((st == MOR_OK) == (sc != NULL), "sched_create: status %d, scheduler %p", st, (void *)sc);
            break;
        }
        case 18: {  // add
            if (!sc) break;
            int st = mor_sched_add(sc, s);
            FZ_STATUS(st, MOR_OK, MOR_E_INVALID);
            if (x->in) FZ_CHECK(st == MOR_E_INVALID, "added twice");
            if (st == MOR_OK) x->in = 1, x->active = 0;
            break;
        }
        case 19: case 20: {  // submit
            if (!sc) break;
            int32_t t[12], n = fz_u8(&in) % 13, gen = fz_int(&in, 8), bad = 0;
            for (int32_t k = 0; k < n; k++) {
                t[k] = pick_token(&in, nv);
                bad |= t[k] < 0 || t[k] >= nv;
            }
            int st = mor_sched_submit(sc, s, t, n, gen);
            FZ_STATUS(st, MOR_OK, MOR_E_TOKEN, MOR_E_CONTEXT_FULL, MOR_E_INVALID);
            if (!x->in) FZ_CHECK(st == MOR_E_INVALID, "submit for a session not under the scheduler: %d", st);
            if (bad) FZ_CHECK(st != MOR_OK, "submit accepted a bad id");
            if (st == MOR_OK && n + gen > 0) x->active = 1;
            break;
        }
        case 21: case 22: {  // rounds
            if (!sc) break;
            int rounds = 1 + fz_u8(&in) % 8;
            for (int r = 0; r < rounds; r++) {
                FZ_STATUS(mor_sched_step(sc), MOR_OK);
                poll_all(sc, sl, nv);
            }
            FZ_CHECK(mor_sched_pending(sc) >= 0 && mor_sched_pending(sc) <= SLOTS, "pending %d", mor_sched_pending(sc));
            break;
        }
        case 23: {  // cancel or remove
            if (!sc) break;
            if (fz_u8(&in) & 1) {
                FZ_STATUS(mor_sched_cancel(sc, s), x->in ? MOR_OK : MOR_E_INVALID);
            } else {
                FZ_STATUS(mor_sched_remove(sc, s), x->in ? MOR_OK : MOR_E_INVALID);
                x->in = x->active = 0;
            }
            break;
        }
        default: {  // a slot without a session: create one; with one: counters
            if (sc) {
                mor_sched_counters c;
                memset(&c, 0, sizeof c);
                c.size = sizeof c;
                FZ_STATUS(mor_sched_get_counters(sc, &c), MOR_OK);
                int64_t rounds, rows;
                double mean;
                FZ_STATUS(mor_sched_stats(sc, &rounds, &rows, &mean), MOR_OK);
            }
            break;
        }
        }
        if (sc) poll_all(sc, sl, nv);
    }
    // The end: free the scheduler (sessions stay usable), clear routers, and step every session.
    if (sc) {
        for (int r = 0; r < 3 && mor_sched_pending(sc) > 0; r++) {
            FZ_STATUS(mor_sched_step(sc), MOR_OK);
            poll_all(sc, sl, nv);
        }
        mor_sched_free(sc);
    }
    for (int j = 0; j < SLOTS; j++) {
        if (!sl[j].s) continue;
        FZ_STATUS(mor_session_set_router(sl[j].s, NULL, NULL), MOR_OK);
        mor_session_reset(sl[j].s);
        int32_t t[1] = {1};
        int st = mor_session_step(sl[j].s, t, 1);
        FZ_CHECK(st == MOR_OK, "session %d unusable: %s: %s", j, mor_status_name(st), mor_session_last_error(sl[j].s));
        int32_t tok = -1;
        FZ_STATUS(mor_session_sample(sl[j].s, &tok), MOR_OK);
        FZ_CHECK(tok >= 0 && tok < nv, "sampled %d of %d", tok, nv);
        mor_session_free(sl[j].s);
    }
    return 0;
}
