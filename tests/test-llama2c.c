// test-llama2c.c: the llama2.c converter (tools/lib/llama2c.c). Converting stories260K.bin +
// tok512.bin must give, tensor for tensor and token for token, what llama.cpp's converter wrote
// in tests/data/stories260K.gguf; checkpoint versions 1 and 2 and a separate classifier are
// checked on files synthesized from the same weights; malformed inputs must be refused with
// a message naming the problem.
#include "harness.h"

#include "gguf-write.h"
#include "gguf.h"
#include "llama2c.h"
#include "mor.h"

// ---- fixtures ----------------------------------------------------------------------------------

typedef struct {
    uint8_t *p;
    uint64_t n;
} blob;

static blob load(const char *name) {
    char path[512], err[256];
    blob b = {NULL, 0};
    void *p;
    if (mor__gguf_w_read_file(test_path(path, sizeof path, name), &p, &b.n, err, sizeof err)) {
        printf("#   %s\n", err);
        return b;
    }
    b.p = p;
    return b;
}

static char conv_err[1024];

// Converts and returns the status (image freed); the message is left in conv_err.
static int convert_status(const void *model, size_t model_n, const void *tok, size_t tok_n) {
    void *out = NULL;
    size_t n = 0;
    conv_err[0] = 0;
    int s = mor__llama2c_convert(model, model_n, tok, tok_n, &out, &n, conv_err, sizeof conv_err);
    free(out);
    return s;
}

#define EXPECT_CONVERT(model, model_n, tok, tok_n, want, sub)                                      \
    do {                                                                                          \
        int s__ = convert_status((model), (model_n), (tok), (tok_n));                             \
        if (s__ != (want))                                                                        \
            TEST__FAIL("convert returned %s, expected %s (message: %s)", mor_status_name(s__),    \
                       mor_status_name(want), conv_err);                                          \
        ASSERT_STR_CONTAINS(conv_err, (sub));                                                     \
    } while (0)

static void put_i32(uint8_t *p, int32_t v) { memcpy(p, &v, 4); }
static int32_t get_i32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

static int str_eq(mor__gguf_str a, mor__gguf_str b) {
    return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

// stories260K geometry.
enum { D = 64, HID = 172, NL = 5, NH = 8, NKV = 4, V = 512, SEQ = 512, HS = D / NH, KVD = HS * NKV };

// Float offsets of the version-0 regions (after the 7-int header).
static const uint64_t n_emb = (uint64_t)V * D, n_attn = (uint64_t)NL * D, n_wq = (uint64_t)NL * D * D,
                      n_wk = (uint64_t)NL * KVD * D, n_wo = (uint64_t)NL * D * D,
                      n_w1 = (uint64_t)NL * HID * D;

// ---- conversion of the real model --------------------------------------------------------------

// Compares every tensor and the tokenizer arrays of `got` with the reference.
static void compare_with_reference(const mor__gguf *got, const mor__gguf *ref, int *failed) {
    *failed = 1;
    ASSERT_EQ(got->n_tensors, ref->n_tensors);
    for (uint64_t i = 0; i < ref->n_tensors; i++) {
        const mor__gguf_tensor *r = &ref->tensors[i];
        const mor__gguf_tensor *t = mor__gguf_find_tensor(got, r->name);
        if (!t) TEST__FAIL("tensor %s missing", r->name);
        if (t->type != r->type || t->n_dims != r->n_dims || t->size != r->size ||
            memcmp(t->dims, r->dims, sizeof t->dims) != 0)
            TEST__FAIL("tensor %s: type/shape differ", r->name);
        if (memcmp(t->data, r->data, r->size) != 0) TEST__FAIL("tensor %s: data differ", r->name);
    }
    static const char *const arrays[3] = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                          "tokenizer.ggml.token_type"};
    for (int k = 0; k < 3; k++) {
        const mor__gguf_kv *a = mor__gguf_find_kv(got, arrays[k]), *b = mor__gguf_find_kv(ref, arrays[k]);
        ASSERT(a && b);
        ASSERT_EQ(a->type, MOR__GGUF_ARRAY);
        ASSERT_EQ(a->arr_type, b->arr_type);
        ASSERT_EQ(a->arr_n, b->arr_n);
        ASSERT_EQ(a->arr_n, V);
        if (a->arr_type == MOR__GGUF_STRING) {
            for (uint64_t i = 0; i < a->arr_n; i++)
                if (!str_eq(mor__gguf_arr_str(got, a, i), mor__gguf_arr_str(ref, b, i)))
                    TEST__FAIL("%s[%llu] differs", arrays[k], (unsigned long long)i);
        } else {
            ASSERT(memcmp(a->data, b->data, a->arr_n * 4) == 0);
        }
    }
    *failed = 0;
}

TEST(stories260K_matches_llama_cpp) {
    blob m = load("stories260K.bin"), t = load("tok512.bin"), r = load("stories260K.gguf");
    ASSERT(m.p && t.p && r.p);
    void *out;
    size_t n;
    char err[512];
    int s = mor__llama2c_convert(m.p, m.n, t.p, t.n, &out, &n, err, sizeof err);
    if (s) TEST__FAIL("convert: %s", err);
    mor__gguf got, ref;
    ASSERT_OK(mor__gguf_parse(&got, out, n, err, sizeof err));
    ASSERT_OK(mor__gguf_parse(&ref, r.p, r.n, err, sizeof err));
    int failed;
    compare_with_reference(&got, &ref, &failed);
    if (failed) return;
    // Every key of the reference, same type and value, except the context length.
    for (uint64_t i = 0; i < ref.n_kv; i++) {
        const mor__gguf_kv *b = &ref.kv[i], *a = &got.kv[i];
        ASSERT(a->key.len == b->key.len && memcmp(a->key.ptr, b->key.ptr, a->key.len) == 0);
        ASSERT_EQ(a->type, b->type);
        int is_ctx = a->key.len == 20 && memcmp(a->key.ptr, "llama.context_length", 20) == 0;
        if (a->type == MOR__GGUF_ARRAY || is_ctx) continue;  // arrays compared above
        uint64_t vn = 4;
        if (a->type == MOR__GGUF_STRING) {
            memcpy(&vn, b->data, 8);
            vn += 8;
        }
        if (memcmp(a->data, b->data, vn) != 0)
            TEST__FAIL("key %.*s differs", (int)a->key.len, a->key.ptr);
    }
    ASSERT_EQ(got.n_kv, ref.n_kv);
    uint32_t ctx;
    ASSERT_OK(mor__gguf_get_u32(&got, "llama.context_length", &ctx, err, sizeof err));
    ASSERT_EQ(ctx, SEQ);  // the checkpoint's seq_len (llama.cpp writes its default, 2048)
    mor__gguf_str sv;
    ASSERT_OK(mor__gguf_get_str(&got, "general.architecture", &sv, err, sizeof err));
    ASSERT(sv.len == 5 && memcmp(sv.ptr, "llama", 5) == 0);
    mor__gguf_free(&got);
    mor__gguf_free(&ref);
    free(out);
    free(m.p);
    free(t.p);
    free(r.p);
}

TEST(stories260K_byte_identical_with_ctx_2048) {
    blob m = load("stories260K.bin"), t = load("tok512.bin"), r = load("stories260K.gguf");
    ASSERT(m.p && t.p && r.p);
    mor__gguf_writer *w = mor__gguf_writer_create();
    ASSERT(w != NULL);
    char err[512];
    int s = mor__llama2c_build(w, m.p, m.n, t.p, t.n, 2048, err, sizeof err);
    if (s) TEST__FAIL("build: %s", err);
    uint64_t n;
    uint8_t *img = mor__gguf_writer_finish(w, &n);
    mor__gguf_writer_free(w);
    ASSERT(img != NULL);
    ASSERT_EQ(n, r.n);
    uint64_t first = n;
    for (uint64_t i = 0; i < n; i++)
        if (img[i] != r.p[i]) {
            first = i;
            break;
        }
    ASSERT_EQ(first, n);  // no differing byte
    free(img);
    free(m.p);
    free(t.p);
    free(r.p);
}

TEST(vocab_only) {
    blob t = load("tok512.bin"), r = load("stories260K.gguf");
    ASSERT(t.p && r.p);
    void *out;
    size_t n;
    char err[512];
    int s = mor__llama2c_convert(NULL, 0, t.p, t.n, &out, &n, err, sizeof err);
    if (s) TEST__FAIL("convert: %s", err);
    mor__gguf got, ref;
    ASSERT_OK(mor__gguf_parse(&got, out, n, err, sizeof err));
    ASSERT_OK(mor__gguf_parse(&ref, r.p, r.n, err, sizeof err));
    ASSERT_EQ(got.n_tensors, 0);
    ASSERT_EQ(got.n_kv, 11);
    ASSERT(mor__gguf_find_kv(&got, "llama.context_length") == NULL);
    static const char *const arrays[3] = {"tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                                          "tokenizer.ggml.token_type"};
    for (int k = 0; k < 3; k++) {
        const mor__gguf_kv *a = mor__gguf_find_kv(&got, arrays[k]), *b = mor__gguf_find_kv(&ref, arrays[k]);
        ASSERT(a && b && a->arr_n == b->arr_n && a->arr_type == b->arr_type);
        // Same serialized bytes: the reference's array runs to the next key.
        const mor__gguf_kv *bn = b + 1, *an = a + 1;
        uint64_t lb = (uint64_t)(bn->key.ptr - 8 - (const char *)b->data);
        uint64_t la = (uint64_t)(an->key.ptr - 8 - (const char *)a->data);
        ASSERT_EQ(la, lb);
        ASSERT(memcmp(a->data, b->data, la) == 0);
    }
    uint32_t u;
    ASSERT_OK(mor__gguf_get_u32(&got, "tokenizer.ggml.bos_token_id", &u, err, sizeof err));
    ASSERT_EQ(u, 1);
    ASSERT_OK(mor__gguf_get_u32(&got, "tokenizer.ggml.eos_token_id", &u, err, sizeof err));
    ASSERT_EQ(u, 2);
    // Token texts and types, spot checks.
    const mor__gguf_kv *tok = mor__gguf_find_kv(&got, "tokenizer.ggml.tokens");
    mor__gguf_str s1 = mor__gguf_arr_str(&got, tok, 1), s259 = mor__gguf_arr_str(&got, tok, 259);
    ASSERT(s1.len == 3 && memcmp(s1.ptr, "<s>", 3) == 0);
    ASSERT(s259.len == 4 && memcmp(s259.ptr, "\xe2\x96\x81t", 4) == 0);
    int32_t types[V];
    ASSERT_OK(mor__gguf_arr_i32(&got, "tokenizer.ggml.token_type", types, V, err, sizeof err));
    ASSERT(types[0] == 2 && types[1] == 3 && types[2] == 3 && types[3] == 6 && types[258] == 6 &&
           types[259] == 1 && types[511] == 1);
    mor__gguf_free(&got);
    mor__gguf_free(&ref);
    free(out);
    free(t.p);
    free(r.p);
}

// ---- other checkpoint versions -----------------------------------------------------------------

// Converts and parses; on success the caller frees *img and the parse.
static int convert_parse(const void *m, size_t mn, const void *t, size_t tn, void **img,
                         mor__gguf *g) {
    size_t n;
    conv_err[0] = 0;
    int s = mor__llama2c_convert(m, mn, t, tn, img, &n, conv_err, sizeof conv_err);
    if (s) return s;
    s = mor__gguf_parse(g, *img, n, conv_err, sizeof conv_err);
    if (s) free(*img);
    return s;
}

// Pointers to the float regions of the version-0 file.
typedef struct {
    const float *emb, *att, *wq, *wk, *wv, *wo, *ffn, *w1, *w2, *w3, *norm;
} regions;

static regions v0_regions(const uint8_t *p) {
    const float *f = (const float *)(p + 28);
    regions r;
    r.emb = f, f += n_emb;
    r.att = f, f += n_attn;
    r.wq = f, f += n_wq;
    r.wk = f, f += n_wk;
    r.wv = f, f += n_wk;
    r.wo = f, f += n_wo;
    r.ffn = f, f += n_attn;
    r.w1 = f, f += n_w1;
    r.w2 = f, f += n_w1;
    r.w3 = f, f += n_w1;
    r.norm = f;
    return r;
}

static uint8_t *append(uint8_t *dst, const void *src, uint64_t n_floats) {
    memcpy(dst, src, n_floats * 4);
    return dst + n_floats * 4;
}

// The version-1 layout of stories260K with a shared classifier flag.
static uint8_t *make_v1(const uint8_t *v0, uint64_t *n) {
    regions r = v0_regions(v0);
    uint64_t floats = n_attn * 2 + D + n_emb + n_wq + 2 * n_wk + n_wo + 3 * n_w1;
    *n = 256 + floats * 4;
    uint8_t *p = calloc(1, *n);
    if (!p) return NULL;
    put_i32(p, 0x616b3432);
    put_i32(p + 4, 1);
    memcpy(p + 8, v0, 28);
    p[36] = 1;
    uint8_t *q = p + 256;
    q = append(q, r.att, n_attn);
    q = append(q, r.ffn, n_attn);
    q = append(q, r.norm, D);
    q = append(q, r.emb, n_emb);
    q = append(q, r.wq, n_wq);
    q = append(q, r.wk, n_wk);
    q = append(q, r.wv, n_wk);
    q = append(q, r.wo, n_wo);
    q = append(q, r.w1, n_w1);
    q = append(q, r.w2, n_w1);
    append(q, r.w3, n_w1);
    return p;
}

TEST(version1_same_tensors) {
    blob m = load("stories260K.bin"), t = load("tok512.bin"), r = load("stories260K.gguf");
    ASSERT(m.p && t.p && r.p);
    uint64_t n1;
    uint8_t *v1 = make_v1(m.p, &n1);
    ASSERT(v1 != NULL);
    void *img;
    mor__gguf got, ref;
    int s = convert_parse(v1, n1, t.p, t.n, &img, &got);
    if (s) TEST__FAIL("v1: %s", conv_err);
    char err[256];
    ASSERT_OK(mor__gguf_parse(&ref, r.p, r.n, err, sizeof err));
    int failed;
    compare_with_reference(&got, &ref, &failed);
    if (failed) return;
    mor__gguf_free(&got);
    free(img);
    // Bad version-1 headers.
    v1[36] = 2;
    EXPECT_CONVERT(v1, n1, t.p, t.n, MOR_E_FORMAT, "flag");
    v1[36] = 1;
    put_i32(v1 + 4, 3);
    EXPECT_CONVERT(v1, n1, t.p, t.n, MOR_E_UNSUPPORTED, "version 3");
    put_i32(v1 + 4, 1);
    EXPECT_CONVERT(v1, 200, t.p, t.n, MOR_E_FORMAT, "truncated header");
    EXPECT_CONVERT(v1, n1 - 4, t.p, t.n, MOR_E_FORMAT, "truncated");
    put_i32(v1 + 8 + 20, -V);  // negative vocab has no meaning in version 1
    EXPECT_CONVERT(v1, n1, t.p, t.n, MOR_E_FORMAT, "vocab_size");
    mor__gguf_free(&ref);
    free(v1);
    free(m.p);
    free(t.p);
    free(r.p);
}

// Quantizes like llama2.c export.py (symmetric int8, scale = max|w| / 127 per group).
static uint8_t *put_q(uint8_t *dst, const float *w, uint64_t n, uint64_t gs, float *deq) {
    int8_t *q = (int8_t *)dst;
    uint8_t *sc = dst + n;
    for (uint64_t g = 0; g < n / gs; g++) {
        float mx = 0;
        for (uint64_t i = 0; i < gs; i++) mx = fmaxf(mx, fabsf(w[g * gs + i]));
        float scale = mx / 127.0f;
        for (uint64_t i = 0; i < gs; i++) {
            float v = scale > 0 ? roundf(w[g * gs + i] / scale) : 0;
            q[g * gs + i] = (int8_t)v;
            deq[g * gs + i] = (float)q[g * gs + i] * scale;
        }
        memcpy(sc + 4 * g, &scale, 4);
    }
    return dst + n + 4 * (n / gs);
}

TEST(version2_dequantized) {
    blob m = load("stories260K.bin"), t = load("tok512.bin");
    ASSERT(m.p && t.p);
    regions r = v0_regions(m.p);
    const uint64_t gs = 32;
    uint64_t qn = n_emb + n_wq + 2 * n_wk + n_wo + 3 * n_w1;  // quantized elements
    uint64_t n2 = 256 + (2 * n_attn + D) * 4 + qn + 4 * (qn / gs);
    uint8_t *v2 = calloc(1, n2);
    float *deq = malloc(qn * 4);
    ASSERT(v2 && deq);
    put_i32(v2, 0x616b3432);
    put_i32(v2 + 4, 2);
    memcpy(v2 + 8, m.p, 28);
    v2[36] = 1;
    put_i32(v2 + 37, (int32_t)gs);
    uint8_t *q = v2 + 256;
    q = append(q, r.att, n_attn);
    q = append(q, r.ffn, n_attn);
    q = append(q, r.norm, D);
    float *dq = deq;
    q = put_q(q, r.emb, n_emb, gs, dq), dq += n_emb;
    const float *mats[7] = {r.wq, r.wk, r.wv, r.wo, r.w1, r.w2, r.w3};
    const uint64_t per[7] = {D * D, KVD * D, KVD * D, D * D, HID * D, HID * D, HID * D};
    for (int k = 0; k < 7; k++)
        for (int l = 0; l < NL; l++) q = put_q(q, mats[k] + l * per[k], per[k], gs, dq), dq += per[k];
    ASSERT_EQ((uint64_t)(q - v2), n2);

    void *img;
    mor__gguf g;
    int s = convert_parse(v2, n2, t.p, t.n, &img, &g);
    if (s) TEST__FAIL("v2: %s", conv_err);
    const mor__gguf_tensor *te = mor__gguf_find_tensor(&g, "token_embd.weight");
    const mor__gguf_tensor *to = mor__gguf_find_tensor(&g, "output.weight");
    ASSERT(te && to && te->type == MOR__DT_F32);
    ASSERT(memcmp(te->data, deq, n_emb * 4) == 0);
    ASSERT(memcmp(to->data, deq, n_emb * 4) == 0);
    static const char *const roles[7] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                         "ffn_down", "ffn_up"};
    dq = deq + n_emb;
    for (int k = 0; k < 7; k++)
        for (int l = 0; l < NL; l++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, roles[k]);
            const mor__gguf_tensor *x = mor__gguf_find_tensor(&g, name);
            ASSERT(x && x->size == per[k] * 4);
            if (memcmp(x->data, dq, per[k] * 4) != 0) TEST__FAIL("%s differs", name);
            dq += per[k];
        }
    const mor__gguf_tensor *nrm = mor__gguf_find_tensor(&g, "blk.3.ffn_norm.weight");
    ASSERT(nrm && memcmp(nrm->data, r.ffn + 3 * D, D * 4) == 0);  // norms stay exact
    mor__gguf_free(&g);
    free(img);
    // A group size that does not divide the matrices.
    put_i32(v2 + 37, 48);
    EXPECT_CONVERT(v2, n2, t.p, t.n, MOR_E_FORMAT, "group size");
    put_i32(v2 + 37, 0);
    EXPECT_CONVERT(v2, n2, t.p, t.n, MOR_E_FORMAT, "group size");
    free(v2);
    free(deq);
    free(m.p);
    free(t.p);
}

TEST(separate_classifier) {
    blob m = load("stories260K.bin"), t = load("tok512.bin");
    ASSERT(m.p && t.p);
    uint64_t n = m.n + n_emb * 4;
    uint8_t *p = malloc(n);
    ASSERT(p != NULL);
    memcpy(p, m.p, m.n);
    put_i32(p + 20, -V);
    float *cls = malloc(n_emb * 4);
    ASSERT(cls != NULL);
    for (uint64_t i = 0; i < n_emb; i++) cls[i] = (float)i * 0.001f - 3.0f;
    memcpy(p + m.n, cls, n_emb * 4);
    void *img;
    mor__gguf g;
    int s = convert_parse(p, n, t.p, t.n, &img, &g);
    if (s) TEST__FAIL("%s", conv_err);
    const mor__gguf_tensor *to = mor__gguf_find_tensor(&g, "output.weight");
    const mor__gguf_tensor *te = mor__gguf_find_tensor(&g, "token_embd.weight");
    ASSERT(to && te && to->dims[0] == D && to->dims[1] == V);
    ASSERT(memcmp(to->data, cls, n_emb * 4) == 0);
    ASSERT(memcmp(te->data, m.p + 28, n_emb * 4) == 0);
    mor__gguf_free(&g);
    free(img);
    // The same file claiming a shared classifier is 'trailing bytes'; the original claiming a
    // separate one is truncated.
    put_i32(p + 20, V);
    EXPECT_CONVERT(p, n, t.p, t.n, MOR_E_FORMAT, "trailing");
    put_i32(p + 20, -V);
    EXPECT_CONVERT(p, m.n, t.p, t.n, MOR_E_FORMAT, "truncated");
    free(cls);
    free(p);
    free(m.p);
    free(t.p);
}

// ---- malformed inputs --------------------------------------------------------------------------

TEST(bad_checkpoint_size) {
    blob m = load("stories260K.bin"), t = load("tok512.bin");
    ASSERT(m.p && t.p);
    static const uint64_t cuts[] = {0, 1, 27};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++)
        EXPECT_CONVERT(m.p, cuts[i], t.p, t.n, MOR_E_FORMAT, "truncated header");
    static const uint64_t cuts2[] = {28, 29, 1000, 528412, 1056536, 1056539};
    for (size_t i = 0; i < sizeof cuts2 / sizeof *cuts2; i++)
        EXPECT_CONVERT(m.p, cuts2[i], t.p, t.n, MOR_E_FORMAT, "truncated");
    uint8_t *big = malloc(m.n + 4);
    ASSERT(big != NULL);
    memcpy(big, m.p, m.n);
    memset(big + m.n, 0, 4);
    EXPECT_CONVERT(big, m.n + 4, t.p, t.n, MOR_E_FORMAT, "trailing bytes");
    ASSERT_STR_CONTAINS(conv_err, "1056540");  // names the expected size
    free(big);
    free(m.p);
    free(t.p);
}

TEST(bad_checkpoint_header) {
    blob m = load("stories260K.bin"), t = load("tok512.bin");
    ASSERT(m.p && t.p);
    static const char *const names[7] = {"dim", "hidden_dim", "n_layers", "n_heads",
                                         "n_kv_heads", "vocab_size", "seq_len"};
    for (int f = 0; f < 7; f++) {
        int32_t keep = get_i32(m.p + 4 * f);
        static const int32_t bad[] = {0, -1, INT32_MIN};
        for (size_t k = 0; k < 3; k++) {
            if (f == 5 && bad[k] == -1) continue;  // negative vocab: separate classifier
            put_i32(m.p + 4 * f, bad[k]);
            EXPECT_CONVERT(m.p, m.n, t.p, t.n, MOR_E_FORMAT, names[f]);
        }
        // Large positive values must give a size mismatch, not an overflow or a crash.
        put_i32(m.p + 4 * f, INT32_MAX);
        int s = convert_status(m.p, m.n, t.p, t.n);
        ASSERT_STATUS(s, MOR_E_FORMAT);
        put_i32(m.p + 4 * f, keep);
    }
    put_i32(m.p + 12, 7);  // n_heads 7 does not divide dim 64
    EXPECT_CONVERT(m.p, m.n, t.p, t.n, MOR_E_FORMAT, "n_heads 7 does not divide dim 64");
    put_i32(m.p + 12, NH);
    put_i32(m.p + 16, 3);  // n_kv_heads 3 does not divide n_heads 8
    EXPECT_CONVERT(m.p, m.n, t.p, t.n, MOR_E_FORMAT, "n_kv_heads 3 does not divide n_heads 8");
    put_i32(m.p + 16, 16);  // more kv heads than heads
    EXPECT_CONVERT(m.p, m.n, t.p, t.n, MOR_E_FORMAT, "n_kv_heads");
    put_i32(m.p + 16, NKV);
    put_i32(m.p + 12, 64);  // head size 1
    EXPECT_CONVERT(m.p, m.n, t.p, t.n, MOR_E_FORMAT, "odd");
    put_i32(m.p + 12, NH);
    put_i32(m.p + 8, 100000);  // more layers than GGUF's tensor limit
    EXPECT_CONVERT(m.p, m.n, t.p, t.n, MOR_E_FORMAT, "n_layers");
    put_i32(m.p + 8, NL);
    put_i32(m.p + 24, SEQ + 1);  // the RoPE tables no longer fit the file size
    EXPECT_CONVERT(m.p, m.n, t.p, t.n, MOR_E_FORMAT, "seq_len=513");
    put_i32(m.p + 24, SEQ);
    ASSERT_OK(convert_status(m.p, m.n, t.p, t.n));  // restored
    free(m.p);
    free(t.p);
}

TEST(bad_tokenizer) {
    blob m = load("stories260K.bin"), t = load("tok512.bin");
    ASSERT(m.p && t.p);
    // Every prefix must fail, with and without a model.
    int bad = 0;
    for (uint64_t len = 0; len < t.n; len++) {
        uint8_t *p = malloc(len ? len : 1);
        ASSERT(p != NULL);
        memcpy(p, t.p, len);
        int s1 = convert_status(m.p, m.n, p, len);
        int s2 = convert_status(NULL, 0, p, len);
        if (s1 != MOR_E_FORMAT) bad++;
        // Without a model a prefix that ends between tokens is a valid smaller vocabulary.
        if (s2 != MOR_E_FORMAT && s2 != MOR_OK) bad++;
        free(p);
    }
    ASSERT_EQ(bad, 0);
    EXPECT_CONVERT(m.p, m.n, t.p, t.n - 1, MOR_E_FORMAT, "truncated at token 511");
    EXPECT_CONVERT(NULL, 0, t.p, t.n - 1, MOR_E_FORMAT, "truncated at token 511");
    EXPECT_CONVERT(m.p, m.n, t.p, 2, MOR_E_FORMAT, "tokenizer");
    // One token too many.
    uint8_t *x = malloc(t.n + 9);
    ASSERT(x != NULL);
    memcpy(x, t.p, t.n);
    memset(x + t.n, 0, 8);
    put_i32(x + t.n + 4, 1);
    x[t.n + 8] = '\x01';  // a text no other token has
    EXPECT_CONVERT(m.p, m.n, x, t.n + 9, MOR_E_FORMAT, "trailing");
    ASSERT_STR_CONTAINS(conv_err, "513 tokens");
    ASSERT_OK(convert_status(NULL, 0, x, t.n + 9));  // fine as a vocab of 513
    free(x);
    // Token 0 at offset 4: score, length, bytes.
    uint8_t *c = malloc(t.n);
    ASSERT(c != NULL);
    memcpy(c, t.p, t.n);
    put_i32(c + 8, -1);
    EXPECT_CONVERT(m.p, m.n, c, t.n, MOR_E_FORMAT, "length -1");
    put_i32(c + 8, 8);  // above max_token_length 7
    EXPECT_CONVERT(m.p, m.n, c, t.n, MOR_E_FORMAT, "max_token_length");
    memcpy(c, t.p, t.n);
    put_i32(c, 0);
    EXPECT_CONVERT(m.p, m.n, c, t.n, MOR_E_FORMAT, "max_token_length");
    memcpy(c, t.p, t.n);
    float nan = NAN;
    memcpy(c + 4, &nan, 4);
    EXPECT_CONVERT(m.p, m.n, c, t.n, MOR_E_FORMAT, "score");
    free(c);
    // Fewer than 3 tokens (vocab-only): unk, bos and eos are required.
    static const uint8_t two[] = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 'a', 0, 0, 0, 0, 1, 0, 0, 0, 'b'};
    EXPECT_CONVERT(NULL, 0, two, sizeof two, MOR_E_FORMAT, "at least 3");
    free(m.p);
    free(t.p);
}

TEST(bad_arguments) {
    void *out = (void *)1;
    size_t n = 1;
    char err[256];
    ASSERT_STATUS(mor__llama2c_convert(NULL, 0, NULL, 0, &out, &n, err, sizeof err), MOR_E_INVALID);
    ASSERT(out == NULL && n == 0);
    ASSERT_STATUS(mor__llama2c_convert(NULL, 10, "x", 1, &out, &n, err, sizeof err), MOR_E_INVALID);
    ASSERT_STATUS(mor__llama2c_convert(NULL, 0, "x", 1, NULL, &n, err, sizeof err), MOR_E_INVALID);
}

TEST_MAIN(stories260K_matches_llama_cpp, stories260K_byte_identical_with_ctx_2048, vocab_only,
          version1_same_tensors, version2_dequantized, separate_classifier, bad_checkpoint_size,
          bad_checkpoint_header, bad_tokenizer, bad_arguments)
