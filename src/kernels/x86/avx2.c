// kernels/x86/avx2.c: AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c (this file
// only) and installed at run time when the CPU has those features. Each kernel computes what
// its reference in kernels/ref.c computes, up to float summation order.
#include "kernels.h"

#include <immintrin.h>
#include <string.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static float avx2_dot(const float *a, const float *b, int64_t n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum(_mm256_add_ps(s0, s1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void avx2_axpy(float *y, float a, const float *x, int64_t n) {
    __m256 va = _mm256_set1_ps(a);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

// Loads 8 weights of each type as floats.
static inline __m256 ld_f32(const void *w, int64_t i) { return _mm256_loadu_ps((const float *)w + i); }
static inline __m256 ld_f16(const void *w, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
}
static inline __m256 ld_bf16(const void *w, int64_t i) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

// One weight row against up to 4 token vectors at a time: each weight is loaded (and
// converted) once per group of 4 tokens.
#define MATMUL(NAME, LOAD, ESIZE, SCALAR)                                                                  \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,     \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                                   \
        (void)row;                                                                                       \
        for (int64_t r = r0; r < r1; r++) {                                                              \
            const void *w = (const char *)W + (size_t)(r * cols) * ESIZE;                                \
            int64_t t = 0;                                                                               \
            for (; t + 4 <= T; t += 4) {                                                                 \
                const float *x0 = x + t * ldx, *x1 = x0 + ldx, *x2 = x1 + ldx, *x3 = x2 + ldx;            \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                               \
                int64_t i = 0;                                                                           \
                for (; i + 8 <= cols; i += 8) {                                                          \
                    __m256 wv = LOAD(w, i);                                                              \
                    a0 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x0 + i), a0);                               \
                    a1 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x1 + i), a1);                               \
                    a2 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x2 + i), a2);                               \
                    a3 = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x3 + i), a3);                               \
                }                                                                                        \
                float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);                        \
                for (; i < cols; i++) {                                                                  \
                    float wi = SCALAR(w, i);                                                             \
                    s0 += wi * x0[i], s1 += wi * x1[i], s2 += wi * x2[i], s3 += wi * x3[i];              \
                }                                                                                        \
                y[t * ldy + r] = s0, y[(t + 1) * ldy + r] = s1, y[(t + 2) * ldy + r] = s2;               \
                y[(t + 3) * ldy + r] = s3;                                                               \
            }                                                                                            \
            for (; t < T; t++) {                                                                         \
                const float *x0 = x + t * ldx;                                                           \
                __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                                \
                int64_t i = 0;                                                                           \
                for (; i + 16 <= cols; i += 16) {                                                        \
                    a0 = _mm256_fmadd_ps(LOAD(w, i), _mm256_loadu_ps(x0 + i), a0);                       \
                    a1 = _mm256_fmadd_ps(LOAD(w, i + 8), _mm256_loadu_ps(x0 + i + 8), a1);               \
                }                                                                                        \
                for (; i + 8 <= cols; i += 8) a0 = _mm256_fmadd_ps(LOAD(w, i), _mm256_loadu_ps(x0 + i), a0); \
                float s0 = hsum(_mm256_add_ps(a0, a1));                                                  \
                for (; i < cols; i++) s0 += SCALAR(w, i) * x0[i];                                        \
                y[t * ldy + r] = s0;                                                                     \
            }                                                                                            \
        }                                                                                                \
    }

static inline float sc_f32(const void *w, int64_t i) { return ((const float *)w)[i]; }
static inline float sc_f16(const void *w, int64_t i) { return mor__f16_to_f32(((const uint16_t *)w)[i]); }
static inline float sc_bf16(const void *w, int64_t i) { return mor__bf16_to_f32(((const uint16_t *)w)[i]); }

MATMUL(avx2_matmul_f32, ld_f32, 4, sc_f32)
MATMUL(avx2_matmul_f16, ld_f16, 2, sc_f16)
MATMUL(avx2_matmul_bf16, ld_bf16, 2, sc_bf16)

static void avx2_f16_row(const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld_f16(src, i));
    for (; i < n; i++) dst[i] = sc_f16(src, i);
}

static void avx2_bf16_row(const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld_bf16(src, i));
    for (; i < n; i++) dst[i] = sc_bf16(src, i);
}

void mor__kernels_install_avx2(mor__kernels *k);
void mor__kernels_install_avx2(mor__kernels *k) {
    k->name = "avx2";
    k->matmul[MOR__KT_F32] = avx2_matmul_f32;
    k->matmul[MOR__KT_F16] = avx2_matmul_f16;
    k->matmul[MOR__KT_BF16] = avx2_matmul_bf16;
    k->dot = avx2_dot;
    k->axpy = avx2_axpy;
    k->to_f32[MOR__KT_F16] = avx2_f16_row;
    k->to_f32[MOR__KT_BF16] = avx2_bf16_row;
}
