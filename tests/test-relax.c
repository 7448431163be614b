// test-relax.c: the conversion of tools/lib/relax.c (tools/mor-relax) through its C entry point,
// so that it also runs under the sanitizer and valgrind passes (tests/test_relax.py tests the
// command line, hand-built references and the training loader).
//
// Full rank must reproduce the source: the logits of 12 tokens through the public API within
// 1e-4 of the logit scale (tests/test_relax.py explains the figure; measured 1.5e-6). Rank 0 must
// not. Bad inputs are refused with their status and a message naming the problem, and leave no
// output file.
#include "harness.h"

#include "mor.h"
#include "relax.h"
#include "support/randmodel.h"
#include "support/session.h"

#include <sys/stat.h>
#include <unistd.h>

#define N_TOK 12

static const char *tmp_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "/tmp/mor-test-relax-%d-%s", (int)getpid(), name);
    return buf;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

// Logits after each of N_TOK tokens (ids below 256), stepped one at a time: out[N_TOK][n_vocab].
static int run_logits(const char *path, float **out, int32_t *n_vocab) {
    char err[256];
    mor_model *m;
    if (mor_model_load(path, NULL, &m, err, sizeof err)) {
        printf("# %s\n", err);
        return -1;
    }
    mor_session *s = test_session(m, 64, 8, 0);
    *n_vocab = (int32_t)mor_model_get_int(m, MOR_INFO_N_VOCAB);  // also without a vocabulary
    *out = s ? malloc((size_t)N_TOK * (size_t)*n_vocab * sizeof **out) : NULL;
    int rc = s && *out ? 0 : -1;
    for (int i = 0; i < N_TOK && !rc; i++) {
        int32_t t = (int32_t)((1 + 37 * i) % (*n_vocab < 256 ? *n_vocab : 256));
        const float *lg;
        if (mor_session_step(s, &t, 1) || !(lg = mor_session_logits(s, -1))) rc = -1;
        else memcpy(*out + (size_t)i * (size_t)*n_vocab, lg, (size_t)*n_vocab * sizeof **out);
    }
    mor_session_free(s);
    mor_model_free(m);
    return rc;
}

// max |a - b| / max |a| over the logits of two models.
static double logit_diff(const char *a, const char *b) {
    float *la = NULL, *lb = NULL;
    int32_t va, vb;
    double d = 1e30;
    if (!run_logits(a, &la, &va) && !run_logits(b, &lb, &vb) && va == vb) {
        double scale = 0, mx = 0;
        for (size_t i = 0; i < (size_t)N_TOK * (size_t)va; i++) {
            scale = fmax(scale, fabs(la[i]));
            mx = fmax(mx, fabs((double)la[i] - lb[i]));
        }
        d = mx / scale;
    }
    free(la), free(lb);
    return d;
}

TEST(full_rank_reproduces_stories260k) {
    char src[512], out[256], err[512];
    test_path(src, sizeof src, "stories260K.gguf");
    tmp_path(out, sizeof out, "stories.gguf");
    static const int cases[][3] = {{MOR__RELAX_MIDDLE_CYCLE, 3, MOR__RELAX_STEPWISE},
                                   {MOR__RELAX_MIDDLE_CYCLE, 3, MOR__RELAX_AVERAGE},
                                   {MOR__RELAX_CYCLE, 5, MOR__RELAX_AVERAGE},
                                   {MOR__RELAX_SEQUENCE, 5, MOR__RELAX_LOWER}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        mor__relax_opts o;
        mor__relax_opts_init(&o);
        o.sharing = cases[k][0], o.n_rec = cases[k][1], o.init = cases[k][2], o.rank = MOR__RELAX_FULL_RANK;
        mor__relax_stats st;
        ASSERT_OK(mor__relax_file(src, out, &o, &st, err, sizeof err));
        ASSERT_EQ(st.L, 5);
        ASSERT(st.rope_permuted);
        ASSERT_EQ(st.rank[1], 32);  // attn_k: min(in 64, out 32)
        double d = logit_diff(src, out);
        if (!(d < 1e-4)) TEST__FAIL("case %zu: logits differ by %g of the scale", k, d);
    }
    // Rank 0 is not the vanilla model.
    mor__relax_opts o;
    mor__relax_opts_init(&o);
    o.n_rec = 3;
    ASSERT_OK(mor__relax_file(src, out, &o, NULL, err, sizeof err));
    ASSERT_LT(0.05, logit_diff(src, out));
    unlink(out);
}

TEST(full_rank_random_f32_and_q8) {
    char src[256], q8[256], out[256], err[512];
    tmp_path(src, sizeof src, "rand.gguf");
    tmp_path(q8, sizeof q8, "rand-q8.gguf");
    tmp_path(out, sizeof out, "rand-out.gguf");
    const randmodel_shape *sh = randmodel_find("tiny");
    ASSERT_OK(randmodel_write(sh, MOR__DT_F32, 0, NULL, src, err, sizeof err));
    ASSERT_OK(randmodel_write(sh, MOR__DT_Q8_0, 0, NULL, q8, err, sizeof err));
    mor__relax_opts o;
    mor__relax_opts_init(&o);
    o.n_rec = 2, o.sharing = MOR__RELAX_CYCLE, o.init = MOR__RELAX_AVERAGE, o.rank = MOR__RELAX_FULL_RANK;
    mor__relax_stats st;
    ASSERT_OK(mor__relax_file(src, out, &o, &st, err, sizeof err));
    ASSERT_EQ(st.type, MOR__DT_F32);
    ASSERT_EQ(st.n_lora, 28);  // 4 unrolled layers x 7 projections
    ASSERT_LT(logit_diff(src, out), 1e-4);
    // A Q8_0 source: dequantized for the arithmetic; auto gives F16 matrices, and the Q8_0 model
    // quantizes its activations too, hence the looser bound.
    o.sharing = MOR__RELAX_MIDDLE_CYCLE;
    ASSERT_OK(mor__relax_file(q8, out, &o, &st, err, sizeof err));
    ASSERT_EQ(st.type, MOR__DT_F16);
    ASSERT_LT(logit_diff(q8, out), 3e-2);
    unlink(src), unlink(q8), unlink(out);
}

TEST(refusals) {
    char out[256], part[300], src[512], err[512];
    tmp_path(out, sizeof out, "refused.gguf");
    snprintf(part, sizeof part, "%s.part", out);
    static const struct {
        const char *file;
        int n_rec, sharing, status;
        const char *msg;
    } cases[] = {
        {"qwen2.gguf", 2, MOR__RELAX_CYCLE, MOR_E_UNSUPPORTED, "biases"},
        {"gemma2.gguf", 2, MOR__RELAX_CYCLE, MOR_E_UNSUPPORTED, "architecture gemma2"},
        {"llama-rope-freqs.gguf", 2, MOR__RELAX_CYCLE, MOR_E_UNSUPPORTED, "rope_freqs.weight"},
        {"cycle-lora.gguf", 2, MOR__RELAX_CYCLE, MOR_E_UNSUPPORTED,
         "already recursive (mor.recursion.count = 3)"},
        {"stories260K.gguf", 2, MOR__RELAX_MIDDLE_CYCLE, MOR_E_INVALID,
         "5 layers do not split into 2 recursions"},
        {"stories260K.gguf", 4, MOR__RELAX_CYCLE, MOR_E_INVALID, "cycle: 5; sequence: 5; middle_cycle: 3"},
        {"stories260K.bin", 3, MOR__RELAX_MIDDLE_CYCLE, MOR_E_FORMAT, "not a GGUF file"},
        {"missing.gguf", 3, MOR__RELAX_MIDDLE_CYCLE, MOR_E_IO, "missing.gguf"},
        {"stories260K.gguf", 1, MOR__RELAX_MIDDLE_CYCLE, MOR_E_INVALID, "bad options: N_r 1"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        mor__relax_opts o;
        mor__relax_opts_init(&o);
        o.n_rec = cases[k].n_rec, o.sharing = cases[k].sharing;
        err[0] = 0;
        ASSERT_STATUS(
            mor__relax_file(test_path(src, sizeof src, cases[k].file), out, &o, NULL, err, sizeof err),
            cases[k].status);
        ASSERT_STR_CONTAINS(err, cases[k].msg);
        ASSERT(!exists(out) && !exists(part));
    }
    mor__relax_opts o;
    mor__relax_opts_init(&o);
    o.n_rec = 3;
    test_path(src, sizeof src, "stories260K.gguf");
    ASSERT_STATUS(mor__relax_file(src, src, &o, NULL, err, sizeof err), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(err, "is the input");
    ASSERT_EQ(mor__relax_roles_parse("q,v,ffn_down"), 1 | 4 | 64);
    ASSERT_EQ(mor__relax_roles_parse("q,,v"), -1);
    ASSERT_EQ(mor__relax_roles_parse("q,"), -1);
    ASSERT_EQ(mor__relax_roles_parse("qk"), -1);
    ASSERT_EQ(mor__relax_roles_parse("all"), MOR__RELAX_ALL_ROLES);
}

TEST_MAIN(full_rank_reproduces_stories260k, full_rank_random_f32_and_q8, refusals)
