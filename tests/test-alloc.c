// test-alloc.c: a host's allocator (mor_allocator) receives every allocation of a model, a
// session, a scheduler and the tokenizer, and each call copes with any one of them failing:
// for every k, the k-th allocation of the call fails, the call returns MOR_E_NOMEM, nothing
// leaks (the allocator counts its live blocks), and the objects go on working.
#include "harness.h"
#include "mor.h"

#include <stdlib.h>

typedef struct {
    int64_t calls;    // allocations asked for
    int64_t fail_at;  // the allocation that fails (1-based; 0: none)
    int64_t live;     // blocks handed out and not yet freed
    int     bad;      // a block came back misaligned, or a free of NULL
} counter;

static void *c_alloc(void *user, size_t size, size_t align) {
    counter *c = user;
    if (++c->calls == c->fail_at) return NULL;
    if (!size || (align & (align - 1)) || align > 4096) c->bad = 1;
    void *p = aligned_alloc(align, (size + align - 1) / align * align);
    if (p) c->live++;
    return p;
}

static void c_free(void *user, void *p) {
    counter *c = user;
    if (!p) c->bad = 1;
    c->live--;
    free(p);
}

static mor_allocator allocator_of(counter *c) { return (mor_allocator){c_alloc, c_free, c}; }

static mor_model *load(const char *name, counter *c, uint32_t flags, int *status) {
    char path[512], err[256];
    mor_model_params mp;
    mor_model_params_init(&mp);
    mp.flags = flags;
    if (c) mp.allocator = allocator_of(c);
    mor_model *m = NULL;
    *status = mor_model_load(test_path(path, sizeof path, name), &mp, &m, err, sizeof err);
    if (*status && *status != MOR_E_NOMEM) printf("# load %s: %s\n", name, err);
    return m;
}

// Runs `op` with the k-th allocation failing, for k = 1, 2, ... until it needs no more than
// k - 1 allocations. Each failing run must return MOR_E_NOMEM (or MOR_OK where the call
// documents that it works on without the memory: graceful) and leave c->live as it found it.
#define FOR_EACH_FAILURE(c, k, body) FOR_EACH_FAILURE_(c, k, body, 0)
#define FOR_EACH_FAILURE_(c, k, body, graceful)                                         \
    for (int64_t k = 1;; k++) {                                                         \
        int64_t live0_ = (c)->live;                                                     \
        (c)->calls = 0, (c)->fail_at = k;                                               \
        int st_ = MOR_OK;                                                               \
        body;                                                                           \
        (c)->fail_at = 0;                                                               \
        if ((c)->calls < k) {                                                           \
            ASSERT_OK(st_);                                                             \
            printf("# %s: %lld allocations, each failure handled\n", #body, (long long)(k - 1)); \
            break;                                                                      \
        }                                                                               \
        if (st_ != MOR_E_NOMEM && !((graceful) && st_ == MOR_OK)) TEST__FAIL("allocation %lld of %s: status %d, want MOR_E_NOMEM", \
                                           (long long)k, #body, st_);                   \
        if ((c)->live != live0_) TEST__FAIL("allocation %lld of %s failed: %lld blocks leaked", \
                                            (long long)k, #body, (long long)((c)->live - live0_)); \
        ASSERT(!(c)->bad);                                                              \
    }

static int load_op(const char *name, uint32_t flags, counter *c) {
    int st;
    mor_model *m = load(name, c, flags, &st);
    mor_model_free(m);
    return st;
}

TEST(model_load) {
    counter c = {0};
    FOR_EACH_FAILURE(&c, k, st_ = load_op("middle_cycle.gguf", 0, &c));
    FOR_EACH_FAILURE(&c, k, st_ = load_op("middle_cycle-dora.gguf", 0, &c));  // relaxations: scratch, K/V store
    FOR_EACH_FAILURE(&c, k, st_ = load_op("cycle-adapt.gguf", 0, &c));
    FOR_EACH_FAILURE(&c, k, st_ = load_op("stories260K.gguf", MOR_MODEL_NO_MMAP, &c));
    FOR_EACH_FAILURE(&c, k, st_ = load_op("stories260K.gguf", MOR_MODEL_VOCAB_ONLY, &c));
    ASSERT_EQ(c.live, 0);
    ASSERT(!c.bad);
    ASSERT(c.calls > 0);  // the model's memory went through the allocator
}

static int session_op(const mor_model *m, counter *c, mor_session **out) {
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 64;
    p.n_batch = 8;
    p.n_threads = 2;  // the thread pool's memory too
    p.allocator = allocator_of(c);
    char err[256];
    int st = mor_session_create(m, &p, out, err, sizeof err);
    if (st == MOR_OK && !*out) st = MOR_E_INTERNAL;
    return st;
}

static int step_op(mor_session *s, const int32_t *toks, int32_t n) {
    int st = mor_session_step(s, toks, n);
    if (st == MOR_OK) mor_session_rewind(s, 0);
    return st;
}

TEST(session_create_and_step) {
    counter mc = {0}, sc = {0};
    int st;
    mor_model *m = load("middle_cycle.gguf", &mc, 0, &st);
    ASSERT(m);
    int64_t model_live = mc.live;
    mor_session *s = NULL;
    FOR_EACH_FAILURE(&sc, k, { st_ = session_op(m, &sc, &s); if (st_ == MOR_OK) { mor_session_free(s); s = NULL; } });
    ASSERT_EQ(sc.live, 0);
    ASSERT_EQ(mc.live, model_live);  // the session took nothing from the model's allocator
    ASSERT_OK(session_op(m, &sc, &s));
    int32_t toks[12] = {1, 5, 9, 3, 7, 2, 8, 4, 6, 10, 11, 12};
    // Steps allocate nothing, under every policy a session can run on this model.
    static const int32_t policies[] = {MOR_EXIT_FULL, MOR_EXIT_FIXED, MOR_EXIT_CONFIDENCE, MOR_EXIT_SATURATION};
    for (size_t i = 0; i < sizeof policies / sizeof policies[0]; i++) {
        mor_exit_policy ep;
        mor_exit_policy_init(&ep);
        ep.policy = policies[i];
        ep.depth = 1;
        ep.threshold = 0.3f;
        // A confidence policy's room for a group of exit-head rows is an optimisation: without
        // it the policy still applies (one row at a time).
        FOR_EACH_FAILURE_(&sc, k, st_ = mor_session_set_exit_policy(s, &ep), 1);
        FOR_EACH_FAILURE(&sc, k, st_ = step_op(s, toks, 12));
        FOR_EACH_FAILURE(&sc, k, st_ = step_op(s, toks, 1));
    }
    ASSERT_OK(mor_session_step(s, toks, 3));
    int32_t t;
    ASSERT_OK(mor_session_sample(s, &t));
    mor_session_free(s);
    ASSERT_EQ(sc.live, 0);
    mor_model_free(m);
    ASSERT_EQ(mc.live, 0);
    ASSERT(!mc.bad && !sc.bad);
}

static int sched_round_trip(const mor_model *m, counter *c, int with_alloc) {
    mor_sched_params sp;
    mor_sched_params_init(&sp);
    sp.max_batch = 16;
    if (with_alloc) sp.allocator = allocator_of(c);
    mor_sched *sc;
    char err[256];
    int st = mor_sched_create(m, &sp, &sc, err, sizeof err);
    if (st) return st;
    mor_session *a, *b;
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 96;  // larger than the scheduler's first workspace: adding grows it
    p.n_batch = 8;
    if ((st = mor_session_create(m, &p, &a, err, sizeof err))) return mor_sched_free(sc), st;
    if ((st = mor_session_create(m, &p, &b, err, sizeof err))) return mor_session_free(a), mor_sched_free(sc), st;
    int32_t toks[5] = {3, 4, 5, 6, 7};
    st = mor_sched_add(sc, a);
    if (!st) st = mor_sched_add(sc, b);
    if (!st) st = mor_sched_submit(sc, a, toks, 5, 3);
    if (!st) st = mor_sched_submit(sc, b, toks, 2, 40);  // the queue and events grow
    int got = 0;
    for (int guard = 0; !st && mor_sched_pending(sc) > 0 && guard < 100000; guard++) {
        st = mor_sched_step(sc);
        mor_session *who;
        int32_t tok, es;
        while (mor_sched_poll(sc, &who, &tok, &es) == MOR_OK) {
            if (es) st = es;
            got += tok >= 0;
        }
    }
    if (!st && got != 43) st = MOR_E_INTERNAL;
    mor_sched_free(sc);
    mor_session_free(a);
    mor_session_free(b);
    return st;
}

TEST(scheduler) {
    counter mc = {0}, c = {0};
    int st;
    mor_model *m = load("middle_cycle.gguf", &mc, 0, &st);
    ASSERT(m);
    FOR_EACH_FAILURE(&c, k, st_ = sched_round_trip(m, &c, 1));
    ASSERT_EQ(c.live, 0);
    // Without their own allocator, the scheduler and sessions use the model's.
    int64_t live = mc.live;
    FOR_EACH_FAILURE(&mc, k, st_ = sched_round_trip(m, &mc, 0));
    ASSERT_EQ(mc.live, live);
    mor_model_free(m);
    ASSERT_EQ(mc.live, 0);
}

static int tokenize_op(const mor_model *m, const char *text) {
    int32_t toks[256];
    size_t n = 0;
    int st = mor_tokenize(m, text, strlen(text), toks, 256, MOR_TOKENIZE_ADD_SPECIAL, &n);
    if (st) return st;
    char buf[512];
    size_t nb = 0;
    st = mor_detokenize(m, toks, n, buf, sizeof buf, 0, &nb);
    if (st) return st;
    if (nb != strlen(text) || memcmp(buf, text, nb)) return MOR_E_INTERNAL;
    mor_detok *d;
    st = mor_detok_create(m, 0, &d);
    if (st) return st;
    size_t total = 0;
    for (size_t i = 0; i < n && !st; i++) {
        size_t w = 0;
        st = mor_detok_push(d, toks[i], buf + total, sizeof buf - total, &w);
        total += w;
    }
    size_t w = 0;
    if (!st) st = mor_detok_flush(d, buf + total, sizeof buf - total, &w);
    mor_detok_free(d);
    if (!st && (total + w != strlen(text) || memcmp(buf, text, total + w))) st = MOR_E_INTERNAL;
    return st;
}

TEST(tokenizer) {
    counter mc = {0};
    int st;
    mor_model *m = load("stories260K.gguf", &mc, MOR_MODEL_VOCAB_ONLY, &st);
    ASSERT(m);
    const char *text = "Once upon a time, a little dog named Max found a red ball \xe2\x82\xac in the park.";
    int64_t live = mc.live;
    FOR_EACH_FAILURE(&mc, k, st_ = tokenize_op(m, text));
    ASSERT_EQ(mc.live, live);
    mor_model_free(m);
    ASSERT_EQ(mc.live, 0);
}

TEST_MAIN(model_load, session_create_and_step, scheduler, tokenizer)
