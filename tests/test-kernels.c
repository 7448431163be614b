// test-kernels: every kernel table entry of every ISA, against the scalar reference (the
// oracle), on seeded random inputs: lengths 0, 1, vector widths +-1, odd tails, large sizes,
// misaligned pointers, padded strides. Integer and quantized paths are bit-exact (activation
// quantization, row conversions, argmax); float paths are within the named tolerances below,
// relative to sum |a * b| of the terms summed. One test per ISA; an ISA the build or the CPU
// lacks is a TAP SKIP naming which. Then the whole model: logits with the best kernels against
// the reference kernels (MOR_SESSION_REF_KERNELS) on the test models and on Q8_0/Q4_0 random
// models, the same greedy tokens for 1 and 2 threads, and the Q8_0/Q4_0 weight quantizer's
// error bounds and llama.cpp-identical bytes.
#include "harness.h"

#include "kernels.h"
#include "mor.h"
#include "quant.h"
#include "support/randmodel.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// Tolerances (relative to sum |a_i * b_i| of the terms, or to the magnitude named).
#define TOL_MATMUL    2e-5  // matmul, every type: float summation order; integer block sums exact
#define TOL_DOT       2e-5  // attention
#define TOL_RMSNORM   2e-6  // relative to |w * x * scale|
#define TOL_EXP       4e-6  // swiglu, expsum: relative to the value (a polynomial exp)
#define TOL_LOGITS    2e-3  // whole model, relative to max |logit| (F32 activations through 30 layers)

static uint64_t rng = 0x6b65726eu;

static float *falloc(size_t n) {  // room for misaligned views (+3 floats)
    float *p = calloc(n + 16, sizeof(float));
    return p;
}

static void fill(float *p, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) p[i] = scale * test_randf(&rng);
}

// The types the kernels compute with (dtype.h), in the order the tests walk them.
static const int dtypes[] = {MOR__DT_F32, MOR__DT_F16, MOR__DT_BF16, MOR__DT_Q8_0, MOR__DT_Q4_0};
enum { N_DTYPE = 5 };

static int dt_quant(int dt) { return dt == MOR__DT_Q8_0 || dt == MOR__DT_Q4_0; }
static const char *dt_name(int dt) { return randmodel_type_name((uint32_t)dt); }

// A random weight matrix of dt with rows x cols, its bytes at W + off (off: misalignment).
static uint8_t *make_w(int dt, int64_t rows, int64_t cols, int off, float *deq) {
    int64_t rb = mor__dtype_row_bytes(dt, cols);
    uint8_t *buf = calloc((size_t)(rows * rb + 64), 1), *W = buf + off;
    float *f = falloc((size_t)cols);
    for (int64_t r = 0; r < rows; r++) {
        fill(f, (size_t)cols, 1.0f);
        if (r % 7 == 3) memset(f, 0, (size_t)cols * 4);  // an all-zero row: zero scales
        uint8_t *dst = W + r * rb;
        for (int64_t i = 0; i < cols; i++) {
            if (dt == MOR__DT_F32) memcpy(dst + 4 * i, &f[i], 4);
            else if (dt == MOR__DT_F16) {
                uint16_t h = mor__f32_to_f16(f[i]);
                memcpy(dst + 2 * i, &h, 2);
            } else if (dt == MOR__DT_BF16) {
                uint16_t h = mor__f32_to_bf16(f[i]);
                memcpy(dst + 2 * i, &h, 2);
            }
        }
        if (dt == MOR__DT_Q8_0) mor__quantize_q8_0(f, dst, cols);
        if (dt == MOR__DT_Q4_0) mor__quantize_q4_0(f, dst, cols);
        mor__kernels_ref()->to_f32[dt](dst, deq + r * cols, cols);
    }
    free(f);
    return buf;
}

// ---- matmul ------------------------------------------------------------------------------------

static int check_matmul(const mor__kernels *k, int dt, int64_t rows, int64_t cols, int64_t T, int woff, int xoff,
                        int pad) {
    const mor__kernels *ref = mor__kernels_ref();
    int64_t ldx = cols + pad, ldy = rows + pad, r0 = rows > 2 ? 1 : 0, r1 = rows;
    float *deq = falloc((size_t)(rows * cols + 1));
    uint8_t *wbuf = make_w(dt, rows, cols, woff, deq), *W = wbuf + woff;
    float *xb = falloc((size_t)(T * ldx + 4)), *x = xb + xoff;
    fill(x, (size_t)(T * ldx), 1.0f);
    if (T > 1 && cols >= 32) memset(x + ldx, 0, 32 * sizeof(float));  // a zero block of x
    float *y = falloc((size_t)(T * ldy)), *yr = falloc((size_t)(T * ldy));
    float *row = falloc((size_t)cols + 16), *rowr = falloc((size_t)cols + 16);
    for (int64_t i = 0; i < T * ldy; i++) y[i] = yr[i] = -7.0f;  // untouched outside [r0, r1)
    k->matmul[dt](W, cols, r0, r1, x, T, ldx, y, ldy, row);
    ref->matmul[dt](W, cols, r0, r1, x, T, ldx, yr, ldy, rowr);
    int bad = 0;
    for (int64_t t = 0; t < T && !bad; t++)
        for (int64_t r = 0; r < ldy && !bad; r++) {
            float a = y[t * ldy + r], b = yr[t * ldy + r];
            if (r < r0 || r >= r1) {
                if (a != -7.0f) bad = 1;
                continue;
            }
            double s = 0;
            for (int64_t i = 0; i < cols; i++) s += fabs((double)deq[r * cols + i] * x[t * ldx + i]);
            if (!(fabs((double)a - b) <= TOL_MATMUL * s + 1e-30)) bad = 1;
            if (bad)
                printf("#   %s %s rows %lld cols %lld T %lld: y[%lld][%lld] = %.9g, ref %.9g (sum|wx| %.3g)\n", k->name,
                       dt_name(dt), (long long)rows, (long long)cols, (long long)T, (long long)t, (long long)r, a, b, s);
        }
    free(deq), free(wbuf), free(xb), free(y), free(yr), free(row), free(rowr);
    return !bad;
}

// Each check below runs one group of entries of table k against the reference and returns
// the number of failures (each printed as a TAP comment).

// matmul, every type, over the shapes, offsets and paddings below.
static int matmul_shapes(const mor__kernels *k) {
    static const int64_t fcols[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 576, 1536};
    static const int64_t qcols[] = {32, 64, 96, 160, 576, 1536};
    static const int64_t Ts[] = {1, 2, 3, 4, 5, 11, 12, 13, 16, 17, 31, 33, 64, 65, 100};
    static const int64_t rowsv[] = {1, 2, 3, 5, 9, 24, 25, 61};
    int n = 0, fails = 0;
    for (int di = 0; di < N_DTYPE; di++) {
        const int dt = dtypes[di];
        const int64_t *cs = dt_quant(dt) ? qcols : fcols;
        int nc = dt_quant(dt) ? (int)(sizeof qcols / sizeof *qcols) : (int)(sizeof fcols / sizeof *fcols);
        for (int ci = 0; ci < nc; ci++)
            for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
                if (cs[ci] >= 576 && Ts[ti] % 4 != 1 && Ts[ti] != 64) continue;  // keep it quick
                int64_t rows = rowsv[(ci + ti) % (sizeof rowsv / sizeof *rowsv)];
                int woff = (int)((ci + ti) % 3), xoff = (int)(ti % 2), pad = (int)(ci % 3);
                if (dt == MOR__DT_F32) woff *= 4;
                if (dt == MOR__DT_F16 || dt == MOR__DT_BF16) woff *= 2;
                n++;
                if (!check_matmul(k, dt, rows, cs[ci], Ts[ti], woff, xoff, pad)) fails++;
            }
    }
    printf("#   %s: %d matmul cases\n", k->name, n);
    return fails;
}

// ---- batch independence ------------------------------------------------------------------------
//
// A scheduler batches rows of different sessions into one product and must give exactly what
// each session would get alone: y[t][r] may not depend on T, on where token t falls among the
// call's tokens, nor on the row range a thread got. For every table (ref and each ISA) and
// type: one call with T = 64 over all rows, then each token alone, tokens in groups of 3, 5, 7
// and 13, and row ranges split at odd places (alone and combined with token groups): every
// result is compared bit for bit (memcmp).

// y (T tokens, ldy) from calls over token groups of g (the last one shorter) and row cuts.
static void matmul_pieces(const mor__kernels *k, int dt, const uint8_t *W, int64_t rows, int64_t cols,
                          const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy, float *row, int64_t g,
                          const int64_t *cuts, int ncuts) {
    for (int64_t t = 0; t < T; t += g) {
        int64_t n = T - t < g ? T - t : g;
        int64_t r = 0;
        for (int c = 0; c <= ncuts; c++) {
            int64_t r1 = c < ncuts ? cuts[c] : rows;
            if (r1 > r) k->matmul[dt](W, cols, r, r1, x + t * ldx, n, ldx, y + t * ldy, ldy, row);
            r = r1;
        }
    }
}

static int batch_independence(const mor__kernels *k) {
    static const int64_t fcols[] = {100, 576, 1600}, qcols[] = {96, 576, 1600};
    static const int64_t groups[] = {1, 3, 5, 7, 13, 64};
    static const int64_t cuts[] = {7, 20, 33, 34, 50};
    const int64_t rows = 61, T = 64;
    int fails = 0, cases = 0;
    for (int di = 0; di < N_DTYPE; di++) {
        const int dt = dtypes[di];
        for (int ci = 0; ci < 3; ci++) {
            int64_t cols = dt_quant(dt) ? qcols[ci] : fcols[ci], ldx = cols + 3, ldy = rows + 5;
            float *deq = falloc((size_t)(rows * cols));
            uint8_t *W = make_w(dt, rows, cols, 0, deq);
            float *x = falloc((size_t)(T * ldx)), *row = falloc((size_t)cols + 16);
            float *y = falloc((size_t)(T * ldy)), *y2 = falloc((size_t)(T * ldy));
            fill(x, (size_t)(T * ldx), 1.0f);
            k->matmul[dt](W, cols, 0, rows, x, T, ldx, y, ldy, row);
            for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
                for (int split = 0; split < 2; split++) {
                    memset(y2, 0, (size_t)(T * ldy) * sizeof(float));
                    matmul_pieces(k, dt, W, rows, cols, x, T, ldx, y2, ldy, row, groups[gi], cuts, split ? 5 : 0);
                    cases++;
                    for (int64_t t = 0; t < T; t++)
                        if (memcmp(y + t * ldy, y2 + t * ldy, (size_t)rows * sizeof(float))) {
                            fails++;
                            printf("#   %s %s cols %lld: token %lld differs with groups of %lld%s\n", k->name, dt_name(dt),
                                   (long long)cols, (long long)t, (long long)groups[gi], split ? " and split rows" : "");
                            break;
                        }
                }
            free(deq), free(W), free(x), free(row), free(y), free(y2);
        }
    }
    printf("#   %s: %d batch-independence cases\n", k->name, cases);
    return fails;
}

// ---- conversions and activation quantization ----------------------------------------------------

// to_f32, every type and length, misaligned sources: bit for bit.
static int row_conversions(const mor__kernels *k) {
    int fails = 0;
    for (int di = 0; di < N_DTYPE; di++) {
        const int dt = dtypes[di];
        for (int64_t n = dt_quant(dt) ? 32 : 0; n <= 200; n += dt_quant(dt) ? 32 : 1) {
            float *deq = falloc((size_t)n + 1), *a = falloc((size_t)n + 1), *b = falloc((size_t)n + 1);
            int off = (int)(n % 3) * (dt == MOR__DT_F32 ? 4 : dt_quant(dt) ? 1 : 2);
            uint8_t *w = make_w(dt, 1, n, off, deq);
            k->to_f32[dt](w + off, a, n);
            mor__kernels_ref()->to_f32[dt](w + off, b, n);
            if (memcmp(a, b, (size_t)n * 4)) fails++, printf("#   %s to_f32 %s n %lld\n", k->name, dt_name(dt), (long long)n);
            free(deq), free(a), free(b), free(w);
        }
    }
    return fails;
}

// quant_act, zero blocks, exact ties and f16-subnormal scales included: bit for bit.
static int activation_quantization(const mor__kernels *k) {
    int fails = 0, cases = 0;
    for (int64_t n = 0; n <= 32 * 40; n += 32) {
        float *x = falloc((size_t)n + 1);
        fill(x + 1, (size_t)n, (float)(1 + n % 5) * 3.0f);
        if (n >= 96) {
            memset(x + 1, 0, 32 * sizeof(float));                                  // all zero
            for (int j = 0; j < 32; j++) x[1 + 32 + j] = (float)(j - 16) * 0.5f;   // exact ties
            for (int j = 0; j < 32; j++) x[1 + 64 + j] = 1e-30f * (float)(j - 7);  // tiny (f16 subnormal d)
        }
        int8_t *qa = calloc((size_t)n + 1, 1), *qb = calloc((size_t)n + 1, 1);
        float *da = falloc((size_t)n / 32 + 1), *db = falloc((size_t)n / 32 + 1);
        k->quant_act(x + 1, n, qa, da);
        mor__kernels_ref()->quant_act(x + 1, n, qb, db);
        cases++;
        if (memcmp(qa, qb, (size_t)n) || memcmp(da, db, (size_t)n / 32 * 4)) fails++, printf("#   %s quant_act n %lld\n", k->name, (long long)n);
        free(x), free(qa), free(qb), free(da), free(db);
    }
    printf("#   %s: %d quant_act cases\n", k->name, cases);
    return fails;
}

// ---- vector operations ---------------------------------------------------------------------------

// rmsnorm, swiglu, argmax and expsum.
static int vector_ops(const mor__kernels *k) {
    const mor__kernels *ref = mor__kernels_ref();
    int fails = 0;
    static const int64_t ns[] = {1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 576, 1537};
    for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
        int64_t n = ns[ni];
        float *a = falloc((size_t)n + 1), *b = falloc((size_t)n + 1), *w = falloc((size_t)n + 1);
        float *o1 = falloc((size_t)n + 1), *o2 = falloc((size_t)n + 1);
        fill(a, (size_t)n + 1, 2.0f), fill(b, (size_t)n + 1, 2.0f), fill(w, (size_t)n + 1, 1.5f);
        // rmsnorm
        k->rmsnorm(o1, a + 1, w + 1, n, 1e-5f), ref->rmsnorm(o2, a + 1, w + 1, n, 1e-5f);
        for (int64_t i = 0; i < n; i++)
            if (fabsf(o1[i] - o2[i]) > TOL_RMSNORM * fabsf(o2[i]) + 1e-30f) fails++, printf("#   %s rmsnorm\n", k->name), i = n;
        // swiglu
        memcpy(o1, a + 1, (size_t)n * 4), memcpy(o2, a + 1, (size_t)n * 4);
        for (int64_t i = 0; i < n; i++) o1[i] *= 10.0f, o2[i] *= 10.0f;  // exercise the exp range
        k->swiglu(o1, b + 1, n), ref->swiglu(o2, b + 1, n);
        for (int64_t i = 0; i < n; i++)
            if (fabsf(o1[i] - o2[i]) > TOL_EXP * (fabsf(o2[i]) + 1e-6f)) fails++, printf("#   %s swiglu %g %g\n", k->name, o1[i], o2[i]), i = n;
        // argmax: exact, ties to the first, NaN never wins
        for (int64_t i = 0; i < n; i++) o1[i] = floorf(4.0f * a[i + 1]);
        if (n > 3) o1[0] = NAN;
        if (k->argmax(o1, n) != ref->argmax(o1, n)) fails++, printf("#   %s argmax n %lld\n", k->name, (long long)n);
        // expsum (and its entropy numerator): relative to the sums, over a wide range and -inf
        for (int64_t i = 0; i < n; i++) o1[i] = 60.0f * a[i + 1] - 30.0f;
        if (n > 5) o1[3] = -INFINITY;
        float mx = o1[ref->argmax(o1, n)];
        double z1 = 0, z2 = 0, e1 = k->expsum(o1, n, mx, &z1), e2 = ref->expsum(o1, n, mx, &z2);
        if (!(fabs(e1 - e2) <= TOL_EXP * e2) || !(fabs(z1 - z2) <= TOL_EXP * (fabs(z2) + e2)) ||
            k->expsum(o1, n, mx, NULL) != e1)
            fails++, printf("#   %s expsum n %lld: %.9g %.9g, %.9g %.9g\n", k->name, (long long)n, e1, e2, z1, z2);
        free(a), free(b), free(w), free(o1), free(o2);
    }
    return fails;
}

// rope (both layouts), attend and attend_f16.
static int rope_and_attention(const mor__kernels *k) {
    const mor__kernels *ref = mor__kernels_ref();
    int fails = 0;
    static const int64_t hds[] = {2, 8, 16, 24, 64, 80, 128};
    static const int64_t ns[] = {1, 2, 3, 17, 100};
    for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
            int64_t hd = hds[hi], n = ns[ni], stride = 3 * hd + 1;
            float *q = falloc((size_t)hd), *kv = falloc((size_t)(n * stride + hd)), *att = falloc((size_t)n);
            float *o1 = falloc((size_t)hd * 3), *o2 = falloc((size_t)hd * 3), *c = falloc((size_t)hd), *s = falloc((size_t)hd);
            uint16_t *kh = calloc((size_t)(n * stride + hd), 2);
            fill(q, (size_t)hd, 1.0f), fill(kv, (size_t)(n * stride + hd), 1.0f);
            for (int64_t i = 0; i < n * stride + hd; i++) kh[i] = mor__f32_to_f16(kv[i]);
            k->attend(q, kv, kv + hd, n, hd, stride, 0.125f, att, o1);
            ref->attend(q, kv, kv + hd, n, hd, stride, 0.125f, att, o2);
            for (int64_t i = 0; i < hd; i++)
                if (fabsf(o1[i] - o2[i]) > TOL_DOT * 4) fails++, printf("#   %s attend hd %lld n %lld\n", k->name, (long long)hd, (long long)n), i = hd;
            k->attend_f16(q, kh, kh + hd, n, hd, stride, 0.125f, att, o1);
            ref->attend_f16(q, kh, kh + hd, n, hd, stride, 0.125f, att, o2);
            for (int64_t i = 0; i < hd; i++)
                if (fabsf(o1[i] - o2[i]) > TOL_DOT * 4) fails++, printf("#   %s attend_f16 hd %lld n %lld\n", k->name, (long long)hd, (long long)n), i = hd;
            for (int neox = 0; neox < 2; neox++) {
                fill(o1, (size_t)hd * 3, 1.0f);
                memcpy(o2, o1, (size_t)hd * 3 * 4);
                for (int64_t i = 0; i < hd / 2; i++) c[i] = cosf(0.1f * (float)i), s[i] = sinf(0.1f * (float)i);
                k->rope(o1, 3, hd, c, s, neox), ref->rope(o2, 3, hd, c, s, neox);
                for (int64_t i = 0; i < 3 * hd; i++)
                    if (fabsf(o1[i] - o2[i]) > 1e-6f) fails++, printf("#   %s rope\n", k->name), i = 3 * hd;
            }
            free(q), free(kv), free(att), free(o1), free(o2), free(c), free(s), free(kh);
        }
    return fails;
}

// ---- one test per table --------------------------------------------------------------------------
//
// Each ISA's test runs every check above against the reference. An ISA this build does not
// compile, or this CPU does not run, is a TAP SKIP that says which; an ISA the CPU runs but
// dispatch did not install fails. The reference table's own test is batch independence.

#if !defined(MOR_NO_SIMD) && defined(__x86_64__)
#define BUILT_X86 1
#else
#define BUILT_X86 0
#endif
#if !defined(MOR_NO_SIMD) && defined(__aarch64__)
#define BUILT_ARM 1
#else
#define BUILT_ARM 0
#endif

enum { ISA_AVX2, ISA_AVX512, ISA_NEON, N_ISA };
static const struct {
    const char *name;
    int         built;  // compiled into this build
    const char *arch;   // the build that compiles it
    const char *needs;  // what dispatch.c asks of the CPU
} isas[N_ISA] = {{"avx2", BUILT_X86, "x86-64", "AVX2 and FMA"},
                 {"avx512", BUILT_X86, "x86-64", "AVX-512 F, BW, VL, DQ and VNNI"},
                 {"neon", BUILT_ARM, "AArch64", "NEON"}};

// 1 when this CPU has what isa i needs (the checks of dispatch.c, made again here).
static int cpu_runs(int i) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (i == ISA_AVX2) return avx2;
    if (i == ISA_AVX512)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__)
    if (i == ISA_NEON) return 1;  // part of the AArch64 baseline
#endif
    return 0;
}

static void isa_against_reference(int i) {
#if defined(MOR_NO_SIMD)
    TEST_SKIP("SIMD=0 build: the reference kernels only");
#endif
    if (!isas[i].built) TEST_SKIP("not an %s build", isas[i].arch);
    const mor__kernels *k = mor__kernels_isa(isas[i].name);
    if (!cpu_runs(i)) {
        ASSERT(k == NULL);
        TEST_SKIP("this CPU lacks %s", isas[i].needs);
    }
    ASSERT(k != NULL);
    int fails = matmul_shapes(k) + batch_independence(k) + row_conversions(k) + activation_quantization(k) +
                vector_ops(k) + rope_and_attention(k);
    ASSERT_EQ(fails, 0);
}

TEST(ref_batch_independent_bit_exact) { ASSERT_EQ(batch_independence(mor__kernels_ref()), 0); }
TEST(avx2_against_reference) { isa_against_reference(ISA_AVX2); }
TEST(avx512_against_reference) { isa_against_reference(ISA_AVX512); }
TEST(neon_against_reference) { isa_against_reference(ISA_NEON); }

// ---- weight quantization ------------------------------------------------------------------------

TEST(weight_quantization_round_trip_bounds) {
    static const int qtypes[] = {MOR__DT_Q8_0, MOR__DT_Q4_0};
    for (int di = 0; di < 2; di++) {
        const int dt = qtypes[di];
        int64_t n = 32 * 300;
        float *x = falloc((size_t)n), *y = falloc((size_t)n);
        fill(x, (size_t)n, 1.0f);
        for (int64_t i = 0; i < 32; i++) x[i] = 0;                          // zero block
        for (int64_t i = 32; i < 64; i++) x[i] = (float)(i - 48) * 1e-3f;   // small block
        uint8_t *q = calloc((size_t)mor__dtype_row_bytes(dt, n), 1);
        if (dt == MOR__DT_Q8_0) mor__quantize_q8_0(x, q, n);
        else mor__quantize_q4_0(x, q, n);
        mor__kernels_ref()->to_f32[dt](q, y, n);
        double worst = 0;
        for (int64_t b = 0; b < n / 32; b++) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
            // Q8_0: half a step of amax / 127 (plus the f16 rounding of d on up to 127 steps);
            // Q4_0: a step of amax / 8 at the clamped end.
            double bound = dt == MOR__DT_Q8_0 ? amax / 127.0 * (0.5 + 127.0 / 2048) : amax / 8.0 * (1.0 + 8.0 / 2048);
            for (int j = 0; j < 32; j++) {
                double e = fabs((double)x[b * 32 + j] - y[b * 32 + j]);
                ASSERT(e <= bound + 1e-12);
                if (amax > 0 && e / amax > worst) worst = e / amax;
            }
        }
        printf("#   %s: worst |error| / block amax = %.4f\n", dt_name(dt), worst);
        free(x), free(y), free(q);
    }
}

// Bytes llama.cpp's quantize_row_q8_0_ref / quantize_row_q4_0_ref give for x[i] = sin(0.37 i) *
// (1 + i / 16), i < 64 (first block of each; produced with ggml's reference functions).
TEST(weight_quantization_matches_llama_cpp) {
    float x[64];
    for (int i = 0; i < 64; i++) x[i] = sinf(0.37f * (float)i) * (1.0f + (float)i / 16.0f);
    uint8_t q8[68], q4[36];
    mor__quantize_q8_0(x, q8, 64);
    mor__quantize_q4_0(x, q4, 64);
    static const uint8_t want8[34] = {196, 37, 0, 17, 34, 47, 55, 56, 49, 33, 12, 243, 218, 196, 181, 176, 182,
                                      198, 224, 1, 35, 66, 90, 102, 101, 86, 58, 20, 233, 192, 158, 135, 129, 140};
    static const uint8_t want4[18] = {184, 53, 104, 137, 170, 203, 235, 236, 235, 218, 201, 151, 118, 68, 35, 3, 3, 20};
    ASSERT(!memcmp(q8, want8, 34));
    ASSERT(!memcmp(q4, want4, 18));
}

// ---- whole model --------------------------------------------------------------------------------

static int run_logits(const char *path, uint32_t flags, int threads, int32_t n_prompt, float **out, int32_t *toks,
                      int n_gen) {
    mor_model *m = NULL;
    mor_session *s = NULL;
    char err[256];
    if (mor_model_load(path, NULL, &m, err, sizeof err)) return printf("#   %s: %s\n", path, err), 0;
    mor_session_params p;
    mor_session_params_init(&p);
    p.flags = flags | MOR_SESSION_LOGITS_ALL;
    p.n_threads = threads;
    p.n_ctx = 256;
    if (mor_session_create(m, &p, &s, err, sizeof err)) return printf("#   %s: %s\n", path, err), mor_model_free(m), 0;
    int32_t V = mor_model_n_vocab(m), prompt[64];
    if (V <= 0) V = (int32_t)mor_model_get_int(m, 0);
    for (int i = 0; i < n_prompt; i++) prompt[i] = (int32_t)((i * 37 + 11) % (V > 0 ? V : 1));
    int ok = mor_session_step(s, prompt, n_prompt) == MOR_OK;
    *out = malloc((size_t)n_prompt * (size_t)V * sizeof(float));
    for (int i = 0; ok && i < n_prompt; i++) memcpy(*out + (size_t)i * V, mor_session_logits(s, i), (size_t)V * 4);
    for (int g = 0; ok && g < n_gen; g++) {  // greedy continuation
        const float *l = mor_session_logits(s, -1);
        int32_t b = 0;
        for (int32_t i = 1; i < V; i++)
            if (l[i] > l[b]) b = i;
        toks[g] = b;
        ok = mor_session_step(s, &b, 1) == MOR_OK;
    }
    mor_session_free(s);
    mor_model_free(m);
    return ok ? V : 0;
}

static int compare_model(const char *path) {
    float *a = NULL, *b = NULL;
    int32_t ta[8], tb[8], tc[8];
    float *c = NULL;
    int V = run_logits(path, 0, 1, 13, &a, ta, 8);
    int V2 = run_logits(path, MOR_SESSION_REF_KERNELS, 1, 13, &b, tb, 8);
    int V3 = run_logits(path, 0, 2, 13, &c, tc, 8);
    int ok = V > 0 && V == V2 && V == V3;
    double mx = 0, diff = 0;
    for (size_t i = 0; ok && i < (size_t)13 * V; i++) {
        mx = fmax(mx, fabs(b[i]));
        diff = fmax(diff, fabs((double)a[i] - b[i]));
        if (a[i] != c[i]) ok = 0;  // 1 and 2 threads: the same kernels give the same bits
    }
    if (ok && diff > TOL_LOGITS * mx) ok = 0;
    if (ok && memcmp(ta, tc, sizeof ta)) ok = 0;
    printf("#   %-40s max |logit| %.3g, best vs ref max diff %.3g (%s)\n", path, mx, diff, ok ? "ok" : "FAIL");
    free(a), free(b), free(c);
    return ok;
}

TEST(model_logits_best_vs_reference_kernels) {
    static const char *files[] = {"vanilla.gguf", "vanilla-tied.gguf", "middle_cycle.gguf", "middle_cycle-f16.gguf",
                                  "middle_cycle-bf16.gguf", "stories260K.gguf", "expert.gguf", "token.gguf"};
    char path[512];
    int fails = 0;
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        test_path(path, sizeof path, files[i]);
        if (access(path, R_OK)) continue;
        if (!compare_model(path)) fails++;
    }
    ASSERT_EQ(fails, 0);
}

TEST(quantized_model_logits_best_vs_reference_kernels) {
    const randmodel_shape *sh = randmodel_find("tiny");
    ASSERT(sh != NULL);
    static const uint32_t types[] = {MOR__DT_Q8_0, MOR__DT_Q4_0, MOR__DT_F16};
    int fails = 0;
    for (size_t i = 0; i < 3; i++) {
        char path[256], err[256];
        snprintf(path, sizeof path, "/tmp/mor-test-kernels-%d-%s.gguf", (int)getpid(), randmodel_type_name(types[i]));
        ASSERT_OK(randmodel_write(sh, types[i], 0, NULL, path, err, sizeof err));
        if (!compare_model(path)) fails++;
        unlink(path);
    }
    ASSERT_EQ(fails, 0);
}

TEST(dispatch_names_and_switches) {
    ASSERT(mor__kernels_isa("ref") == mor__kernels_ref());
    ASSERT(mor__kernels_isa("nope") == NULL);
    const mor__kernels *b = mor__kernels_best();
    printf("#   best kernels: %s; available:", b->name);
    for (int i = 0; i < N_ISA; i++)
        if (mor__kernels_isa(isas[i].name)) printf(" %s", isas[i].name);
    printf("\n");
#if defined(MOR_NO_SIMD)
    ASSERT(!strcmp(b->name, "ref"));
#endif
    const mor__kernels *ref = mor__kernels_ref();
    for (int dt = 0; dt < MOR__DT_COUNT; dt++) {  // entries exactly for the computed types
        ASSERT(!b->matmul[dt] == !mor__dtype_computed((uint32_t)dt) && !b->to_f32[dt] == !b->matmul[dt]);
        ASSERT(!ref->matmul[dt] == !mor__dtype_computed((uint32_t)dt) && !ref->to_f32[dt] == !ref->matmul[dt]);
    }
}

TEST_MAIN(ref_batch_independent_bit_exact, avx2_against_reference, avx512_against_reference, neon_against_reference,
          weight_quantization_round_trip_bounds, weight_quantization_matches_llama_cpp,
          model_logits_best_vs_reference_kernels, quantized_model_logits_best_vs_reference_kernels,
          dispatch_names_and_switches)
