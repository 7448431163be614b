// test-load.c: model loading: the unrolled → stored layer maps of the four sharing strategies,
// shared weights referenced once, parameter counts, load sources (file, mmap or not, memory
// borrowed or copied), and every model-level bad input with its status and message: tensors
// the kernels cannot read in place, a token list that disagrees with the embedding, metadata
// strings with a NUL inside, and files crafted to make lookups quadratic.
#include "harness.h"
#include "mor.h"

#include "gguf-write.h"
#include "kernels.h"
#include "model.h"

#include <fcntl.h>
#include <math.h>
#include <unistd.h>

// A tiny model description for the builder below.
typedef struct {
    const char *arch;         // "mor" or "llama"
    const char *sharing;      // mor only
    int         n_layer, n_rec, d, n_head, n_head_kv, ff, vocab;
    int         lora;         // add LoRA on attn_q of every middle layer
    int         skip_tensor;  // omit this tensor index (-1: none)
    const char *bad_shape;    // tensor name written with a wrong shape
    const char *q4k;          // tensor name written as Q4_K
    const char *extra;        // unexpected tensor name
    const char *router;       // "expert" / "token" / NULL
    int         omit_key;     // 1: omit mor.recursion.count
    uint32_t    align;        // general.alignment to write (0: none, the default 32)
    int         pad;          // length of an extra string key, to move the data section
    const char *nul_key;      // string key whose value gets "\0junk" appended
    int         n_tokens;     // > 0: a SentencePiece vocabulary of this many tokens
    int         nul_tokens;   // 1: two of those tokens hold a NUL byte ("\0", "a\0b")
    uint32_t    quant;        // a quantized type: every matrix whose row length allows it, random blocks
    int         quant_f32;    // 1: those matrices written as F32 instead, the blocks' values (to_f32)
    const char *quant_wide;   // this matrix in `quant` too, whatever its row length
    int         relax;        // RELAX_* bits: relaxations of the middle layers (DoRA needs lora)
    const float *merged;      // RELAX_DORA: write blk.1.rec.r.attn_v.weight = merged + r*kv*d instead of
                              //   its LoRA pair and magnitudes (their random values still drawn)
    float       enc_value;    // RELAX_ENC: every entry this value (0: random)
    int         gate_zero;    // RELAX_ADAPT: gates 0
    float       dora_nan;     // RELAX_DORA: this magnitude in row 0 of recursion 0 (0: random)
    const char *relax_skip;   // do not write the relaxation tensors whose names start with this
} spec;

enum { RELAX_DORA = 1, RELAX_ENC = 2, RELAX_ADAPT = 4 };
#define ADAPT_LEN 3

static spec base_spec(void) {
    spec s = {"mor", "middle_cycle", 8, 3, 8, 2, 1, 16, 16, 0, -1, NULL, NULL, NULL, NULL, 0, 0, 0, NULL, 0, 0,
              0,     0,              NULL, 0,  NULL, 0, 0, 0, NULL};
    return s;
}

static const char *roles[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};

static int n_stored(const spec *s) {
    if (strcmp(s->arch, "mor")) return s->n_layer;
    int mid = strstr(s->sharing, "middle") != NULL;
    return (s->n_layer - 2 * mid) / s->n_rec + 2 * mid;
}

static int tensor_idx;
static uint64_t rng_state;

// A string key; the key named by s->nul_key gets "\0junk" after its value.
static void put_str(mor__gguf_writer *w, const spec *s, const char *key, const char *v) {
    char buf[128];
    size_t n = strlen(v);
    memcpy(buf, v, n + 1);
    if (s->nul_key && !strcmp(key, s->nul_key)) {
        memcpy(buf + n, "\0junk", 5);
        n += 5;
    }
    mor__gguf_w_str_n(w, key, buf, n);
}

// tokenizer.ggml.*: "<unk>", "<s>", "</s>", then "t3", "t4"... (or "\0" and "a\0b" as 3 and 4).
static void put_vocab(mor__gguf_writer *w, const spec *s) {
    const char **toks = calloc((size_t)s->n_tokens, sizeof *toks);
    uint32_t *lens = calloc((size_t)s->n_tokens, sizeof *lens);
    char (*names)[16] = calloc((size_t)s->n_tokens, sizeof *names);
    static const char *const specials[3] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < s->n_tokens; i++) {
        if (i < 3) snprintf(names[i], sizeof names[i], "%s", specials[i]);
        else snprintf(names[i], sizeof names[i], "t%d", i);
        toks[i] = names[i];
        lens[i] = (uint32_t)strlen(names[i]);
    }
    if (s->nul_tokens && s->n_tokens > 4) {
        toks[3] = "\0", lens[3] = 1;
        toks[4] = "a\0b", lens[4] = 3;
    }
    put_str(w, s, "tokenizer.ggml.model", "llama");
    if (s->nul_key && !strcmp(s->nul_key, "tokenizer.ggml.pre")) put_str(w, s, "tokenizer.ggml.pre", "default");
    mor__gguf_w_arr_str(w, "tokenizer.ggml.tokens", toks, lens, (uint64_t)s->n_tokens);
    free(toks);
    free(lens);
    free(names);
}

// nb random blocks of a quantized type (any byte pattern is a valid block) with their IEEE-half
// scales set to give weights of up to about +-0.3: d (and m or dmin) at the type's offsets,
// scaled by the largest |scale * code| of the type.
static unsigned char *rand_blocks(uint32_t dt, uint64_t nb) {
    uint64_t bw = (uint64_t)mor__dtype_block(dt), bs = (uint64_t)mor__dtype_row_bytes(dt, (int64_t)bw);
    unsigned char *q = malloc(nb * bs);
    int od = 0, om = -1;  // offsets of d and of m / dmin
    float top = 0;        // the largest |scale * code|
    switch (dt) {
    case MOR__DT_Q4_1: om = 2, top = 15; break;
    case MOR__DT_Q5_0: top = 16; break;
    case MOR__DT_Q5_1: om = 2, top = 31; break;
    case MOR__DT_IQ4_NL: top = 127; break;
    case MOR__DT_Q2_K: od = 80, om = 82, top = 45; break;
    case MOR__DT_Q3_K: od = 108, top = 124; break;
    case MOR__DT_Q4_K: om = 2, top = 945; break;
    case MOR__DT_Q5_K: om = 2, top = 1953; break;
    default: od = 208, top = 4064; break;  // Q6_K
    }
    float mag = 0.3f / top, mmag = bw == 256 ? 0.5f * mag : 0.15f;
    for (uint64_t b = 0; b < nb; b++) {
        unsigned char *p = q + b * bs;
        for (uint64_t i = 0; i < bs; i++) p[i] = (unsigned char)(test_rand(&rng_state) >> 40);
        uint16_t hd = mor__f32_to_f16(mag * test_randf(&rng_state)),
                 hm = mor__f32_to_f16(mmag * test_randf(&rng_state));
        memcpy(p + od, &hd, 2);
        if (om >= 0) memcpy(p + om, &hm, 2);
    }
    return q;
}

// A relaxation tensor: values v[i] = base + amp * uniform, written unless its name starts with
// s->relax_skip.
static void add_relax(mor__gguf_writer *w, const spec *s, const char *name, uint64_t cols, uint64_t rows, float base,
                      float amp, int write) {
    uint64_t n = cols * rows, dims[2] = {cols, rows};
    float *data = malloc(n * sizeof(float));
    for (uint64_t i = 0; i < n; i++) data[i] = base + amp * test_randf(&rng_state);
    if (write && !(s->relax_skip && !strncmp(name, s->relax_skip, strlen(s->relax_skip))))
        mor__gguf_w_tensor(w, name, MOR__DT_F32, rows == 1 ? 1 : 2, dims, data);
    free(data);
}

static int add_tensor(mor__gguf_writer *w, const spec *s, const char *name, uint64_t cols, uint64_t rows) {
    if (tensor_idx++ == s->skip_tensor) return 0;
    if (s->bad_shape && !strcmp(name, s->bad_shape)) cols += 1;
    uint64_t n = cols * rows;
    float *data = malloc(n * sizeof(float));
    for (uint64_t i = 0; i < n; i++) data[i] = 0.2f * test_randf(&rng_state);
    uint64_t dims[2] = {cols, rows};
    int st;
    int wide = s->quant_wide && !strcmp(name, s->quant_wide);
    if (s->q4k && !strcmp(name, s->q4k) && cols % 32 == 0) {  // right shape, Q8_1 blocks (type 9)
        uint64_t bytes = mor__dtype_size(9, n);
        unsigned char *q = calloc(1, bytes);
        st = mor__gguf_w_raw_tensor(w, name, strlen(name), 9, 2, dims, q, bytes, MOR__GGUF_W_AUTO);
        free(q);
    } else if (s->quant && rows > 1 && (cols % (uint64_t)mor__dtype_block(s->quant) == 0 || wide)) {
        uint64_t bw = (uint64_t)mor__dtype_block(s->quant), nb = (n + bw - 1) / bw;
        uint64_t bs = (uint64_t)mor__dtype_row_bytes(s->quant, (int64_t)bw);
        unsigned char *q = rand_blocks(s->quant, nb);
        if (s->quant_f32) {
            mor__kernels_ref()->to_f32[s->quant](q, data, (int64_t)n);
            st = mor__gguf_w_tensor(w, name, MOR__DT_F32, 2, dims, data);
        } else {
            st = mor__gguf_w_raw_tensor(w, name, strlen(name), s->quant, 2, dims, q, nb * bs,
                                        MOR__GGUF_W_AUTO);
        }
        free(q);
    } else if (s->q4k && !strcmp(name, s->q4k)) {
        uint64_t d2[2] = {256, 1};
        st = mor__gguf_w_raw_tensor(w, name, strlen(name), 12, 2, d2, data, 144, MOR__GGUF_W_AUTO);
    } else {
        st = mor__gguf_w_tensor(w, name, MOR__DT_F32, rows == 1 ? 1 : 2, dims, data);
    }
    free(data);
    return st;
}

// Builds the GGUF image of spec s (caller frees).
static void *build(const spec *s, uint64_t *size) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    char key[128], name[128];
    const char *a = s->arch;
    tensor_idx = 0;
    rng_state = 42;
    put_str(w, s, "general.architecture", a);
    put_str(w, s, "general.name", "test model");
#define K(suffix) (snprintf(key, sizeof key, "%s.%s", a, suffix), key)
    if (!strcmp(a, "mor")) mor__gguf_w_u32(w, "mor.format_version", 1);
    mor__gguf_w_u32(w, K("context_length"), 64);
    mor__gguf_w_u32(w, K("embedding_length"), (uint32_t)s->d);
    mor__gguf_w_u32(w, K("feed_forward_length"), (uint32_t)s->ff);
    mor__gguf_w_u32(w, K("block_count"), (uint32_t)s->n_layer);
    mor__gguf_w_u32(w, K("attention.head_count"), (uint32_t)s->n_head);
    mor__gguf_w_u32(w, K("attention.head_count_kv"), (uint32_t)s->n_head_kv);
    if (!strcmp(a, "mor")) {
        if (!s->omit_key) mor__gguf_w_u32(w, "mor.recursion.count", (uint32_t)s->n_rec);
        put_str(w, s, "mor.recursion.sharing", s->sharing);
        if (s->lora) mor__gguf_w_f32(w, "mor.lora.scale", 2.0f);
        if (s->router) {
            put_str(w, s, "mor.router.type", s->router);
            put_str(w, s, "mor.router.arch", "linear");
            put_str(w, s, "mor.router.func", !strcmp(s->router, "expert") ? "sigmoid" : "softmax");
            mor__gguf_w_f32(w, "mor.router.alpha", !strcmp(s->router, "expert") ? 0.1f : 1.0f);
        }
    }
#undef K
    if (s->align) mor__gguf_w_u32(w, "general.alignment", s->align);
    if (s->pad) {
        char pad[64] = "";
        memset(pad, 'p', (size_t)s->pad);
        mor__gguf_w_str_n(w, "general.pad", pad, (uint64_t)s->pad);
    }
    if (s->n_tokens) put_vocab(w, s);
    uint64_t d = (uint64_t)s->d, hd = d / (uint64_t)s->n_head, kv = hd * (uint64_t)s->n_head_kv, ff = (uint64_t)s->ff;
    add_tensor(w, s, "token_embd.weight", d, (uint64_t)s->vocab);
    add_tensor(w, s, "output_norm.weight", d, 1);
    for (int i = 0; i < n_stored(s); i++) {
        uint64_t shapes[7][2] = {{d, d}, {d, kv}, {d, kv}, {d, d}, {d, ff}, {d, ff}, {ff, d}};
        for (int r = 0; r < 7; r++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", i, roles[r]);
            add_tensor(w, s, name, shapes[r][0], shapes[r][1]);
        }
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", i);
        add_tensor(w, s, name, d, 1);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", i);
        add_tensor(w, s, name, d, 1);
    }
    if (s->lora) {  // on attn_q of stored layer 1 at every recursion; lora == 2: only lora_a
        for (int r = 0; r < s->n_rec; r++) {
            snprintf(name, sizeof name, "blk.1.rec.%d.attn_q.lora_a", r);
            add_tensor(w, s, name, d, 2);
            if (s->lora == 2) continue;
            snprintf(name, sizeof name, "blk.1.rec.%d.attn_q.lora_b", r);
            add_tensor(w, s, name, 2, d);
        }
    }
    if (s->relax & RELAX_DORA)  // LoRA and DoRA on attn_v of stored layer 1 at every recursion
        for (int r = 0; r < s->n_rec; r++) {
            snprintf(name, sizeof name, "blk.1.rec.%d.attn_v.lora_a", r);
            add_relax(w, s, name, d, 2, 0, 0.3f, !s->merged);
            snprintf(name, sizeof name, "blk.1.rec.%d.attn_v.lora_b", r);
            add_relax(w, s, name, 2, kv, 0, 0.3f, !s->merged);
            snprintf(name, sizeof name, "blk.1.rec.%d.attn_v.dora_m", r);
            if (s->merged) {
                add_relax(w, s, name, kv, 1, 0.35f, 0.2f, 0);
                snprintf(name, sizeof name, "blk.1.rec.%d.attn_v.weight", r);
                uint64_t dims[2] = {d, kv};
                mor__gguf_w_tensor(w, name, MOR__DT_F32, 2, dims, s->merged + (size_t)r * kv * d);
            } else if (s->dora_nan && r == 0) {
                float mv[64];
                for (uint64_t i = 0; i < kv; i++) mv[i] = 0.35f + 0.2f * test_randf(&rng_state);
                mv[0] = s->dora_nan;
                uint64_t dims[1] = {kv};
                mor__gguf_w_tensor(w, name, MOR__DT_F32, 1, dims, mv);
            } else {
                add_relax(w, s, name, kv, 1, 0.35f, 0.2f, 1);
            }
        }
    if (s->relax & RELAX_ENC)  // the last layer of each recursion block (stored layer 2 of middle_cycle, B = 2)
        for (int r = 0; r < s->n_rec; r++) {
            snprintf(name, sizeof name, "blk.2.rec.%d.rec_enc", r);
            add_relax(w, s, name, d, 1, s->enc_value ? s->enc_value : 1.0f, s->enc_value ? 0 : 0.3f, 1);
        }
    if (s->relax & RELAX_ADAPT)  // every unrolled layer of middle_cycle: (0, 0), (1..2, 0..N_r-1), (3, 0)
        for (int i = 0; i < n_stored(s); i++)
            for (int r = 0; r < (i == 0 || i == n_stored(s) - 1 ? 1 : s->n_rec); r++) {
                snprintf(name, sizeof name, "blk.%d.rec.%d.adapt_prompt", i, r);
                add_relax(w, s, name, d, ADAPT_LEN, 0, 1.0f, 1);
                snprintf(name, sizeof name, "blk.%d.rec.%d.adapt_gate", i, r);
                add_relax(w, s, name, 1, 1, s->gate_zero ? 0 : 0.6f, s->gate_zero ? 0 : 0.3f, 1);
            }
    if (s->router && !strcmp(s->router, "token")) add_tensor(w, s, "router.weight", d, (uint64_t)s->n_rec);
    if (s->router && !strcmp(s->router, "expert"))
        for (int r = 0; r < s->n_rec; r++) {
            snprintf(name, sizeof name, "router.%d.weight", r);
            add_tensor(w, s, name, d, 1);
        }
    if (s->extra) add_tensor(w, s, s->extra, d, 1);
    void *img = mor__gguf_writer_finish(w, size);
    mor__gguf_writer_free(w);
    return img;
}

// Loads spec s from memory; returns the status and leaves the message in err.
static int try_load(const spec *s, char *err, size_t n, mor_model **out) {
    uint64_t size;
    void *img = build(s, &size);
    if (!img) return -1000;
    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = MOR_MODEL_COPY;
    mor_model *m = NULL;
    int st = mor_model_load_memory(img, size, &p, &m, err, n);
    free(img);
    if (out) *out = m;
    else mor_model_free(m);
    return st;
}

static void check_map(const char *sharing, int L, int R, const int *stored, const int *rec) {
    spec s = base_spec();
    s.sharing = sharing;
    s.n_layer = L;
    s.n_rec = R;
    char err[256];
    mor_model *m = NULL;
    int st = try_load(&s, err, sizeof err, &m);
    if (st) printf("# %s\n", err);
    if (st || !m) {
        test__failed = 1;
        return;
    }
    for (int l = 0; l < L; l++) {
        if (m->layers[l].stored != stored[l] || m->layers[l].rec != rec[l]) {
            printf("# %s L=%d R=%d layer %d: stored %d rec %d, expected %d %d\n", sharing, L, R, l,
                   m->layers[l].stored, m->layers[l].rec, stored[l], rec[l]);
            test__failed = 1;
        }
        // Shared weights: the same memory for every layer of the same stored layer.
        for (int j = 0; j < l; j++)
            if ((m->layers[j].stored == m->layers[l].stored) !=
                (m->layers[j].w[MOR__ROLE_GATE].data == m->layers[l].w[MOR__ROLE_GATE].data))
                test__failed = 1;
    }
    mor_model_free(m);
}

TEST(sharing_maps) {
    // docs/FORMAT.md §3.2, written out by hand.
    int cyc_s[] = {0, 1, 0, 1, 0, 1}, cyc_r[] = {0, 0, 1, 1, 2, 2};
    check_map("cycle", 6, 3, cyc_s, cyc_r);
    int seq_s[] = {0, 0, 0, 1, 1, 1}, seq_r[] = {0, 1, 2, 0, 1, 2};
    check_map("sequence", 6, 3, seq_s, seq_r);
    int mc_s[] = {0, 1, 2, 1, 2, 1, 2, 3}, mc_r[] = {0, 0, 0, 1, 1, 2, 2, 0};
    check_map("middle_cycle", 8, 3, mc_s, mc_r);
    int ms_s[] = {0, 1, 1, 1, 2, 2, 2, 3}, ms_r[] = {0, 0, 1, 2, 0, 1, 2, 0};
    check_map("middle_sequence", 8, 3, ms_s, ms_r);
}

TEST(counts) {
    spec s = base_spec();  // middle_cycle, L=8, N_r=3: B=2, 4 stored layers
    char err[256];
    mor_model *m = NULL;
    ASSERT_OK(try_load(&s, err, sizeof err, &m));
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_STORED_LAYER), 4);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_BLOCK_SIZE), 2);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_SHARING), MOR_SHARING_MIDDLE_CYCLE);
    ASSERT(strcmp(mor_model_get_str(m, MOR_INFO_SHARING_NAME), "middle_cycle") == 0);
    int64_t d = 8, kv = 4, ff = 16, V = 16;
    int64_t layer = d * d * 2 + d * kv * 2 + 3 * d * ff + 2 * d;
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_PARAMS), V * d + d + 4 * layer);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_PARAMS_UNROLLED), V * d + d + 8 * layer);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_ROPE_TYPE), 1);
    mor_model_free(m);
    s.lora = 1;
    ASSERT_OK(try_load(&s, err, sizeof err, &m));
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_LORA_RANK), 2);
    ASSERT_NEAR(mor_model_get_float(m, MOR_INFO_LORA_SCALE), 2.0, 0);
    // LoRA counts once per unrolled middle layer of stored layer 1 (3 recursions).
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_PARAMS_UNROLLED), V * d + d + 8 * layer + 3 * (2 * d + d * 2));
    mor_model_free(m);
}

TEST(sources) {
    spec s = base_spec();
    uint64_t size;
    void *img = build(&s, &size);
    ASSERT(img);
    char path[] = "/tmp/mor-test-load-XXXXXX", err[256];
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    ASSERT_EQ(write(fd, img, size), (long long)size);
    close(fd);
    mor_model *a = NULL, *b = NULL, *c = NULL;
    mor_model_params p;
    mor_model_params_init(&p);
    ASSERT_OK(mor_model_load(path, NULL, &a, err, sizeof err));  // mmap
    p.flags = MOR_MODEL_NO_MMAP;
    ASSERT_OK(mor_model_load(path, &p, &b, err, sizeof err));
    ASSERT_OK(mor_model_load_memory(img, size, NULL, &c, err, sizeof err));  // borrowed
    ASSERT_EQ(mor_model_get_int(a, MOR_INFO_N_PARAMS), mor_model_get_int(b, MOR_INFO_N_PARAMS));
    ASSERT_EQ(mor_model_get_int(a, MOR_INFO_N_PARAMS), mor_model_get_int(c, MOR_INFO_N_PARAMS));
    mor_model_free(a);
    mor_model_free(b);
    mor_model_free(c);
    unlink(path);
    free(img);
}

#define EXPECT_LOAD(spec_, status, needle)                                                         \
    do {                                                                                           \
        char err_[512] = "";                                                                       \
        int st_ = try_load(&(spec_), err_, sizeof err_, NULL);                                     \
        if (st_ != (status) || !strstr(err_, needle))                                              \
            TEST__FAIL("expected %s with \"%s\", got %s: \"%s\"", mor_status_name(status), needle, \
                       mor_status_name(st_), err_);                                                \
    } while (0)

TEST(bad_models) {
    spec s = base_spec();
    s.arch = "gpt9";
    s.sharing = NULL;
    EXPECT_LOAD(s, MOR_E_UNSUPPORTED, "unknown architecture 'gpt9'");
    s = base_spec();
    s.skip_tensor = 3;  // blk.0.attn_k.weight
    EXPECT_LOAD(s, MOR_E_FORMAT, "missing tensor 'blk.0.attn_k.weight'");
    s = base_spec();
    s.skip_tensor = 0;
    EXPECT_LOAD(s, MOR_E_FORMAT, "missing tensor 'token_embd.weight'");
    s = base_spec();
    s.bad_shape = "blk.2.ffn_down.weight";
    EXPECT_LOAD(s, MOR_E_FORMAT, "tensor 'blk.2.ffn_down.weight' has shape [17, 8], expected [16, 8]");
    s = base_spec();
    s.bad_shape = "output_norm.weight";
    EXPECT_LOAD(s, MOR_E_FORMAT, "output_norm.weight");
    s = base_spec();
    s.q4k = "blk.1.attn_q.weight";
    EXPECT_LOAD(s, MOR_E_FORMAT, "blk.1.attn_q.weight");  // Q4_K of the wrong shape
    s = base_spec();
    s.d = 32;
    s.ff = 32;
    s.q4k = "blk.2.ffn_up.weight";  // a well-formed Q8_1 tensor: valid GGUF, not computed
    EXPECT_LOAD(s, MOR_E_UNSUPPORTED, "tensor 'blk.2.ffn_up.weight' has type Q8_1");
    s = base_spec();
    s.omit_key = 1;
    EXPECT_LOAD(s, MOR_E_FORMAT, "missing required key 'mor.recursion.count'");
    s = base_spec();
    s.sharing = "spiral";
    EXPECT_LOAD(s, MOR_E_FORMAT, "mor.recursion.sharing is 'spiral'");
    s = base_spec();
    s.n_layer = 7;  // 5 middle layers into 3 recursions
    EXPECT_LOAD(s, MOR_E_FORMAT, "cannot be split into 3 recursions");
    s = base_spec();
    s.extra = "blk.0.rec.0.attn_q.bias";
    EXPECT_LOAD(s, MOR_E_FORMAT, "unexpected tensor 'blk.0.rec.0.attn_q.bias'");
    s = base_spec();
    s.lora = 2;
    EXPECT_LOAD(s, MOR_E_FORMAT, "must come in pairs");
    s = base_spec();
    s.n_head = 3;
    EXPECT_LOAD(s, MOR_E_FORMAT, "not a multiple of the head count 3");
    s = base_spec();
    s.n_head_kv = 2;
    s.n_head = 2;
    s.n_layer = 5000;
    EXPECT_LOAD(s, MOR_E_FORMAT, "block_count = 5000");
    s = base_spec();
    s.router = "expert";
    s.skip_tensor = 2 + 4 * 9 + 1;  // router.1.weight
    EXPECT_LOAD(s, MOR_E_FORMAT, "missing tensor 'router.1.weight'");
    s = base_spec();
    s.router = "token";
    s.sharing = "middle_sequence";
    EXPECT_LOAD(s, MOR_E_UNSUPPORTED, "a router needs cycle or middle_cycle");
    // Routers that are well-formed load.
    s = base_spec();
    s.router = "expert";
    char err[256];
    mor_model *m = NULL;
    ASSERT_OK(try_load(&s, err, sizeof err, &m));
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_ROUTER), MOR_ROUTER_EXPERT);
    ASSERT_NEAR(mor_model_get_float(m, MOR_INFO_ROUTER_ALPHA), 0.1, 1e-7);
    mor_model_free(m);
}

TEST(bad_files) {
    char err[256];
    mor_model *m = (mor_model *)1;
    ASSERT_STATUS(mor_model_load("/nonexistent/model.gguf", NULL, &m, err, sizeof err), MOR_E_IO);
    ASSERT(m == NULL);
    ASSERT_STR_CONTAINS(err, "/nonexistent/model.gguf");
    ASSERT_STATUS(mor_model_load("/tmp", NULL, &m, err, sizeof err), MOR_E_IO);
    char path[] = "/tmp/mor-test-empty-XXXXXX";
    int fd = mkstemp(path);
    ASSERT(fd >= 0);
    close(fd);
    ASSERT_STATUS(mor_model_load(path, NULL, &m, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "empty");
    fd = open(path, O_WRONLY | O_TRUNC);
    ASSERT_EQ(write(fd, "GGUF\x03\0\0\0", 8), 8);
    close(fd);
    ASSERT_STATUS(mor_model_load(path, NULL, &m, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "truncated");
    fd = open(path, O_WRONLY | O_TRUNC);
    ASSERT_EQ(write(fd, "GGML\x03\0\0\0", 8), 8);
    close(fd);
    ASSERT_STATUS(mor_model_load(path, NULL, &m, err, sizeof err), MOR_E_FORMAT);
    ASSERT_STR_CONTAINS(err, "bad magic");
    unlink(path);
    // Every prefix of a valid model fails cleanly (no crash, no leak under the sanitizers).
    spec s = base_spec();
    uint64_t size;
    void *img = build(&s, &size);
    for (uint64_t n = 0; n < size; n += 1 + n / 16) {
        int st = mor_model_load_memory(img, n, NULL, &m, err, sizeof err);
        ASSERT(st == MOR_E_FORMAT || st == MOR_E_INVALID);
        ASSERT(m == NULL);
    }
    free(img);
}

TEST(vocab_only) {
    char path[512], err[256];
    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = MOR_MODEL_VOCAB_ONLY;
    mor_model *m = NULL;
    int st = mor_model_load(test_path(path, sizeof path, "stories260K.gguf"), &p, &m, err, sizeof err);
    if (st == MOR_E_FORMAT && strstr(err, "no tokenizer")) {  // built without the tokenizer module
        printf("# vocab-only needs the tokenizer module\n");
        return;
    }
    ASSERT_OK(st);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_VOCAB_ONLY), 1);
    mor_session *s = NULL;
    ASSERT_STATUS(mor_session_create(m, NULL, &s, err, sizeof err), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(err, "vocab-only");
    mor_model_free(m);
}


// ---- alignment (docs/FORMAT.md §1) ---------------------------------------------------------------

// Where the data section of spec s starts in its image (-1 on a parse error).
static int64_t data_start(const spec *s) {
    uint64_t size;
    void *img = build(s, &size);
    mor__gguf g;
    int64_t at = mor__gguf_parse(&g, img, size, NULL, 0) ? -1 : (int64_t)g.data_offset;
    mor__gguf_free(&g);
    free(img);
    return at;
}

// s with the padding key sized so that the data section starts at `residue` modulo 4.
static spec with_data_at(spec s, int residue) {
    for (s.pad = 1; s.pad <= 4; s.pad++)
        if (data_start(&s) % 4 == residue) return s;
    s.pad = -1;
    return s;
}

// The last-token logits of tokens {1, 2, 3} on model m (V floats into out).
static int run_logits(mor_model *m, float *out, int V) {
    mor_session *se = NULL;
    char err[256];
    int st = mor_session_create(m, NULL, &se, err, sizeof err);
    if (st) return st;
    int32_t toks[3] = {1, 2, 3};
    st = mor_session_step(se, toks, 3);
    const float *l = st ? NULL : mor_session_logits(se, -1);
    if (l) memcpy(out, l, (size_t)V * sizeof *out);
    mor_session_free(se);
    return st ? st : l ? MOR_OK : MOR_E_INTERNAL;
}

// Runs the reference product (plain C: its F32 reads are float loads) over every layer weight
// of m, as the forward pass reads them: in place. Under UBSan a misaligned tensor aborts here.
static int ref_read_weights(const mor_model *m) {
    float x[64], y[64], row[64];
    for (int i = 0; i < 64; i++) x[i] = 1.0f;
    for (int32_t l = 0; l < m->hp.n_layer; l++)
        for (int r = 0; r < MOR__N_PROJ; r++) {
            const mor__mat *w = &m->layers[l].w[r];
            if (w->cols > 64 || w->rows > 64) return MOR_E_INTERNAL;
            mor__kernels_ref()->matmul[w->type](w->data, w->cols, 0, w->rows, x, 1,
                                                                 w->cols, y, w->rows, row);
        }
    return MOR_OK;
}

// GGUF allows general.alignment 1 and 2, which can leave an F32 tensor at an address that is
// not a multiple of 4; the kernels read F32 weights in place, so such a file is refused with
// the tensor named. The same alignments are fine where every tensor lands aligned, and those
// files compute the same logits as the default layout (run under UBSan: no misaligned load).
TEST(alignment) {
    spec s = base_spec();
    char err[512];
    mor_model *m = NULL;
    float ref[16], got[16];
    ASSERT_OK(try_load(&s, err, sizeof err, &m));
    ASSERT_OK(run_logits(m, ref, 16));
    mor_model_free(m);
    static const struct { uint32_t align; int residue; int ok; } cases[] = {
        {1, 1, 0}, {1, 3, 0}, {1, 2, 0}, {2, 2, 0}, {1, 0, 1}, {2, 0, 1}, {4, 0, 1}, {8, 0, 1},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        spec a = base_spec();
        a.align = cases[k].align;
        a = with_data_at(a, cases[k].residue);
        ASSERT(a.pad > 0);
        err[0] = 0;
        int st = try_load(&a, err, sizeof err, &m);
        if (!cases[k].ok) {
            if (st != MOR_E_UNSUPPORTED || !strstr(err, "tensor 'token_embd.weight' (F32)") ||
                !strstr(err, "not 4-byte aligned"))
                TEST__FAIL("alignment %u, data at %d mod 4: %s \"%s\"", a.align, cases[k].residue,
                           mor_status_name(st), err);
            char want[64];
            snprintf(want, sizeof want, "general.alignment is %u", a.align);
            ASSERT_STR_CONTAINS(err, want);
            ASSERT(m == NULL);
            continue;
        }
        if (st) TEST__FAIL("alignment %u, data at 0 mod 4: %s \"%s\"", a.align, mor_status_name(st), err);
        ASSERT_OK(ref_read_weights(m));
        ASSERT_OK(run_logits(m, got, 16));
        for (int i = 0; i < 16; i++) ASSERT_NEAR(got[i], ref[i], 1e-5);
        mor_model_free(m);
    }
}

// A borrowed buffer at an odd address is copied (documented at mor_model_load_memory), so a
// well-formed file loads and computes as from an aligned buffer.
TEST(misaligned_buffer) {
    spec s = base_spec();
    uint64_t size;
    void *img = build(&s, &size);
    ASSERT(img);
    for (int shift = 1; shift < 4; shift++) {
        unsigned char *raw = malloc(size + 4);
        ASSERT(raw);
        memcpy(raw + shift, img, size);
        char err[256];
        mor_model *m = NULL;
        int st = mor_model_load_memory(raw + shift, size, NULL, &m, err, sizeof err);
        if (st) TEST__FAIL("buffer at +%d: %s \"%s\"", shift, mor_status_name(st), err);
        float got[16];
        ASSERT_OK(ref_read_weights(m));
        ASSERT_OK(run_logits(m, got, 16));
        const unsigned char *w = m->tok_embd.data;
        ASSERT(w < raw || w >= raw + size + 4);  // read from the model's own copy
        ASSERT((uintptr_t)w % 4 == 0);
        mor_model_free(m);
        free(raw);
    }
    free(img);
}

// ---- vocabulary and metadata strings ------------------------------------------------------------

// The token list and the embedding rows must agree: mor_model_n_vocab() (the token list) sizes
// callers' logits and validates ids, the logits have one entry per embedding row.
TEST(vocab_size_mismatch) {
    spec s = base_spec();  // 16 embedding rows, tied output head
    char err[512];
    mor_model *m = NULL;
    s.n_tokens = 16;
    int st = try_load(&s, err, sizeof err, &m);
    if (st == MOR_OK && mor_model_n_vocab(m) < 0) {  // built without the tokenizer module
        printf("# vocabulary checks need the tokenizer module\n");
        mor_model_free(m);
        return;
    }
    ASSERT_OK(st);
    ASSERT_EQ(mor_model_n_vocab(m), mor_model_get_int(m, MOR_INFO_N_VOCAB));
    mor_model_free(m);
    s.n_tokens = 12;
    EXPECT_LOAD(s, MOR_E_FORMAT, "tokenizer.ggml.tokens has 12 tokens but token_embd.weight and the output head have 16 rows");
    s.n_tokens = 20;
    EXPECT_LOAD(s, MOR_E_FORMAT, "tokenizer.ggml.tokens has 20 tokens but token_embd.weight and the output head have 16 rows");
    // A vocabulary-only load has no embedding to compare with.
    s.n_tokens = 12;
    uint64_t size;
    void *img = build(&s, &size);
    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = MOR_MODEL_VOCAB_ONLY;
    ASSERT_OK(mor_model_load_memory(img, size, &p, &m, err, sizeof err));
    ASSERT_EQ(mor_model_n_vocab(m), 12);
    mor_model_free(m);
    free(img);
}

// Every string the loader uses as a C string is refused, naming the key, when it holds a NUL:
// "cycle\0junk" must not load as "cycle".
TEST(metadata_string_with_nul) {
    static const struct { const char *key; const char *router; int tokens; } cases[] = {
        {"general.architecture", NULL, 0}, {"general.name", NULL, 0},
        {"mor.recursion.sharing", NULL, 0}, {"mor.router.type", "expert", 0},
        {"mor.router.arch", "expert", 0}, {"mor.router.func", "token", 0},
        {"tokenizer.ggml.model", NULL, 16}, {"tokenizer.ggml.pre", NULL, 16},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        spec s = base_spec();
        s.router = cases[k].router;
        s.n_tokens = cases[k].tokens;
        ASSERT_OK(try_load(&s, NULL, 0, NULL));  // well-formed without the NUL
        s.nul_key = cases[k].key;
        char err[512] = "";
        int st = try_load(&s, err, sizeof err, NULL);
        if (st == MOR_OK && cases[k].tokens) continue;  // no tokenizer module: the keys are unread
        char want[128];
        snprintf(want, sizeof want, "key '%s': the string value holds a NUL byte", cases[k].key);
        if (st != MOR_E_FORMAT || !strstr(err, want))
            TEST__FAIL("%s with a NUL: %s \"%s\"", cases[k].key, mor_status_name(st), err);
    }
}

// Token texts are stored with their lengths and never used as C strings: a token holding a NUL
// loads, and its piece is all of its bytes.
TEST(token_text_with_nul) {
    spec s = base_spec();
    s.n_tokens = 16;
    s.nul_tokens = 1;
    char err[256];
    mor_model *m = NULL;
    ASSERT_OK(try_load(&s, err, sizeof err, &m));
    if (mor_model_n_vocab(m) < 0) {
        mor_model_free(m);
        return;
    }
    char buf[16];
    size_t n = 0;
    ASSERT_OK(mor_token_to_piece(m, 4, buf, sizeof buf, 0, &n));
    ASSERT_EQ(n, 3);
    ASSERT(memcmp(buf, "a\0b", 3) == 0);
    ASSERT_OK(mor_token_to_piece(m, 3, buf, sizeof buf, 0, &n));
    ASSERT_EQ(n, 1);
    ASSERT_EQ(buf[0], 0);
    int32_t ids[3] = {4, 3, 4};
    ASSERT_OK(mor_detokenize(m, ids, 3, buf, sizeof buf, 0, &n));
    ASSERT_EQ(n, 7);
    ASSERT(memcmp(buf, "a\0b\0a\0b", 7) == 0);
    mor_model_free(m);
}

// ---- cost of lookups ------------------------------------------------------------------------------

// A `mor` file of L stored layers (cycle sharing, one recursion: every layer stored, d = 2)
// padded with unexpected tensors up to n in all: the loader looks up about 32 names per layer,
// then refuses the file at the first unexpected tensor.
static void *build_wide(int L, int n, uint64_t *size) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    mor__gguf_w_str(w, "general.architecture", "mor");
    mor__gguf_w_u32(w, "mor.format_version", 1);
    mor__gguf_w_u32(w, "mor.context_length", 8);
    mor__gguf_w_u32(w, "mor.embedding_length", 2);
    mor__gguf_w_u32(w, "mor.feed_forward_length", 2);
    mor__gguf_w_u32(w, "mor.block_count", (uint32_t)L);
    mor__gguf_w_u32(w, "mor.attention.head_count", 1);
    mor__gguf_w_u32(w, "mor.recursion.count", 1);
    mor__gguf_w_str(w, "mor.recursion.sharing", "cycle");
    static const float v[4] = {1, 0, 0, 1};
    uint64_t d1[1] = {2}, d2[2] = {2, 2};
    char name[64];
    int k = 0;
    mor__gguf_w_tensor(w, "token_embd.weight", MOR__DT_F32, 2, d2, v), k++;
    mor__gguf_w_tensor(w, "output_norm.weight", MOR__DT_F32, 1, d1, v), k++;
    for (int l = 0; l < L; l++) {
        for (int r = 0; r < 7; r++, k++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, roles[r]);
            mor__gguf_w_tensor(w, name, MOR__DT_F32, 2, d2, v);
        }
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
        mor__gguf_w_tensor(w, name, MOR__DT_F32, 1, d1, v), k++;
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
        mor__gguf_w_tensor(w, name, MOR__DT_F32, 1, d1, v), k++;
    }
    for (; k < n; k++) {
        snprintf(name, sizeof name, "unexpected.%d", k);
        mor__gguf_w_tensor(w, name, MOR__DT_F32, 1, d1, v);
    }
    void *img = mor__gguf_writer_finish(w, size);
    mor__gguf_writer_free(w);
    return img;
}

// Name comparisons to refuse build_wide(L, n).
static uint64_t wide_cost(int L, int n) {
    uint64_t size;
    void *img = build_wide(L, n, &size);
    if (!img) return 0;
    char err[256] = "";
    mor_model *m = NULL;
    uint64_t before = mor__gguf_name_compares();
    int st = mor_model_load_memory(img, size, NULL, &m, err, sizeof err);
    uint64_t cost = mor__gguf_name_compares() - before;
    free(img);
    mor_model_free(m);
    return st == MOR_E_FORMAT && strstr(err, "unexpected tensor 'unexpected.") ? cost : 0;
}

// The loader's work grows as n log n: a lookup per name is a binary search, not a scan of
// every tensor (which made the audit's 65,536-tensor, 4096-layer file take about 25 s to be
// refused). Counted, not timed: quadrupling the file quadruples the comparisons (times the
// log factor), where a linear scan per lookup makes them grow sixteenfold.
TEST(lookups_are_not_quadratic) {
    uint64_t small = wide_cost(64, 1024), large = wide_cost(256, 4096);
    ASSERT(small > 0);
    ASSERT(large > 0);
    printf("#   name comparisons: %llu for 1024 tensors, %llu for 4096\n", (unsigned long long)small,
           (unsigned long long)large);
    // Index build (n log2 n) plus ~32 lookups per layer of log2(n) each: well under 8 n log2 n.
    ASSERT_LE(large, 8ull * 4096 * 12);
    // n log n predicts a ratio of 4 x 12/10 = 4.8 at most, n^2 predicts 16.
    ASSERT_LE((double)large / (double)small, 6.0);
}

// The quantized types load and run: a model whose matrices (token embedding and tied output
// head included) are random blocks of each type, 256 wide, computes logits close to those of
// the same model written as F32 with the blocks' values (the difference is the activations'
// 8-bit quantization in every product). A Q4_K matrix 576 wide (not a multiple of the 256-weight
// super-block) is refused with the tensor and the type named.
TEST(quantized_types_load_and_run) {
    static const uint32_t types[] = {MOR__DT_Q4_K, MOR__DT_Q4_1, MOR__DT_Q5_0, MOR__DT_Q5_1, MOR__DT_IQ4_NL,
                                     MOR__DT_Q2_K, MOR__DT_Q3_K, MOR__DT_Q5_K, MOR__DT_Q6_K};
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        spec s = base_spec();
        s.d = 256, s.ff = 256, s.quant = types[k];
        char err[512];
        mor_model *m = NULL;
        float got[16], want[16];
        int st = try_load(&s, err, sizeof err, &m);
        if (st) TEST__FAIL("%s: %s \"%s\"", mor__dtype_name(types[k]), mor_status_name(st), err);
        ASSERT_EQ(m->tok_embd.type, types[k]);
        ASSERT_EQ(m->layers[1].w[MOR__ROLE_DOWN].type, types[k]);
        ASSERT_OK(run_logits(m, got, 16));
        mor_model_free(m);
        s.quant_f32 = 1;
        ASSERT_OK(try_load(&s, err, sizeof err, &m));
        ASSERT_EQ(m->tok_embd.type, MOR__DT_F32);
        ASSERT_OK(run_logits(m, want, 16));
        mor_model_free(m);
        double mx = 0, diff = 0;
        for (int i = 0; i < 16; i++) {
            ASSERT(isfinite(got[i]));
            mx = fmax(mx, fabs(want[i])), diff = fmax(diff, fabs((double)got[i] - want[i]));
        }
        printf("#   %-6s max |logit| %.3g, quantized vs F32 values: max diff %.3g\n",
               mor__dtype_name(types[k]), mx, diff);
        ASSERT(mx > 0);
        ASSERT(diff <= 0.05 * mx);
    }
    spec s = base_spec();
    s.d = 576, s.ff = 256, s.quant = MOR__DT_Q4_K, s.quant_wide = "blk.1.attn_q.weight";
    EXPECT_LOAD(s, MOR_E_FORMAT,
                "tensor 'blk.1.attn_q.weight': row length 576 is not a multiple of the Q4_K block");
}

// ---- relaxations: DoRA, recursion encodings, adaption prompts ----------------------------------

static spec relax_spec(int relax) {
    spec s = base_spec();
    s.lora = (relax & RELAX_DORA) != 0;
    s.relax = relax;
    return s;
}

// Tensor `name` of the loaded file as F32 values (the test writes these tensors as F32).
static const float *file_f32(const mor_model *m, const char *name) {
    const mor__gguf_tensor *t = mor__gguf_find_tensor(&m->gguf, name);
    return t && t->type == MOR__DT_F32 ? (const float *)t->data : NULL;
}

// Logits at every one of n tokens, stepped as one batch (n_batch n) or one at a time.
static int run_all(mor_model *m, int n, int one_by_one, float *out, int V) {
    mor_session_params sp;
    mor_session_params_init(&sp);
    sp.flags = MOR_SESSION_LOGITS_ALL;
    sp.n_batch = one_by_one ? 1 : n;
    mor_session *se = NULL;
    char err[256];
    int st = mor_session_create(m, &sp, &se, err, sizeof err);
    for (int i = 0; !st && i < n; i += one_by_one ? 1 : n) {
        int32_t toks[16];
        for (int j = 0; j < n; j++) toks[j] = (3 + 5 * j) % V;
        st = mor_session_step(se, toks + i, one_by_one ? 1 : n);
        for (int j = i; !st && j < i + (one_by_one ? 1 : n); j++)
            memcpy(out + (size_t)j * V, mor_session_logits(se, one_by_one ? -1 : j), (size_t)V * sizeof *out);
    }
    mor_session_free(se);
    return st;
}

static double max_diff(const float *a, const float *b, int n, double *scale) {
    double e = 0;
    for (int i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        *scale = fmax(*scale, fabs((double)b[i]));
    }
    return e;
}

// The attn_v tensors of stored layer 1 at recursion r that RELAX_DORA writes (F32).
static int dora_tensors(const mor_model *m, int r, const float **W, const float **A, const float **B,
                        const float **M) {
    char n[64];
    *W = file_f32(m, "blk.1.attn_v.weight");
    snprintf(n, sizeof n, "blk.1.rec.%d.attn_v.lora_a", r);
    *A = file_f32(m, n);
    snprintf(n, sizeof n, "blk.1.rec.%d.attn_v.lora_b", r);
    *B = file_f32(m, n);
    snprintf(n, sizeof n, "blk.1.rec.%d.attn_v.dora_m", r);
    *M = file_f32(m, n);
    return *W && *A && *B && *M;
}

// Row o of W + 2 B A (d = 8 inputs, rank 2) into v; returns its norm.
static double dora_row(const float *W, const float *A, const float *B, int o, double *v) {
    double ss = 0;
    for (int i = 0; i < 8; i++) {
        v[i] = W[o * 8 + i] + 2.0 * ((double)B[o * 2] * A[i] + (double)B[o * 2 + 1] * A[8 + i]);
        ss += v[i] * v[i];
    }
    return sqrt(ss);
}

// What the loader counts and computes: the DoRA row scales m / |W + sigma B A| and the prompt
// keys K_a = W_k P, against the file's values computed here in double.
TEST(relaxations_load) {
    spec s = relax_spec(RELAX_DORA | RELAX_ENC | RELAX_ADAPT);
    char err[512];
    mor_model *m = NULL;
    int st = try_load(&s, err, sizeof err, &m);
    if (st) TEST__FAIL("%s: %s", mor_status_name(st), err);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_DORA), 3);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_REC_ENC), 3);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_ADAPT), 8);
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_ADAPT_LEN), ADAPT_LEN);
    int64_t d = 8, kv = 4, ff = 16, V = 16;
    int64_t layer = d * d * 2 + d * kv * 2 + 3 * d * ff + 2 * d;
    ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_PARAMS_UNROLLED),
              V * d + d + 8 * layer + 3 * (2 * d + d * 2) + 3 * (2 * d + kv * 2 + kv) + 3 * d +
                  8 * (ADAPT_LEN * d + 1));
    for (int r = 0; r < 3; r++) {
        const mor__layer *ly = &m->layers[1 + 2 * r];  // stored 1 at recursion r
        ASSERT(ly->stored == 1 && ly->rec == r && ly->dora[MOR__ROLE_V] && !ly->dora[MOR__ROLE_Q]);
        const float *W, *A, *B, *M;
        ASSERT(dora_tensors(m, r, &W, &A, &B, &M));
        for (int o = 0; o < kv; o++) {
            double v[8], n = dora_row(W, A, B, o, v);
            ASSERT_NEAR(ly->dora[MOR__ROLE_V][o], M[o] / n, 1e-6 * fabs(M[o] / n));
        }
        ASSERT(m->layers[2 + 2 * r].rec_enc && !m->layers[1 + 2 * r].rec_enc);
    }
    for (int l = 0; l < 8; l++) {
        const mor__layer *ly = &m->layers[l];
        ASSERT_EQ(ly->adapt_len, ADAPT_LEN);
        char n[64];
        snprintf(n, sizeof n, "blk.%d.attn_k.weight", ly->stored);
        const float *Wk = file_f32(m, n);
        snprintf(n, sizeof n, "blk.%d.attn_v.weight", ly->stored);
        const float *Wv = file_f32(m, n);
        snprintf(n, sizeof n, "blk.%d.rec.%d.adapt_prompt", ly->stored, ly->rec);
        const float *P = file_f32(m, n);
        snprintf(n, sizeof n, "blk.%d.rec.%d.adapt_gate", ly->stored, ly->rec);
        const float *g = file_f32(m, n);
        ASSERT(Wk && Wv && P && g);
        ASSERT_NEAR(ly->adapt_gate, g[0], 0);
        const float *A = NULL, *B = NULL, *M = NULL, *W0;
        if (ly->stored == 1) ASSERT(dora_tensors(m, ly->rec, &W0, &A, &B, &M));  // V: LoRA and DoRA
        for (int j = 0; j < ADAPT_LEN; j++)
            for (int o = 0; o < kv; o++) {
                double k = 0, v = 0, row[8], sc = 1;
                for (int i = 0; i < d; i++) row[i] = Wv[o * d + i];
                if (A) sc = M[o] / dora_row(Wv, A, B, o, row);
                for (int i = 0; i < d; i++) k += (double)Wk[o * d + i] * P[j * d + i], v += sc * row[i] * P[j * d + i];
                ASSERT_NEAR(ly->adapt_k[j * kv + o], k, 1e-6);
                ASSERT_NEAR(ly->adapt_v[j * kv + o], v, 1e-6);
            }
    }
    mor_model_free(m);
}

// Even positions run every step, odd ones stop after the first.
static int32_t even_deep(void *user, const mor_route_batch *b, uint8_t *keep) {
    (void)user;
    for (int32_t i = 0; i < b->n_tokens; i++) keep[i] = b->step == 0 || b->positions[i] % 2 == 0;
    return 0;
}

// Logits of n tokens decoded one at a time with even_deep and CALM state propagation: the odd
// tokens' skipped layers get K/V from their exit state, which the even tokens then read.
static int run_propagated(mor_model *m, int n, float *out, int V) {
    mor_session *se = NULL;
    char err[256];
    int st = mor_session_create(m, NULL, &se, err, sizeof err);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.kv = MOR_KV_PROPAGATE;
    if (!st) st = mor_session_set_exit_policy(se, &ep);
    if (!st) st = mor_session_set_router_fn(se, even_deep, NULL, 0);
    for (int j = 0; !st && j < n; j++) {
        int32_t tok = (3 + 5 * j) % V, kvs = 0;
        st = mor_session_step(se, &tok, 1);
        if (!st) memcpy(out + (size_t)j * V, mor_session_logits(se, -1), (size_t)V * sizeof *out);
        if (!st) st = mor_session_token_info(se, j, NULL, NULL, &kvs);
        if (!st && kvs != (j % 2 ? MOR_KVSTAT_PROPAGATED : MOR_KVSTAT_FULL)) st = MOR_E_INTERNAL;
    }
    mor_session_free(se);
    return st;
}

// The forward pass against equivalent models: DoRA against its merged weights m * (W + sigma B A)
// / |W + sigma B A| written as per-recursion overrides (also through CALM state propagation,
// which projects K/V of skipped layers itself); encodings of 1 and gates of 0 against
// the model without them; batch and one-token decoding agree; each relaxation changes the logits.
TEST(relaxations_forward) {
    enum { N = 6, VV = 16 };
    static float a[N * VV], b[N * VV];
    char err[512];
    mor_model *m = NULL, *q = NULL;
    // DoRA == merged
    spec s = relax_spec(RELAX_DORA);
    ASSERT_OK(try_load(&s, err, sizeof err, &m));
    const int kv = 4;
    float *merged = malloc(3 * (size_t)kv * 8 * sizeof(float));
    for (int r = 0; r < 3; r++) {
        const float *W, *A, *B, *M;
        ASSERT(dora_tensors(m, r, &W, &A, &B, &M));
        for (int o = 0; o < kv; o++) {
            double v[8], n = dora_row(W, A, B, o, v);
            for (int i = 0; i < 8; i++) merged[(size_t)r * kv * 8 + o * 8 + i] = (float)(M[o] * v[i] / n);
        }
    }
    ASSERT_OK(run_all(m, N, 0, a, VV));
    spec sm = s;
    sm.merged = merged;
    ASSERT_OK(try_load(&sm, err, sizeof err, &q));
    ASSERT_EQ(mor_model_get_int(q, MOR_INFO_N_DORA), 0);
    ASSERT_OK(run_all(q, N, 0, b, VV));
    double scale = 0, e = max_diff(a, b, N * VV, &scale);
    printf("#   DoRA against merged weights: max diff %.3g, logit scale %.3g\n", e, scale);
    ASSERT(e <= 1e-5 * scale);
    // the same through state propagation, which computes the skipped layers' K/V itself
    ASSERT_OK(run_propagated(m, N, a, VV));
    ASSERT_OK(run_propagated(q, N, b, VV));
    scale = 0, e = max_diff(a, b, N * VV, &scale);
    ASSERT(e <= 1e-5 * scale);
    mor_model_free(q);
    s = relax_spec(RELAX_DORA);
    s.dora_nan = 1e-30f;  // one magnitude of (nearly) 0: that value of V is gone
    ASSERT_OK(try_load(&s, err, sizeof err, &q));
    ASSERT_OK(run_all(q, N, 0, b, VV));
    scale = 0;
    ASSERT(max_diff(a, b, N * VV, &scale) > 1e-3 * scale);  // the magnitudes matter
    mor_model_free(q);
    mor_model_free(m);
    free(merged);
    // encodings of 1 and gates of 0 change nothing; random ones change the logits
    for (int k = 0; k < 2; k++) {
        spec z = relax_spec(k ? RELAX_ADAPT : RELAX_ENC), r = z;
        z.enc_value = 1.0f;
        z.gate_zero = 1;
        ASSERT_OK(try_load(&z, err, sizeof err, &m));
        ASSERT_OK(run_all(m, N, 0, a, VV));
        mor_model_free(m);
        ASSERT_OK(try_load(&r, err, sizeof err, &m));
        ASSERT_OK(run_all(m, N, 0, b, VV));
        spec plain = base_spec();
        ASSERT_OK(try_load(&plain, err, sizeof err, &q));
        static float c[N * VV];
        ASSERT_OK(run_all(q, N, 0, c, VV));
        ASSERT(memcmp(a, c, sizeof a) == 0);
        scale = 0;
        ASSERT(max_diff(b, c, N * VV, &scale) > 1e-3 * scale);
        // one token at a time gives the batch's logits
        ASSERT_OK(run_all(m, N, 1, a, VV));
        scale = 0;
        e = max_diff(a, b, N * VV, &scale);
        ASSERT(e <= 1e-5 * scale);
        mor_model_free(m);
        mor_model_free(q);
    }
}

TEST(relaxations_refused) {
    spec s = relax_spec(RELAX_DORA);
    s.relax_skip = "blk.1.rec.0.attn_v.lora_";
    EXPECT_LOAD(s, MOR_E_FORMAT, "tensor 'blk.1.rec.0.attn_v.dora_m': a DoRA magnitude needs the LoRA pair");
    s = relax_spec(RELAX_DORA);
    s.bad_shape = s.relax_skip = s.extra = "blk.1.rec.1.attn_v.dora_m";  // a vector of d + 1
    EXPECT_LOAD(s, MOR_E_FORMAT,
                "tensor 'blk.1.rec.1.attn_v.dora_m' has 9 elements (first dim 9), expected a vector of 4");
    s = relax_spec(RELAX_DORA);
    s.dora_nan = NAN;
    EXPECT_LOAD(s, MOR_E_FORMAT, "tensor 'blk.1.rec.0.attn_v.dora_m': row 0 of W + scale * B A has norm");
    s = relax_spec(RELAX_ADAPT);
    s.relax_skip = "blk.2.rec.1.adapt_gate";
    EXPECT_LOAD(s, MOR_E_FORMAT, "adaption prompt of blk.2.rec.1: adapt_prompt and adapt_gate must come in pairs "
                "('blk.2.rec.1.adapt_gate' is missing)");
    s.relax_skip = "blk.0.rec.0.adapt_prompt";
    EXPECT_LOAD(s, MOR_E_FORMAT, "('blk.0.rec.0.adapt_prompt' is missing)");
    s.relax_skip = "blk.3.rec.0.adapt_gate";
    s.bad_shape = s.extra = "blk.3.rec.0.adapt_gate";  // d + 1 values
    EXPECT_LOAD(s, MOR_E_FORMAT,
                "tensor 'blk.3.rec.0.adapt_gate' has 9 elements (first dim 9), expected a vector of 1");
    s = relax_spec(RELAX_ENC);
    s.relax_skip = s.bad_shape = s.extra = "blk.2.rec.2.rec_enc";
    EXPECT_LOAD(s, MOR_E_FORMAT, "tensor 'blk.2.rec.2.rec_enc' has 9 elements");
    // names that are no tensor of this layout stay refused
    s = relax_spec(RELAX_ENC);
    s.extra = "blk.2.rec.3.rec_enc";  // recursion 3 of 3
    EXPECT_LOAD(s, MOR_E_FORMAT, "unexpected tensor 'blk.2.rec.3.rec_enc'");
    s.extra = "blk.1.rec.0.attn_q.dora_x";
    EXPECT_LOAD(s, MOR_E_FORMAT, "unexpected tensor 'blk.1.rec.0.attn_q.dora_x'");
    // combinations with routers that the training code leaves undefined
    s = relax_spec(RELAX_ENC);
    s.router = "expert";
    EXPECT_LOAD(s, MOR_E_FORMAT, "recursion encodings (rec_enc) with an expert-choice router are not defined");
    s = relax_spec(RELAX_ADAPT);
    s.router = "token";
    EXPECT_LOAD(s, MOR_E_FORMAT, "adaption prompts (adapt_prompt) with a token-choice router are not defined");
    s.router = "expert";
    EXPECT_LOAD(s, MOR_E_FORMAT, "adaption prompts (adapt_prompt) with an expert-choice router are not defined");
    // defined ones load: encodings under token-choice, DoRA under either router
    char err[512];
    mor_model *m = NULL;
    s = relax_spec(RELAX_ENC);
    s.router = "token";
    ASSERT_OK(try_load(&s, err, sizeof err, &m));
    mor_model_free(m);
    s = relax_spec(RELAX_DORA);
    s.router = "expert";
    ASSERT_OK(try_load(&s, err, sizeof err, &m));
    mor_model_free(m);
}

// With quantized matrices: the DoRA norms and prompt keys come from the dequantized rows, so a
// model of Q4_K / Q5_0 blocks computes logits close to its F32 twin of the blocks' values.
TEST(relaxations_quantized) {
    static const uint32_t types[] = {MOR__DT_Q4_K, MOR__DT_Q5_0};
    for (size_t k = 0; k < sizeof types / sizeof *types; k++) {
        spec s = relax_spec(RELAX_DORA | RELAX_ENC | RELAX_ADAPT);
        s.d = 256, s.ff = 256, s.quant = types[k];
        char err[512];
        mor_model *m = NULL;
        float got[16], want[16];
        int st = try_load(&s, err, sizeof err, &m);
        if (st) TEST__FAIL("%s: %s \"%s\"", mor__dtype_name(types[k]), mor_status_name(st), err);
        ASSERT_EQ(m->layers[1].w[MOR__ROLE_K].type, types[k]);
        ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_DORA), 3);
        ASSERT_OK(run_logits(m, got, 16));
        mor_model_free(m);
        s.quant_f32 = 1;
        ASSERT_OK(try_load(&s, err, sizeof err, &m));
        ASSERT_OK(run_logits(m, want, 16));
        mor_model_free(m);
        double mx = 0, diff = 0;
        for (int i = 0; i < 16; i++) {
            ASSERT(isfinite(got[i]));
            mx = fmax(mx, fabs(want[i])), diff = fmax(diff, fabs((double)got[i] - want[i]));
        }
        printf("#   %-6s with relaxations: max |logit| %.3g, quantized vs F32 values: max diff %.3g\n",
               mor__dtype_name(types[k]), mx, diff);
        ASSERT(mx > 0);
        ASSERT(diff <= 0.05 * mx);
    }
}

static const test_entry all_tests[] = {
    TEST_LIST(sharing_maps, counts, sources, bad_models, bad_files, vocab_only, alignment, misaligned_buffer,
              vocab_size_mismatch, metadata_string_with_nul, token_text_with_nul, lookups_are_not_quadratic,
              quantized_types_load_and_run)
    TEST_LIST(relaxations_load, relaxations_forward, relaxations_refused, relaxations_quantized)};
TEST_MAIN_LIST(all_tests)
