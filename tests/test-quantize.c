// test-quantize.c: the quantizers of tools/lib/quant.c.
//
// Byte identity with llama.cpp: tests/data/quant/<TYPE>.bin hold rows quantized by its
// reference quantizers (the format is in tests/data/README.md), and the digests below those of
// its output on generated values; both must be reproduced exactly.
#include "harness.h"

#include "gguf-write.h"
#include "gguf.h"
#include "kernels.h"
#include "mor.h"
#include "quant.h"
#include "sha256.h"

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

TEST_MAIN(encoders_match_reference_rows, encoders_match_reference_digests, encoders_blockwise_and_arguments)
