// test-safety.c: what a model file or a caller's misuse must not do to the host process:
// reserve memory the caller did not allow (a file claiming a huge context and depth), commit
// memory that is never touched, read past a token array whose count does not fit, or free an
// object while one of its callbacks runs (re-entry from a router into its session or scheduler).
#include "harness.h"
#include "mor.h"

#include "support/randmodel.h"

#include <stdio.h>
#include <unistd.h>

static mor_model *load(const char *name) {
    char path[512], err[256];
    mor_model *m = NULL;
    if (mor_model_load(test_path(path, sizeof path, name), NULL, &m, err, sizeof err) != MOR_OK)
        printf("# load %s failed: %s\n", name, err);
    return m;
}

// A `mor` file of a few KB that claims a context of 2^20 tokens and 4096 unrolled layers (4096
// recursions of one stored layer).
static mor_model *load_greedy_file(char *path, size_t n) {
    static const randmodel_shape sh = {"greedy", 16, 32, 4096, 2, 1, 64};
    char err[256];
    snprintf(path, n, "/tmp/mor-test-safety-%d.gguf", (int)getpid());
    if (randmodel_write_ctx(&sh, MOR__DT_F32, 4096, "cycle", 1u << 20, path, err, sizeof err)) {
        printf("# write: %s\n", err);
        return NULL;
    }
    mor_model *m = NULL;
    if (mor_model_load(path, NULL, &m, err, sizeof err)) printf("# load: %s\n", err);
    return m;
}

TEST(huge_claims_are_capped) {
    char path[256], err[512];
    mor_model *m = load_greedy_file(path, sizeof path);
    ASSERT(m);
    FILE *f = fopen(path, "rb");
    ASSERT(f);
    fseek(f, 0, SEEK_END);
    long file_size = ftell(f);
    fclose(f);
    remove(path);
    printf("# file of %ld bytes: context %lld, %lld layers\n", file_size,
           (long long)mor_model_get_int(m, MOR_INFO_N_CTX_TRAIN), (long long)mor_model_get_int(m, MOR_INFO_N_LAYER));
    ASSERT_LT(file_size, 64 * 1024);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_LAYER), 4096);
    // The README's call: defaults. The context is the default one, not the file's claim, and
    // the session that would need 4096 layers x 4096 tokens of K/V is refused with the figure.
    mor_session *s = (mor_session *)1;
    ASSERT_STATUS(mor_session_create(m, NULL, &s, err, sizeof err), MOR_E_LIMIT);
    ASSERT(s == NULL);
    printf("# %s\n", err);
    ASSERT(strstr(err, "MiB") && strstr(err, "max_bytes"));
    uint64_t need = 0;
    ASSERT_OK(mor_session_memory_size(m, NULL, &need, err, sizeof err));
    // 4096 layers x 4096 tokens x 2 (K, V) x 1 kv head x 8 floats x 4 bytes = 1 GiB of K/V alone
    ASSERT(need > (1ull << 30));
    // The whole claimed context: refused too, whatever the address space.
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 1 << 20;
    ASSERT_STATUS(mor_session_create(m, &p, &s, err, sizeof err), MOR_E_LIMIT);
    // What the caller allows: a short context fits the default cap; max_bytes below the need
    // is refused; -1 lifts the cap (the short context is then created without a cap).
    p.n_ctx = 32;
    ASSERT_OK(mor_session_memory_size(m, &p, &need, err, sizeof err));
    p.max_bytes = (int64_t)need - 1;
    ASSERT_STATUS(mor_session_create(m, &p, &s, err, sizeof err), MOR_E_LIMIT);
    p.max_bytes = (int64_t)need;
    ASSERT_OK(mor_session_create(m, &p, &s, err, sizeof err));
    int32_t tok = 3;
    ASSERT_OK(mor_session_step(s, &tok, 1));
    ASSERT_EQ(mor_session_depth(s, -1), 4096);
    mor_session_free(s);
    p.max_bytes = -1;
    ASSERT_OK(mor_session_create(m, &p, &s, err, sizeof err));
    mor_session_free(s);
    p.max_bytes = -2;
    ASSERT_STATUS(mor_session_create(m, &p, &s, err, sizeof err), MOR_E_INVALID);
    ASSERT(strstr(err, "max_bytes"));
    mor_model_free(m);
}

TEST(default_context_and_size_estimate) {
    mor_model *m = load("stories260K.gguf");
    ASSERT(m);
    char err[256];
    mor_session *s;
    ASSERT_OK(mor_session_create(m, NULL, &s, err, sizeof err));
    int64_t train = mor_model_get_int(m, MOR_INFO_N_CTX_TRAIN);
    ASSERT_EQ(mor_session_n_ctx(s), train < MOR_SESSION_DEFAULT_CTX ? train : MOR_SESSION_DEFAULT_CTX);
    mor_session_free(s);
    // The estimate grows by exactly the K/V, positions, tokens, telemetry and attention rows
    // of the added tokens (each buffer rounded to 64 bytes: pick multiples of 64 tokens).
    mor_session_params p;
    mor_session_params_init(&p);
    uint64_t a, b;
    p.n_ctx = 128;
    ASSERT_OK(mor_session_memory_size(m, &p, &a, err, sizeof err));
    p.n_ctx = 256;
    ASSERT_OK(mor_session_memory_size(m, &p, &b, err, sizeof err));
    const uint64_t L = (uint64_t)mor_model_get_int(m, MOR_INFO_N_LAYER),
                   kv = (uint64_t)(mor_model_get_int(m, MOR_INFO_N_HEAD_KV) * mor_model_get_int(m, MOR_INFO_HEAD_DIM));
    // per token: K and V floats and a position per layer; token id, depth, score, kv, given,
    // one attention score (1 thread)
    uint64_t per_token = L * (2 * kv * 4 + 4) + 4 + 1 + 4 + 1 + 1 + 4;
    ASSERT_EQ(b - a, 128 * per_token);
    // F16 K/V halves the K/V part.
    p.flags = MOR_SESSION_KV_F16;
    uint64_t c;
    ASSERT_OK(mor_session_memory_size(m, &p, &c, err, sizeof err));
    ASSERT_EQ(b - c, 256 * L * 2 * kv * 2);
    // Bad parameters are named, like mor_session_create's.
    p.n_ctx = -5;
    ASSERT_STATUS(mor_session_memory_size(m, &p, &c, err, sizeof err), MOR_E_INVALID);
    ASSERT(strstr(err, "n_ctx"));
    ASSERT_STATUS(mor_session_memory_size(m, NULL, NULL, err, sizeof err), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_memory_size(NULL, NULL, &c, err, sizeof err), MOR_E_INVALID);
    // Set by name (bindings).
    mor_session_params_init(&p);
    ASSERT_OK(mor_params_set(&p, "max_bytes", 12345.0));
    ASSERT_EQ(p.max_bytes, 12345);
    mor_model_free(m);
}

// Resident memory of this process in bytes (Linux); 0 where /proc is missing.
static uint64_t resident_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    unsigned long size = 0, res = 0;
    int n = fscanf(f, "%lu %lu", &size, &res);
    fclose(f);
    return n == 2 ? (uint64_t)res * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

TEST(kv_cache_is_not_touched_up_front) {
    if (!resident_bytes()) TEST_SKIP("no /proc/self/statm to read resident memory from");
    mor_model *m = load("stories260K.gguf");
    ASSERT(m);
    // A context far beyond what is used: 256 MiB of K/V reserved by one session.
    mor_session_params p;
    mor_session_params_init(&p);
    const uint64_t L = (uint64_t)mor_model_get_int(m, MOR_INFO_N_LAYER),
                   kv = (uint64_t)(mor_model_get_int(m, MOR_INFO_N_HEAD_KV) * mor_model_get_int(m, MOR_INFO_HEAD_DIM));
    p.n_ctx = (int32_t)((256ull << 20) / (L * kv * 8));
    p.max_bytes = -1;
    char err[256];
    uint64_t need;
    ASSERT_OK(mor_session_memory_size(m, &p, &need, err, sizeof err));
    uint64_t before = resident_bytes();
    mor_session *s;
    ASSERT_OK(mor_session_create(m, &p, &s, err, sizeof err));
    int32_t toks[8] = {1, 403, 407, 261, 378, 426, 275, 316};
    ASSERT_OK(mor_session_step(s, toks, 8));
    uint64_t after = resident_bytes();
    printf("# reserved %.1f MiB, resident grew by %.1f MiB\n", (double)need / 1048576.0,
           (double)(after - before) / 1048576.0);
    // Sanitizer and valgrind runs fill fresh memory themselves: then only the reserve is checked.
    if (!getenv("MOR_TEST_ALLOC_FILLS")) ASSERT_LT((double)(after - before), (double)need / 4);
    mor_session_free(s);
    mor_model_free(m);
}

TEST(count_checked_before_tokens_are_read) {
    mor_model *m = load("stories260K.gguf");
    ASSERT(m);
    char err[256];
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 16;
    mor_session *s;
    ASSERT_OK(mor_session_create(m, &p, &s, err, sizeof err));
    // 20 tokens do not fit 16: the call says so without judging the ids (the last is bad).
    int32_t toks[20];
    for (int i = 0; i < 20; i++) toks[i] = 5;
    toks[19] = 1 << 30;
    ASSERT_STATUS(mor_session_step(s, toks, 20), MOR_E_CONTEXT_FULL);
    // A count far larger than the array: refused before reading past the one token there.
    int32_t *one = malloc(sizeof *one);
    ASSERT(one);
    *one = 5;
    ASSERT_STATUS(mor_session_step(s, one, 1 << 30), MOR_E_CONTEXT_FULL);
    free(one);
    ASSERT_EQ(mor_session_n_past(s), 0);
    mor_session_free(s);
    mor_model_free(m);
}

// ---- re-entry from a router callback ----------------------------------------------------------

typedef struct {
    mor_session *s;
    mor_sched   *sc;
    int          what;     // what the callback does to its own session / scheduler
    int          calls;
    int          status;   // the status of that call
} reenter;

enum { DO_STEP, DO_REWIND, DO_POLICY, DO_SAMPLER, DO_SAMPLE, DO_ROUTER, DO_STATE_LOAD, DO_FREE, DO_SCHED_STEP, DO_SCHED_REMOVE, DO_SCHED_POLL, DO_SCHED_FREE, DO_SESSION_FREE_IN_SCHED };

static int32_t reenter_route(void *user, const mor_route_batch *b, uint8_t *keep) {
    reenter *r = user;
    (void)b, (void)keep;
    if (r->calls++) return 0;  // once
    int32_t tok = 2;
    switch (r->what) {
    case DO_STEP: r->status = mor_session_step(r->s, &tok, 1); break;
    case DO_REWIND: r->status = mor_session_rewind(r->s, 0); break;
    case DO_POLICY: r->status = mor_session_set_exit_policy(r->s, NULL); break;
    case DO_SAMPLER: r->status = mor_session_set_sampler(r->s, NULL); break;
    case DO_SAMPLE: r->status = mor_session_sample(r->s, &tok); break;
    case DO_ROUTER: r->status = mor_session_set_router_fn(r->s, NULL, NULL, 0); break;
    case DO_STATE_LOAD: {
        static unsigned char junk[64];
        r->status = mor_session_state_load(r->s, junk, sizeof junk);
        break;
    }
    case DO_FREE: mor_session_free(r->s); break;
    case DO_SCHED_STEP: r->status = mor_sched_step(r->sc); break;
    case DO_SCHED_REMOVE: r->status = mor_sched_remove(r->sc, r->s); break;
    case DO_SCHED_POLL: r->status = mor_sched_poll(r->sc, NULL, NULL, NULL); break;
    case DO_SCHED_FREE: mor_sched_free(r->sc); break;
    case DO_SESSION_FREE_IN_SCHED: mor_session_free(r->s); break;
    }
    return 0;
}

TEST(router_cannot_reenter_its_session) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    char err[256];
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 64;
    int32_t toks[3] = {5, 6, 7};
    for (int what = DO_STEP; what < DO_FREE; what++) {
        mor_session *s;
        ASSERT_OK(mor_session_create(m, &p, &s, err, sizeof err));
        reenter r = {s, NULL, what, 0, 0};
        ASSERT_OK(mor_session_set_router_fn(s, reenter_route, &r, 0));
        ASSERT_OK(mor_session_step(s, toks, 3));  // the outer step is unharmed
        ASSERT_STATUS(r.status, MOR_E_BUSY);
        ASSERT_EQ(mor_session_n_past(s), 3);
        ASSERT(mor_session_logits(s, -1) != NULL);
        mor_session_free(s);
    }
    // Freeing the session from its own callback: the step stops, frees it on its way out and
    // says so (ASan and valgrind runs of this test see no use after free and no leak).
    mor_session *s;
    ASSERT_OK(mor_session_create(m, &p, &s, err, sizeof err));
    reenter r = {s, NULL, DO_FREE, 0, 0};
    ASSERT_OK(mor_session_set_router_fn(s, reenter_route, &r, 0));
    ASSERT_STATUS(mor_session_step(s, toks, 3), MOR_E_CANCELLED);
    mor_model_free(m);
}

TEST(router_cannot_reenter_its_scheduler) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    char err[256];
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 64;
    int32_t toks[3] = {5, 6, 7};
    for (int what = DO_SCHED_STEP; what <= DO_SESSION_FREE_IN_SCHED; what++) {
        mor_sched *sc;
        ASSERT_OK(mor_sched_create(m, NULL, &sc, err, sizeof err));
        mor_session *a, *b;
        ASSERT_OK(mor_session_create(m, &p, &a, err, sizeof err));
        ASSERT_OK(mor_session_create(m, &p, &b, err, sizeof err));
        reenter r = {a, sc, what, 0, 0};
        ASSERT_OK(mor_session_set_router_fn(a, reenter_route, &r, 0));
        ASSERT_OK(mor_sched_add(sc, a));
        ASSERT_OK(mor_sched_add(sc, b));
        ASSERT_OK(mor_sched_submit(sc, a, toks, 3, 4));
        ASSERT_OK(mor_sched_submit(sc, b, toks, 3, 4));
        ASSERT_OK(mor_sched_step(sc));  // the round that runs the callback
        ASSERT_EQ(r.calls, 1);
        if (what == DO_SCHED_FREE) {  // freed by the round that ran the callback
            mor_session_free(a);
            mor_session_free(b);
            continue;
        }
        int got_b = 0, got_a = 0;
        for (int guard = 0; mor_sched_pending(sc) > 0 && guard < 10000; guard++) {
            ASSERT_OK(mor_sched_step(sc));
            mor_session *who;
            int32_t tok, st;
            while (mor_sched_poll(sc, &who, &tok, &st) == MOR_OK) {
                if (who == b && tok >= 0) got_b++;
                if (who == a && tok >= 0) got_a++;
            }
        }
        ASSERT_EQ(got_b, 4);  // the other session is unharmed
        if (what == DO_SESSION_FREE_IN_SCHED) {
            ASSERT_EQ(got_a, 0);  // a was freed at the end of the round
        } else {
            ASSERT_STATUS(r.status, MOR_E_BUSY);
            ASSERT_EQ(got_a, 4);
            mor_session_free(a);
        }
        mor_session_free(b);
        mor_sched_free(sc);
    }
    mor_model_free(m);
}

TEST(model_outlives_its_users) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    char err[256];
    mor_session *s;
    ASSERT_OK(mor_session_create(m, NULL, &s, err, sizeof err));
    mor_sched *sc;
    ASSERT_OK(mor_sched_create(m, NULL, &sc, err, sizeof err));
    mor_model_free(m);  // the owner lets go first: the session and scheduler keep it
    int32_t toks[3] = {5, 6, 7};
    ASSERT_OK(mor_session_step(s, toks, 3));
    ASSERT_EQ(mor_model_get_int(mor_session_model(s), MOR_INFO_N_VOCAB), 128);
    mor_sched_free(sc);
    ASSERT_OK(mor_session_step(s, toks, 1));
    mor_session_free(s);  // the last user: the model goes with it (ASan and valgrind see no leak)
    // A streaming detokenizer holds its model too.
    m = load("stories260K.gguf");
    ASSERT(m);
    mor_detok *d;
    ASSERT_OK(mor_detok_create(m, 0, &d));
    mor_model_free(m);
    char buf[64];
    size_t n = 0;
    ASSERT_OK(mor_detok_push(d, 403, buf, sizeof buf, &n));
    ASSERT_EQ(n, 4);
    ASSERT(memcmp(buf, "Once", 4) == 0);
    mor_detok_free(d);
}

TEST(tiny_temperature_samples_the_top_token) {
    mor_model *m = load("stories260K.gguf");
    ASSERT(m);
    char err[256];
    mor_session *s;
    ASSERT_OK(mor_session_create(m, NULL, &s, err, sizeof err));
    int32_t toks[4] = {1, 403, 407, 261};
    ASSERT_OK(mor_session_step(s, toks, 4));
    const float *l = mor_session_logits(s, -1);
    int32_t best = 0;
    for (int32_t i = 1; i < mor_model_n_vocab(m); i++)
        if (l[i] > l[best]) best = i;
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    static const float temps[] = {1e-38f, 1e-40f, 1e-45f, 1e-20f};
    for (size_t i = 0; i < sizeof temps / sizeof temps[0]; i++) {
        sp.temperature = temps[i];
        ASSERT_OK(mor_session_set_sampler(s, &sp));
        int32_t t = -1;
        ASSERT_OK(mor_session_sample(s, &t));
        ASSERT_EQ(t, best);  // logits divided by 1e-38 overflow: the top one must still win
    }
    mor_session_free(s);
    mor_model_free(m);
}

TEST_MAIN(model_outlives_its_users, tiny_temperature_samples_the_top_token, huge_claims_are_capped, default_context_and_size_estimate, kv_cache_is_not_touched_up_front,
          count_checked_before_tokens_are_read, router_cannot_reenter_its_session, router_cannot_reenter_its_scheduler)
