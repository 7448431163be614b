// test-model.c: the engine against the independent PyTorch reference. For every golden fixture
// in tests/data/*.fix (vanilla and recursive models of every sharing strategy, with and without
// LoRA, DoRA, recursion encodings (also under a token-choice router) and adaption prompts,
// per-recursion weights, both RoPE conventions, F16/BF16 weights, KV sharing, routers, the
// other GGUF architectures (llama with rope_freqs, qwen2, phi3, gemma2), and the real pretrained
// stories260K): the logits of the prompt within 1e-4 of the logit scale
// (max |logit|) in F32, the greedy continuation token for token, through a batched prefill, a
// chunked prefill and a one-token-at-a-time decode. Also: stories260K imported from its
// llama2.c checkpoint gives bit-identical logits to its GGUF form.
#include "harness.h"
#include "fixture.h"
#include "mor.h"
#include "support/session.h"

#include "llama2c.h"

#define TOL_REL 1e-4  // of the logit scale, F32 compute against a float64 reference

// Fixtures of tests/data and of the trained models in tests/data/models ("models/X.fix").
static int list_fixtures(char names[][128], int max) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s", test_data_dir());
    int n = fixture_list(dir, ".fix", "", 0, names, 0, max);
    snprintf(dir, sizeof dir, "%s/models", test_data_dir());
    return fixture_list(dir, ".fix", "models/", 0, names, n, max);
}

static mor_model *load_for(const fixture *f, const char *fix_name) {
    char path[768], err[512];
    const char *slash = strrchr(fix_name, '/');  // the model is named relative to its fixture
    snprintf(path, sizeof path, "%s/%.*s%s", test_data_dir(), slash ? (int)(slash - fix_name + 1) : 0, fix_name,
             f->model);
    mor_model *m = NULL;
    if (mor_model_load(path, NULL, &m, err, sizeof err) != MOR_OK) printf("# %s: %s\n", path, err);
    return m;
}

static mor_session *session_for(const mor_model *m, const fixture *f, int n_batch, uint32_t flags) {
    mor_session *s = test_session(m, f->n_prompt + f->n_greedy + 8, n_batch, flags);
    if (s && (f->fixed_depth || f->kv_share)) {
        mor_exit_policy ep;
        mor_exit_policy_init(&ep);
        if (f->fixed_depth) ep.policy = MOR_EXIT_FIXED, ep.depth = f->fixed_depth;
        if (f->kv_share) ep.kv = MOR_KV_SHARE;
        if (mor_session_set_exit_policy(s, &ep) != MOR_OK) printf("# policy: %s\n", mor_session_last_error(s));
    }
    return s;
}

// Max |a-b| over n values, and the scale max |b|.
static double row_err(const float *a, const float *b, int n, double *scale) {
    double e = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > e) e = d;
        if (fabs(b[i]) > *scale) *scale = fabs(b[i]);
    }
    return e;
}

static char names[256][128];

TEST(fixtures_present) {
    int n = list_fixtures(names, 256);
    printf("# %d fixtures in %s\n", n, test_data_dir());
    ASSERT_EQ(n, 37);  // 34 in tests/data, 3 in tests/data/models: a fixture that goes missing fails
}

// Prompt logits at every position, prompt stepped as one batch.
TEST(fixtures_logits) {
    int n = list_fixtures(names, 256);
    for (int k = 0; k < n; k++) {
        char path[512];
        fixture f;
        ASSERT_EQ(fixture_load(test_path(path, sizeof path, names[k]), &f), 0);
        mor_model *m = load_for(&f, names[k]);
        ASSERT(m);
        ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_VOCAB), f.n_vocab);
        mor_session *s = session_for(m, &f, 64, MOR_SESSION_LOGITS_ALL);
        ASSERT(s);
        ASSERT_OK(mor_session_step(s, f.prompt, f.n_prompt));
        double err = 0, scale = 0;
        for (int p = 0; p < f.n_pos; p++) {
            const float *l = mor_session_logits(s, p);
            ASSERT(l);
            double e = row_err(l, f.logits + (size_t)p * f.n_vocab, f.n_vocab, &scale);
            if (e > err) err = e;
        }
        printf("# %-28s logits: max abs error %.3g, logit scale %.3g (relative %.2g)\n", names[k], err, scale,
               err / scale);
        ASSERT_LE(err, TOL_REL * scale);
        mor_session_free(s);
        mor_model_free(m);
        fixture_free(&f);
    }
}

// Greedy continuation, after a prefill in chunks of 5 tokens, decoding one token at a time.
TEST(fixtures_greedy) {
    int n = list_fixtures(names, 256);
    for (int k = 0; k < n; k++) {
        char path[512];
        fixture f;
        ASSERT_EQ(fixture_load(test_path(path, sizeof path, names[k]), &f), 0);
        mor_model *m = load_for(&f, names[k]);
        ASSERT(m);
        mor_session *s = session_for(m, &f, 5, 0);
        ASSERT(s);
        ASSERT_OK(mor_session_step(s, f.prompt, f.n_prompt));
        int bad = -1;
        for (int i = 0; i < f.n_greedy; i++) {
            int32_t tok;
            ASSERT_OK(mor_session_sample(s, &tok));
            if (tok != f.greedy[i] && bad < 0) bad = i;
            if (f.n_depths > i && f.depths[i] != mor_session_depth(s, -1) && bad < 0) bad = 100000 + i;
            ASSERT_OK(mor_session_step(s, &f.greedy[i], 1));  // follow the reference either way
        }
        if (bad >= 0) printf("# %s: first mismatch at greedy step %d\n", names[k], bad % 100000);
        ASSERT_EQ(bad, -1);
        mor_session_free(s);
        mor_model_free(m);
        fixture_free(&f);
    }
}

// The last prompt position's logits when every prompt token is a separate decode step.
TEST(fixtures_decode_path) {
    int n = list_fixtures(names, 256);
    for (int k = 0; k < n; k++) {
        char path[512];
        fixture f;
        ASSERT_EQ(fixture_load(test_path(path, sizeof path, names[k]), &f), 0);
        mor_model *m = load_for(&f, names[k]);
        ASSERT(m);
        mor_session *s = session_for(m, &f, 1, 0);
        ASSERT(s);
        for (int i = 0; i < f.n_prompt; i++) ASSERT_OK(mor_session_step(s, &f.prompt[i], 1));
        double scale = 0, err = row_err(mor_session_logits(s, -1), f.logits + (size_t)(f.n_pos - 1) * f.n_vocab,
                                         f.n_vocab, &scale);
        ASSERT_LE(err, TOL_REL * scale);
        mor_session_free(s);
        mor_model_free(m);
        fixture_free(&f);
    }
}

static void *read_all(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long len = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    void *buf = malloc((size_t)len + 1);
    if (buf && fread(buf, 1, (size_t)len, fp) != (size_t)len) {
        free(buf);
        buf = NULL;
    }
    fclose(fp);
    *n = (size_t)len;
    return buf;
}

// The llama2.c checkpoint, imported in memory, gives exactly the logits of the GGUF file.
TEST(stories260K_llama2c_identical) {
    char p1[512], p2[512], p3[512], err[256];
    size_t nb, nt, ng;
    void *bin = read_all(test_path(p1, sizeof p1, "stories260K.bin"), &nb);
    void *tok = read_all(test_path(p2, sizeof p2, "tok512.bin"), &nt);
    ASSERT(bin && tok);
    void *gguf = NULL;
    ASSERT_OK(mor__llama2c_convert(bin, nb, tok, nt, &gguf, &ng, err, sizeof err));
    mor_model *a = NULL, *b = NULL;
    ASSERT_OK(mor_model_load_memory(gguf, ng, NULL, &a, err, sizeof err));
    ASSERT_OK(mor_model_load(test_path(p3, sizeof p3, "stories260K.gguf"), NULL, &b, err, sizeof err));
    mor_session_params sp;
    mor_session_params_init(&sp);
    sp.n_ctx = 256;
    mor_session *sa, *sb;
    ASSERT_OK(mor_session_create(a, &sp, &sa, err, sizeof err));
    ASSERT_OK(mor_session_create(b, &sp, &sb, err, sizeof err));
    int32_t ta = 1, tb = 1;
    for (int i = 0; i < 100; i++) {
        ASSERT_OK(mor_session_step(sa, &ta, 1));
        ASSERT_OK(mor_session_step(sb, &tb, 1));
        ASSERT(memcmp(mor_session_logits(sa, -1), mor_session_logits(sb, -1), 512 * sizeof(float)) == 0);
        ASSERT_OK(mor_session_sample(sa, &ta));
        ASSERT_OK(mor_session_sample(sb, &tb));
        ASSERT_EQ(ta, tb);
    }
    mor_session_free(sa);
    mor_session_free(sb);
    mor_model_free(a);
    mor_model_free(b);
    free(gguf);
    free(bin);
    free(tok);
}

TEST_MAIN(fixtures_present, fixtures_logits, fixtures_greedy, fixtures_decode_path, stories260K_llama2c_identical)
