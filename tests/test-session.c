// test-session.c: the session API on a real model (stories260K): stepping in batches and one
// token at a time, logits and depths, rewind, reset, state save/load, context limits, bad
// tokens and NULL arguments, sampling determinism, and two sessions on two threads.
#include "harness.h"
#include "mor.h"
#include "support/session.h"

#include <pthread.h>

static mor_model *load_stories(void) {
    char path[512], err[256];
    mor_model *m = NULL;
    if (mor_model_load(test_path(path, sizeof path, "stories260K.gguf"), NULL, &m, err, sizeof err) != MOR_OK) {
        printf("# load failed: %s\n", err);
        return NULL;
    }
    return m;
}

static float max_abs_diff(const float *a, const float *b, int n) {
    float mx = 0;
    for (int i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (d > mx) mx = d;
    }
    return mx;
}

static int argmax(const float *l, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

// Greedy continuation of n tokens after `prompt`, written to out.
static int greedy(mor_session *s, const int32_t *prompt, int np, int n, int32_t *out) {
    if (mor_session_step(s, prompt, np) != MOR_OK) return -1;
    for (int i = 0; i < n; i++) {
        if (mor_session_sample(s, &out[i]) != MOR_OK) return -1;
        if (mor_session_step(s, &out[i], 1) != MOR_OK) return -1;
    }
    return 0;
}

static const int32_t prompt[] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421};
#define NP ((int)(sizeof prompt / sizeof prompt[0]))

TEST(info) {
    mor_model *m = load_stories();
    ASSERT(m);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_VOCAB), 512);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_EMBD), 64);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_FF), 172);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_LAYER), 5);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_HEAD), 8);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_HEAD_KV), 4);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_RECURSION), 1);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_STORED_LAYER), 5);
    // 260,032 weights (plus the output copy of the embedding stored in the GGUF file).
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_PARAMS), 260032 + 512 * 64);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_PARAMS_UNROLLED), 260032 + 512 * 64);
    ASSERT_EQ(mor_model_get_int(m, 9999), -1);
    ASSERT_NEAR(mor_model_get_float(m, MOR_INFO_RMS_EPS), 1e-5, 1e-9);
    ASSERT(strcmp(mor_model_get_str(m, MOR_INFO_ARCH), "llama") == 0);
    ASSERT(mor_model_get_str(m, 9999) == NULL);
    char buf[64];
    size_t n = 0;
    ASSERT_OK(mor_model_meta_str(m, "llama.block_count", buf, sizeof buf, &n));
    ASSERT(strcmp(buf, "5") == 0);
    ASSERT_STATUS(mor_model_meta_str(m, "general.architecture", buf, 3, &n), MOR_E_BUFFER_SMALL);
    ASSERT_EQ(n, 5);
    ASSERT_STATUS(mor_model_meta_str(m, "no.such.key", buf, sizeof buf, &n), MOR_E_NOT_FOUND);
    mor_model_free(m);
}

// The logits of a prompt are the same whether it is stepped at once, in chunks of 5, or one
// token at a time (tolerance: float reassociation only).
TEST(batch_equals_incremental) {
    mor_model *m = load_stories();
    ASSERT(m);
    mor_session *a = test_session(m, 64, 64, MOR_SESSION_LOGITS_ALL);
    mor_session *b = test_session(m, 64, 5, 0);
    mor_session *c = test_session(m, 64, 1, 0);
    ASSERT(a && b && c);
    ASSERT_OK(mor_session_step(a, prompt, NP));
    ASSERT_EQ(mor_session_n_last(a), NP);
    ASSERT_OK(mor_session_step(b, prompt, NP));
    for (int i = 0; i < NP; i++) ASSERT_OK(mor_session_step(c, &prompt[i], 1));
    ASSERT_EQ(mor_session_n_past(a), NP);
    ASSERT_EQ(mor_session_n_past(b), NP);
    ASSERT_EQ(mor_session_n_past(c), NP);
    const float *la = mor_session_logits(a, -1), *lb = mor_session_logits(b, -1), *lc = mor_session_logits(c, -1);
    ASSERT(la && lb && lc);
    ASSERT_LT(max_abs_diff(la, lb, 512), 1e-4);
    ASSERT_LT(max_abs_diff(la, lc, 512), 1e-4);
    ASSERT(mor_session_logits(a, 0) != NULL);        // LOGITS_ALL keeps every row
    ASSERT(mor_session_logits(b, 0) == NULL);        // only the last otherwise
    ASSERT(mor_session_logits(a, NP) == NULL);
    ASSERT_EQ(mor_session_depth(a, -1), 1);          // vanilla: one recursion
    ASSERT_EQ(mor_session_depth(a, NP), -1);
    mor_session_free(a);
    mor_session_free(b);
    mor_session_free(c);
    mor_model_free(m);
}

TEST(rewind_and_reset) {
    mor_model *m = load_stories();
    ASSERT(m);
    mor_session *s = test_session(m, 128, 16, 0);
    ASSERT(s);
    int32_t g1[20], g2[20], g3[20];
    ASSERT_EQ(greedy(s, prompt, NP, 20, g1), 0);
    // Rewind to the prompt: the same continuation comes back.
    ASSERT_OK(mor_session_rewind(s, NP));
    ASSERT_EQ(mor_session_n_past(s), NP);
    ASSERT(mor_session_logits(s, -1) == NULL);
    ASSERT_OK(mor_session_step(s, &prompt[NP - 1], 1));  // re-feeding changes the sequence...
    ASSERT_OK(mor_session_rewind(s, NP - 1));            // ...so rewind before the last token
    ASSERT_EQ(greedy(s, &prompt[NP - 1], 1, 20, g2), 0);
    for (int i = 0; i < 20; i++) ASSERT_EQ(g1[i], g2[i]);
    mor_session_reset(s);
    ASSERT_EQ(mor_session_n_past(s), 0);
    ASSERT_EQ(greedy(s, prompt, NP, 20, g3), 0);
    for (int i = 0; i < 20; i++) ASSERT_EQ(g1[i], g3[i]);
    ASSERT_STATUS(mor_session_rewind(s, -1), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_rewind(s, mor_session_n_past(s) + 1), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "n_keep");
    mor_session_free(s);
    mor_model_free(m);
}

TEST(state_roundtrip) {
    mor_model *m = load_stories();
    ASSERT(m);
    mor_session *s = test_session(m, 96, 8, 0), *t = test_session(m, 96, 8, 0);
    ASSERT(s && t);
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    sp.temperature = 0.9f;
    sp.seed = 1234;
    ASSERT_OK(mor_session_set_sampler(s, &sp));
    ASSERT_OK(mor_session_step(s, prompt, NP));
    size_t n = mor_session_state_size(s), w = 0;
    ASSERT_EQ(n, 17264);
    void *buf = malloc(n);
    ASSERT_STATUS(mor_session_state_save(s, buf, n - 1, &w), MOR_E_BUFFER_SMALL);
    ASSERT_EQ(w, n);
    ASSERT_OK(mor_session_state_save(s, buf, n, &w));
    ASSERT_EQ(w, n);
    ASSERT_OK(mor_session_state_load(t, buf, n));
    ASSERT_EQ(mor_session_n_past(t), NP);
    // Both continue identically: KV, tokens, sampler settings and RNG were restored.
    int32_t ta = 300, tb = 300;
    for (int i = 0; i < 30; i++) {
        ASSERT_OK(mor_session_step(s, &ta, 1));
        ASSERT_OK(mor_session_step(t, &tb, 1));
        ASSERT_LT(max_abs_diff(mor_session_logits(s, -1), mor_session_logits(t, -1), 512), 1e-6);
        ASSERT_OK(mor_session_sample(s, &ta));
        ASSERT_OK(mor_session_sample(t, &tb));
        ASSERT_EQ(ta, tb);
    }
    // Corrupt states are refused and leave the session unchanged.
    int32_t past = mor_session_n_past(t);
    ASSERT_STATUS(mor_session_state_load(t, buf, n - 1), MOR_E_STATE);
    ((unsigned char *)buf)[0] ^= 1;
    ASSERT_STATUS(mor_session_state_load(t, buf, n), MOR_E_STATE);
    ASSERT_STR_CONTAINS(mor_session_last_error(t), "magic");
    ((unsigned char *)buf)[0] ^= 1;
    ((unsigned char *)buf)[8] ^= 1;  // n_layer
    ASSERT_STATUS(mor_session_state_load(t, buf, n), MOR_E_STATE);
    ASSERT_EQ(mor_session_n_past(t), past);
    ASSERT_STATUS(mor_session_state_load(t, NULL, n), MOR_E_INVALID);
    free(buf);
    mor_session_free(s);
    mor_session_free(t);
    mor_model_free(m);
}

TEST(context_full_and_bad_tokens) {
    mor_model *m = load_stories();
    ASSERT(m);
    mor_session *s = test_session(m, 16, 8, 0);
    ASSERT(s);
    ASSERT_OK(mor_session_step(s, prompt, NP));  // 13 of 16
    int32_t four[4] = {300, 301, 302, 303};
    ASSERT_STATUS(mor_session_step(s, four, 4), MOR_E_CONTEXT_FULL);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "context of 16");
    ASSERT_EQ(mor_session_n_past(s), NP);  // unchanged
    ASSERT_OK(mor_session_step(s, four, 3));  // still usable: fills it exactly
    ASSERT_EQ(mor_session_n_past(s), 16);
    ASSERT_STATUS(mor_session_step(s, four, 1), MOR_E_CONTEXT_FULL);
    ASSERT_OK(mor_session_rewind(s, 10));
    ASSERT_OK(mor_session_step(s, four, 4));
    int32_t bad[2] = {5, 512};
    ASSERT_STATUS(mor_session_step(s, bad, 2), MOR_E_TOKEN);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "512");
    bad[1] = -3;
    ASSERT_STATUS(mor_session_step(s, bad, 2), MOR_E_TOKEN);
    ASSERT_EQ(mor_session_n_past(s), 14);
    ASSERT_STATUS(mor_session_step(s, NULL, 1), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_step(s, bad, 0), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_step(NULL, bad, 1), MOR_E_INVALID);
    mor_session_free(s);
    // LOGITS_ALL caps a step at n_batch tokens.
    s = test_session(m, 64, 4, MOR_SESSION_LOGITS_ALL);
    ASSERT(s);
    ASSERT_STATUS(mor_session_step(s, prompt, 5), MOR_E_INVALID);
    mor_session_free(s);
    mor_model_free(m);
}

TEST(null_and_bad_params) {
    char err[256];
    mor_model *m = NULL;
    mor_session *s = NULL;
    ASSERT_STATUS(mor_model_load(NULL, NULL, &m, err, sizeof err), MOR_E_INVALID);
    ASSERT_STATUS(mor_model_load("x", NULL, NULL, err, sizeof err), MOR_E_INVALID);
    ASSERT_STATUS(mor_model_load_memory(NULL, 10, NULL, &m, err, sizeof err), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_create(NULL, NULL, &s, err, sizeof err), MOR_E_INVALID);
    m = load_stories();
    ASSERT(m);
    ASSERT_STATUS(mor_session_create(m, NULL, NULL, err, sizeof err), MOR_E_INVALID);
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = -5;
    ASSERT_STATUS(mor_session_create(m, &p, &s, err, sizeof err), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(err, "n_ctx");
    ASSERT(s == NULL);
    mor_session_params_init(&p);
    p.n_batch = 0;
    ASSERT_STATUS(mor_session_create(m, &p, &s, err, sizeof err), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(err, "n_batch");
    mor_session_params_init(&p);
    p.kind = MOR_PARAMS_SAMPLER;
    ASSERT_STATUS(mor_session_create(m, &p, &s, err, sizeof err), MOR_E_INVALID);
    // A caller compiled against an older, shorter struct: fields past `size` take defaults.
    mor_session_params_init(&p);
    p.size = offsetof(mor_session_params, n_batch);
    p.n_ctx = 32;
    p.n_batch = -77;  // beyond size: ignored
    ASSERT_OK(mor_session_create(m, &p, &s, err, sizeof err));
    ASSERT_EQ(mor_session_n_ctx(s), 32);
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    sp.top_p = 0;
    ASSERT_STATUS(mor_session_set_sampler(s, &sp), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "top_p");
    int32_t tok;
    ASSERT_STATUS(mor_session_sample(s, &tok), MOR_E_INVALID);  // no logits yet
    ASSERT_STATUS(mor_session_sample(s, NULL), MOR_E_INVALID);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_FIXED;
    ep.depth = 2;  // vanilla model: 1 recursion
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    ep.depth = 1;
    ASSERT_OK(mor_session_set_exit_policy(s, &ep));
    ep.policy = MOR_EXIT_ROUTER;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_UNSUPPORTED);
    ep.policy = MOR_EXIT_FULL;
    ep.threshold = 1.5f;
    ASSERT_STATUS(mor_session_set_exit_policy(s, &ep), MOR_E_INVALID);
    ASSERT_OK(mor_session_set_exit_policy(s, NULL));
    mor_session_free(s);
    mor_session_free(NULL);
    mor_model_free(NULL);
    mor_model_free(m);
}

TEST(params_by_name) {
    size_t n = mor_params_size(MOR_PARAMS_SESSION);
    ASSERT_EQ(n, sizeof(mor_session_params));
    ASSERT_EQ(mor_params_size(99), 0);
    unsigned char buf[256];
    ASSERT_OK(mor_params_init(buf, MOR_PARAMS_SESSION));
    ASSERT_OK(mor_params_set(buf, "n_ctx", 321));
    double v = 0;
    ASSERT_OK(mor_params_get(buf, "n_ctx", &v));
    ASSERT_EQ((int)v, 321);
    ASSERT_EQ(((mor_session_params *)buf)->n_ctx, 321);
    ASSERT_STATUS(mor_params_set(buf, "n_ctx", 1.5), MOR_E_INVALID);
    ASSERT_STATUS(mor_params_set(buf, "nope", 1), MOR_E_NOT_FOUND);
    ASSERT_STATUS(mor_params_set(buf, "temperature", 1), MOR_E_NOT_FOUND);  // other struct's field
    ASSERT_STATUS(mor_params_init(buf, 42), MOR_E_INVALID);
    ASSERT_OK(mor_params_init(buf, MOR_PARAMS_SAMPLER));
    ASSERT_OK(mor_params_set(buf, "temperature", 0.5));
    ASSERT_OK(mor_params_set(buf, "seed", 4294967296.0 * 3));
    ASSERT_EQ(((mor_sampler_params *)buf)->seed, 3ull << 32);
    ASSERT_NEAR(((mor_sampler_params *)buf)->temperature, 0.5, 0);
}

TEST(sampling) {
    mor_model *m = load_stories();
    ASSERT(m);
    mor_session *s = test_session(m, 128, 16, 0);
    ASSERT(s);
    // Greedy picks the argmax.
    ASSERT_OK(mor_session_step(s, prompt, NP));
    int32_t tok;
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT_EQ(tok, argmax(mor_session_logits(s, -1), 512));
    // The same seed gives the same tokens; another seed gives other tokens.
    int32_t a[40], b[40], c[40];
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    sp.temperature = 1.0f;
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    int32_t *outs[3] = {a, b, c};
    uint64_t seeds[3] = {7, 7, 8};
    for (int k = 0; k < 3; k++) {
        mor_session_reset(s);
        sp.seed = seeds[k];
        ASSERT_OK(mor_session_set_sampler(s, &sp));
        ASSERT_EQ(greedy(s, prompt, NP, 40, outs[k]), 0);
    }
    int same = 1, diff = 0;
    for (int i = 0; i < 40; i++) same &= a[i] == b[i], diff += a[i] != c[i];
    ASSERT(same);
    ASSERT_EQ(diff, 32);
    // top_k = 1 is greedy whatever the temperature; a strong repetition penalty avoids repeats.
    sp.top_k = 1;
    mor_session_reset(s);
    ASSERT_OK(mor_session_set_sampler(s, &sp));
    ASSERT_OK(mor_session_step(s, prompt, NP));
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT_EQ(tok, argmax(mor_session_logits(s, -1), 512));
    mor_sampler_params_init(&sp);
    sp.repeat_penalty = 100.0f;
    sp.repeat_last_n = 128;
    mor_session_reset(s);
    ASSERT_OK(mor_session_set_sampler(s, &sp));
    int32_t g[30];
    ASSERT_EQ(greedy(s, prompt, NP, 30, g), 0);
    for (int i = 0; i < 30; i++)
        for (int j = 0; j < NP; j++) ASSERT_NE(g[i], prompt[j] == 1 ? -1 : prompt[j]);
    // min_p = 1 keeps only the top token: sampling equals greedy.
    mor_sampler_params_init(&sp);
    sp.temperature = 2.0f;
    sp.min_p = 1.0f;
    sp.top_k = 0;
    mor_session_reset(s);
    ASSERT_OK(mor_session_set_sampler(s, &sp));
    ASSERT_OK(mor_session_step(s, prompt, NP));
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT_EQ(tok, argmax(mor_session_logits(s, -1), 512));
    // top_k = K at a high temperature draws every one of the K best logits (brute force, ties
    // to the lower id) and nothing else.
    for (int K = 2; K <= 40; K += 19) {
        mor_sampler_params_init(&sp);
        sp.temperature = 50.0f;
        sp.top_k = K;
        sp.top_p = 1.0f;
        sp.min_p = 0.0f;
        mor_session_reset(s);
        ASSERT_OK(mor_session_set_sampler(s, &sp));
        ASSERT_OK(mor_session_step(s, prompt, NP));
        const float *l = mor_session_logits(s, -1);
        int rank_of[512], hits[512] = {0};
        for (int i = 0; i < 512; i++) {
            int r = 0;
            for (int j = 0; j < 512; j++) r += l[j] > l[i] || (l[j] == l[i] && j < i);
            rank_of[i] = r;
        }
        for (int d = 0; d < 40 * K; d++) {
            ASSERT_OK(mor_session_sample(s, &tok));
            ASSERT(tok >= 0 && tok < 512);
            ASSERT(rank_of[tok] < K);
            hits[tok]++;
        }
        for (int i = 0; i < 512; i++) ASSERT(rank_of[i] >= K || hits[i] > 0);
    }
    mor_session_free(s);
    mor_model_free(m);
}

typedef struct {
    const mor_model *m;
    int32_t          out[64];
    int              rc;
} job;

static void *run_job(void *arg) {
    job *j = arg;
    mor_session *s = test_session(j->m, 128, 8, 0);
    j->rc = s ? greedy(s, prompt, NP, 64, j->out) : -1;
    mor_session_free(s);
    return NULL;
}

TEST(two_threads) {
    mor_model *m = load_stories();
    ASSERT(m);
    job alone = {m, {0}, 0}, j1 = {m, {0}, 0}, j2 = {m, {0}, 0};
    run_job(&alone);
    ASSERT_EQ(alone.rc, 0);
    pthread_t t1, t2;
    ASSERT_EQ(pthread_create(&t1, NULL, run_job, &j1), 0);
    ASSERT_EQ(pthread_create(&t2, NULL, run_job, &j2), 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    ASSERT_EQ(j1.rc, 0);
    ASSERT_EQ(j2.rc, 0);
    for (int i = 0; i < 64; i++) {
        ASSERT_EQ(j1.out[i], alone.out[i]);
        ASSERT_EQ(j2.out[i], alone.out[i]);
    }
    mor_model_free(m);
}

// The same tokens and bit-identical logits for 1, 2 and 3 threads (rows are split, never a sum),
// and the reference kernels agree with the optimized ones within float reassociation.
TEST(threads_and_kernels) {
    mor_model *m = load_stories();
    ASSERT(m);
    const float *ref_logits = NULL;
    float first[512];
    int32_t toks[3][40];
    for (int k = 0; k < 4; k++) {
        mor_session_params p;
        mor_session_params_init(&p);
        p.n_ctx = 128;
        p.n_batch = 16;
        p.n_threads = k == 3 ? 1 : k + 1;
        p.flags = k == 3 ? MOR_SESSION_REF_KERNELS : 0;
        mor_session *s = NULL;
        char err[256];
        ASSERT_OK(mor_session_create(m, &p, &s, err, sizeof err));
        ASSERT_OK(mor_session_step(s, prompt, NP));
        ref_logits = mor_session_logits(s, -1);
        if (k == 0) memcpy(first, ref_logits, sizeof first);
        else if (k < 3) ASSERT(memcmp(first, ref_logits, sizeof first) == 0);
        else ASSERT_LT(max_abs_diff(first, ref_logits, 512), 1e-4);
        int32_t out[40];
        mor_session_reset(s);
        ASSERT_EQ(greedy(s, prompt, NP, 40, k < 3 ? toks[k] : out), 0);
        if (k == 3) memcpy(toks[2], out, sizeof out);
        mor_session_free(s);
    }
    for (int i = 0; i < 40; i++) {
        ASSERT_EQ(toks[0][i], toks[1][i]);
        ASSERT_EQ(toks[0][i], toks[2][i]);
    }
    mor_model_free(m);
}

// Half-precision K/V: logits within 1e-2 of F32 K/V, half the K/V memory, the same greedy
// tokens here, and its own state format.
TEST(kv_f16) {
    mor_model *m = load_stories();
    ASSERT(m);
    mor_session *a = test_session(m, 128, 16, 0), *b = test_session(m, 128, 16, MOR_SESSION_KV_F16);
    ASSERT(a && b);
    int32_t ga[40], gb[40];
    ASSERT_EQ(greedy(a, prompt, NP, 40, ga), 0);
    ASSERT_EQ(greedy(b, prompt, NP, 40, gb), 0);
    int same = 0;
    for (int i = 0; i < 40; i++) same += ga[i] == gb[i];
    ASSERT_EQ(same, 40);
    float err = max_abs_diff(mor_session_logits(a, -1), mor_session_logits(b, -1), 512);
    printf("# F16 K/V: max logit difference %.3g after %d tokens\n", err, NP + 40);
    ASSERT_LT(err, 1e-2);
    ASSERT(err > 0);  // it really is another precision
    mor_session_stats sa = {sizeof sa, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, {0}}, sb = sa;
    ASSERT_OK(mor_session_get_stats(a, &sa));
    ASSERT_OK(mor_session_get_stats(b, &sb));
    ASSERT_EQ(sa.kv_bytes, 2 * sb.kv_bytes);  // halves take half the bytes of floats
    size_t n = mor_session_state_size(b);
    void *buf = malloc(n);
    ASSERT_OK(mor_session_state_save(b, buf, n, NULL));
    mor_session *c = test_session(m, 128, 16, MOR_SESSION_KV_F16);
    ASSERT_OK(mor_session_state_load(c, buf, n));
    int32_t t = 300;
    ASSERT_OK(mor_session_step(b, &t, 1));
    ASSERT_OK(mor_session_step(c, &t, 1));
    ASSERT(memcmp(mor_session_logits(b, -1), mor_session_logits(c, -1), 512 * sizeof(float)) == 0);
    ASSERT_STATUS(mor_session_state_load(a, buf, n), MOR_E_STATE);  // F32 session
    ASSERT_STR_CONTAINS(mor_session_last_error(a), "F16");
    free(buf);
    mor_session_free(a);
    mor_session_free(b);
    mor_session_free(c);
    mor_model_free(m);
}

static int log_count;
static void count_log(int32_t level, const char *msg, void *user) {
    (void)level, (void)msg;
    (*(int *)user)++;
}

TEST(version_status_log) {
    ASSERT_EQ(mor_version_number(), MOR_VERSION_NUMBER);
    char v[32];
    snprintf(v, sizeof v, "%d.%d.%d", MOR_VERSION_MAJOR, MOR_VERSION_MINOR, MOR_VERSION_PATCH);
    ASSERT(strcmp(mor_version(), v) == 0);
    ASSERT(strcmp(mor_status_name(MOR_E_FORMAT), "MOR_E_FORMAT") == 0);
    ASSERT(strcmp(mor_status_name(MOR_OK), "MOR_OK") == 0);
    ASSERT(strcmp(mor_status_name(-999), "MOR_E_UNKNOWN") == 0);
    ASSERT(strcmp(mor_status_str(MOR_E_CONTEXT_FULL), "context window is full") == 0);
    for (int st = MOR_STATUS_MIN; st <= 0; st++) ASSERT(strcmp(mor_status_name(st), "MOR_E_UNKNOWN") != 0);
    mor_log_set(count_log, &log_count, MOR_LOG_DEBUG);
    mor_log_set(NULL, NULL, 0);
    ASSERT_EQ(log_count, 0);
}

TEST_MAIN(info, batch_equals_incremental, rewind_and_reset, state_roundtrip, context_full_and_bad_tokens,
          null_and_bad_params, params_by_name, sampling, two_threads, threads_and_kernels, kv_f16, version_status_log)
