// test-quantize.c: the quantizers of tools/lib/quant.c.
//
// Byte identity with llama.cpp: tests/data/quant/<TYPE>.bin hold rows quantized by its
// reference quantizers (the format is in tests/data/README.md); they must be reproduced exactly.
#include "harness.h"

#include "gguf-write.h"
#include "gguf.h"
#include "kernels.h"
#include "mor.h"
#include "quant.h"

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

TEST_MAIN(encoders_match_reference_rows, encoders_blockwise_and_arguments)
