// test-kernels: every kernel table entry of every ISA, against the scalar reference (the
// oracle), on seeded random inputs: lengths 0, 1, vector widths +-1, odd tails, large sizes,
// misaligned pointers, padded strides. Integer and quantized paths are bit-exact (activation
// quantization, row conversions, argmax); float paths are within the named tolerances below,
// relative to sum |a * b| of the terms summed. One test per ISA; an ISA the build or the CPU
// lacks is a TAP SKIP naming which. Then the whole model: logits with the best kernels against
// the reference kernels (MOR_SESSION_REF_KERNELS) on the test models and on Q8_0/Q4_0 random
// models, the same greedy tokens for 1 and 2 threads, and the Q8_0/Q4_0 weight quantizer's
// error bounds and llama.cpp-identical bytes. The other quantized types (Q4_1, Q5_0, Q5_1,
// IQ4_NL and the K types) are in every ISA's check like the others; a test each also checks,
// on the reference, their layouts on blocks packed here, their products against the decoded
// rows, and the batch rule; and tests/data/quant/*.bin, numbers of the GGUF reference
// implementation (ggml), check to_f32 bit for bit and the products (reference and best
// kernels) within the activation quantization error.
#include "harness.h"

#include "gguf.h"
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
static const int dtypes[] = {MOR__DT_F32,  MOR__DT_F16,  MOR__DT_BF16, MOR__DT_Q8_0,   MOR__DT_Q4_0,
                             MOR__DT_Q4_1, MOR__DT_Q5_0, MOR__DT_Q5_1, MOR__DT_IQ4_NL, MOR__DT_Q2_K,
                             MOR__DT_Q3_K, MOR__DT_Q4_K, MOR__DT_Q5_K, MOR__DT_Q6_K};
enum { N_DTYPE = 14 };

static int dt_quant(int dt) { return mor__dtype_quantized((uint32_t)dt); }
static int dt_k(int dt) { return mor__dtype_block((uint32_t)dt) == MOR__QK_K; }
static const char *dt_name(int dt) { return mor__dtype_name((uint32_t)dt); }
// The one of k (256-weight blocks), q (32-weight blocks) or f (float types) that suits dt.
#define BY_BLOCK(dt, k, q, f) (dt_k(dt) ? (k) : dt_quant(dt) ? (q) : (f))

// Byte offsets of the IEEE-half scales (d, and m or dmin) in a block of the types without a
// quantizer here: the random blocks below set them, every other byte is random.
static void half_fields(int dt, int *d, int *m) {
    *d = 0, *m = -1;
    switch (dt) {
    case MOR__DT_Q4_1:
    case MOR__DT_Q5_1:
    case MOR__DT_Q4_K:
    case MOR__DT_Q5_K: *m = 2; break;
    case MOR__DT_Q2_K: *d = 80, *m = 82; break;
    case MOR__DT_Q3_K: *d = 108; break;
    case MOR__DT_Q6_K: *d = 208; break;
    default: break;
    }
}

// A row of random blocks of dt (any byte pattern is a valid block): scales of either sign
// around 1 / the type's largest code, now and then an f16-subnormal one; zero: all scales 0.
static void rand_blocks(int dt, uint8_t *dst, int64_t cols, int zero) {
    int64_t bw = mor__dtype_block((uint32_t)dt), bs = mor__dtype_row_bytes((uint32_t)dt, bw);
    int od, om;
    half_fields(dt, &od, &om);
    float mag = dt_k(dt) ? 1.0f / 400.0f : 1.0f / 16.0f;
    for (int64_t b = 0; b < cols / bw; b++) {
        uint8_t *p = dst + b * bs;
        for (int64_t i = 0; i < bs; i++) p[i] = (uint8_t)(test_rand(&rng) >> 32);
        float d = zero ? 0.0f : mag * test_randf(&rng), m = zero ? 0.0f : mag * 4.0f * test_randf(&rng);
        if (!zero && b % 11 == 5) d = 3e-6f * test_randf(&rng);  // f16 subnormal
        uint16_t hd = mor__f32_to_f16(d), hm = mor__f32_to_f16(m);
        memcpy(p + od, &hd, 2);
        if (om >= 0) memcpy(p + om, &hm, 2);
    }
}

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
        else if (dt == MOR__DT_Q4_0) mor__quantize_q4_0(f, dst, cols);
        else if (dt_quant(dt)) rand_blocks(dt, dst, cols, r % 7 == 3);
        mor__kernels_ref()->to_f32[dt](dst, deq + r * cols, cols);
    }
    free(f);
    return buf;
}

// ---- matmul ------------------------------------------------------------------------------------

// *worst: the largest |y - y_ref| / sum |w x| seen (raised, never lowered).
static int check_matmul(const mor__kernels *k, int dt, int64_t rows, int64_t cols, int64_t T, int woff, int xoff,
                        int pad, double *worst) {
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
            if (s > 0 && fabs((double)a - b) / s > *worst) *worst = fabs((double)a - b) / s;
            if (bad)
                printf("#   %s %s rows %lld cols %lld T %lld: y[%lld][%lld] = %.9g, ref %.9g (sum|wx| %.3g)\n", k->name,
                       dt_name(dt), (long long)rows, (long long)cols, (long long)T, (long long)t, (long long)r, a, b, s);
        }
    free(deq), free(wbuf), free(xb), free(y), free(yr), free(row), free(rowr);
    return !bad;
}

// Each check below runs one group of entries of table k against the reference and returns
// the number of failures (each printed as a TAP comment).

// matmul, every type, over the shapes, offsets and paddings below; prints each type's largest
// difference from the reference relative to sum |w x|.
// MOR_TEST_QUICK=1 (the sanitizer, valgrind and emulated runs set it): a smaller matrix of
// shapes and token groups; every type, table and path (rows in lanes, tokens in lanes) is
// still run.
static int quick(void) { return getenv("MOR_TEST_QUICK") != NULL; }

static int matmul_shapes(const mor__kernels *k) {
    static const int64_t fcols[] = {0, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 576, 1536};
    static const int64_t qcols[] = {32, 64, 96, 160, 576, 1536}, kcols[] = {256, 512, 768, 1536};
    static const int64_t Ts[] = {1, 2, 3, 4, 5, 11, 12, 13, 16, 17, 31, 33, 64, 65, 100};
    static const int64_t rowsv[] = {1, 2, 3, 5, 9, 24, 25, 61};
    int n = 0, fails = 0;
    double worst[N_DTYPE] = {0};
    for (int di = 0; di < N_DTYPE; di++) {
        const int dt = dtypes[di];
        const int64_t *cs = BY_BLOCK(dt, kcols, qcols, fcols);
        int nc = (int)BY_BLOCK(dt, sizeof kcols, sizeof qcols, sizeof fcols) / (int)sizeof *cs;
        for (int ci = 0; ci < nc; ci++)
            for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++) {
                if (cs[ci] >= 576 && Ts[ti] % 4 != 1 && Ts[ti] != 64) continue;  // keep it quick
                if (quick() && (Ts[ti] > 17 && Ts[ti] != 64)) continue;
                int64_t rows = rowsv[(ci + ti) % (sizeof rowsv / sizeof *rowsv)];
                int woff = (int)((ci + ti) % 3), xoff = (int)(ti % 2), pad = (int)(ci % 3);
                if (dt == MOR__DT_F32) woff *= 4;
                if (dt == MOR__DT_F16 || dt == MOR__DT_BF16) woff *= 2;
                n++;
                if (!check_matmul(k, dt, rows, cs[ci], Ts[ti], woff, xoff, pad, &worst[di])) fails++;
            }
    }
    printf("#   %s: %d matmul cases; largest |y - y_ref| / sum |w x|:", k->name, n);
    for (int di = 0; di < N_DTYPE; di++) printf("%s %s %.1e", di ? "," : "", dt_name(dtypes[di]), worst[di]);
    printf("\n");
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
    static const int64_t fcols[] = {100, 576, 1600}, qcols[] = {96, 576, 1600}, kcols[] = {256, 768, 1536};
    static const int64_t groups[] = {1, 3, 5, 7, 13, 64};
    static const int64_t cuts[] = {7, 20, 33, 34, 50};
    const int64_t rows = 61, T = 64;
    int fails = 0, cases = 0;
    for (int di = 0; di < N_DTYPE; di++) {
        const int dt = dtypes[di];
        for (int ci = 0; ci < 3; ci++) {
            int64_t cols = BY_BLOCK(dt, kcols, qcols, fcols)[ci], ldx = cols + 3, ldy = rows + 5;
            float *deq = falloc((size_t)(rows * cols));
            uint8_t *W = make_w(dt, rows, cols, 0, deq);
            float *x = falloc((size_t)(T * ldx)), *row = falloc((size_t)cols + 16);
            float *y = falloc((size_t)(T * ldy)), *y2 = falloc((size_t)(T * ldy));
            fill(x, (size_t)(T * ldx), 1.0f);
            k->matmul[dt](W, cols, 0, rows, x, T, ldx, y, ldy, row);
            for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++)
                for (int split = 0; split < 2; split++) {
                    if (quick() && groups[gi] != 1 && groups[gi] != 5 && groups[gi] != 64) continue;
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
        const int64_t bw = mor__dtype_block((uint32_t)dt), top = bw > 32 ? 3 * bw : 200;
        for (int64_t n = dt_quant(dt) ? bw : 0; n <= top; n += bw) {
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

// Non-finite activations (a model file with NaN or Inf weights makes them) give defined bytes
// in every table: no undefined conversion (the sanitizer runs check that), NaN and Inf
// quantized to -128 by the reference, finite neighbours of an Inf to 0; no ISA writes past the
// block. The ISAs' bytes for such blocks may differ from the reference (which NaN wins the
// maximum differs), so only the reference's values are asserted.
TEST(quant_act_non_finite) {
    float x[64];
    for (int j = 0; j < 64; j++) x[j] = (float)(j - 20) * 0.25f;
    x[3] = NAN, x[40] = INFINITY, x[41] = -INFINITY;
    int8_t q[64 + 1];
    float d[2];
    const char *names[] = {"ref", "avx2", "avx512", "neon"};
    for (int i = 0; i < 4; i++) {
        const mor__kernels *k = mor__kernels_isa(names[i]);
        if (!k) continue;
        q[64] = 55;
        k->quant_act(x, 64, q, d);
        ASSERT_EQ(q[64], 55);
        if (i == 0) {
            ASSERT_EQ(q[3], -128);
            ASSERT_EQ(q[4], (int8_t)nearbyintf(x[4] * (127.0f / 5.0f)));  // block 0: amax |x[0]| = 5, NaN ignored
            ASSERT_EQ(q[40], -128);
            ASSERT_EQ(q[41], -128);
            ASSERT_EQ(q[42], 0);
        }
    }
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

// ---- the other quantized types ----------------------------------------------------------------
//
// One test per type, on the reference table (each ISA's products of these types are held to it
// by <isa>_against_reference):
// (a) blocks packed here from chosen integer codes, scales and mins, following the layout as
//     dtype.h words it, decode to the values the layout defines (exact: every product d * sc * q
//     is exact in float, so the one rounding is the min's, the same in any order);
// (b) the product against the double-precision dot of the decoded rows with x: within
//     TOL_MATMUL of sum |w * xq| against x as quantized by quant_act (float summation only),
//     and against x itself within the activation quantization bound: per block of 32,
//     |x - xq| <= amax / 127 * (0.5 + 127 / 2048) (half a step, plus d rounded to f16), so
//     |y - w.x| <= sum_b amax_b / 127 * 0.57 * sum_{i in b} |w_i| (+ TOL_MATMUL * sum |w x|);
// (c) batch independence: every token alone, T = 5 at once and rows split at odd places give
//     the same bits.

// What a block holds, in the layout's own terms: weight i = d * sc[i / sb] * q[i] - dmin *
// mn[i / sb] (Q4_1/Q5_1: d * q[i] + m; Q5_0: d * q[i]; IQ4_NL: d * v[q[i]]).
typedef struct {
    float d, dmin;       // f16-representable
    int q[256];          // the codes as the formula uses them (signed where the type is)
    int sc[16], mn[16];  // per sub-block (32 weights for Q4_K/Q5_K, 16 for Q2_K/Q3_K/Q6_K)
} hblock;

static const int iq4nl_v[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static void put_half(uint8_t *p, float v) {
    uint16_t h = mor__f32_to_f16(v);
    memcpy(p, &h, 2);
}

// The element j of a 32-block in a 16-byte nibble array: low nibbles 0..15, high 16..31.
static void put_nib(uint8_t *qs, int j, int v) { qs[j % 16] |= (uint8_t)((v & 15) << (j < 16 ? 0 : 4)); }

// Packs hb into the bytes of one block of dt (the writer's view of dtype.h's layouts).
static void pack_block(int dt, const hblock *hb, uint8_t *p) {
    memset(p, 0, 256);
    switch (dt) {
    case MOR__DT_Q4_1:  // d, m, qs[16]
        put_half(p, hb->d), put_half(p + 2, hb->dmin);
        for (int j = 0; j < 32; j++) put_nib(p + 4, j, hb->q[j]);
        break;
    case MOR__DT_Q5_0:    // d, qh[4], qs[16]; code = q + 16
    case MOR__DT_Q5_1: {  // d, m, qh[4], qs[16]
        int o = dt == MOR__DT_Q5_1 ? 2 : 0;
        uint32_t qh = 0;
        put_half(p, hb->d);
        if (o) put_half(p + 2, hb->dmin);
        for (int j = 0; j < 32; j++) {
            int code = hb->q[j] + (dt == MOR__DT_Q5_0 ? 16 : 0);
            put_nib(p + 6 + o, j, code);
            qh |= (uint32_t)(code >> 4) << j;
        }
        for (int k = 0; k < 4; k++) p[2 + o + k] = (uint8_t)(qh >> (8 * k));
        break;
    }
    case MOR__DT_IQ4_NL:  // d, qs[16] holding indices into the value table
        put_half(p, hb->d);
        for (int j = 0; j < 32; j++) put_nib(p + 2, j, hb->q[j]);
        break;
    case MOR__DT_Q4_K:
    case MOR__DT_Q5_K: {  // d, dmin, scales[12], (Q5_K: qh[32],) qs[128]
        int five = dt == MOR__DT_Q5_K, qs = five ? 48 : 16;
        put_half(p, hb->d), put_half(p + 2, hb->dmin);
        for (int s = 0; s < 4; s++) {  // six bits each: sub-blocks 0..3 whole, 4..7 split
            p[4 + s] = (uint8_t)(hb->sc[s] | (hb->sc[s + 4] >> 4) << 6);
            p[8 + s] = (uint8_t)(hb->mn[s] | (hb->mn[s + 4] >> 4) << 6);
            p[12 + s] = (uint8_t)((hb->sc[s + 4] & 15) | (hb->mn[s + 4] & 15) << 4);
        }
        for (int i = 0; i < 256; i++) {
            int sub = i / 32, pair = sub / 2, l = i % 32;
            p[qs + 32 * pair + l] |= (uint8_t)((hb->q[i] & 15) << (sub % 2 ? 4 : 0));
            if (five) p[16 + l] |= (uint8_t)((hb->q[i] >> 4) << sub);
        }
        break;
    }
    case MOR__DT_Q6_K:  // ql[128], qh[64], scales[16], d; code = q + 32
        for (int i = 0; i < 256; i++) {
            int code = hb->q[i] + 32, half = i / 128, quarter = (i % 128) / 32, l = i % 32;
            p[64 * half + 32 * (quarter % 2) + l] |= (uint8_t)((code & 15) << (quarter >= 2 ? 4 : 0));
            p[128 + 32 * half + l] |= (uint8_t)((code >> 4) << (2 * quarter));
        }
        for (int k = 0; k < 16; k++) p[192 + k] = (uint8_t)(int8_t)hb->sc[k];
        put_half(p + 208, hb->d);
        break;
    case MOR__DT_Q2_K:  // scales[16] (scale | min << 4), qs[64], d, dmin
        for (int k = 0; k < 16; k++) p[k] = (uint8_t)(hb->sc[k] | hb->mn[k] << 4);
        for (int i = 0; i < 256; i++) {
            int half = i / 128, quarter = (i % 128) / 32, l = i % 32;
            p[16 + 32 * half + l] |= (uint8_t)(hb->q[i] << (2 * quarter));
        }
        put_half(p + 80, hb->d), put_half(p + 82, hb->dmin);
        break;
    case MOR__DT_Q3_K:  // hmask[32], qs[64], scales[12], d; code = q + 4, its bit 2 in hmask
        for (int i = 0; i < 256; i++) {
            int code = hb->q[i] + 4, half = i / 128, quarter = (i % 128) / 32, l = i % 32;
            p[32 + 32 * half + l] |= (uint8_t)((code & 3) << (2 * quarter));
            p[l] |= (uint8_t)((code >> 2) << (i / 32));
        }
        for (int k = 0; k < 16; k++) {  // six bits each: low four by nibbles, top two by pairs
            int u = hb->sc[k] + 32;
            p[96 + k % 8] |= (uint8_t)((u & 15) << (k < 8 ? 0 : 4));
            p[96 + 8 + k % 4] |= (uint8_t)((u >> 4) << (2 * (k / 4)));
        }
        put_half(p + 108, hb->d);
        break;
    default: break;
    }
}

// The value of weight i of hb for dt, from the formula.
static float hb_value(int dt, const hblock *hb, int i) {
    switch (dt) {
    case MOR__DT_Q4_1:
    case MOR__DT_Q5_1: return (float)hb->q[i] * hb->d + hb->dmin;
    case MOR__DT_Q5_0: return (float)hb->q[i] * hb->d;
    case MOR__DT_IQ4_NL: return hb->d * (float)iq4nl_v[hb->q[i]];
    case MOR__DT_Q4_K:
    case MOR__DT_Q5_K:
        return hb->d * (float)hb->sc[i / 32] * (float)hb->q[i] - hb->dmin * (float)hb->mn[i / 32];
    case MOR__DT_Q2_K:
        return hb->d * (float)hb->sc[i / 16] * (float)hb->q[i] - hb->dmin * (float)hb->mn[i / 16];
    default: return hb->d * (float)hb->sc[i / 16] * (float)hb->q[i];  // Q3_K, Q6_K
    }
}

// Random contents within each field's range; extremes on the first block (largest codes and
// scales, the most negative ones).
static void hb_random(int dt, hblock *hb, int extreme) {
    int qlo = 0, qhi = 15, slo = 0, shi = 63, mhi = 63;
    switch (dt) {
    case MOR__DT_Q5_0: qlo = -16, qhi = 15; break;
    case MOR__DT_Q5_1:
    case MOR__DT_Q5_K: qhi = 31; break;
    case MOR__DT_Q6_K: qlo = -32, qhi = 31, slo = -128, shi = 127; break;
    case MOR__DT_Q2_K: qhi = 3, shi = 15, mhi = 15; break;
    case MOR__DT_Q3_K: qlo = -4, qhi = 3, slo = -32, shi = 31; break;
    default: break;
    }
    uint64_t r;
    hb->d = mor__f16_to_f32(mor__f32_to_f16(0.01f * test_randf(&rng)));
    hb->dmin = mor__f16_to_f32(mor__f32_to_f16(0.02f * test_randf(&rng)));
    for (int i = 0; i < 256; i++)
        r = test_rand(&rng), hb->q[i] = qlo + (int)((r >> 33) % (uint64_t)(qhi - qlo + 1));
    for (int k = 0; k < 16; k++) {
        r = test_rand(&rng);
        hb->sc[k] = slo + (int)((r >> 33) % (uint64_t)(shi - slo + 1));
        hb->mn[k] = (int)((r >> 20) % (uint64_t)(mhi + 1));
    }
    if (extreme) {
        for (int i = 0; i < 256; i++) hb->q[i] = i % 2 ? qhi : qlo;
        for (int k = 0; k < 16; k++) hb->sc[k] = k % 2 ? slo : shi, hb->mn[k] = mhi;
        hb->d = -65504.0f / 1024, hb->dmin = 65504.0f / 2048;  // large halves
    }
    if (dt == MOR__DT_Q4_K || dt == MOR__DT_Q5_K)  // eight sub-blocks of 32: only sc/mn[0..7]
        for (int k = 8; k < 16; k++) hb->sc[k] = hb->sc[k - 8], hb->mn[k] = hb->mn[k - 8];
}

// (a): nb blocks packed from random and extreme contents decode exactly to their values.
static int check_layout(int dt) {
    const mor__kernels *ref = mor__kernels_ref();
    int64_t bw = mor__dtype_block((uint32_t)dt), bs = mor__dtype_row_bytes((uint32_t)dt, bw), nb = 6;
    uint8_t *buf = calloc((size_t)(nb * bs + 256), 1);
    hblock *hb = calloc((size_t)nb, sizeof *hb);
    float *out = falloc((size_t)(nb * bw));
    for (int64_t b = 0; b < nb; b++) {
        hb_random(dt, &hb[b], b == 0);
        uint8_t tmp[256];
        pack_block(dt, &hb[b], tmp);
        memcpy(buf + 1 + b * bs, tmp, (size_t)bs);  // one byte off: misaligned halves
    }
    ref->to_f32[dt](buf + 1, out, nb * bw);
    int bad = 0;
    for (int64_t b = 0; b < nb && !bad; b++)
        for (int64_t i = 0; i < bw && !bad; i++) {
            float want = hb_value(dt, &hb[b], (int)i), got = out[b * bw + i];
            if (!(got == want)) {
                bad = 1;
                printf("#   %s block %lld weight %lld: to_f32 %.9g, layout says %.9g\n", dt_name(dt),
                       (long long)b, (long long)i, got, want);
            }
        }
    free(buf), free(hb), free(out);
    return !bad;
}

// (b) on random blocks: rows x cols, T tokens; prints the largest error against w.x relative
// to sum |w x| (the activation quantization error) into *worst.
static int check_product(int dt, int64_t rows, int64_t cols, int64_t T, double *worst) {
    const mor__kernels *ref = mor__kernels_ref();
    float *deq = falloc((size_t)(rows * cols));
    uint8_t *W = make_w(dt, rows, cols, 0, deq);
    float *x = falloc((size_t)(T * cols)), *y = falloc((size_t)(T * rows)), *row = falloc((size_t)cols + 16);
    int8_t *q = calloc((size_t)cols, 1);
    float *dq = falloc((size_t)cols / 32);
    fill(x, (size_t)(T * cols), 1.0f);
    for (int64_t i = 0; i < cols; i += 7) x[i] *= 40.0f;  // uneven blocks: some values far below amax
    ref->matmul[dt](W, cols, 0, rows, x, T, cols, y, rows, row);
    int bad = 0;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * cols;
        ref->quant_act(xt, cols, q, dq);
        for (int64_t r = 0; r < rows; r++) {
            const float *w = deq + r * cols;
            double eq = 0, sq = 0, e = 0, sa = 0, bound = 0;
            for (int64_t b = 0; b < cols / 32; b++) {
                double amax = 0, sw = 0;
                for (int j = 0; j < 32; j++) {
                    int64_t i = b * 32 + j;
                    double xq = (double)dq[b] * q[i];
                    eq += w[i] * xq, sq += fabs(w[i] * xq);
                    e += (double)w[i] * xt[i], sa += fabs((double)w[i] * xt[i]);
                    amax = fmax(amax, fabs(xt[i])), sw += fabs(w[i]);
                }
                bound += amax / 127.0 * 0.57 * sw;
            }
            double got = y[t * rows + r];
            if (!(fabs(got - eq) <= TOL_MATMUL * sq + 1e-30) ||
                !(fabs(got - e) <= bound + TOL_MATMUL * sa + 1e-30)) {
                if (!bad)
                    printf("#   %s %lldx%lld t %lld r %lld: y %.9g, w.xq %.9g (sum %.3g), w.x %.9g (bound "
                           "%.3g)\n",
                           dt_name(dt), (long long)rows, (long long)cols, (long long)t, (long long)r, got, eq,
                           sq, e, bound);
                bad = 1;
            }
            if (sa > 0 && fabs(got - e) / sa > *worst) *worst = fabs(got - e) / sa;
        }
    }
    free(deq), free(W), free(x), free(y), free(row), free(q), free(dq);
    return !bad;
}

// (c): T = 5 at once against each token alone and rows split at odd places: the same bits.
static int check_batch_rule(int dt, int64_t rows, int64_t cols) {
    const mor__kernels *ref = mor__kernels_ref();
    const int64_t T = 5, ldx = cols + 1, ldy = rows + 2;
    float *deq = falloc((size_t)(rows * cols));
    uint8_t *W = make_w(dt, rows, cols, 0, deq);
    float *x = falloc((size_t)(T * ldx)), *row = falloc((size_t)cols + 16);
    float *y = falloc((size_t)(T * ldy)), *y1 = falloc((size_t)(T * ldy)), *y2 = falloc((size_t)(T * ldy));
    fill(x, (size_t)(T * ldx), 2.0f);
    ref->matmul[dt](W, cols, 0, rows, x, T, ldx, y, ldy, row);
    for (int64_t t = 0; t < T; t++)
        ref->matmul[dt](W, cols, 0, rows, x + t * ldx, 1, ldx, y1 + t * ldy, ldy, row);
    static const int64_t cuts[] = {1, 4, 9, 10};
    int64_t r = 0;
    for (int c = 0; c <= 4; c++) {
        int64_t r1 = c < 4 && cuts[c] < rows ? cuts[c] : rows;
        if (r1 > r) ref->matmul[dt](W, cols, r, r1, x, T, ldx, y2, ldy, row);
        r = r1 > r ? r1 : r;
    }
    int bad = 0;
    for (int64_t t = 0; t < T; t++)
        if (memcmp(y + t * ldy, y1 + t * ldy, (size_t)rows * 4) ||
            memcmp(y + t * ldy, y2 + t * ldy, (size_t)rows * 4))
            bad = 1, printf("#   %s: token %lld differs between T = 5, T = 1 and split rows\n", dt_name(dt),
                            (long long)t);
    free(deq), free(W), free(x), free(row), free(y), free(y1), free(y2);
    return !bad;
}

static void quant_type_test(int dt) {
    ASSERT(mor__dtype_computed((uint32_t)dt));
    ASSERT(mor__kernels_ref()->matmul[dt] != NULL && mor__kernels_ref()->to_f32[dt] != NULL);
    ASSERT(check_layout(dt));
    int64_t bw = mor__dtype_block((uint32_t)dt);
    double worst = 0;
    ASSERT(check_product(dt, 13, bw == 32 ? 96 : 512, 3, &worst));
    ASSERT(check_product(dt, 7, 1536, 2, &worst));
    printf("#   %s: largest |y - w.x| / sum |w x| = %.2e (activations quantized per 32)\n", dt_name(dt),
           worst);
    ASSERT(check_batch_rule(dt, 11, bw == 32 ? 160 : 768));
}

TEST(q4_1_layout_product_batch) { quant_type_test(MOR__DT_Q4_1); }
TEST(q5_0_layout_product_batch) { quant_type_test(MOR__DT_Q5_0); }
TEST(q5_1_layout_product_batch) { quant_type_test(MOR__DT_Q5_1); }
TEST(iq4_nl_layout_product_batch) { quant_type_test(MOR__DT_IQ4_NL); }
TEST(q2_k_layout_product_batch) { quant_type_test(MOR__DT_Q2_K); }
TEST(q3_k_layout_product_batch) { quant_type_test(MOR__DT_Q3_K); }
TEST(q4_k_layout_product_batch) { quant_type_test(MOR__DT_Q4_K); }
TEST(q5_k_layout_product_batch) { quant_type_test(MOR__DT_Q5_K); }
TEST(q6_k_layout_product_batch) { quant_type_test(MOR__DT_Q6_K); }

// ---- the GGUF reference implementation's own numbers (tests/data/quant/*.bin) ------------------
//
// Each file holds, for one type, rows quantized by the GGUF reference implementation's row
// quantizer, the source values, that implementation's dequantization of the rows, activations
// x and its dot products of the rows with x (its vec_dot, with its own activation format:
// 8-bit blocks of 32 for the 32-weight types, of 256 with a float scale for the K types).
// Layout (little-endian): "MQF1", u32 type, u32 rows, u32 cols, the quantized rows, rows * cols
// f32 source values, rows * cols f32 dequantized values, u32 T, T * cols f32 x, T * rows f32 y
// (y[t * rows + r]). Checks:
//   to_f32 against the dequantized values: bit for bit;
//   matmul against y: |y - y_ref| <= TOL_FIXTURE * sum |w x| (both sides quantize x to 8 bits,
//     by different blocks and rounding rules; measured: <= 4e-8 for Q8_0, Q4_0, Q5_0 and
//     IQ4_NL, whose activations are quantized the same way on both sides, 1.7e-4 for Q4_1 and
//     Q5_1, 7.4e-3 for the K types, whose reference quantizes x per 256 (its own error against
//     the exact w.x reaches 1.05e-2 on the token with an outlier), and within both sides'
//     activation bounds, sum over blocks of 32 of (amax_b + amax of its 256-block) / 127 * 0.57
//     * sum_b |w|;
//   the best table's matmul (the SIMD kernels) on the same data: within TOL_MATMUL of the
//     reference kernels' results;
//   Q8_0 and Q4_0: this project's weight quantizer gives the file's bytes from the source values.
#define TOL_FIXTURE 2e-2

static int read_all(const char *path, uint8_t **buf, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t cap = 1 << 16, len = 0, got;
    uint8_t *b = malloc(cap);
    while (b && (got = fread(b + len, 1, cap - len, f)) > 0)
        if ((len += got) == cap) b = realloc(b, cap *= 2);
    fclose(f);
    *buf = b, *n = len;
    return b != NULL;
}

static uint32_t rd_u32le(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

// worst[0]: largest |y - y_ref| / sum |w x|; worst[1], worst[2]: the same of y and of y_ref
// against the exact w.x (each side's activation quantization error).
static int check_fixture(const char *file, double *worst) {
    char path[512];
    uint8_t *buf = NULL;
    size_t n = 0;
    test_path(path, sizeof path, file);
    if (!read_all(path, &buf, &n)) return printf("#   %s: cannot read\n", path), 0;
    uint32_t dt = n >= 16 ? rd_u32le(buf + 4) : 0, rows = n >= 16 ? rd_u32le(buf + 8) : 0,
             cols = n >= 16 ? rd_u32le(buf + 12) : 0;
    int64_t bw = mor__dtype_block(dt);
    if (n < 16 || memcmp(buf, "MQF1", 4) || !mor__dtype_quantized(dt) || !rows || !cols || rows > 4096 ||
        cols > 65536 || cols % bw)
        return printf("#   %s: bad header\n", path), free(buf), 0;
    size_t rb = (size_t)mor__dtype_row_bytes(dt, cols), at = 16 + rows * rb, vals = (size_t)rows * cols * 4;
    if (n < at + 2 * vals + 4) return printf("#   %s: truncated\n", path), free(buf), 0;
    uint32_t T = rd_u32le(buf + at + 2 * vals);
    if (T > 64 || n != at + 2 * vals + 4 + (size_t)T * cols * 4 + (size_t)T * rows * 4)
        return printf("#   %s: size\n", path), free(buf), 0;
    const mor__kernels *ref = mor__kernels_ref();
    float *src = falloc((size_t)rows * cols), *deq = falloc((size_t)rows * cols),
          *mine = falloc((size_t)rows * cols);
    float *x = falloc((size_t)T * cols), *yref = falloc((size_t)T * rows), *y = falloc((size_t)T * rows);
    float *row = falloc((size_t)cols + 16);
    memcpy(src, buf + at, vals), memcpy(deq, buf + at + vals, vals);
    memcpy(x, buf + at + 2 * vals + 4, (size_t)T * cols * 4);
    memcpy(yref, buf + at + 2 * vals + 4 + (size_t)T * cols * 4, (size_t)T * rows * 4);
    int bad = 0;
    // to_f32: bit for bit.
    for (uint32_t r = 0; r < rows; r++) ref->to_f32[dt](buf + 16 + r * rb, mine + (size_t)r * cols, cols);
    for (size_t i = 0; i < (size_t)rows * cols && !bad; i++)
        if (memcmp(&mine[i], &deq[i], 4))
            bad = 1, printf("#   %s: to_f32 element %zu = %.9g, reference %.9g\n", file, i, mine[i], deq[i]);
    // Q8_0/Q4_0: the weight quantizer's bytes.
    if (!bad && (dt == MOR__DT_Q8_0 || dt == MOR__DT_Q4_0)) {
        uint8_t *qb = calloc(rows, rb);
        for (uint32_t r = 0; r < rows; r++) {
            if (dt == MOR__DT_Q8_0) mor__quantize_q8_0(src + (size_t)r * cols, qb + r * rb, cols);
            else mor__quantize_q4_0(src + (size_t)r * cols, qb + r * rb, cols);
        }
        if (memcmp(qb, buf + 16, rows * rb)) bad = 1, printf("#   %s: quantizer bytes differ\n", file);
        free(qb);
    }
    // matmul against the reference's dot products; the best table's (the SIMD kernels) on the same
    // data within TOL_MATMUL of ours.
    ref->matmul[dt](buf + 16, cols, 0, rows, x, T, cols, y, rows, row);
    float *yb = falloc((size_t)T * rows);
    mor__kernels_best()->matmul[dt](buf + 16, cols, 0, rows, x, T, cols, yb, rows, row);
    for (uint32_t t = 0; t < T && !bad; t++)
        for (uint32_t r = 0; r < rows && !bad; r++) {
            const float *w = deq + (size_t)r * cols, *xt = x + (size_t)t * cols;
            double sa = 0, bound = 0, e = 0;
            for (uint32_t b = 0; b < cols / 32; b++) {
                double a32 = 0, a256 = 0, sw = 0;
                for (uint32_t j = 0; j < 32; j++)
                    a32 = fmax(a32, fabs(xt[b * 32 + j])), sw += fabs(w[b * 32 + j]);
                for (uint32_t j = b / 8 * 256; j < b / 8 * 256 + 256 && j < cols; j++)
                    a256 = fmax(a256, fabs(xt[j]));
                for (uint32_t j = 0; j < 32; j++)
                    sa += fabs((double)w[b * 32 + j] * xt[b * 32 + j]),
                        e += (double)w[b * 32 + j] * xt[b * 32 + j];
                bound += (a32 + a256) / 127.0 * 0.57 * sw;
            }
            double d = fabs((double)y[t * rows + r] - yref[t * rows + r]);
            if (sa > 0) {
                worst[0] = fmax(worst[0], d / sa);
                worst[1] = fmax(worst[1], fabs(y[t * rows + r] - e) / sa);
                worst[2] = fmax(worst[2], fabs(yref[t * rows + r] - e) / sa);
            }
            if (!(d <= TOL_FIXTURE * sa) || !(d <= bound + 1e-6 * sa))
                bad = 1, printf("#   %s: y[%u][%u] = %.9g, reference %.9g (sum |w x| %.4g, bound %.4g)\n",
                                file, t, r, y[t * rows + r], yref[t * rows + r], sa, bound);
            if (!(fabs((double)yb[t * rows + r] - y[t * rows + r]) <= TOL_MATMUL * sa + 1e-30))
                bad = 1, printf("#   %s: %s kernels y[%u][%u] = %.9g, ref kernels %.9g\n", file, mor__kernels_best()->name,
                                t, r, yb[t * rows + r], y[t * rows + r]);
        }
    free(buf), free(src), free(deq), free(mine), free(x), free(yref), free(y), free(yb), free(row);
    return !bad;
}

TEST(gguf_reference_fixtures) {
    static const char *files[] = {"quant/Q8_0.bin",         "quant/Q4_0.bin", "quant/Q4_1.bin",
                                  "quant/Q5_0.bin",         "quant/Q5_1.bin", "quant/IQ4_NL.bin",
                                  "quant/IQ4_NL_chunk.bin", "quant/Q2_K.bin", "quant/Q3_K.bin",
                                  "quant/Q4_K.bin",         "quant/Q5_K.bin", "quant/Q6_K.bin"};
    int fails = 0;
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        double worst[3] = {0, 0, 0};
        int ok = check_fixture(files[i], worst);
        printf("#   %-24s max |y - y_ref| / sum |w x| = %.2e (vs exact w.x: y %.2e, y_ref %.2e) %s\n",
               files[i], worst[0], worst[1], worst[2], ok ? "ok" : "FAIL");
        fails += !ok;
    }
    ASSERT_EQ(fails, 0);
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

// clang-format off
static const test_entry all_tests[] = {
    TEST_LIST(quant_act_non_finite, ref_batch_independent_bit_exact, avx2_against_reference, avx512_against_reference,
              neon_against_reference, weight_quantization_round_trip_bounds,
              weight_quantization_matches_llama_cpp)
    TEST_LIST(q4_1_layout_product_batch, q5_0_layout_product_batch, q5_1_layout_product_batch,
              iq4_nl_layout_product_batch, q2_k_layout_product_batch, q3_k_layout_product_batch,
              q4_k_layout_product_batch, q5_k_layout_product_batch, q6_k_layout_product_batch,
              gguf_reference_fixtures)
    TEST_LIST(model_logits_best_vs_reference_kernels, quantized_model_logits_best_vs_reference_kernels,
              dispatch_names_and_switches)};
// clang-format on
TEST_MAIN_LIST(all_tests)
