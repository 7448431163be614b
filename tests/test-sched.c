// test-sched.c: the scheduler (continuous depth-wise batching). For every session, the tokens,
// logits and depths equal those of stepping that session alone, under different policies, KV
// strategies and samplers, with sessions joining and leaving at random rounds (seeded); a
// session whose router fails or whose context is full gets its error while the others go on;
// the baselines (static, sequential) give the same results; the batch really is shared.
#define MOR_NO_DEPRECATION_WARNINGS  // mor_sched_stats, deprecated, is checked against its replacement
#include "harness.h"

#include "mor.h"
#include "support/randmodel.h"

#include <stddef.h>
#include <unistd.h>

#define NS 8
#define GEN 20

typedef struct {
    int     policy, kv, depth;
    float   threshold, temperature;
    int     seed;
} setup;

static const setup setups[NS] = {
    {MOR_EXIT_FULL, MOR_KV_AUTO, 0, 0.5f, 0.0f, 1},      {MOR_EXIT_FIXED, MOR_KV_AUTO, 2, 0.5f, 0.0f, 2},
    {MOR_EXIT_CONFIDENCE, MOR_KV_SKIP, 0, 0.05f, 0.0f, 3}, {MOR_EXIT_FREE, MOR_KV_SYNC, 0, 0.05f, 0.0f, 4},
    {MOR_EXIT_SATURATION, MOR_KV_PROPAGATE, 0, 0.9f, 0.0f, 5}, {MOR_EXIT_FIXED, MOR_KV_SHARE, 1, 0.5f, 0.0f, 6},
    {MOR_EXIT_FULL, MOR_KV_AUTO, 0, 0.5f, 0.9f, 7},      {MOR_EXIT_CONFIDENCE, MOR_KV_PROPAGATE, 0, 0.1f, 1.1f, 8},
};

static mor_model *load(const char *file) {
    char path[512], err[256];
    mor_model *m = NULL;
    if (mor_model_load(test_path(path, sizeof path, file), NULL, &m, err, sizeof err) != MOR_OK)
        printf("# %s: %s\n", file, err);
    return m;
}

static mor_session *make(const mor_model *m, const setup *u, int router_model) {
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 96;
    p.n_batch = 8;
    mor_session *s = NULL;
    char err[256];
    if (mor_session_create(m, &p, &s, err, sizeof err)) {
        printf("# %s\n", err);
        return NULL;
    }
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    if (!router_model) {
        ep.policy = u->policy;
        ep.kv = u->kv;
        ep.depth = u->depth;
        ep.threshold = u->threshold;
        ep.min_depth = u->policy == MOR_EXIT_CONFIDENCE || u->policy == MOR_EXIT_SATURATION;
        if (mor_session_set_exit_policy(s, &ep)) printf("# policy: %s\n", mor_session_last_error(s));
    }
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    sp.temperature = u->temperature;
    sp.seed = (uint64_t)u->seed;
    mor_session_set_sampler(s, &sp);
    return s;
}

static void prompt_of(int i, int32_t *out, int n, int vocab) {
    uint64_t st = 1000 + (uint64_t)i;
    for (int k = 0; k < n; k++) out[k] = (int32_t)(test_rand(&st) % (uint64_t)vocab);
}

typedef struct {
    int32_t toks[GEN];
    int32_t depths[96];
    int     n_depths;
    float   logits[512];
} result;

// Stepping alone: prompt, then GEN x (sample, step).
static void run_alone(const mor_model *m, const setup *u, int i, int router_model, int np, result *r) {
    mor_session *s = make(m, u, router_model);
    int32_t prompt[16];
    int V = (int)mor_model_get_int(m, MOR_INFO_N_VOCAB);
    prompt_of(i, prompt, np, V);
    mor_session_step(s, prompt, np);
    for (int g = 0; g < GEN; g++) {
        mor_session_sample(s, &r->toks[g]);
        mor_session_step(s, &r->toks[g], 1);
    }
    r->n_depths = mor_session_n_past(s);
    for (int p = 0; p < r->n_depths; p++) mor_session_token_info(s, p, &r->depths[p], NULL, NULL);
    memcpy(r->logits, mor_session_logits(s, -1), sizeof(float) * (size_t)V);
    mor_session_free(s);
}

static mor_sched_counters last_counters;  // of the last run_sched()

// The scheduler with sessions joining at random rounds; returns the number of mismatches.
static int run_sched(const char *file, int router_model, int mode, uint64_t seed, double *occupancy) {
    mor_model *m = load(file);
    if (!m) return 1;
    int V = (int)mor_model_get_int(m, MOR_INFO_N_VOCAB), bad = 0;
    result want[NS], got[NS];
    int np[NS];
    for (int i = 0; i < NS; i++) {
        np[i] = 3 + i % 5;
        run_alone(m, &setups[i], i, router_model, np[i], &want[i]);
    }
    mor_sched_params sp;
    mor_sched_params_init(&sp);
    sp.max_batch = 24;
    sp.mode = mode;
    mor_sched *sc = NULL;
    char err[256];
    if (mor_sched_create(m, &sp, &sc, err, sizeof err)) {
        printf("# %s\n", err);
        return 1;
    }
    mor_session *ss[NS];
    int joined[NS] = {0}, ngot[NS] = {0}, done[NS] = {0};
    uint64_t rs = seed;
    int join_at[NS];
    for (int i = 0; i < NS; i++) {
        ss[i] = make(m, &setups[i], router_model);
        join_at[i] = (int)(test_rand(&rs) % 40);
    }
    for (int round = 0; round < 100000; round++) {
        for (int i = 0; i < NS; i++)
            if (!joined[i] && round >= join_at[i]) {
                int32_t prompt[16];
                prompt_of(i, prompt, np[i], V);
                if (mor_sched_add(sc, ss[i]) || mor_sched_submit(sc, ss[i], prompt, np[i], GEN)) bad++;
                joined[i] = 1;
            }
        mor_sched_step(sc);
        mor_session *who;
        int32_t tok, st;
        while (mor_sched_poll(sc, &who, &tok, &st) == MOR_OK) {
            int i = 0;
            while (i < NS && ss[i] != who) i++;
            if (i == NS || st != MOR_OK) {
                bad++;
                continue;
            }
            if (tok >= 0 && ngot[i] < GEN) got[i].toks[ngot[i]++] = tok;
            if (tok < 0) {
                done[i] = 1;
                mor_sched_remove(sc, ss[i]);  // leaves as soon as it is done
            }
        }
        int all = 1;
        for (int i = 0; i < NS; i++) all &= done[i];
        if (all) break;
    }
    mor_sched_stats(sc, NULL, NULL, occupancy);
    last_counters.size = sizeof last_counters;
    mor_sched_get_counters(sc, &last_counters);
    for (int i = 0; i < NS; i++) {
        if (!done[i] || ngot[i] != GEN) {
            printf("# %s session %d: %d of %d tokens, done %d\n", file, i, ngot[i], GEN, done[i]);
            bad++;
            continue;
        }
        for (int g = 0; g < GEN; g++)
            if (got[i].toks[g] != want[i].toks[g]) {
                printf("# %s session %d (policy %d): token %d is %d, alone %d\n", file, i, setups[i].policy, g,
                       got[i].toks[g], want[i].toks[g]);
                bad++;
                break;
            }
        for (int p = 0; p < want[i].n_depths; p++) {
            int32_t d;
            mor_session_token_info(ss[i], p, &d, NULL, NULL);
            if (d != want[i].depths[p]) {
                printf("# %s session %d: depth at %d is %d, alone %d\n", file, i, p, d, want[i].depths[p]);
                bad++;
                break;
            }
        }
        const float *l = mor_session_logits(ss[i], -1);
        double mx = 0;
        for (int v = 0; v < V; v++) mx = fmax(mx, fabs(l[v] - want[i].logits[v]));
        if (mx > 1e-4) {
            printf("# %s session %d: logits differ by %g\n", file, i, mx);
            bad++;
        }
        mor_session_free(ss[i]);
    }
    mor_sched_free(sc);
    mor_model_free(m);
    return bad;
}

TEST(equals_alone_continuous) {
    double occ = 0;
    ASSERT_EQ(run_sched("middle_cycle.gguf", 0, MOR_SCHED_CONTINUOUS, test_seed(), &occ), 0);
    printf("# middle_cycle: mean rows per batched layer %.2f, %lld head products for %lld rows\n", occ,
           (long long)last_counters.head_runs, (long long)last_counters.head_rows);
    ASSERT(occ > 1.5);  // sessions really share layers
    // The confidence policies' exit-head products are batched too: more head rows than the
    // tokens' own logits (one per pass), in fewer products than rows.
    ASSERT(last_counters.head_rows > last_counters.tokens + NS);
    ASSERT(2 * last_counters.head_runs < last_counters.head_rows);
    ASSERT_EQ(run_sched("expert.gguf", 1, MOR_SCHED_CONTINUOUS, test_seed() + 1, &occ), 0);
    ASSERT_EQ(run_sched("token.gguf", 1, MOR_SCHED_CONTINUOUS, test_seed() + 2, &occ), 0);
    ASSERT_EQ(run_sched("stories260K.gguf", 1, MOR_SCHED_CONTINUOUS, test_seed() + 3, &occ), 0);
}

// The relaxations through the scheduler: rows of different sessions and recursions in one
// batch apply their own DoRA scales, encodings and adaption prompts.
TEST(equals_alone_relaxations) {
    double occ = 0;
    ASSERT_EQ(run_sched("middle_cycle-dora.gguf", 0, MOR_SCHED_CONTINUOUS, test_seed() + 9, &occ), 0);
    ASSERT(occ > 1.5);
    ASSERT_EQ(run_sched("middle_cycle-recenc.gguf", 0, MOR_SCHED_CONTINUOUS, test_seed() + 10, &occ), 0);
    ASSERT_EQ(run_sched("token-recenc.gguf", 1, MOR_SCHED_CONTINUOUS, test_seed() + 11, &occ), 0);
    ASSERT_EQ(run_sched("cycle-adapt.gguf", 0, MOR_SCHED_CONTINUOUS, test_seed() + 12, &occ), 0);
}

// The other architectures through the scheduler: biases, fused views, sliding windows, the
// soft-capped output head of the batched tail (gemma2).
TEST(equals_alone_architectures) {
    double occ = 0;
    ASSERT_EQ(run_sched("qwen2.gguf", 1, MOR_SCHED_CONTINUOUS, test_seed() + 6, &occ), 0);
    ASSERT_EQ(run_sched("phi3.gguf", 1, MOR_SCHED_CONTINUOUS, test_seed() + 7, &occ), 0);
    ASSERT_EQ(run_sched("gemma2.gguf", 1, MOR_SCHED_CONTINUOUS, test_seed() + 8, &occ), 0);
}

TEST(equals_alone_baselines) {
    double occ = 0;
    ASSERT_EQ(run_sched("middle_cycle.gguf", 0, MOR_SCHED_STATIC, test_seed() + 4, &occ), 0);
    ASSERT_EQ(run_sched("middle_cycle.gguf", 0, MOR_SCHED_SEQUENTIAL, test_seed() + 5, &occ), 0);
    ASSERT_NEAR(occ, occ, 0);
}

static int32_t fail_later(void *user, const mor_route_batch *b, uint8_t *keep) {
    int *calls = user;
    memset(keep, 1, (size_t)b->n_tokens);
    return ++*calls > 30 ? 5 : 0;
}

TEST(faults_stay_local) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    mor_sched *sc;
    char err[256];
    ASSERT_OK(mor_sched_create(m, NULL, &sc, err, sizeof err));
    setup u = {MOR_EXIT_FULL, MOR_KV_AUTO, 0, 0.5f, 0.0f, 1};
    mor_session *good = make(m, &u, 0), *bad = make(m, &u, 0), *tiny;
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 10;
    ASSERT_OK(mor_session_create(m, &p, &tiny, err, sizeof err));
    int calls = 0;
    ASSERT_OK(mor_session_set_router_fn(bad, fail_later, &calls, 0));
    ASSERT_OK(mor_sched_add(sc, good));
    ASSERT_OK(mor_sched_add(sc, bad));
    ASSERT_OK(mor_sched_add(sc, tiny));
    ASSERT_STATUS(mor_sched_add(sc, good), MOR_E_INVALID);  // already there
    int32_t prompt[4] = {1, 2, 3, 4};
    ASSERT_OK(mor_sched_submit(sc, good, prompt, 4, GEN));
    ASSERT_OK(mor_sched_submit(sc, bad, prompt, 4, GEN));
    ASSERT_STATUS(mor_sched_submit(sc, tiny, prompt, 4, 8), MOR_E_CONTEXT_FULL);  // cannot fit: refused
    ASSERT_STR_CONTAINS(mor_session_last_error(tiny), "context of 10");
    ASSERT_OK(mor_sched_submit(sc, tiny, prompt, 4, 4));
    int32_t bad_tok[1] = {9999};
    ASSERT_STATUS(mor_sched_submit(sc, good, bad_tok, 1, 0), MOR_E_TOKEN);
    ASSERT_STATUS(mor_session_step(good, prompt, 1), MOR_E_INVALID);  // belongs to the scheduler
    int n_good = 0, bad_err = 0, tiny_done = 0;
    int32_t good_toks[GEN];
    for (int r = 0; r < 20000 && mor_sched_pending(sc); r++) {
        mor_sched_step(sc);
        mor_session *who;
        int32_t tok, st;
        while (mor_sched_poll(sc, &who, &tok, &st) == MOR_OK) {
            if (who == good && tok >= 0) good_toks[n_good++] = tok;
            if (who == bad && st == MOR_E_CALLBACK) bad_err = 1;
            if (who == tiny && tok < 0 && st == MOR_OK) tiny_done = 1;
        }
    }
    ASSERT_EQ(n_good, GEN);
    ASSERT(bad_err);
    ASSERT_STR_CONTAINS(mor_session_last_error(bad), "returned 5");
    ASSERT(tiny_done);
    result want;
    run_alone(m, &u, 0, 0, 0, &want);  // (prompt differs: recompute directly)
    mor_session *alone = make(m, &u, 0);
    ASSERT_OK(mor_session_step(alone, prompt, 4));
    for (int g = 0; g < GEN; g++) {
        int32_t t;
        ASSERT_OK(mor_session_sample(alone, &t));
        ASSERT_EQ(t, good_toks[g]);
        ASSERT_OK(mor_session_step(alone, &t, 1));
    }
    // The failed session is usable on its own again once out of the scheduler.
    ASSERT_OK(mor_sched_remove(sc, bad));
    ASSERT_OK(mor_session_set_router(bad, NULL, NULL));
    ASSERT_OK(mor_session_step(bad, prompt, 1));
    // Cancelling stops a session's work cleanly.
    ASSERT_OK(mor_sched_submit(sc, good, prompt, 2, 10));
    mor_sched_step(sc);
    ASSERT_OK(mor_sched_cancel(sc, good));
    int cancelled = 0;
    mor_session *who;
    int32_t tok, st;
    while (mor_sched_poll(sc, &who, &tok, &st) == MOR_OK) cancelled |= who == good && st == MOR_E_CANCELLED;
    ASSERT(cancelled);
    ASSERT_EQ(mor_sched_pending(sc), 0);
    mor_session_free(alone);
    mor_session_free(good);  // frees take sessions out of their scheduler
    mor_session_free(bad);
    mor_session_free(tiny);
    mor_sched_free(sc);
    mor_model_free(m);
}

// Depth of a token from (session, position): varies across sessions and steps.
static int32_t hashed_depth(void *user, const mor_route_batch *b, uint8_t *keep) {
    for (int32_t i = 0; i < b->n_tokens; i++) {
        uint32_t h = ((uint32_t)b->positions[i] + 1) * 2654435761u ^ (uint32_t)(uintptr_t)user * 40503u;
        h ^= h >> 13;
        keep[i] = b->step < (int32_t)(1 + (h * 2246822519u >> 28) % (uint32_t)b->n_steps);
    }
    return 0;
}

// How rounds are chosen, counted exactly: NSESS sessions of one prompt token and ngen generated
// tokens each, depths from a router. Every mode runs each token's layers once (rows = the sum
// over tokens of their unrolled layers); static batching runs each step of the batch down to
// its deepest token (layer runs = the sum over steps of the deepest token's layers);
// sequential runs every layer for one row. layers[mode] receives the layer runs.
enum { NSESS = 12 };
static int count_rounds(const mor_model *m, int32_t ngen, mor_sched_counters c[3]) {
    const int32_t L = (int32_t)mor_model_get_int(m, MOR_INFO_N_LAYER), B = (int32_t)mor_model_get_int(m, MOR_INFO_BLOCK_SIZE),
                  N = (int32_t)mor_model_get_int(m, MOR_INFO_N_STEPS), npos = ngen + 1;
    int bad = 0;
    for (int mode = MOR_SCHED_CONTINUOUS; mode <= MOR_SCHED_SEQUENTIAL; mode++) {
        mor_sched_params sp;
        mor_sched_params_init(&sp);
        sp.mode = mode;
        mor_sched *sc;
        char err[256];
        if (mor_sched_create(m, &sp, &sc, err, sizeof err)) return printf("# %s\n", err), 1;
        mor_session *ss[NSESS];
        setup u = {MOR_EXIT_FULL, MOR_KV_AUTO, 0, 0.5f, 0.0f, 1};
        for (int i = 0; i < NSESS; i++) {
            ss[i] = make(m, &u, 0);
            int32_t t = 1 + i;
            bad += !ss[i] || mor_session_set_router_fn(ss[i], hashed_depth, (void *)(uintptr_t)(i + 1), 0) ||
                   mor_sched_add(sc, ss[i]) || mor_sched_submit(sc, ss[i], &t, 1, ngen);
        }
        for (int r = 0; r < 100000 && mor_sched_pending(sc); r++) {
            bad += mor_sched_step(sc) != MOR_OK;
            while (mor_sched_poll(sc, NULL, NULL, NULL) == MOR_OK) {}
        }
        int64_t rows = 0, want_rows = 0, want_static = 0, rounds = 0;
        double mean = 0;
        c[mode].size = sizeof c[mode];
        bad += mor_sched_pending(sc) != 0 || mor_sched_stats(sc, &rounds, &rows, &mean) != MOR_OK ||
               mor_sched_get_counters(sc, &c[mode]) != MOR_OK;
        bad += c[mode].rounds != rounds || c[mode].layer_rows != rows || llround((double)rows / mean) != c[mode].layer_runs;
        if (c[mode].tokens != NSESS * ngen) printf("# mode %d: %lld tokens\n", mode, (long long)c[mode].tokens), bad++;
        if (c[mode].head_rows != NSESS * npos) printf("# mode %d: %lld head rows\n", mode, (long long)c[mode].head_rows), bad++;
        int seen[4] = {0};
        for (int32_t p = 0; p < npos; p++) {
            int32_t deepest = 0;
            for (int i = 0; i < NSESS; i++) {
                int32_t d = 0;
                bad += mor_session_token_info(ss[i], p, &d, NULL, NULL) != MOR_OK || d < 1 || d > N;
                seen[d >= 1 && d <= 3 ? d : 0] = 1;
                want_rows += L - B * (N - d);
                if (d > deepest) deepest = d;
            }
            want_static += L - B * (N - deepest);
        }
        if (!seen[1] || !seen[2] || seen[0]) printf("# the depths do not vary as the router says\n"), bad++;
        if (rows != want_rows) printf("# mode %d: %lld rows, want %lld\n", mode, (long long)rows, (long long)want_rows), bad++;
        if (mode == MOR_SCHED_STATIC && (c[mode].layer_runs != want_static || c[mode].head_runs != npos))
            printf("# static: %lld layer runs, %lld head runs; want %lld, %d\n", (long long)c[mode].layer_runs,
                   (long long)c[mode].head_runs, (long long)want_static, npos), bad++;
        if (mode == MOR_SCHED_SEQUENTIAL && (c[mode].layer_runs != rows || c[mode].head_runs != NSESS * npos))
            printf("# sequential: %lld layer runs for %lld rows\n", (long long)c[mode].layer_runs, (long long)rows), bad++;
        for (int i = 0; i < NSESS; i++) mor_session_free(ss[i]);
        mor_sched_free(sc);
    }
    printf("# layer runs / head runs: continuous %lld / %lld (refill %d), static %lld / %lld, sequential %lld / %lld\n",
           (long long)c[0].layer_runs, (long long)c[0].head_runs, c[0].refill, (long long)c[1].layer_runs,
           (long long)c[1].head_runs, (long long)c[2].layer_runs, (long long)c[2].head_runs);
    return bad;
}

// The rules on the small fixture (2 layers per recursion), then on a deeper random model (12
// layers per recursion, like the 7-14 of real recursive models, and a small head): there the
// scheduler refills the shared block as tokens exit and needs fewer layer runs than static
// batching. (With 2 layers per block the first and last layers, run once per sweep, cost
// about what the refill saves, and the scheduler does not refill.)
TEST(rounds_follow_the_rule) {
    mor_sched_counters c[3];
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    ASSERT_EQ(count_rounds(m, 6, c), 0);
    mor_model_free(m);
    static const randmodel_shape deep = {"tiny-deep", 64, 160, 38, 4, 2, 256};
    char path[256], err[256];
    snprintf(path, sizeof path, "/tmp/mor-test-sched-%d.gguf", (int)getpid());
    ASSERT_OK(randmodel_write(&deep, MOR__DT_F32, 3, NULL, path, err, sizeof err));
    ASSERT_OK(mor_model_load(path, NULL, &m, err, sizeof err));
    unlink(path);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_BLOCK_SIZE), 12);
    ASSERT_EQ(count_rounds(m, 24, c), 0);
    ASSERT(c[MOR_SCHED_CONTINUOUS].layer_runs < c[MOR_SCHED_STATIC].layer_runs);
    ASSERT(c[MOR_SCHED_CONTINUOUS].head_runs > c[MOR_SCHED_STATIC].head_runs);  // exits ran the head early
    mor_model_free(m);
    // A head far larger than the block (a big vocabulary over one layer per recursion):
    // refilling would run the head for every few exits, so exits wait for the batch and the
    // head runs as often as in static batching.
    static const randmodel_shape big_head = {"tiny-vocab", 64, 160, 5, 4, 2, 32768};
    ASSERT_OK(randmodel_write(&big_head, MOR__DT_F32, 3, NULL, path, err, sizeof err));
    ASSERT_OK(mor_model_load(path, NULL, &m, err, sizeof err));
    unlink(path);
    ASSERT_EQ(count_rounds(m, 24, c), 0);
    ASSERT_EQ(c[MOR_SCHED_CONTINUOUS].refill, 0);
    ASSERT(c[MOR_SCHED_CONTINUOUS].head_runs <= c[MOR_SCHED_STATIC].head_runs);
    ASSERT(c[MOR_SCHED_CONTINUOUS].layer_runs <= c[MOR_SCHED_STATIC].layer_runs);
    mor_model_free(m);
}

// A router that fails now and then (user: a seeded RNG state).
static int32_t flaky(void *user, const mor_route_batch *b, uint8_t *keep) {
    uint64_t *rs = user;
    for (int32_t i = 0; i < b->n_tokens; i++) keep[i] = (uint8_t)(test_rand(rs) % 3 != 0);
    return test_rand(rs) % 40 == 0 ? 3 : 0;
}

// Random sequences of every scheduler call, with bad input mixed in (seeded; run under the
// sanitizers and valgrind by CI): every call answers with its documented status, every request
// ends with exactly one end event (done, cancelled or its error), a request that ends well got
// every token it asked for, and the sessions stay usable on their own afterwards.
TEST(random_operations) {
    enum { SLOTS = 6, OPS = 12000 };
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    const int32_t V = (int32_t)mor_model_get_int(m, MOR_INFO_N_VOCAB);
    mor_sched_params sp;
    mor_sched_params_init(&sp);
    sp.max_batch = 12;
    sp.prompt_chunk = 5;
    mor_sched *sc;
    char err[256];
    ASSERT_OK(mor_sched_create(m, &sp, &sc, err, sizeof err));
    struct {
        mor_session *s;
        int          in, active;
        int32_t      want, got;  // tokens asked for / reported in the open request
        uint64_t     rng;
    } sl[SLOTS];
    memset(sl, 0, sizeof sl);
    uint64_t rs = test_seed() * 7 + 11;
    int64_t ends = 0, tokens = 0, errors = 0;
    for (int op = 0; op < OPS + 100000; op++) {
        int draining = op >= OPS;  // then only rounds, until the work is done
        if (draining && mor_sched_pending(sc) == 0) break;
        int i = (int)(test_rand(&rs) % SLOTS), what = draining ? 15 : (int)(test_rand(&rs) % 16);
        if (!sl[i].s && !draining) {  // a new session, with one of the test setups, sometimes a flaky router
            mor_session_params p;
            mor_session_params_init(&p);
            p.n_ctx = 40;
            p.n_batch = 6;
            ASSERT_OK(mor_session_create(m, &p, &sl[i].s, err, sizeof err));
            const setup *u = &setups[test_rand(&rs) % NS];
            mor_exit_policy ep;
            mor_exit_policy_init(&ep);
            ep.policy = u->policy;
            ep.kv = u->kv;
            ep.depth = u->depth;
            ep.threshold = u->threshold;
            ASSERT_OK(mor_session_set_exit_policy(sl[i].s, &ep));
            sl[i].rng = test_rand(&rs);
            if (test_rand(&rs) % 4 == 0) ASSERT_OK(mor_session_set_router_fn(sl[i].s, flaky, &sl[i].rng, 0));
            sl[i].in = sl[i].active = 0;
            sl[i].want = sl[i].got = 0;
            continue;
        }
        mor_session *s = sl[i].s;
        if (what == 0) {  // add (twice is refused)
            ASSERT_STATUS(mor_sched_add(sc, s), sl[i].in ? MOR_E_INVALID : MOR_OK);
            sl[i].in = 1;
        } else if (what <= 3) {  // submit, now and then with a bad token
            int32_t prompt[10], n = (int32_t)(test_rand(&rs) % 8), gen = (int32_t)(test_rand(&rs) % 7);
            int bad = test_rand(&rs) % 10 == 0 && n > 0;
            for (int32_t k = 0; k < n; k++) prompt[k] = (int32_t)(test_rand(&rs) % (uint64_t)V);
            if (bad) prompt[n - 1] = V + 3;
            int st = mor_sched_submit(sc, s, prompt, n, gen);
            if (!sl[i].in) {
                ASSERT_STATUS(st, MOR_E_INVALID);
            } else if (bad) {  // a request that cannot fit is refused for that first
                ASSERT(st == MOR_E_TOKEN || st == MOR_E_CONTEXT_FULL);
            } else if (st == MOR_OK) {
                if (n + gen > 0) {
                    if (!sl[i].active) sl[i].want = sl[i].got = 0;
                    sl[i].active = 1;
                    sl[i].want += gen;
                }
            } else {  // the context is full, or nothing to generate from: nothing was queued
                ASSERT(st == MOR_E_CONTEXT_FULL || st == MOR_E_INVALID);
                ASSERT(mor_session_last_error(s)[0] != 0);
                if (st == MOR_E_CONTEXT_FULL && !sl[i].active) {  // start over
                    if (mor_sched_remove(sc, s) == MOR_OK) sl[i].in = 0;
                    mor_session_reset(s);
                }
            }
        } else if (what == 4) {  // cancel: its request ends with MOR_E_CANCELLED
            ASSERT_STATUS(mor_sched_cancel(sc, s), sl[i].in ? MOR_OK : MOR_E_INVALID);
        } else if (what == 5) {  // remove: its request and its events go
            ASSERT_STATUS(mor_sched_remove(sc, s), sl[i].in ? MOR_OK : MOR_E_INVALID);
            sl[i].in = sl[i].active = 0;
        } else if (what == 6 && test_rand(&rs) % 4 == 0) {  // free it (it leaves the scheduler)
            mor_session_free(s);
            sl[i].s = NULL;
            continue;
        } else if (what == 7) {  // stepping it directly is refused while it is scheduled
            int32_t t = 1;
            int st = mor_session_step(s, &t, 1);
            if (sl[i].in) ASSERT_STATUS(st, MOR_E_INVALID);
        } else {
            ASSERT_OK(mor_sched_step(sc));
        }
        mor_session *who;
        int32_t tok, st;
        while (mor_sched_poll(sc, &who, &tok, &st) == MOR_OK) {
            int j = 0;
            while (j < SLOTS && sl[j].s != who) j++;
            ASSERT(j < SLOTS && sl[j].in && sl[j].active);
            if (tok >= 0) {
                ASSERT(tok < V);
                ASSERT_LT(sl[j].got, sl[j].want);
                sl[j].got++, tokens++;
                continue;
            }
            ends++;
            if (st == MOR_OK) {
                ASSERT_EQ(sl[j].got, sl[j].want);
            } else {
                errors++;
                ASSERT(st == MOR_E_CANCELLED || mor_session_last_error(who)[0] != 0);
            }
            sl[j].active = 0;
        }
        ASSERT_LE(mor_sched_pending(sc), SLOTS);
    }
    ASSERT_EQ(mor_sched_pending(sc), 0);
    for (int i = 0; i < SLOTS; i++) ASSERT(!sl[i].s || !sl[i].active);
    printf("# %lld tokens, %lld requests ended (%lld by errors or cancels)\n", (long long)tokens, (long long)ends,
           (long long)errors);
    ASSERT(tokens > 100 && ends > 20 && errors > 0);
    mor_sched_free(sc);
    for (int i = 0; i < SLOTS; i++) {  // usable alone
        if (!sl[i].s) continue;
        ASSERT_OK(mor_session_set_router(sl[i].s, NULL, NULL));
        mor_session_reset(sl[i].s);
        int32_t t[2] = {1, 2};
        ASSERT_OK(mor_session_step(sl[i].s, t, 2));
        mor_session_free(sl[i].s);
    }
    mor_model_free(m);
}

// Scheduler parameters by name (what bindings use), 64-bit fields included.
TEST(params_by_name) {
    ASSERT_EQ(mor_params_size(MOR_PARAMS_SCHED), sizeof(mor_sched_params));
    mor_sched_params p;
    ASSERT_OK(mor_params_init(&p, MOR_PARAMS_SCHED));
    ASSERT_EQ(p.max_batch, 64);
    mor_sched_params d;  // the by-kind defaults (status.c) are mor_sched_params_init's
    mor_sched_params_init(&d);
    ASSERT(memcmp(&p, &d, sizeof p) == 0);
    ASSERT_OK(mor_params_set(&p, "max_batch", 8));
    ASSERT_OK(mor_params_set(&p, "kv_budget", 1099511627776.0 * 3));
    ASSERT_OK(mor_params_set(&p, "mode", MOR_SCHED_STATIC));
    ASSERT_STATUS(mor_params_set(&p, "kv_budget", 1e30), MOR_E_INVALID);
    ASSERT_STATUS(mor_params_set(&p, "kv_budget", 0.5), MOR_E_INVALID);
    ASSERT_STATUS(mor_params_set(&p, "temperature", 1), MOR_E_NOT_FOUND);
    double v = 0;
    ASSERT_OK(mor_params_get(&p, "kv_budget", &v));
    ASSERT_EQ((long long)v, 1099511627776LL * 3);
    ASSERT_EQ(p.kv_budget, 1099511627776LL * 3);
    ASSERT_EQ(p.max_batch, 8);
    ASSERT_EQ(p.mode, MOR_SCHED_STATIC);
    mor_sched_params old = p;  // a caller built against a header that ends before kv_budget
    old.size = (uint32_t)offsetof(mor_sched_params, kv_budget) + 4;
    ASSERT_STATUS(mor_params_set(&old, "kv_budget", 1), MOR_E_NOT_FOUND);
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    mor_sched *sc = NULL;
    char err[256];
    ASSERT_OK(mor_sched_create(m, &p, &sc, err, sizeof err));
    ASSERT_OK(mor_params_set(&p, "prompt_chunk", 0));
    mor_sched *bad = NULL;
    ASSERT_STATUS(mor_sched_create(m, &p, &bad, err, sizeof err), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(err, "prompt_chunk");
    ASSERT(bad == NULL);
    mor_sched_free(sc);
    mor_model_free(m);
}

TEST_MAIN(equals_alone_continuous, equals_alone_relaxations, equals_alone_architectures, equals_alone_baselines,
          faults_stay_local, rounds_follow_the_rule, random_operations, params_by_name)
