// test-arch.c: the architecture table (src/arch.c). Each architecture's choices checked by
// equivalence with a file the engine already runs: fused Q/K/V and gate/up matrices (phi3) give
// the logits of the same weights stored apart (a `mor` file with rotate-half RoPE and one
// recursion); zero Q/K/V biases (qwen2) give the same logits too, and non-zero ones do not;
// linear RoPE scaling by f equals frequency factors all f (llama). Bad files of each
// architecture are refused with a message naming the problem. The golden fixtures of each
// architecture against the PyTorch reference are in test-model.c.
#include "harness.h"
#include "mor.h"

#include "gguf-write.h"

// A tiny model: d 8, 2 heads of 4 (1 KV head), ff 16, vocab 16, 2 layers.
enum { D = 8, NH = 2, NKV = 1, HD = 4, FF = 16, NV = 16, NL = 2 };

typedef struct {
    const char *arch;      // llama, mor, qwen2, phi3, gemma2
    int         fused;     // phi3 layout (attn_qkv, gate/up ffn_up)
    int         bias;      // 0: none, 1: zero biases, 2: random biases
    float       linear;    // > 0: rope.scaling.type linear with this factor
    float       freqs;     // > 0: rope_freqs.weight, every factor this value; < 0: one factor 0
    const char *scaling;   // another rope.scaling.type
    const char *skip;      // a tensor left out
    const char *extra;     // an unexpected tensor
    int         bad_qkv;   // attn_qkv one row short
    int         no_window; // phi3: no sliding_window key
    int         head;      // gemma2: attention.key_length
} spec;

static uint64_t rng;

// Random weights, the same sequence for every file (seeded per tensor by its role), so that
// files of different layouts hold the same numbers.
static void fill(float *x, size_t n, uint64_t seed, float scale) {
    rng = seed;
    for (size_t i = 0; i < n; i++) x[i] = scale * test_randf(&rng);
}

static void tensor(mor__gguf_writer *w, const spec *s, const char *name, uint64_t cols, uint64_t rows, const float *v) {
    if (s->skip && !strcmp(name, s->skip)) return;
    uint64_t dims[2] = {cols, rows};
    mor__gguf_w_tensor(w, name, 0, rows == 1 ? 1 : 2, dims, v);
}

static void *build(const spec *s, uint64_t *size) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    char key[96], name[96];
    const char *a = s->arch;
    mor__gguf_w_str(w, "general.architecture", a);
#define K(suffix) (snprintf(key, sizeof key, "%s.%s", a, suffix), key)
    if (!strcmp(a, "mor")) {
        mor__gguf_w_u32(w, "mor.format_version", 1);
        mor__gguf_w_u32(w, "mor.recursion.count", 1);
        mor__gguf_w_str(w, "mor.recursion.sharing", "cycle");
        mor__gguf_w_str(w, "mor.rope.type", "neox");
    }
    mor__gguf_w_u32(w, K("context_length"), 64);
    mor__gguf_w_u32(w, K("embedding_length"), D);
    mor__gguf_w_u32(w, K("feed_forward_length"), FF);
    mor__gguf_w_u32(w, K("block_count"), NL);
    mor__gguf_w_u32(w, K("attention.head_count"), NH);
    mor__gguf_w_u32(w, K("attention.head_count_kv"), NKV);
    if (s->head) mor__gguf_w_u32(w, K("attention.key_length"), (uint32_t)s->head);
    if (!strcmp(a, "phi3") && !s->no_window) mor__gguf_w_u32(w, K("attention.sliding_window"), 0);
    if (s->linear > 0) {
        mor__gguf_w_str(w, K("rope.scaling.type"), "linear");
        mor__gguf_w_f32(w, K("rope.scaling.factor"), s->linear);
    }
    if (s->scaling) mor__gguf_w_str(w, K("rope.scaling.type"), s->scaling);
#undef K
    static float buf[4 * D * FF];
    fill(buf, NV * D, 1, 0.5f);
    tensor(w, s, "token_embd.weight", D, NV, buf);
    fill(buf, D, 2, 0.1f);
    for (int i = 0; i < D; i++) buf[i] += 1.0f;
    tensor(w, s, "output_norm.weight", D, 1, buf);
    if (s->freqs != 0) {
        for (int i = 0; i < HD / 2; i++) buf[i] = s->freqs > 0 ? s->freqs : (i == 1 ? 0.0f : 1.0f);
        tensor(w, s, "rope_freqs.weight", HD / 2, 1, buf);
    }
    static const char *roles[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    const uint64_t rows[7] = {NH * HD, NKV * HD, NKV * HD, D, FF, FF, D}, cols[7] = {D, D, D, NH * HD, D, D, FF};
    for (int l = 0; l < NL; l++) {
        float *qkv = buf;  // fused: Q, K, V rows, then gate, up rows after them
        for (int r = 0; r < 7; r++) {
            static float m[D * FF * 2];
            fill(m, rows[r] * cols[r], 100 + 10 * (uint64_t)l + (uint64_t)r, r == 0 || r == 1 ? 0.6f : 0.3f);
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, roles[r]);
            if (s->fused && r <= 2) {
                memcpy(qkv, m, rows[r] * cols[r] * sizeof(float));
                qkv += rows[r] * cols[r];
                if (r == 2) {
                    snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", l);
                    tensor(w, s, name, D, NH * HD + 2 * NKV * HD - (s->bad_qkv ? 1 : 0), buf);
                }
                continue;
            }
            if (s->fused && (r == 4 || r == 5)) {
                memcpy(buf + (r == 5 ? (size_t)FF * D : 0), m, (size_t)FF * D * sizeof(float));
                if (r == 5) {
                    snprintf(name, sizeof name, "blk.%d.ffn_up.weight", l);
                    tensor(w, s, name, D, 2 * FF, buf);
                }
                continue;
            }
            tensor(w, s, name, cols[r], rows[r], m);
            if (s->bias && r <= 2) {
                static float b[NH * HD];
                fill(b, rows[r], 200 + 10 * (uint64_t)l + (uint64_t)r, s->bias == 2 ? 0.5f : 0.0f);
                snprintf(name, sizeof name, "blk.%d.%s.bias", l, roles[r]);
                tensor(w, s, name, rows[r], 1, b);
            }
        }
        static float nw[D];
        fill(nw, D, 300 + (uint64_t)l, 0.1f);
        for (int i = 0; i < D; i++) nw[i] += 1.0f;
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        tensor(w, s, name, D, 1, nw);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        tensor(w, s, name, D, 1, nw);
    }
    if (s->extra) tensor(w, s, s->extra, D, 1, buf);
    void *img = mor__gguf_writer_finish(w, size);
    mor__gguf_writer_free(w);
    return img;
}

static int load(const spec *s, mor_model **m, char *err, size_t n) {
    uint64_t size;
    void *img = build(s, &size);
    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = MOR_MODEL_COPY;
    *m = NULL;
    int st = mor_model_load_memory(img, size, &p, m, err, n);
    free(img);
    return st;
}

// Logits of 12 tokens (every position) into out[12 * NV].
static int run(const spec *s, float *out) {
    char err[512];
    mor_model *m;
    if (load(s, &m, err, sizeof err) != MOR_OK) {
        printf("# %s: %s\n", s->arch, err);
        return -1;
    }
    mor_session_params sp;
    mor_session_params_init(&sp);
    sp.n_ctx = 32;
    sp.flags = MOR_SESSION_LOGITS_ALL;
    mor_session *ss = NULL;
    int st = mor_session_create(m, &sp, &ss, err, sizeof err);
    int32_t toks[12];
    for (int i = 0; i < 12; i++) toks[i] = (i * 7 + 3) % NV;
    if (!st) st = mor_session_step(ss, toks, 12);
    for (int i = 0; !st && i < 12; i++) memcpy(out + i * NV, mor_session_logits(ss, i), NV * sizeof(float));
    mor_session_free(ss);
    mor_model_free(m);
    return st;
}

static double max_diff(const float *a, const float *b, int n) {
    double e = 0;
    for (int i = 0; i < n; i++) e = fabs((double)a[i] - b[i]) > e ? fabs((double)a[i] - b[i]) : e;
    return e;
}

TEST(fused_views_equal_separate) {
    static float a[12 * NV], b[12 * NV];
    spec mor = {.arch = "mor"}, phi = {.arch = "phi3", .fused = 1};
    ASSERT_OK(run(&mor, a));
    ASSERT_OK(run(&phi, b));
    printf("# phi3 (fused) vs mor (separate): max |diff| %.3g\n", max_diff(a, b, 12 * NV));
    ASSERT_LE(max_diff(a, b, 12 * NV), 1e-5);
}

TEST(qkv_biases) {
    static float a[12 * NV], b[12 * NV], c[12 * NV];
    spec mor = {.arch = "mor"}, zero = {.arch = "qwen2", .bias = 1}, rnd = {.arch = "qwen2", .bias = 2};
    ASSERT_OK(run(&mor, a));
    ASSERT_OK(run(&zero, b));
    ASSERT_OK(run(&rnd, c));
    ASSERT_LE(max_diff(a, b, 12 * NV), 1e-5);
    printf("# qwen2 with biases vs without: max |diff| %.3g\n", max_diff(a, c, 12 * NV));
    ASSERT(max_diff(a, c, 12 * NV) > 1e-3);
}

TEST(rope_linear_equals_freqs) {
    static float a[12 * NV], b[12 * NV], c[12 * NV];
    spec lin = {.arch = "llama", .linear = 4.0f}, ff = {.arch = "llama", .freqs = 4.0f}, plain = {.arch = "llama"};
    ASSERT_OK(run(&lin, a));
    ASSERT_OK(run(&ff, b));
    ASSERT_OK(run(&plain, c));
    ASSERT_LE(max_diff(a, b, 12 * NV), 1e-6);
    ASSERT(max_diff(a, c, 12 * NV) > 1e-4);
}

#define EXPECT_LOAD(spec_, status, needle)                                                         \
    do {                                                                                           \
        char err_[512] = "";                                                                       \
        mor_model *m_;                                                                             \
        int st_ = load(&(spec_), &m_, err_, sizeof err_);                                          \
        mor_model_free(m_);                                                                        \
        if (st_ != (status) || !strstr(err_, needle))                                              \
            TEST__FAIL("expected %s with \"%s\", got %s: \"%s\"", mor_status_name(status), needle, \
                       mor_status_name(st_), err_);                                                \
    } while (0)

TEST(bad_files) {
    spec s = {.arch = "gpt9"};
    EXPECT_LOAD(s, MOR_E_UNSUPPORTED, "unknown architecture 'gpt9' (supported: llama, mor, qwen2, phi3, gemma2)");
    s = (spec){.arch = "qwen2", .bias = 1, .skip = "blk.1.attn_k.bias"};
    EXPECT_LOAD(s, MOR_E_FORMAT, "missing tensor 'blk.1.attn_k.bias'");
    s = (spec){.arch = "qwen2", .bias = 1, .extra = "blk.0.attn_output.bias"};
    EXPECT_LOAD(s, MOR_E_FORMAT, "unexpected tensor 'blk.0.attn_output.bias'");
    s = (spec){.arch = "phi3", .fused = 1, .bad_qkv = 1};
    EXPECT_LOAD(s, MOR_E_FORMAT, "tensor 'blk.0.attn_qkv.weight' has shape [8, 15], expected [8, 16]");
    s = (spec){.arch = "phi3", .fused = 1, .no_window = 1};
    EXPECT_LOAD(s, MOR_E_FORMAT, "missing required key 'phi3.attention.sliding_window'");
    s = (spec){.arch = "phi3"};  // separate matrices where the fused ones belong
    EXPECT_LOAD(s, MOR_E_FORMAT, "missing tensor 'blk.0.attn_qkv.weight'");
    s = (spec){.arch = "phi3", .fused = 1, .extra = "rope_factors_long.weight"};
    EXPECT_LOAD(s, MOR_E_UNSUPPORTED, "tensor 'rope_factors_long.weight': LongRoPE");
    s = (spec){.arch = "llama", .scaling = "yarn"};
    EXPECT_LOAD(s, MOR_E_UNSUPPORTED, "llama.rope.scaling.type is 'yarn'");
    s = (spec){.arch = "llama", .freqs = -1};
    EXPECT_LOAD(s, MOR_E_FORMAT, "rope_freqs.weight[1] = 0");
    s = (spec){.arch = "gemma2", .head = 5};
    EXPECT_LOAD(s, MOR_E_UNSUPPORTED, "gemma2.attention.key_length = 5");
    s = (spec){.arch = "gemma2"};  // Llama tensors without the post-norms
    EXPECT_LOAD(s, MOR_E_FORMAT, "missing tensor 'blk.0.post_attention_norm.weight'");
}

TEST_MAIN(fused_views_equal_separate, qkv_biases, rope_linear_equals_freqs, bad_files)
