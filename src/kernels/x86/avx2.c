// kernels/x86/avx2.c: AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c (this file
// only) and installed over the reference table at run time (dispatch.c) when the CPU has those
// features. Each kernel computes what its reference in kernels/ref.c computes, up to float
// summation order.
#include "kernels.h"

#include <immintrin.h>
#include <string.h>

#define UNROLL _Pragma("GCC unroll 16")

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
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

static inline float sc_f16(const void *w, int64_t i) { return mor__f16_to_f32(((const uint16_t *)w)[i]); }
static inline float sc_bf16(const void *w, int64_t i) { return mor__bf16_to_f32(((const uint16_t *)w)[i]); }

// ---- float products -------------------------------------------------------------------------
//
// One arithmetic for every output, whatever the batch (as in avx512.c, with 8 lanes): y[t][r] is
// one 8-lane accumulator, acc = fma(w[i..i+8), x[t][i..i+8), acc) over the row's 8-float slices
// in order, the last one zero-padded, then hsum(). Tiles of 4 rows x up to 3 tokens only decide
// which dot products share loads, so T, the token's place and the row range never change a bit.

// 8 weights of type dt at element i as floats; n < 8: the first n, zeros above.
static inline __attribute__((always_inline)) __m256 ld_w8(int dt, const void *w, int64_t i, int64_t n) {
    if (n >= 8) return dt == MOR__DT_F32 ? ld_f32(w, i) : dt == MOR__DT_F16 ? ld_f16(w, i) : ld_bf16(w, i);
    if (dt == MOR__DT_F32) {
        float tmp[8] = {0};
        memcpy(tmp, (const float *)w + i, (size_t)n * 4);
        return _mm256_loadu_ps(tmp);
    }
    uint16_t tmp[8] = {0};
    memcpy(tmp, (const uint16_t *)w + i, (size_t)n * 2);
    return dt == MOR__DT_F16 ? ld_f16(tmp, 0) : ld_bf16(tmp, 0);
}

static inline __attribute__((always_inline)) void ftile8(int dt, const uint8_t *w, size_t rb, int64_t cols, const float *x,
                                                         int64_t ldx, float *y, int64_t ldy, int R, int C) {
    __m256 acc[4][3];
    UNROLL for (int a = 0; a < R; a++) UNROLL for (int c = 0; c < C; c++) acc[a][c] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= cols; i += 8) {
        __m256 xv[3];
        UNROLL for (int c = 0; c < C; c++) xv[c] = _mm256_loadu_ps(x + c * ldx + i);
        UNROLL for (int a = 0; a < R; a++) {
            __m256 wv = ld_w8(dt, w + a * rb, i, 8);
            if (C > 1) __asm__("" : "+x"(wv));  // one load, not a memory operand of each FMA
            UNROLL for (int c = 0; c < C; c++) acc[a][c] = _mm256_fmadd_ps(wv, xv[c], acc[a][c]);
        }
    }
    if (i < cols) {
        __m256 xv[3];
        UNROLL for (int c = 0; c < C; c++) {
            float tmp[8] = {0};
            memcpy(tmp, x + c * ldx + i, (size_t)(cols - i) * 4);
            xv[c] = _mm256_loadu_ps(tmp);
        }
        UNROLL for (int a = 0; a < R; a++) {
            __m256 wv = ld_w8(dt, w + a * rb, i, cols - i);
            UNROLL for (int c = 0; c < C; c++) acc[a][c] = _mm256_fmadd_ps(wv, xv[c], acc[a][c]);
        }
    }
    UNROLL for (int a = 0; a < R; a++) UNROLL for (int c = 0; c < C; c++) y[c * ldy + a] = hsum(acc[a][c]);
}

#define FTILE8(DT, NAME, R, C)                                                                                   \
    static void NAME##_##R##x##C(const uint8_t *w, size_t rb, int64_t cols, const float *x, int64_t ldx, float *y, \
                                 int64_t ldy) {                                                                  \
        ftile8(DT, w, rb, cols, x, ldx, y, ldy, R, C);                                                           \
    }
#define FMATMUL8(NAME, DT)                                                                                        \
    FTILE8(DT, NAME, 1, 1) FTILE8(DT, NAME, 1, 2) FTILE8(DT, NAME, 1, 3)                                          \
    FTILE8(DT, NAME, 4, 1) FTILE8(DT, NAME, 4, 2) FTILE8(DT, NAME, 4, 3)                                          \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T, int64_t ldx, \
                     float *y, int64_t ldy, float *row) {                                                        \
        (void)row;                                                                                               \
        typedef void (*fn)(const uint8_t *, size_t, int64_t, const float *, int64_t, float *, int64_t);          \
        static const fn tab[2][4] = {{NULL, NAME##_1x1, NAME##_1x2, NAME##_1x3},                                  \
                                     {NULL, NAME##_4x1, NAME##_4x2, NAME##_4x3}};                                 \
        const size_t rb = (size_t)mor__dtype_row_bytes(DT, cols);                                                   \
        for (int64_t r = r0; r < r1;) {                                                                          \
            int R4 = r1 - r >= 4;                                                                                \
            for (int64_t t = 0; t < T; t += 3) {                                                                 \
                int C = T - t >= 3 ? 3 : (int)(T - t);                                                           \
                tab[R4][C]((const uint8_t *)W + (size_t)r * rb, rb, cols, x + t * ldx, ldx, y + t * ldy + r, ldy);  \
            }                                                                                                    \
            r += R4 ? 4 : 1;                                                                                     \
        }                                                                                                        \
    }

FMATMUL8(avx2_matmul_f32, MOR__DT_F32)
FMATMUL8(avx2_matmul_f16, MOR__DT_F16)
FMATMUL8(avx2_matmul_bf16, MOR__DT_BF16)

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

// ---- quantized products: x quantized per token, integer block sums with vpmaddubsw ------------

static inline float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// One block of 32, exactly as the reference (the conversion rounds to nearest even).
static inline float quant_block(const float *x, int8_t *q) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float amax = _mm_cvtss_f32(h), id = amax != 0.0f ? 127.0f / amax : 0.0f;
    __m256 vid = _mm256_set1_ps(id);
    __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));  // undo the lane interleave
    _mm256_storeu_si256((__m256i *)q, p);
    return _cvtsh_ss(_cvtss_sh(amax / 127.0f, 0));
}

static void avx2_quant_act(const float *x, int64_t n, int8_t *q, float *d) {
    for (int64_t b = 0; b < n / 32; b++) d[b] = quant_block(x + b * 32, q + b * 32);
}

static inline __m256 block_dot(__m256i w, __m256i q) {  // w, q signed bytes: 8 lanes of int32 sums, as floats
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

#define QMATMUL(NAME, BSIZE, LOADW)                                                                     \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,  \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                                \
        int64_t nb = cols / 32;                                                                       \
        int8_t *q = (int8_t *)row;                                                                    \
        float *d = row + cols / 4;                                                                    \
        for (int64_t t = 0; t < T; t++) {                                                             \
            avx2_quant_act(x + t * ldx, cols, q, d);                                                  \
            for (int64_t r = r0; r < r1; r++) {                                                       \
                const uint8_t *w = (const uint8_t *)W + (size_t)(r * nb) * BSIZE;                     \
                __m256 acc = _mm256_setzero_ps();                                                     \
                for (int64_t b = 0; b < nb; b++, w += BSIZE) {                                        \
                    __m256i wv = LOADW(w);                                                            \
                    __m256i qv = _mm256_loadu_si256((const __m256i *)(q + b * 32));                   \
                    acc = _mm256_fmadd_ps(block_dot(wv, qv), _mm256_set1_ps(rd_f16(w) * d[b]), acc);   \
                }                                                                                     \
                y[t * ldy + r] = hsum(acc);                                                           \
            }                                                                                         \
        }                                                                                             \
    }

static inline __m256i ld_q8_0(const uint8_t *w) { return _mm256_loadu_si256((const __m256i *)(w + 2)); }
static inline __m256i ld_q4_0(const uint8_t *w) {  // nibbles - 8 as signed bytes, elements 0..31
    __m128i v = _mm_loadu_si128((const __m128i *)(w + 2));
    __m256i u = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1),
                                 _mm256_set1_epi8(0x0f));
    return _mm256_sub_epi8(u, _mm256_set1_epi8(8));
}

QMATMUL(avx2_matmul_q8_0, 34, ld_q8_0)
QMATMUL(avx2_matmul_q4_0, 18, ld_q4_0)

void mor__kernels_install_avx2(mor__kernels *k);
void mor__kernels_install_avx2(mor__kernels *k) {
    k->name = "avx2";
    k->matmul[MOR__DT_F32] = avx2_matmul_f32;
    k->matmul[MOR__DT_F16] = avx2_matmul_f16;
    k->matmul[MOR__DT_BF16] = avx2_matmul_bf16;
    k->to_f32[MOR__DT_F16] = avx2_f16_row;
    k->to_f32[MOR__DT_BF16] = avx2_bf16_row;
    k->matmul[MOR__DT_Q8_0] = avx2_matmul_q8_0;
    k->matmul[MOR__DT_Q4_0] = avx2_matmul_q4_0;
    k->quant_act = avx2_quant_act;
}
