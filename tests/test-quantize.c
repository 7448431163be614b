// test-quantize.c: the quantizers of tools/lib/quant.c and the file quantizer of
// tools/lib/quantize.c (tools/mor-quantize).
//
// Byte identity with llama.cpp: tests/data/quant/<TYPE>.bin hold rows quantized by its
// reference quantizers (the format is in tests/data/README.md), and tests/data/quant/tiny.sha256
// the digests of llama-quantize's outputs for tiny-f32.gguf; both must be reproduced exactly.
// The recipe is checked on synthetic files wide enough for the K types, every converted tensor
// against the encoders, and quantized mor models must load and run. Bad inputs must be refused
// with a message naming the problem, leaving no output file.
#include "harness.h"

#include "gguf-write.h"
#include "gguf.h"
#include "kernels.h"
#include "model.h"
#include "mor.h"
#include "quant.h"
#include "quantize.h"
#include "sha256.h"
#include "support/randmodel.h"

#include <sys/stat.h>
#include <unistd.h>

static const char *tmp_path(char *buf, size_t n, const char *name) {
    snprintf(buf, n, "/tmp/mor-test-quantize-%d-%s", (int)getpid(), name);
    return buf;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

// ---- encoders against the reference rows ---------------------------------------------------

// tests/data/quant/<name>.bin: "MQF1", type, rows, cols, the reference rows, the source
// values (then data for the decoder tests, not read here).
static void check_reference_rows(const char *name, uint32_t want_type, int *ok) {
    char file[64], path[512], err[256];
    *ok = 0;
    snprintf(file, sizeof file, "quant/%s.bin", name);
    void *p = NULL;
    uint64_t n = 0;
    ASSERT_OK(mor__gguf_w_read_file(test_path(path, sizeof path, file), &p, &n, err, sizeof err));
    const uint8_t *b = p;
    if (n < 16 || memcmp(b, "MQF1", 4) != 0) {
        free(p);
        TEST__FAIL("%s: not an MQF1 file", file);
    }
    uint32_t type = rd32(b + 4), rows = rd32(b + 8), cols = rd32(b + 12);
    uint64_t row_bytes = mor__dtype_size(type, cols);
    if (type != want_type || !row_bytes || 16 + rows * (row_bytes + 4ull * cols) > n) {
        free(p);
        TEST__FAIL("%s: type %u rows %u cols %u do not fit the file (%llu bytes)", file, type, rows,
                   cols, (unsigned long long)n);
    }
    const uint8_t *ref = b + 16;
    const uint8_t *src = ref + rows * row_bytes;
    float *x = malloc(cols * sizeof *x);
    uint8_t *q = malloc(row_bytes);
    for (uint32_t r = 0; r < rows; r++) {
        memcpy(x, src + 4ull * cols * r, 4ull * cols);
        ASSERT_OK(mor__quantize(type, x, q, cols));
        for (uint64_t i = 0; i < row_bytes; i++)
            if (q[i] != ref[r * row_bytes + i]) {
                printf("#   %s row %u: byte %llu (block %llu) is %02x, the reference has %02x\n", name, r,
                       (unsigned long long)i, (unsigned long long)(i / (row_bytes * (uint64_t)mor__quant_block(type) / cols)),
                       q[i], ref[r * row_bytes + i]);
                free(x);
                free(q);
                free(p);
                return;
            }
    }
    free(x);
    free(q);
    free(p);
    *ok = 1;
}

TEST(encoders_match_reference_rows) {
    static const struct {
        const char *name;
        uint32_t    type;
    } types[] = {{"Q4_0", MOR__QT_Q4_0}, {"Q4_1", MOR__QT_Q4_1}, {"Q5_0", MOR__QT_Q5_0},
                 {"Q5_1", MOR__QT_Q5_1}, {"Q8_0", MOR__QT_Q8_0}, {"Q4_K", MOR__QT_Q4_K},
                 {"Q5_K", MOR__QT_Q5_K}, {"Q6_K", MOR__QT_Q6_K}};
    int failed = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        int ok;
        check_reference_rows(types[i].name, types[i].type, &ok);
        if (test__failed) return;
        failed += !ok;
    }
    ASSERT_EQ(failed, 0);
}

// Deterministic inputs for the encoders, exactly representable (integers below 2^24 times a
// power of two), so every platform draws the same floats: super-blocks of 256 values in ten
// shapes, each at its own scale 2^-30 .. 2^9, every 50th all zero.
static void gen_superblock(uint64_t *st, long k, float x[256]) {
    int mode = (int)(k % 10), e = (int)(test_rand(st) % 40) - 30;
    for (int i = 0; i < 256; i++) {
        int32_t u = 0;
        for (int d = 0; d < 4; d++) u += (int32_t)((test_rand(st) >> 44) & 0xfffff) - 0x80000;
        float v = ldexpf((float)u, e - 20), a = fabsf(v);
        switch (mode) {
        case 1: v = a; break;                                                     // all >= 0
        case 2: v = -a; break;                                                    // all <= 0
        case 3: v = test_rand(st) % 10 ? 0.0f : v; break;                         // sparse
        case 4: v = ldexpf((float)((int)(test_rand(st) % 9) - 4), e); break;      // few levels, ties
        case 5: v = test_rand(st) % 50 ? v : v * 64.0f; break;                    // outliers
        case 6: v = i < 128 ? 0.0f : v; break;                                    // half zero
        case 7: v = ldexpf(1.0f, e); break;                                       // constant
        case 8: v = ldexpf((float)(int32_t)((test_rand(st) >> 40) & 0xffffff) - 8388608.0f, e - 23); break;  // uniform
        case 9: v = i % 16 ? ldexpf(v, -20) : v; break;                           // one large value per 16
        default: break;
        }
        x[i] = k % 50 == 49 ? 0.0f : v;
    }
}

// The encoders on 2000 generated super-rows: the sha256 of every type's output must equal that
// of ggml's quantize_row_<type>_ref on the same values (at the commit of tests/data/quant/,
// computed once with a build of its source; gcc 12, -O2, x86-64). The input digest comes first,
// so that a change of the generator is told apart from a change of an encoder.
TEST(encoders_match_reference_digests) {
    enum { N = 2000 };
    static const char *input = "8d13b0a16c52dac9280d455338fcf549717913780a15711382117b94df91e56b";
    static const struct {
        const char *name;
        uint32_t    type;
        const char *sha256;
    } want[] = {
        {"Q4_0", MOR__QT_Q4_0, "d7b862aae4f97d0694415f8ad850d5746b95d37f84fe5b99238f6cc28aa984a8"},
        {"Q4_1", MOR__QT_Q4_1, "0e27a6963631e106738b70efaea297d80f6b00ba890e80e11da63529f2bbb1a2"},
        {"Q5_0", MOR__QT_Q5_0, "c60331b8cd0c94a973826a9707607936a2cbc64988361894588a3b500eceebff"},
        {"Q5_1", MOR__QT_Q5_1, "4074bee84232493c71ebd5932663de6d1a4dc80b6b455c1aa142a751974d2c0c"},
        {"Q8_0", MOR__QT_Q8_0, "8177b1b268adb7171f92dd62dcfdcd62dc857f31dfbe48aa88d4006dab713772"},
        {"Q4_K", MOR__QT_Q4_K, "51127e2a356830adbe23f84cee7631fcbbdc87853ac96513ddd936230eb4d80c"},
        {"Q5_K", MOR__QT_Q5_K, "f5e78e36505a9cf17f178326b3ef8b8408dfc914be9f50b01ff21462b35e0264"},
        {"Q6_K", MOR__QT_Q6_K, "14b90b61da3e366836b2c6602a5805177556fa2e6f3c71e30ecceb43249dcfd1"},
    };
    float *x = malloc(sizeof(float) * 256 * N);
    uint8_t *q = malloc(300 * N);
    ASSERT(x && q);
    uint64_t st = 0x51ab1e5;
    for (long k = 0; k < N; k++) gen_superblock(&st, k, x + 256 * k);
    char hex[65];
    mor__sha256_hex(x, sizeof(float) * 256 * N, hex);
    int bad = strcmp(hex, input) != 0;
    if (bad) printf("#   the generated input changed: sha256 %s, expected %s\n", hex, input);
    for (size_t t = 0; t < sizeof want / sizeof want[0] && !bad; t++) {
        ASSERT_OK(mor__quantize(want[t].type, x, q, 256 * N));
        mor__sha256_hex(q, (size_t)mor__dtype_size(want[t].type, 256 * N), hex);
        if (strcmp(hex, want[t].sha256) != 0) {
            printf("#   %s: sha256 %s, the reference gives %s\n", want[t].name, hex, want[t].sha256);
            bad++;
        }
    }
    free(x);
    free(q);
    ASSERT_EQ(bad, 0);
}

// Blocks are independent: a row quantized in one call equals its blocks quantized one by one,
// and bad sizes are refused.
TEST(encoders_blockwise_and_arguments) {
    uint64_t seed = test_seed();
    float x[512];
    for (int i = 0; i < 512; i++) x[i] = test_randf(&seed) * (i % 7 == 0 ? 40.0f : 1.0f);
    const uint32_t types[] = {MOR__QT_Q4_0, MOR__QT_Q4_1, MOR__QT_Q5_0, MOR__QT_Q5_1,
                              MOR__QT_Q8_0, MOR__QT_Q4_K, MOR__QT_Q5_K, MOR__QT_Q6_K};
    uint8_t whole[1024], parts[1024];
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        uint32_t t = types[k];
        int blk = mor__quant_block(t);
        uint64_t bb = mor__dtype_size(t, (uint64_t)blk);
        ASSERT_OK(mor__quantize(t, x, whole, 512));
        for (int b = 0; b < 512 / blk; b++) ASSERT_OK(mor__quantize(t, x + b * blk, parts + b * bb, blk));
        ASSERT(memcmp(whole, parts, 512 / (size_t)blk * bb) == 0);
        ASSERT_EQ(mor__quantize(t, x, whole, blk + 1), -1);
    }
    ASSERT_EQ(mor__quantize(MOR__DT_F16, x, whole, 32), -1);
    ASSERT_EQ(mor__quant_block(MOR__DT_F32), 0);
    // An all-zero Q6_K block is all zero bytes, as the reference writes it.
    float z[256] = {0};
    ASSERT_OK(mor__quantize(MOR__QT_Q6_K, z, whole, 256));
    for (int i = 0; i < 210; i++) ASSERT_EQ(whole[i], 0);
}

// ---- whole files: llama-quantize's outputs ---------------------------------------------------

static char q_err[1024];

static int quantize(const char *in, const char *out, const char *type, int threads) {
    mor__qopts o = {threads, 0, NULL, NULL};
    q_err[0] = 0;
    return mor__quantize_file(in, out, type, &o, NULL, q_err, sizeof q_err);
}

static int file_sha256(const char *path, char hex[65]) {
    void *p;
    uint64_t n;
    char err[256];
    if (mor__gguf_w_read_file(path, &p, &n, err, sizeof err)) return -1;
    mor__sha256_hex(p, (size_t)n, hex);
    free(p);
    return 0;
}

// The line of tests/data/quant/tiny.sha256 for `file`: its digest into hex.
static int expected_sha256(const char *file, char hex[65]) {
    char path[512], err[256];
    void *p;
    uint64_t n;
    if (mor__gguf_w_read_file(test_path(path, sizeof path, "quant/tiny.sha256"), &p, &n, err, sizeof err)) return -1;
    int found = -1;
    for (char *line = p; line && *line;) {
        char *next = strchr(line, '\n');
        if (next) *next++ = 0;
        if (strlen(line) > 66 && strcmp(line + 66, file) == 0) {
            memcpy(hex, line, 64);
            hex[64] = 0;
            found = 0;
        }
        line = next;
    }
    free(p);
    return found;
}

TEST(llama_quantize_byte_identical) {
    char in[512], out[512], got[65], want[65];
    test_path(in, sizeof in, "quant/tiny-f32.gguf");
    ASSERT_OK(file_sha256(in, got));
    ASSERT_OK(expected_sha256("tiny-f32.gguf", want));
    if (strcmp(got, want) != 0) TEST__FAIL("the input tiny-f32.gguf changed: sha256 %s, expected %s", got, want);
    static const char *types[] = {"Q8_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"};
    int bad = 0;
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char file[64];
        snprintf(file, sizeof file, "tiny-%s.gguf", types[i]);
        tmp_path(out, sizeof out, file);
        int s = quantize(in, out, types[i], 2);
        if (s) TEST__FAIL("%s: %s", types[i], q_err);
        ASSERT_OK(file_sha256(out, got));
        ASSERT_OK(expected_sha256(file, want));
        if (strcmp(got, want) != 0) {
            printf("#   %s: sha256 %s, llama-quantize's is %s\n", types[i], got, want);
            bad++;
        }
        remove(out);
    }
    ASSERT_EQ(bad, 0);
}

// The SmolLM-135M shape (mor-randmodel smollm-135m --type f32: 538 MB, too large to keep, so
// regenerated) and llama-quantize's outputs for it (same commit, 2 threads): its ffn_down rows
// of 1536 take Q4_K and Q6_K in Q4_K_M, the others fall back. Run with MOR_TEST_LARGE=1: the
// generator holds the model in memory (540 MB) and /tmp holds up to 690 MB at once.
TEST(llama_quantize_smollm_shape) {
    if (!getenv("MOR_TEST_LARGE")) TEST_SKIP("set MOR_TEST_LARGE=1 (540 MB of memory, 690 MB in /tmp)");
    static const struct {
        const char *type, *sha256;
    } want[] = {{"Q8_0", "8ebf4271e9f0235a7992d92103e3ec6193c50837584bd67620a8264401710934"},
                {"Q4_K_M", "c446fe51b5474724eae7413c62feb18a1768539c4c24f6d382d8ac26ea4f5fa5"}};
    char in[512], out[512], hex[65], err[256];
    tmp_path(in, sizeof in, "smollm-f32.gguf");
    tmp_path(out, sizeof out, "smollm-q.gguf");
    ASSERT_OK(randmodel_write(randmodel_find("smollm-135m"), MOR__DT_F32, 0, NULL, in, err, sizeof err));
    ASSERT_OK(file_sha256(in, hex));
    if (strcmp(hex, "315c1c3a91a2f8073651f65348bd9c2a7990447188925ab8d9c57a4d567c11bf") != 0) {
        remove(in);
        TEST__FAIL("the generated input changed: sha256 %s", hex);
    }
    int bad = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (quantize(in, out, want[i].type, 2)) {
            remove(in);
            TEST__FAIL("%s: %s", want[i].type, q_err);
        }
        ASSERT_OK(file_sha256(out, hex));
        if (strcmp(hex, want[i].sha256) != 0) {
            printf("#   %s: sha256 %s, llama-quantize's is %s\n", want[i].type, hex, want[i].sha256);
            bad++;
        }
        remove(out);
    }
    remove(in);
    ASSERT_EQ(bad, 0);
}

// ---- the recipe on files wide enough for the K types ------------------------------------------

enum { W_D = 256, W_FF = 608, W_V = 320, W_L = 8 };  // ffn_down rows of 608: a fallback

static void fill(float *x, uint64_t n, uint64_t *seed, float scale) {
    for (uint64_t i = 0; i < n; i++) x[i] = test_randf(seed) * scale;
}

// Adds a tensor of `type` (F32, F16 or BF16) from random values.
static int add_tensor(mor__gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                      uint64_t d0, uint64_t d1, uint64_t *seed) {
    uint64_t n = d0 * d1, dims[2] = {d0, d1};
    float *x = malloc(n * 4);
    if (!x) return MOR_E_NOMEM;
    fill(x, n, seed, strstr(name, "norm") ? 1.0f : 0.05f);
    if (type != MOR__DT_F32) {
        uint16_t *h = (uint16_t *)(void *)x;
        for (uint64_t i = 0; i < n; i++) h[i] = type == MOR__DT_F16 ? mor__f32_to_f16(x[i]) : mor__f32_to_bf16(x[i]);
    }
    int s = mor__gguf_w_tensor(w, name, type, n_dims, dims, x);
    free(x);
    return s;
}

// A llama file of 8 layers with rows of 256 values (608 for ffn_down; 12 rows per matrix: the
// recipe looks at the columns only), a separate output matrix, a
// [256, 1] matrix (one dimension for ggml, copied) and the tensors in a shuffled order.
static int write_wide_llama(const char *path, uint32_t type) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    uint64_t seed = 7;
    int s = mor__gguf_w_str(w, "general.architecture", "llama");
    s |= mor__gguf_w_u32(w, "general.file_type", 0);  // replaced, moved to the end
    s |= mor__gguf_w_u32(w, "llama.block_count", W_L);
    s |= mor__gguf_w_u32(w, "llama.embedding_length", W_D);
    s |= mor__gguf_w_u32(w, "llama.attention.head_count", 4);
    s |= mor__gguf_w_u32(w, "llama.attention.head_count_kv", 2);
    s |= mor__gguf_w_u32(w, "split.count", 1);  // dropped
    s |= mor__gguf_w_str(w, "general.name", "wide");
    for (int l = W_L - 1; l >= 0 && !s; l--) {
        char nm[64];
        static const char *roles[] = {"ffn_up", "attn_q", "attn_v", "ffn_down", "attn_norm", "attn_k",
                                      "attn_output", "ffn_gate", "ffn_norm"};
        for (int r = 0; r < 9 && !s; r++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, roles[r]);
            uint64_t d0 = W_D, d1 = strstr(roles[r], "norm") ? 1 : 12;  // few rows: the recipe looks at columns
            if (!strcmp(roles[r], "ffn_down")) d0 = W_FF;
            s = add_tensor(w, nm, d1 == 1 ? MOR__DT_F32 : type, d1 == 1 ? 1 : 2, d0, d1, &seed);
        }
    }
    if (!s) s = add_tensor(w, "token_embd.weight", type, 2, W_D, W_V, &seed);
    if (!s) s = add_tensor(w, "output.weight", type, 2, W_D, 40, &seed);
    if (!s) s = add_tensor(w, "output_norm.weight", MOR__DT_F32, 1, W_D, 1, &seed);
    if (!s) s = add_tensor(w, "rope_scale.weight", MOR__DT_F32, 2, W_D, 1, &seed);
    char err[256];
    if (!s) s = mor__gguf_writer_save(w, path, err, sizeof err);
    mor__gguf_writer_free(w);
    return s;
}

static int more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

// The type llama-quantize gives a tensor of the wide file, restated per recipe.
static uint32_t wide_expected(const char *recipe, const char *name) {
    const int suffix = strlen(recipe) > 5;  // "Q4_K_M": a size letter after the type
    int K = recipe[3] == 'K', k4 = recipe[1] == '4', M = K && suffix && recipe[5] == 'M', S = K && suffix && recipe[5] == 'S';
    uint32_t base = !strcmp(recipe, "Q8_0") ? MOR__QT_Q8_0 : !strcmp(recipe, "Q4_0") ? MOR__QT_Q4_0
                  : !strcmp(recipe, "Q4_1") ? MOR__QT_Q4_1 : !strcmp(recipe, "Q5_0") ? MOR__QT_Q5_0
                  : !strcmp(recipe, "Q5_1") ? MOR__QT_Q5_1 : !strcmp(recipe, "Q6_K") ? MOR__QT_Q6_K
                  : k4 ? MOR__QT_Q4_K : MOR__QT_Q5_K;
    if (strstr(name, "norm") || !strcmp(name, "rope_scale.weight")) return MOR__DT_F32;
    if (!strcmp(name, "output.weight")) return base == MOR__QT_Q8_0 ? MOR__QT_Q8_0 : MOR__QT_Q6_K;
    int layer = -1;
    sscanf(name, "blk.%d.", &layer);
    uint32_t t = base;
    if (strstr(name, "attn_v")) {
        if (M && more_bits(layer, W_L)) t = MOR__QT_Q6_K;
        else if (S && k4 && layer < 4) t = MOR__QT_Q5_K;
    }
    if (strstr(name, "ffn_down")) {
        if (M && more_bits(layer, W_L)) t = MOR__QT_Q6_K;
        else if (S && k4 && layer < W_L / 8) t = MOR__QT_Q5_K;
        // rows of 608: the K types fall back
        t = t == MOR__QT_Q4_K ? MOR__QT_Q5_0 : t == MOR__QT_Q5_K ? MOR__QT_Q5_1 : t == MOR__QT_Q6_K ? MOR__QT_Q8_0 : t;
    }
    return t;
}

// Checks an output file against its input: header keys, tensor order, types from `expect`
// (NULL: not checked), and every tensor's bytes (converted ones re-quantized here from the
// input's values, copied ones equal).
static void check_output(const char *in_path, const char *out_path, const char *recipe,
                         uint32_t (*expect)(const char *, const char *), int *ok) {
    *ok = 0;
    void *ib, *ob;
    uint64_t in_n, out_n;
    char err[512];
    ASSERT_OK(mor__gguf_w_read_file(in_path, &ib, &in_n, err, sizeof err));
    ASSERT_OK(mor__gguf_w_read_file(out_path, &ob, &out_n, err, sizeof err));
    mor__gguf gi, go;
    ASSERT_OK(mor__gguf_parse(&gi, ib, in_n, err, sizeof err));
    int s = mor__gguf_parse(&go, ob, out_n, err, sizeof err);
    if (s) TEST__FAIL("output does not parse: %s", err);
    const mor__qrecipe *r = mor__qrecipe_find(recipe);
    ASSERT(r != NULL);
    // Keys: the input's in order, less file type and split keys, then the two new ones.
    ASSERT(go.n_kv >= 2);
    uint64_t k = 0;
    for (uint64_t i = 0; i < gi.n_kv; i++) {
        const mor__gguf_kv *kv = &gi.kv[i];
        if ((kv->key.len == 17 && !memcmp(kv->key.ptr, "general.file_type", 17)) ||
            (kv->key.len == 11 && !memcmp(kv->key.ptr, "split.count", 11)))
            continue;
        ASSERT(k < go.n_kv - 2);
        ASSERT(go.kv[k].key.len == kv->key.len && !memcmp(go.kv[k].key.ptr, kv->key.ptr, kv->key.len));
        k++;
    }
    ASSERT_EQ(k + 2, go.n_kv);
    ASSERT(go.kv[k].key.len == 28 && !memcmp(go.kv[k].key.ptr, "general.quantization_version", 28));
    ASSERT_EQ(rd32(go.kv[k].data), 2);
    ASSERT(go.kv[k + 1].key.len == 17 && !memcmp(go.kv[k + 1].key.ptr, "general.file_type", 17));
    ASSERT_EQ(rd32(go.kv[k + 1].data), r->ftype);
    ASSERT_EQ(go.n_tensors, gi.n_tensors);
    int prev_layer = -2;
    const char *prev = "";
    float *x = NULL;
    uint8_t *q = NULL;
    for (uint64_t i = 0; i < go.n_tensors; i++) {
        const mor__gguf_tensor *t = &go.tensors[i], *u = mor__gguf_find_tensor(&gi, t->name);
        ASSERT(u != NULL);
        int layer = -1;
        sscanf(t->name, "blk.%d.", &layer);
        ASSERT(layer > prev_layer || (layer == prev_layer && strcmp(prev, t->name) < 0));
        prev_layer = layer;
        prev = t->name;
        ASSERT_EQ(t->n_elems, u->n_elems);
        ASSERT_EQ(t->dims[0], u->dims[0]);
        uint32_t nd = 4;
        while (nd > 1 && u->dims[nd - 1] == 1) nd--;
        ASSERT_EQ(t->n_dims, nd);  // trailing dimensions of 1 are not written
        if (expect && t->type != expect(recipe, t->name))
            TEST__FAIL("%s: %s is %s, expected %s", recipe, t->name, mor__dtype_name(t->type),
                       mor__dtype_name(expect(recipe, t->name)));
        if (t->type == u->type) {
            ASSERT(memcmp(t->data, u->data, t->size) == 0);
            continue;
        }
        free(x);
        free(q);
        x = malloc(u->n_elems * 4);
        q = malloc(t->size);
        for (uint64_t e = 0; e < u->n_elems; e++) {
            const uint8_t *p = (const uint8_t *)u->data;
            uint16_t h;
            if (u->type == MOR__DT_F32) memcpy(&x[e], p + 4 * e, 4);
            else memcpy(&h, p + 2 * e, 2), x[e] = u->type == MOR__DT_F16 ? mor__f16_to_f32(h) : mor__bf16_to_f32(h);
        }
        if (t->type == MOR__DT_F16)
            for (uint64_t e = 0; e < u->n_elems; e++) {
                uint16_t h = mor__f32_to_f16(x[e]);
                memcpy(q + 2 * e, &h, 2);
            }
        else
            ASSERT_OK(mor__quantize(t->type, x, q, (int64_t)u->n_elems));
        if (memcmp(q, t->data, t->size) != 0) TEST__FAIL("%s: %s differs from its encoder", recipe, t->name);
    }
    free(x);
    free(q);
    mor__gguf_free(&gi);
    mor__gguf_free(&go);
    free(ib);
    free(ob);
    *ok = 1;
}

TEST(recipes_on_wide_llama) {
    char in[512], out[512];
    tmp_path(in, sizeof in, "wide.gguf");
    tmp_path(out, sizeof out, "wide-q.gguf");
    ASSERT_OK(write_wide_llama(in, MOR__DT_F32));
    static const char *recipes[] = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q6_K",
                                    "Q5_K_M", "Q5_K_S", "Q4_K_M", "q4_k_s"};
    for (size_t i = 0; i < sizeof recipes / sizeof recipes[0]; i++) {
        char name[16];
        snprintf(name, sizeof name, "%s", mor__qrecipe_find(recipes[i])->name);
        int s = quantize(in, out, recipes[i], 1), ok;
        if (s) TEST__FAIL("%s: %s", recipes[i], q_err);
        check_output(in, out, name, wide_expected, &ok);
        if (!ok) {
            printf("#   recipe %s\n", name);
            return;
        }
    }
    remove(in);
    remove(out);
}

static void count_progress(void *user, uint64_t done, uint64_t total, uint64_t td, uint64_t nt) {
    uint64_t *c = user;
    if (done < c[1] || done > total || td > nt) c[2] = 1;  // not monotonic or past the end
    c[0]++;
    c[1] = done;
    c[3] = done == total && td == nt;
}

TEST(threads_f16_bf16_progress) {
    char in[512], a[512], b[512], ha[65], hb[65];
    tmp_path(in, sizeof in, "wide16.gguf");
    tmp_path(a, sizeof a, "wide16-a.gguf");
    tmp_path(b, sizeof b, "wide16-b.gguf");
    const uint32_t types[] = {MOR__DT_F16, MOR__DT_BF16};
    for (int i = 0; i < 2; i++) {
        ASSERT_OK(write_wide_llama(in, types[i]));
        int ok;
        if (quantize(in, a, "Q4_K_M", 1)) TEST__FAIL("%s", q_err);
        check_output(in, a, "Q4_K_M", wide_expected, &ok);
        if (!ok) return;
        uint64_t c[4] = {0};
        mor__qopts o = {3, 1000, count_progress, c};  // pieces of 3 rows or one (608 columns)
        mor__qstats st;
        ASSERT_OK(mor__quantize_file(in, b, "Q4_K_M", &o, &st, q_err, sizeof q_err));
        ASSERT_OK(file_sha256(a, ha));
        ASSERT_OK(file_sha256(b, hb));
        ASSERT(strcmp(ha, hb) == 0);  // threads and pieces change nothing
        ASSERT(c[0] >= st.n_tensors);
        ASSERT_EQ(c[2], 0);
        ASSERT_EQ(c[3], 1);
        ASSERT_EQ(st.n_tensors, 8 * 9 + 4);
        ASSERT_EQ(st.per_type[MOR__QT_Q6_K], 1 + 4);  // output, attn_v of 4 layers
        ASSERT_EQ(st.n_fallback, 8);                  // every ffn_down
        struct stat sb;
        ASSERT_OK(stat(b, &sb));
        ASSERT_EQ(st.out_bytes, (uint64_t)sb.st_size);
    }
    remove(in);
    remove(a);
    remove(b);
}

// ---- mor files ----------------------------------------------------------------------------------

// The plan for a mor file with overrides, LoRA and the other relaxations (kept in their type,
// like LoRA: small, per-recursion corrections), routers and an exit head (not loadable: the plan
// only).
TEST(recipe_on_mor_names) {
    mor__gguf_writer *w = mor__gguf_writer_create();
    uint64_t seed = 3;
    int s = mor__gguf_w_str(w, "general.architecture", "mor");
    static const char *names[] = {"blk.0.attn_v.weight", "blk.1.attn_v.weight", "blk.1.rec.1.attn_v.weight",
                                  "blk.2.attn_v.weight", "blk.3.attn_v.weight", "blk.1.ffn_down.weight",
                                  "blk.1.rec.2.attn_q.lora_a", "blk.1.rec.2.attn_q.lora_b",
                                  "router.0.weight", "router.fc1.weight", "exit.0.output.weight",
                                  "token_embd.weight", "blk.1.rec.1.attn_norm.weight",
                                  "blk.1.rec.2.attn_q.dora_m", "blk.2.rec.1.rec_enc", "blk.1.rec.0.adapt_prompt",
                                  "blk.1.rec.0.adapt_gate"};
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !s; i++) {
        uint64_t d1 = strstr(names[i], "norm") || !strcmp(names[i], "router.0.weight") || strstr(names[i], "dora_m") ||
                      strstr(names[i], "rec_enc") || strstr(names[i], "adapt_gate") ? 1 : 64;
        s = add_tensor(w, names[i], MOR__DT_F32, d1 == 1 ? 1 : 2, 256, d1, &seed);
    }
    uint64_t size;
    void *img = mor__gguf_writer_finish(w, &size);
    mor__gguf_writer_free(w);
    ASSERT(!s && img);
    mor__gguf g;
    char err[256];
    ASSERT_OK(mor__gguf_parse(&g, img, size, err, sizeof err));
    mor__qplan p;
    ASSERT_OK(mor__qplan_make(&p, &g, mor__qrecipe_find("Q4_K_M"), err, sizeof err));
    // 4 stored layers: more bits for 3 (i >= 7n/8) and 2 ((i - n/8) % 3 == 2); the override of
    // a stored layer follows it; no output matrix, so the embedding is the output.
    static const struct {
        const char *name;
        uint32_t    type;
    } want[] = {{"blk.0.attn_v.weight", MOR__QT_Q4_K}, {"blk.1.attn_v.weight", MOR__QT_Q4_K},
                {"blk.1.rec.1.attn_v.weight", MOR__QT_Q4_K}, {"blk.2.attn_v.weight", MOR__QT_Q6_K},
                {"blk.3.attn_v.weight", MOR__QT_Q6_K}, {"blk.1.ffn_down.weight", MOR__QT_Q4_K},
                {"blk.1.rec.2.attn_q.lora_a", MOR__DT_F32}, {"blk.1.rec.2.attn_q.lora_b", MOR__DT_F32},
                {"router.0.weight", MOR__DT_F32}, {"router.fc1.weight", MOR__DT_F32},
                {"exit.0.output.weight", MOR__QT_Q6_K}, {"token_embd.weight", MOR__QT_Q6_K},
                {"blk.1.rec.1.attn_norm.weight", MOR__DT_F32}, {"blk.1.rec.2.attn_q.dora_m", MOR__DT_F32},
                {"blk.2.rec.1.rec_enc", MOR__DT_F32}, {"blk.1.rec.0.adapt_prompt", MOR__DT_F32},
                {"blk.1.rec.0.adapt_gate", MOR__DT_F32}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const mor__qtensor *q = NULL;
        for (uint64_t k = 0; k < p.n; k++)
            if (!strcmp(g.tensors[p.t[k].in].name, want[i].name)) q = &p.t[k];
        ASSERT(q != NULL);
        if (q->type != want[i].type)
            TEST__FAIL("%s is %s, expected %s", want[i].name, mor__dtype_name(q->type), mor__dtype_name(want[i].type));
    }
    ASSERT(!strcmp(g.tensors[p.t[0].in].name, "exit.0.output.weight"));  // layer -1 first, by name
    mor__qplan_free(&p);
    mor__gguf_free(&g);
    free(img);
}

// Quantized trained mor models (F16 matrices, a router) load and run; Q8_0 keeps the greedy
// tokens of the F16 model over a short continuation.
TEST(quantized_mor_models_run) {
    char in[512], out[512], err[256];
    test_path(in, sizeof in, "models/mor-expert.gguf");
    if (!file_exists(in)) TEST_SKIP("models/mor-expert.gguf not present");
    tmp_path(out, sizeof out, "expert-q.gguf");
    static const char *recipes[] = {"Q8_0", "Q4_0"};
    int32_t ref_tokens[8];
    for (int v = -1; v < 2; v++) {
        if (v >= 0 && quantize(in, out, recipes[v], 2)) TEST__FAIL("%s: %s", recipes[v], q_err);
        mor_model *m;
        mor_session *sess;
        ASSERT_OK(mor_model_load(v < 0 ? in : out, NULL, &m, err, sizeof err));
        ASSERT_OK(mor_session_create(m, NULL, &sess, err, sizeof err));
        int32_t tok = 1, toks[8];
        for (int i = 0; i < 8; i++) {
            ASSERT_OK(mor_session_step(sess, &tok, 1));
            ASSERT_OK(mor_session_sample(sess, &tok));
            toks[i] = tok;
        }
        if (v < 0) memcpy(ref_tokens, toks, sizeof toks);
        if (v == 0) ASSERT(memcmp(ref_tokens, toks, sizeof toks) == 0);
        mor_session_free(sess);
        mor_model_free(m);
    }
    remove(out);
}

// The relaxation fixtures (F16 matrices 32 wide) in Q8_0: the DoRA norms and prompt keys are
// computed from the quantized rows; the logits stay close to the F16 model's, and the relaxation
// tensors keep their type.
TEST(quantized_relaxation_models_run) {
    static const char *files[] = {"middle_cycle-dora.gguf", "cycle-adapt.gguf", "middle_cycle-recenc.gguf"};
    char in[512], out[512], err[256];
    tmp_path(out, sizeof out, "relax-q.gguf");
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        test_path(in, sizeof in, files[f]);
        if (quantize(in, out, "Q8_0", 1)) TEST__FAIL("%s: %s", files[f], q_err);
        float want[128], got[128];
        for (int v = 0; v < 2; v++) {
            mor_model *m;
            mor_session *sess;
            ASSERT_OK(mor_model_load(v ? out : in, NULL, &m, err, sizeof err));
            ASSERT_EQ(mor_model_get_int(m, MOR_INFO_N_VOCAB), 128);
            ASSERT_EQ(m->layers[1].w[MOR__ROLE_Q].type, v ? MOR__DT_Q8_0 : MOR__DT_F16);
            ASSERT(mor_model_get_int(m, MOR_INFO_N_DORA) + mor_model_get_int(m, MOR_INFO_N_ADAPT) +
                   mor_model_get_int(m, MOR_INFO_N_REC_ENC) > 0);
            ASSERT_OK(mor_session_create(m, NULL, &sess, err, sizeof err));
            static const int32_t toks[6] = {93, 111, 58, 100, 8, 29};
            ASSERT_OK(mor_session_step(sess, toks, 6));
            memcpy(v ? got : want, mor_session_logits(sess, -1), sizeof want);
            mor_session_free(sess);
            mor_model_free(m);
        }
        double mx = 0, diff = 0;
        for (int i = 0; i < 128; i++) mx = fmax(mx, fabs(want[i])), diff = fmax(diff, fabs((double)got[i] - want[i]));
        printf("#   %-24s Q8_0 against F16: max |logit| %.3g, max diff %.3g\n", files[f], mx, diff);
        ASSERT(diff <= 0.05 * mx);
    }
    remove(out);
}

// ---- bad inputs -------------------------------------------------------------------------------

static int write_image(const char *path, mor__gguf_writer *w) {
    char err[256];
    int s = mor__gguf_writer_save(w, path, err, sizeof err);
    mor__gguf_writer_free(w);
    return s;
}

#define EXPECT_REFUSED(in, type, want, sub)                                                      \
    do {                                                                                         \
        remove(out);                                                                             \
        int s__ = quantize((in), out, (type), 1);                                                \
        if (s__ != (want))                                                                       \
            TEST__FAIL("quantize returned %s, expected %s (message: %s)", mor_status_name(s__),  \
                       mor_status_name(want), q_err);                                            \
        ASSERT_STR_CONTAINS(q_err, (sub));                                                       \
        ASSERT(!file_exists(out));                                                               \
    } while (0)

TEST(bad_inputs_refused) {
    char in[512], out[512], good[512], path[512];
    tmp_path(in, sizeof in, "bad.gguf");
    tmp_path(out, sizeof out, "bad-out.gguf");
    test_path(good, sizeof good, "quant/tiny-f32.gguf");
    uint64_t seed = 5;

    EXPECT_REFUSED(good, "Q3_K", MOR_E_INVALID, "unknown type 'Q3_K'");
    EXPECT_REFUSED("/nonexistent/x.gguf", "Q8_0", MOR_E_IO, "/nonexistent/x.gguf");
    EXPECT_REFUSED(test_path(path, sizeof path, "stories260K.bin"), "Q8_0", MOR_E_FORMAT, "bad magic");
    // the rows of the d = 48 test models fit no 32-element block
    EXPECT_REFUSED(test_path(path, sizeof path, "vanilla.gguf"), "Q4_K_M", MOR_E_UNSUPPORTED, "multiple of 32");
    EXPECT_REFUSED(test_path(path, sizeof path, "vocab/ggml-vocab-gpt-2.gguf"), "Q8_0", MOR_E_UNSUPPORTED,
                   "architecture 'gpt2'");

    // a truncated file
    void *p;
    uint64_t n;
    char err[256];
    ASSERT_OK(mor__gguf_w_read_file(good, &p, &n, err, sizeof err));
    ASSERT_OK(mor__gguf_w_write_file(in, p, n / 2, err, sizeof err));
    free(p);
    EXPECT_REFUSED(in, "Q8_0", MOR_E_FORMAT, "past the end");

    // llama without block_count; a non-finite value; an I8 matrix; mismatched attn_v count
    mor__gguf_writer *w = mor__gguf_writer_create();
    mor__gguf_w_str(w, "general.architecture", "llama");
    add_tensor(w, "blk.0.attn_q.weight", MOR__DT_F32, 2, 64, 4, &seed);
    ASSERT_OK(write_image(in, w));
    EXPECT_REFUSED(in, "Q8_0", MOR_E_FORMAT, "llama.block_count");

    w = mor__gguf_writer_create();
    mor__gguf_w_str(w, "general.architecture", "llama");
    mor__gguf_w_u32(w, "llama.block_count", 1);
    float x[64 * 4];
    fill(x, 256, &seed, 1.0f);
    x[70] = NAN;
    uint64_t dims[2] = {64, 4};
    mor__gguf_w_tensor(w, "blk.0.attn_q.weight", MOR__DT_F32, 2, dims, x);
    ASSERT_OK(write_image(in, w));
    EXPECT_REFUSED(in, "Q4_0", MOR_E_FORMAT, "non-finite value at element 70 (row 1, column 6)");

    w = mor__gguf_writer_create();
    mor__gguf_w_str(w, "general.architecture", "llama");
    mor__gguf_w_u32(w, "llama.block_count", 1);
    x[70] = 1e30f;
    mor__gguf_w_tensor(w, "blk.0.attn_q.weight", MOR__DT_F32, 2, dims, x);
    ASSERT_OK(write_image(in, w));
    EXPECT_REFUSED(in, "Q8_0", MOR_E_FORMAT, "too large for Q8_0");

    w = mor__gguf_writer_create();
    mor__gguf_w_str(w, "general.architecture", "llama");
    mor__gguf_w_u32(w, "llama.block_count", 1);
    int8_t i8[256] = {0};
    mor__gguf_w_tensor(w, "blk.0.attn_q.weight", 24, 2, dims, i8);
    ASSERT_OK(write_image(in, w));
    EXPECT_REFUSED(in, "Q8_0", MOR_E_UNSUPPORTED, "'blk.0.attn_q.weight' is I8");

    w = mor__gguf_writer_create();
    mor__gguf_w_str(w, "general.architecture", "llama");
    mor__gguf_w_u32(w, "llama.block_count", 2);
    add_tensor(w, "blk.0.attn_v.weight", MOR__DT_F32, 2, 64, 4, &seed);
    ASSERT_OK(write_image(in, w));
    EXPECT_REFUSED(in, "Q8_0", MOR_E_FORMAT, "1 attn_v tensors for llama.block_count 2");

    // the output is the input; an output that cannot be created or written
    ASSERT_STATUS(quantize(in, in, "Q8_0", 1), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(q_err, "is the input file");
    ASSERT(file_exists(in));
    ASSERT_STATUS(quantize(good, "/nonexistent/out.gguf", "Q8_0", 1), MOR_E_IO);
    ASSERT_STR_CONTAINS(q_err, "cannot create '/nonexistent/out.gguf'");
    if (file_exists("/dev/full")) {
        ASSERT_STATUS(quantize(good, "/dev/full", "Q8_0", 1), MOR_E_IO);
        ASSERT_STR_CONTAINS(q_err, "cannot write '/dev/full'");
        ASSERT(file_exists("/dev/full"));
    }
    remove(in);
}

TEST_MAIN(encoders_match_reference_rows, encoders_match_reference_digests, encoders_blockwise_and_arguments,
          llama_quantize_byte_identical, llama_quantize_smollm_shape,
          recipes_on_wide_llama, threads_f16_bf16_progress, recipe_on_mor_names, quantized_mor_models_run,
          quantized_relaxation_models_run, bad_inputs_refused)
