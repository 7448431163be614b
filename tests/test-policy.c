// test-policy.c: exit policies, routers and KV strategies (docs/POLICIES.md):
// - a threshold never met equals full depth (logits bit-identical);
// - synchronized parallel decoding leaves every K/V entry equal to full-depth decoding of the
//   same tokens, and tokens emitted after a deep pass equal full-depth decoding; with rollback
//   at a tiny threshold the output equals full-depth greedy decoding;
// - CALM state propagation fills the skipped layers; recursion-wise caching and KV sharing hold
//   exactly the entries of the formulas in docs/POLICIES.md, "KV strategies";
// - a custom router written in C drives the depths; a failing router leaves the session usable;
// - the compute budget caps the mean depth; capacity selects top-k per step;
// - confidence exits read the same exit-head logits for a prompt stepped at once (a group of
//   rows per product) as one token at a time;
// - bad parameters give clear errors;
// - a file's mor.policy.* keys set the policy sessions start with (and NULL restores); bad
//   keys or values fail the load with MOR_E_FORMAT naming the key.
#include "harness.h"
#include "mor.h"

#include "gguf-write.h"
#include "session.h"

#include <stdlib.h>

#include <math.h>

static mor_model *load(const char *file) {
    char path[512], err[256];
    mor_model *m = NULL;
    if (mor_model_load(test_path(path, sizeof path, file), NULL, &m, err, sizeof err) != MOR_OK)
        printf("# %s: %s\n", file, err);
    return m;
}

static mor_session *open_session(const mor_model *m, int n_batch) {
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 128;
    p.n_batch = n_batch;
    mor_session *s = NULL;
    char err[256];
    if (mor_session_create(m, &p, &s, err, sizeof err) != MOR_OK) printf("# %s\n", err);
    return s;
}

static int set_policy(mor_session *s, int policy, float threshold, int kv) {
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = policy;
    ep.threshold = threshold;
    ep.kv = kv;
    int st = mor_session_set_exit_policy(s, &ep);
    if (st) printf("# policy: %s\n", mor_session_last_error(s));
    return st;
}

static const int32_t prompt[] = {5, 77, 100, 31, 9, 120, 18, 66};
#define NP 8

// Greedy: prompt then n tokens; fills out (may be NULL).
static int run_greedy(mor_session *s, int n, int32_t *out) {
    if (mor_session_step(s, prompt, NP)) return -1;
    for (int i = 0; i < n; i++) {
        int32_t t;
        if (mor_session_sample(s, &t) || mor_session_step(s, &t, 1)) return -1;
        if (out) out[i] = t;
    }
    return 0;
}

// A prompt stepped at once (its rows' exit-head logits computed a group at a time) and one
// token at a time: the same confidences, depths and logits, on the trained recursive model
// (whose confidences really vary) with a prompt longer than a group.
// The three confidence metrics against their definitions, computed the long way in double
// (p_i, then the top two, then -sum p log p), on logits with ties, -inf and a wide range.
TEST(confidence_metrics_by_definition) {
    enum { V = 777 };
    static float l[V];
    uint64_t r = 12345;
    for (int trial = 0; trial < 40; trial++) {
        float spread = trial < 20 ? 2.0f : 40.0f;
        for (int i = 0; i < V; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            l[i] = spread * ((float)(r >> 40) / (float)(1ull << 24) - 0.5f);
        }
        if (trial % 3 == 0) l[trial] = -INFINITY;
        if (trial % 4 == 1) l[5] = l[400] = 50.0f;  // a tie at the top: p1 - p2 = 0, top = 5
        double mx = -INFINITY, sum = 0, ent = 0, p1 = 0, p2 = 0;
        int b = 0;
        for (int i = 0; i < V; i++)
            if (l[i] > mx) mx = l[i], b = i;
        for (int i = 0; i < V; i++) sum += exp((double)l[i] - mx);
        for (int i = 0; i < V; i++) {
            double p = exp((double)l[i] - mx) / sum;
            if (i == b) p1 = p;
            else if (p > p2) p2 = p;
            if (p > 0) ent -= p * log(p);
        }
        const double want[3] = {p1 - p2, p1, 1.0 - ent / log((double)V)};
        const int metric[3] = {MOR_CONF_TOP2_GAP, MOR_CONF_MAX_PROB, MOR_CONF_ENTROPY};
        for (int k = 0; k < 3; k++)
            for (int best = 0; best < 2; best++) {  // the reference kernels, then this CPU's (SIMD exp)
                int32_t top = -1;
                float c = mor__confidence(best ? mor__kernels_best() : mor__kernels_ref(), l, V, metric[k], &top);
                ASSERT_EQ(top, b);
                ASSERT_NEAR(c, want[k], best ? 1e-5 : 1e-6);
            }
    }
}

TEST(confidence_groups_equal_one_row) {
    mor_model *m = load("models/default.gguf");
    ASSERT(m);
    int32_t V = (int32_t)mor_model_get_int(m, MOR_INFO_N_VOCAB), toks[37];
    for (int i = 0; i < 37; i++) toks[i] = (int32_t)((i * 2654435761u) % (uint32_t)V);
    mor_session *a = open_session(m, 64), *b = open_session(m, 1);
    ASSERT(a && b);
    for (int k = 0; k < 2; k++) {
        mor_exit_policy ep;
        mor_exit_policy_init(&ep);
        ep.policy = MOR_EXIT_CONFIDENCE;
        ep.threshold = 0.3f;
        ep.min_depth = 1;
        ASSERT_OK(mor_session_set_exit_policy(k ? b : a, &ep));
    }
    ASSERT_OK(mor_session_step(a, toks, 37));
    for (int i = 0; i < 37; i++) ASSERT_OK(mor_session_step(b, &toks[i], 1));
    int depths[4] = {0};
    for (int32_t p = 0; p < 37; p++) {
        int32_t da, db;
        float ca, cb;
        ASSERT_OK(mor_session_token_info(a, p, &da, &ca, NULL));
        ASSERT_OK(mor_session_token_info(b, p, &db, &cb, NULL));
        ASSERT_EQ(da, db);
        ASSERT(ca == cb || (isnan(ca) && isnan(cb)));
        depths[da < 4 ? da : 3]++;
    }
    // The exits vary: 6 tokens at depth 1, 1 at depth 2, 30 deeper (no confidence lies within
    // 0.016 of the threshold, far beyond the kernels' rounding differences).
    ASSERT_EQ(depths[0], 0);
    ASSERT_EQ(depths[1], 6);
    ASSERT_EQ(depths[2], 1);
    ASSERT_EQ(depths[3], 30);
    const float *la = mor_session_logits(a, -1), *lb = mor_session_logits(b, -1);
    for (int32_t v = 0; v < V; v++) ASSERT(la[v] == lb[v]);
    mor_session_free(a);
    mor_session_free(b);
    mor_model_free(m);
}

TEST(threshold_never_met_equals_full) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    mor_session *a = open_session(m, 16), *b = open_session(m, 16);
    ASSERT(a && b);
    ASSERT_OK(set_policy(b, MOR_EXIT_CONFIDENCE, 1.0f, MOR_KV_AUTO));  // conf > 1: never
    int32_t ga[24], gb[24];
    ASSERT_EQ(run_greedy(a, 24, ga), 0);
    ASSERT_EQ(run_greedy(b, 24, gb), 0);
    for (int i = 0; i < 24; i++) ASSERT_EQ(ga[i], gb[i]);
    ASSERT(memcmp(mor_session_logits(a, -1), mor_session_logits(b, -1), (size_t)mor_model_get_int(m, MOR_INFO_N_VOCAB) * sizeof(float)) == 0);
    // Saturation at 1.0 (cosine >= 1 never holds for distinct states) and FREE at 1.0 too.
    mor_session_reset(b);
    ASSERT_OK(set_policy(b, MOR_EXIT_SATURATION, 1.0f, MOR_KV_AUTO));
    ASSERT_EQ(run_greedy(b, 24, gb), 0);
    for (int i = 0; i < 24; i++) ASSERT_EQ(ga[i], gb[i]);
    mor_session_reset(b);
    ASSERT_OK(set_policy(b, MOR_EXIT_FREE, 1.0f, MOR_KV_AUTO));  // synchronized: one token per pass
    ASSERT_EQ(run_greedy(b, 24, gb), 0);
    for (int i = 0; i < 24; i++) ASSERT_EQ(ga[i], gb[i]);
    const float *la = mor_session_logits(a, -1), *lb = mor_session_logits(b, -1);
    for (int v = 0; v < mor_model_get_int(m, MOR_INFO_N_VOCAB); v++) ASSERT_NEAR(la[v], lb[v], 1e-5);
    mor_session_stats st = {sizeof st, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}};
    ASSERT_OK(mor_session_get_stats(b, &st));
    ASSERT_NEAR(st.mean_depth, 3.0, 1e-6);
    ASSERT_EQ(st.layer_evals, st.layer_evals_full);
    mor_session_free(a);
    mor_session_free(b);
    mor_model_free(m);
}

// Compares every K/V entry of two sessions over positions < upto (same tokens).
static double kv_max_diff(const mor_session *a, const mor_session *b, int32_t upto, int *missing) {
    const mor__hparams *hp = &a->model->hp;
    int kvdim = hp->n_head_kv * hp->head_dim;
    double mx = 0;
    *missing = 0;
    for (int32_t l = 0; l < hp->n_layer; l++) {
        const mor__kv_slot *x = &a->kv.slots[l], *y = &b->kv.slots[l];
        int32_t i = 0, j = 0;
        while (i < x->len && j < y->len && x->pos[i] < upto && y->pos[j] < upto) {
            if (x->pos[i] != y->pos[j]) {
                (*missing)++;
                if (x->pos[i] < y->pos[j]) i++;
                else j++;
                continue;
            }
            for (int q = 0; q < kvdim; q++) {
                double d1 = fabs(x->k[(size_t)i * kvdim + q] - y->k[(size_t)j * kvdim + q]);
                double d2 = fabs(x->v[(size_t)i * kvdim + q] - y->v[(size_t)j * kvdim + q]);
                if (d1 > mx) mx = d1;
                if (d2 > mx) mx = d2;
            }
            i++, j++;
        }
        int32_t cx = 0, cy = 0;
        for (int32_t e = 0; e < x->len; e++) cx += x->pos[e] < upto;
        for (int32_t e = 0; e < y->len; e++) cy += y->pos[e] < upto;
        if (cx != cy) (*missing)++;
    }
    return mx;
}

TEST(sync_parallel_decoding_is_exact) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    // Find a threshold at which some tokens exit and some do not.
    mor_session *s = open_session(m, 16), *full = open_session(m, 16);
    ASSERT(s && full);
    float thr = 0.0f;
    int32_t out[40];
    int n_exit = 0, n_deep = 0;
    float cands[] = {0.05f, 0.1f, 0.2f, 0.3f, 0.5f, 0.02f};
    for (size_t c = 0; c < sizeof cands / sizeof cands[0]; c++) {
        mor_session_reset(s);
        ASSERT_OK(set_policy(s, MOR_EXIT_FREE, cands[c], MOR_KV_SYNC));
        ASSERT_EQ(run_greedy(s, 40, out), 0);
        n_exit = n_deep = 0;
        for (int32_t p = NP; p < mor_session_n_past(s); p++) {
            int32_t d, kv;
            ASSERT_OK(mor_session_token_info(s, p, &d, NULL, &kv));
            if (kv == MOR_KVSTAT_SYNCED || kv == MOR_KVSTAT_DEFERRED) n_exit++;
            else n_deep++;
        }
        if (n_exit >= 4 && n_deep >= 4) {
            thr = cands[c];
            break;
        }
    }
    printf("# FREE threshold %.2f: %d shallow exits, %d deep tokens\n", thr, n_exit, n_deep);
    ASSERT(thr == 0.05f);  // the first candidate: 24 tokens exit, 16 run deep
    ASSERT_EQ(n_exit, 24);
    ASSERT_EQ(n_deep, 16);
    // Full-depth decoding of exactly the same tokens.
    ASSERT_OK(mor_session_step(full, prompt, NP));
    ASSERT_OK(mor_session_step(full, out, 40));
    // Entries up to the first still-deferred token must be identical (same computation order
    // within each row; tolerance for the batched deep pass's different summation grouping).
    int32_t upto = mor_session_n_past(s);
    for (int32_t p = 0; p < mor_session_n_past(s); p++) {
        int32_t kv;
        mor_session_token_info(s, p, NULL, NULL, &kv);
        if (kv == MOR_KVSTAT_DEFERRED && p < upto) upto = p;
    }
    int missing;
    double diff = kv_max_diff(s, full, upto, &missing);
    printf("# KV after synchronized decoding vs full depth, positions < %d: max diff %.3g, %d mismatched slots\n",
           upto, diff, missing);
    ASSERT_EQ(missing, 0);
    ASSERT_LT(diff, 1e-4);
    mor_session_stats st = {sizeof st, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}};
    ASSERT_OK(mor_session_get_stats(s, &st));
    ASSERT_EQ(st.deep_passes, 20);
    // Exited tokens run the unique last layer twice: once for their shallow output, once in the
    // deep pass that completes them.
    int n_synced = 0;
    for (int32_t p = 0; p < mor_session_n_past(s); p++) {
        int32_t kv;
        mor_session_token_info(s, p, NULL, NULL, &kv);
        n_synced += kv == MOR_KVSTAT_SYNCED || kv == MOR_KVSTAT_DEFERRED;
    }
    ASSERT_LE(st.layer_evals, st.layer_evals_full + n_synced);
    // Tokens emitted right after a deep pass equal full-depth decoding: replay with a full
    // session token by token and compare the logits at every deep position.
    mor_session_reset(s);
    mor_session_reset(full);
    ASSERT_OK(set_policy(s, MOR_EXIT_FREE, thr, MOR_KV_SYNC));
    ASSERT_OK(mor_session_step(s, prompt, NP));
    ASSERT_OK(mor_session_step(full, prompt, NP));
    int checked = 0;
    for (int i = 0; i < 39; i++) {
        ASSERT_OK(mor_session_step(s, &out[i], 1));
        ASSERT_OK(mor_session_step(full, &out[i], 1));
        if (mor_session_depth(s, -1) == 3) {
            const float *a = mor_session_logits(s, -1), *b = mor_session_logits(full, -1);
            double mx = 0;
            for (int v = 0; v < mor_model_get_int(m, MOR_INFO_N_VOCAB); v++) mx = fmax(mx, fabs(a[v] - b[v]));
            ASSERT_LT(mx, 1e-4);
            checked++;
        }
    }
    ASSERT(checked >= 4);
    mor_session_free(s);
    mor_session_free(full);
    mor_model_free(m);
}

TEST(rollback_recovers_full_depth_output) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    mor_session *s = open_session(m, 16), *full = open_session(m, 16);
    ASSERT(s && full);
    int32_t want[30];
    ASSERT_EQ(run_greedy(full, 30, want), 0);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_FREE;
    ep.threshold = 0.05f;
    ep.kv = MOR_KV_SYNC;
    ep.rollback = 1e-3f;  // any shallow token the deep model doubts is replaced
    ASSERT_OK(mor_session_set_exit_policy(s, &ep));
    ASSERT_OK(mor_session_step(s, prompt, NP));
    int guard = 0, rollbacks = 0;
    while (mor_session_n_past(s) < NP + 30 && guard++ < 400) {
        int32_t t;
        ASSERT_OK(mor_session_sample(s, &t));
        ASSERT_OK(mor_session_step(s, &t, 1));
        rollbacks += mor_session_rollback(s) > 0;
    }
    printf("# %d rollbacks\n", rollbacks);
    // Every token before the last deep pass now equals full-depth greedy decoding.
    int32_t n = mor_session_n_past(s), agree = 0, upto = n;
    for (int32_t p = NP; p < n; p++) {
        int32_t kv;
        mor_session_token_info(s, p, NULL, NULL, &kv);
        if (kv == MOR_KVSTAT_DEFERRED) {
            upto = p;
            break;
        }
    }
    for (int32_t p = NP; p < upto; p++) agree += s->tokens[p] == want[p - NP];
    ASSERT_EQ(agree, upto - NP);
    ASSERT(upto - NP >= 10);
    mor_session_free(s);
    mor_session_free(full);
    mor_model_free(m);
}

// Entries held per slot equal the tokens that ran each layer (docs/POLICIES.md, "KV strategies").
// Recursion-wise: first and last layers every token, block r the tokens active at r; shared:
// block 0 only.
TEST(cache_sizes_follow_the_formulas) {
    mor_model *m = load("expert.gguf");
    ASSERT(m);
    for (int kv = MOR_KV_SKIP; kv <= MOR_KV_SHARE; kv++) {
        mor_session *s = open_session(m, 64);
        ASSERT(s);
        mor_exit_policy ep;
        mor_exit_policy_init(&ep);
        ep.kv = kv;
        ASSERT_OK(mor_session_set_exit_policy(s, &ep));
        ASSERT_EQ(run_greedy(s, 24, NULL), 0);
        int32_t n = mor_session_n_past(s), active[8] = {0};
        for (int32_t p = 0; p < n; p++) {
            int32_t d;
            mor_session_token_info(s, p, &d, NULL, NULL);
            for (int r = 0; r < d && r < 8; r++) active[r]++;
        }
        const mor__hparams *hp = &m->hp;
        int64_t entries = 2 * (int64_t)n;  // the unique first and last layers
        for (int r = 0; r < hp->n_rec; r++)
            if (kv == MOR_KV_SKIP || r == 0) entries += (int64_t)hp->block * active[r];
        mor_session_stats st = {sizeof st, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}};
        ASSERT_OK(mor_session_get_stats(s, &st));
        int64_t per = (int64_t)hp->n_head_kv * hp->head_dim * 2 * 4;
        printf("# expert model, %s: %d tokens, active per recursion %d/%d/%d, KV %lld bytes (formula %lld)\n",
               kv == MOR_KV_SKIP ? "recursion-wise" : "shared", n, active[0], active[1], active[2],
               (long long)st.kv_bytes, (long long)(entries * per));
        ASSERT_EQ(st.kv_bytes, entries * per);
        ASSERT(active[2] < n);  // the router really stops tokens
        mor_session_free(s);
    }
    mor_model_free(m);
}

TEST(propagation_fills_skipped_layers) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    mor_session *s = open_session(m, 16);
    ASSERT(s);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_FIXED;
    ep.depth = 1;
    ep.kv = MOR_KV_PROPAGATE;
    ASSERT_OK(mor_session_set_exit_policy(s, &ep));
    ASSERT_EQ(run_greedy(s, 10, NULL), 0);
    int32_t n = mor_session_n_past(s);
    for (int32_t l = 0; l < m->hp.n_layer; l++) ASSERT_EQ(s->kv.slots[l].len, n);  // every layer, every token
    int32_t kv;
    ASSERT_OK(mor_session_token_info(s, n - 1, NULL, NULL, &kv));
    ASSERT_EQ(kv, MOR_KVSTAT_PROPAGATED);
    // With recursion-wise caching the skipped layers hold nothing.
    mor_session_reset(s);
    ep.kv = MOR_KV_SKIP;
    ASSERT_OK(mor_session_set_exit_policy(s, &ep));
    ASSERT_EQ(run_greedy(s, 10, NULL), 0);
    for (int32_t l = 0; l < m->hp.n_layer; l++)
        ASSERT_EQ(s->kv.slots[l].len, m->layer_step[l] >= 1 ? 0 : n);
    mor_session_free(s);
    mor_model_free(m);
}

// A C router: tokens at even positions run every step; odd positions stop after one.
static int32_t even_odd(void *user, const mor_route_batch *b, uint8_t *keep) {
    int *calls = user;
    (*calls)++;
    for (int32_t i = 0; i < b->n_tokens; i++) keep[i] = b->step == 0 || b->positions[i] % 2 == 0;
    return 0;
}

static int32_t failing(void *user, const mor_route_batch *b, uint8_t *keep) {
    (void)user, (void)keep;
    return b->step == 1 ? 7 : 0;
}

static int freed;
static void on_free(void *user) {
    (void)user;
    freed++;
}

TEST(custom_router_in_c) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    mor_session *s = open_session(m, 16);
    ASSERT(s);
    int calls = 0;
    mor_router_i r = {sizeof r, MOR_ROUTER_API_VERSION, even_odd, NULL, on_free, 0};
    ASSERT_OK(mor_session_set_router(s, &r, &calls));
    ASSERT_EQ(run_greedy(s, 12, NULL), 0);
    ASSERT_EQ(calls, 33);
    for (int32_t p = 0; p < mor_session_n_past(s); p++) {
        int32_t d;
        ASSERT_OK(mor_session_token_info(s, p, &d, NULL, NULL));
        ASSERT_EQ(d, p % 2 == 0 ? 3 : 1);
    }
    // A router error aborts the step, names it, and leaves the session as before.
    int32_t past = mor_session_n_past(s);
    ASSERT_OK(mor_session_set_router_fn(s, failing, NULL, 0));
    ASSERT_EQ(freed, 1);  // the first router was released
    int32_t t = 3;
    ASSERT_STATUS(mor_session_step(s, &t, 1), MOR_E_CALLBACK);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "returned 7");
    ASSERT_EQ(mor_session_n_past(s), past);
    ASSERT_OK(mor_session_set_router(s, NULL, NULL));  // back to the default policy
    ASSERT_OK(mor_session_step(s, &t, 1));
    ASSERT_EQ(mor_session_depth(s, -1), 3);
    // The session continued exactly as one that never saw the failure.
    mor_session *c = open_session(m, 16);
    ASSERT_OK(mor_session_set_router(c, &r, &calls));
    ASSERT_EQ(run_greedy(c, 12, NULL), 0);
    ASSERT_OK(mor_session_set_router(c, NULL, NULL));
    ASSERT_OK(mor_session_step(c, &t, 1));
    ASSERT(memcmp(mor_session_logits(s, -1), mor_session_logits(c, -1), (size_t)mor_model_get_int(m, MOR_INFO_N_VOCAB) * sizeof(float)) == 0);
    mor_session_free(s);
    mor_session_free(c);
    ASSERT_EQ(freed, 2);
    mor_model_free(m);
}

TEST(budget_caps_mean_depth) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    mor_session *s = open_session(m, 16);
    ASSERT(s);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.budget = 1.5f;
    ep.budget_window = 8;
    ASSERT_OK(mor_session_set_exit_policy(s, &ep));
    ASSERT_EQ(run_greedy(s, 40, NULL), 0);
    int32_t n = mor_session_n_past(s), d[128];
    for (int32_t p = 0; p < n; p++) mor_session_token_info(s, p, &d[p], NULL, NULL);
    for (int32_t p = 7; p < n; p++) {  // every window of 8 consecutive tokens
        int sum = 0;
        for (int j = 0; j < 8; j++) sum += d[p - j];
        ASSERT_LE(sum, 12);
    }
    mor_session_free(s);
    mor_model_free(m);
}

TEST(capacity_top_k) {
    mor_model *m = load("expert.gguf");
    ASSERT(m);
    mor_session *s = open_session(m, 64);
    ASSERT(s);
    ASSERT_OK(set_policy(s, MOR_EXIT_CAPACITY, 0.5f, MOR_KV_AUTO));
    int32_t toks[12] = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26};
    ASSERT_OK(mor_session_step(s, toks, 12));
    int count[4] = {0};
    for (int32_t p = 0; p < 12; p++) {
        int32_t d;
        mor_session_token_info(s, p, &d, NULL, NULL);
        for (int r = 0; r < d; r++) count[r]++;
    }
    ASSERT_EQ(count[0], 12);  // k_r = (3 - r) * 12 / 3: 12, 8, 4
    ASSERT_EQ(count[1], 8);
    ASSERT_EQ(count[2], 4);
    mor_session_free(s);
    mor_model_free(m);
}

TEST(bad_policies) {
    mor_model *m = load("middle_cycle.gguf"), *v = load("vanilla.gguf"), *tk = load("token.gguf"),
              *sq = load("middle_sequence.gguf");
    ASSERT(m && v && tk && sq);
    mor_session *s = open_session(m, 16), *sv = open_session(v, 16), *st = open_session(tk, 16),
                *ss = open_session(sq, 16);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_CONFIDENCE;
    ep.threshold = -0.1f;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "threshold");
    ep.threshold = 0.5f;
    ep.policy = MOR_EXIT_FIXED;
    ep.depth = 4;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "1..3");
    ep.policy = 42;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_ROUTER;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_UNSUPPORTED);
    ep.policy = MOR_EXIT_CAPACITY;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_UNSUPPORTED);
    ep.policy = MOR_EXIT_CUSTOM;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_FREE;
    ep.shallow = 3;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "shallow");
    mor_exit_policy_init(&ep);
    ep.budget = 0.5f;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    ep.budget = 2;
    ep.budget_window = 0;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    mor_exit_policy_init(&ep);
    ep.kv = 9;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    ep.kv = MOR_KV_SKIP;
    ep.rollback = 1;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    // A session holding tokens keeps its KV strategy.
    int32_t t = 1;
    ASSERT_OK(mor_session_step(s, &t, 1));
    mor_exit_policy_init(&ep);
    ep.kv = MOR_KV_PROPAGATE;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "reset");
    mor_session_reset(s);
    ASSERT_OK(mor_session_set_exit_policy(s, &ep));
    // Model kinds.
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_CONFIDENCE;
    ASSERT_STATUS(mor_session_set_exit_policy(sv, &ep), MOR_E_UNSUPPORTED);  // one step only
    mor_exit_policy_init(&ep);
    ep.kv = MOR_KV_SHARE;
    ASSERT_STATUS(mor_session_set_exit_policy(sv, &ep), MOR_E_UNSUPPORTED);
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_SATURATION;
    ASSERT_STATUS(mor_session_set_exit_policy(st, &ep), MOR_E_UNSUPPORTED);  // token-choice
    ASSERT_STATUS(mor_session_set_exit_policy(ss, &ep), MOR_E_UNSUPPORTED);  // interleaved
    mor_exit_policy_init(&ep);
    ep.kv = MOR_KV_SYNC;
    ASSERT_STATUS(mor_session_set_exit_policy(st, &ep), MOR_E_UNSUPPORTED);
    mor_router_i r = {sizeof r, 99, even_odd, NULL, NULL, 0};
    ASSERT_STATUS(mor_session_set_router(s, &r, NULL), MOR_E_INVALID);
    r.version = MOR_ROUTER_API_VERSION;
    ASSERT_STATUS(mor_session_set_router(ss, &r, NULL), MOR_E_UNSUPPORTED);
    // Every refused call left a usable session.
    ASSERT_OK(mor_session_step(s, prompt, NP));
    ASSERT_OK(mor_session_step(sv, prompt, NP));
    ASSERT_OK(mor_session_step(st, prompt, NP));
    mor_session_free(s);
    mor_session_free(sv);
    mor_session_free(st);
    mor_session_free(ss);
    mor_model_free(m);
    mor_model_free(v);
    mor_model_free(tk);
    mor_model_free(sq);
}

TEST(state_keeps_policy_and_stack) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    mor_session *a = open_session(m, 16), *b = open_session(m, 16);
    ASSERT(a && b);
    ASSERT_OK(set_policy(a, MOR_EXIT_FREE, 0.05f, MOR_KV_SYNC));
    ASSERT_EQ(run_greedy(a, 20, NULL), 0);
    size_t n = mor_session_state_size(a);
    void *buf = malloc(n);
    ASSERT_OK(mor_session_state_save(a, buf, n, NULL));
    ASSERT_OK(mor_session_state_load(b, buf, n));
    for (int i = 0; i < 15; i++) {
        int32_t ta, tb;
        ASSERT_OK(mor_session_sample(a, &ta));
        if (i == 0) tb = ta;
        else ASSERT_OK(mor_session_sample(b, &tb));
        ASSERT_EQ(ta, tb);
        ASSERT_OK(mor_session_step(a, &ta, 1));
        ASSERT_OK(mor_session_step(b, &tb, 1));
        ASSERT_EQ(mor_session_depth(a, -1), mor_session_depth(b, -1));
        ASSERT(memcmp(mor_session_logits(a, -1), mor_session_logits(b, -1), (size_t)mor_model_get_int(m, MOR_INFO_N_VOCAB) * sizeof(float)) == 0);
    }
    free(buf);
    mor_session_free(a);
    mor_session_free(b);
    mor_model_free(m);
}

// middle_cycle.gguf (3 recursions, no router) rewritten with extra keys: 0 and the loaded model,
// or the load's status with its message in err.
typedef struct {
    const char *key;
    uint32_t    type;  // MOR__GGUF_INT32, FLOAT32, STRING
    double      v;
} policy_key;

static int load_with_keys(const policy_key *keys, int n, mor_model **out, char *err, size_t err_n) {
    char path[512];
    void *img = NULL;
    uint64_t size = 0;
    *out = NULL;
    if (mor__gguf_w_read_file(test_path(path, sizeof path, "middle_cycle.gguf"), &img, &size, err, err_n)) return -1;
    mor__gguf g;
    if (mor__gguf_parse(&g, img, size, err, err_n)) {
        free(img);
        return -1;
    }
    mor__gguf_writer *w = mor__gguf_writer_create();
    int st = w ? mor__gguf_w_copy(w, &g, "mor.policy.", err, err_n) : -1;
    for (int i = 0; st == MOR_OK && i < n; i++) {
        if (keys[i].type == MOR__GGUF_FLOAT32) st = mor__gguf_w_f32(w, keys[i].key, (float)keys[i].v);
        else if (keys[i].type == MOR__GGUF_STRING) st = mor__gguf_w_str(w, keys[i].key, "confidence");
        else st = mor__gguf_w_i32(w, keys[i].key, (int32_t)keys[i].v);
    }
    uint64_t n_out = 0;
    void *copy = st == MOR_OK ? mor__gguf_writer_finish(w, &n_out) : NULL;
    mor__gguf_writer_free(w);
    mor__gguf_free(&g);
    free(img);
    if (!copy) return -1;
    mor_model_params mp;
    mor_model_params_init(&mp);
    mp.flags = MOR_MODEL_COPY;
    st = mor_model_load_memory(copy, (size_t)n_out, &mp, out, err, err_n);
    free(copy);
    return st;
}

static int session_policy(mor_session *s, double *policy, double *threshold) {
    mor_session_stats stt;
    memset(&stt, 0, sizeof stt);
    stt.size = sizeof stt;
    *policy = s->policy.policy;
    if (mor_session_get_stats(s, &stt)) return -1;
    *threshold = stt.threshold;
    return 0;
}

TEST(file_policy_is_the_default) {
    char err[256];
    mor_model *m;
    const policy_key k[] = {{"mor.policy.policy", MOR__GGUF_INT32, MOR_EXIT_CONFIDENCE},
                            {"mor.policy.threshold", MOR__GGUF_FLOAT32, 0.25},
                            {"mor.policy.min_depth", MOR__GGUF_INT32, 1},
                            {"mor.policy.metric", MOR__GGUF_INT32, MOR_CONF_MAX_PROB}};
    ASSERT_STATUS(load_with_keys(k, 4, &m, err, sizeof err), MOR_OK);
    mor_session *s = open_session(m, 16);
    ASSERT(s);
    double pol, th;
    ASSERT_EQ(session_policy(s, &pol, &th), 0);
    ASSERT_EQ((int)pol, MOR_EXIT_CONFIDENCE);
    ASSERT_NEAR(th, 0.25, 1e-6);
    ASSERT_EQ(s->policy.min_depth, 1);
    ASSERT_EQ(s->policy.metric, MOR_CONF_MAX_PROB);
    ASSERT_EQ(s->policy.kv, MOR_KV_SKIP);
    // The session runs it: the same depths as setting the policy by hand on the plain file.
    int32_t got[8];
    ASSERT_EQ(run_greedy(s, 8, got), 0);
    mor_model *plain = load("middle_cycle.gguf");
    mor_session *ref = open_session(plain, 16);
    ASSERT(plain && ref);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_CONFIDENCE;
    ep.threshold = 0.25f;
    ep.min_depth = 1;
    ep.metric = MOR_CONF_MAX_PROB;
    ASSERT_STATUS(mor_session_set_exit_policy(ref, &ep), MOR_OK);
    int32_t want[8];
    ASSERT_EQ(run_greedy(ref, 8, want), 0);
    for (int i = 0; i < 8; i++) ASSERT_EQ(got[i], want[i]);
    for (int32_t i = 0; i < NP + 8; i++) {
        int32_t da, db;
        ASSERT_STATUS(mor_session_token_info(s, i, &da, NULL, NULL), MOR_OK);
        ASSERT_STATUS(mor_session_token_info(ref, i, &db, NULL, NULL), MOR_OK);
        ASSERT_EQ(da, db);
    }
    // The host still overrides it; NULL restores the file's.
    ASSERT_EQ(set_policy(s, MOR_EXIT_FULL, 0.5f, MOR_KV_AUTO), 0);
    ASSERT_EQ(session_policy(s, &pol, &th), 0);
    ASSERT_EQ((int)pol, MOR_EXIT_FULL);
    ASSERT_STATUS(mor_session_set_exit_policy(s, NULL), MOR_OK);
    ASSERT_EQ(session_policy(s, &pol, &th), 0);
    ASSERT_EQ((int)pol, MOR_EXIT_CONFIDENCE);
    ASSERT_NEAR(th, 0.25, 1e-6);
    // Dropping a custom router restores it too.
    int calls = 0;
    ASSERT_STATUS(mor_session_set_router_fn(s, even_odd, &calls, 0), MOR_OK);
    ASSERT_EQ(s->policy.policy, MOR_EXIT_CUSTOM);
    ASSERT_STATUS(mor_session_set_router_fn(s, NULL, NULL, 0), MOR_OK);
    ASSERT_EQ(session_policy(s, &pol, &th), 0);
    ASSERT_EQ((int)pol, MOR_EXIT_CONFIDENCE);
    ASSERT_NEAR(th, 0.25, 1e-6);
    ASSERT_EQ(s->policy.min_depth, 1);
    mor_session_free(s);
    mor_session_free(ref);
    mor_model_free(plain);
    mor_model_free(m);
    // A policy of KV_SYNC needs n_batch >= 2: a session with n_batch 1 is refused, named.
    const policy_key f[] = {{"mor.policy.policy", MOR__GGUF_INT32, MOR_EXIT_FREE}};
    ASSERT_STATUS(load_with_keys(f, 1, &m, err, sizeof err), MOR_OK);
    ASSERT_EQ(m ? 1 : 0, 1);
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = 64;
    p.n_batch = 1;
    ASSERT_STATUS(mor_session_create(m, &p, &s, err, sizeof err), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(err, "mor.policy");
    p.n_batch = 4;
    ASSERT_STATUS(mor_session_create(m, &p, &s, err, sizeof err), MOR_OK);
    ASSERT_EQ(s->policy.kv, MOR_KV_SYNC);
    mor_session_free(s);
    mor_model_free(m);
}

TEST(file_policy_refused) {
    char err[256];
    mor_model *m;
    const struct {
        policy_key  k;
        const char *msg;
    } bad[] = {
        {{"mor.policy.treshold", MOR__GGUF_FLOAT32, 0.5}, "mor.policy.treshold"},
        {{"mor.policy.size", MOR__GGUF_INT32, 4}, "mor.policy.size"},
        {{"mor.policy.threshold", MOR__GGUF_FLOAT32, 1.5}, "threshold 1.5"},
        {{"mor.policy.policy", MOR__GGUF_INT32, 42}, "unknown exit policy 42"},
        {{"mor.policy.policy", MOR__GGUF_STRING, 0}, "must be a number"},
        {{"mor.policy.policy", MOR__GGUF_INT32, MOR_EXIT_ROUTER}, "router"},
        {{"mor.policy.depth", MOR__GGUF_FLOAT32, 1e20}, "mor.policy.depth"},
        {{"mor.policy.budget", MOR__GGUF_FLOAT32, 0.5}, "budget 0.5"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = 0;
        ASSERT_STATUS(load_with_keys(&bad[i].k, 1, &m, err, sizeof err), MOR_E_FORMAT);
        ASSERT(m == NULL);
        ASSERT_STR_CONTAINS(err, bad[i].msg);
        ASSERT_STR_CONTAINS(err, bad[i].k.key);
    }
    // A fixed depth out of range is refused with both keys named.
    const policy_key d[] = {{"mor.policy.policy", MOR__GGUF_INT32, MOR_EXIT_FIXED}, {"mor.policy.depth", MOR__GGUF_INT32, 9}};
    ASSERT_STATUS(load_with_keys(d, 2, &m, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "mor.policy.depth");
    ASSERT_STR_CONTAINS(err, "1..3");
}

static const test_entry tests_[] = {TEST_LIST(threshold_never_met_equals_full, sync_parallel_decoding_is_exact,
                                              rollback_recovers_full_depth_output, cache_sizes_follow_the_formulas,
                                              propagation_fills_skipped_layers, custom_router_in_c)
                                        TEST_LIST(budget_caps_mean_depth, capacity_top_k, bad_policies,
                                                  state_keeps_policy_and_stack, confidence_groups_equal_one_row,
                                                  confidence_metrics_by_definition)
                                        TEST_LIST(file_policy_is_the_default, file_policy_refused)};
TEST_MAIN_LIST(tests_)
