// test-load.c: model loading: the unrolled → stored layer maps of the four sharing strategies,
// shared weights referenced once, parameter counts, load sources (file, mmap or not, memory
// borrowed or copied), and every model-level bad input with its status and message.
#include "harness.h"
#include "mor.h"

#include "gguf-write.h"
#include "model.h"

#include <fcntl.h>
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
} spec;

static spec base_spec(void) {
    spec s = {"mor", "middle_cycle", 8, 3, 8, 2, 1, 16, 16, 0, -1, NULL, NULL, NULL, NULL, 0};
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

static int add_tensor(mor__gguf_writer *w, const spec *s, const char *name, uint64_t cols, uint64_t rows) {
    if (tensor_idx++ == s->skip_tensor) return 0;
    if (s->bad_shape && !strcmp(name, s->bad_shape)) cols += 1;
    uint64_t n = cols * rows;
    float *data = malloc(n * sizeof(float));
    for (uint64_t i = 0; i < n; i++) data[i] = 0.2f * test_randf(&rng_state);
    uint64_t dims[2] = {cols, rows};
    int st;
    if (s->q4k && !strcmp(name, s->q4k) && cols % 32 == 0) {  // right shape, Q5_0 blocks (type 6)
        uint64_t bytes = mor__dtype_size(6, n);
        unsigned char *q = calloc(1, bytes);
        st = mor__gguf_w_raw_tensor(w, name, strlen(name), 6, 2, dims, q, bytes, MOR__GGUF_W_AUTO);
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
    mor__gguf_w_str(w, "general.architecture", a);
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
        mor__gguf_w_str(w, "mor.recursion.sharing", s->sharing);
        if (s->lora) mor__gguf_w_f32(w, "mor.lora.scale", 2.0f);
        if (s->router) {
            mor__gguf_w_str(w, "mor.router.type", s->router);
            mor__gguf_w_str(w, "mor.router.arch", "linear");
            mor__gguf_w_str(w, "mor.router.func", !strcmp(s->router, "expert") ? "sigmoid" : "softmax");
            mor__gguf_w_f32(w, "mor.router.alpha", !strcmp(s->router, "expert") ? 0.1f : 1.0f);
        }
    }
#undef K
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
    s.q4k = "blk.2.ffn_up.weight";  // a well-formed Q5_0 tensor: valid GGUF, not computable yet
    EXPECT_LOAD(s, MOR_E_UNSUPPORTED, "tensor 'blk.2.ffn_up.weight' has type Q5_0");
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

TEST_MAIN(sharing_maps, counts, sources, bad_models, bad_files, vocab_only)
