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

// ---- the other quantized types: codes as bytes, integer sums per block or sub-block ----------
//
// x is quantized per block of 32 as for Q8_0, with the sums of its quantized values over each
// 16 (xtok). Tokens go in groups of up to 3 (the row scratch holds 3 quantized tokens); a tile
// is one row and the group's tokens, so each block of weights is decoded to bytes once for
// them. Every output (r, t) is one 8-lane float accumulator whatever the group, the tile or
// the row range: the arithmetic is the same for every T and split, so results are
// batch-independent. Lane sums of 4 products are exact integers; the float chain differs from
// the reference only in the order of the float additions.
// - Q5_0, IQ4_NL: signed codes (Q4_0's integer dot): acc += isum_lanes * (d * dx_b).
// - Q4_1, Q5_1: unsigned codes, acc += isum_lanes * (d * dx_b); the min's term (m * dx_b) *
//   qsum_b in a scalar chain of its own, added at the end.
// - K types: unsigned codes against x with vpmaddubsw, the pairs multiplied by the sub-block
//   scales with vpmaddwd (lanes of 4 products: one sub-block each), per block of 32
//   sacc += lanes * dx_b; per super-block acc += sacc * d, then the mins' term
//   acc -= (imn_b * dx_b) * dmin over the 8 blocks at once, imn_b = sum of mn_k * qsum_k over
//   its halves (vpmaddwd of the 16 mins with the 16 sums). Q6_K's and Q3_K's codes are
//   stored with an offset (32, 4): their "mins" are the scales and dmin is 32 d or 4 d.

typedef struct {
    const int8_t  *q;   // cols int8
    const float   *d;   // cols / 32 scales
    const int16_t *s;   // cols / 16 sums of 16 quantized values (the K types)
    const float   *sf;  // or, in the same bytes, cols / 32 sums of 32 as floats (Q4_1, Q5_1)
} xtok;

// Bytes of scratch a token takes: cols + cols / 8 + cols / 8 (so 3 tokens fit in cols floats).
#define XTOK_BYTES(cols) ((cols) + (cols) / 4)

static xtok xtok_prepare(const float *x, int64_t cols, uint8_t *buf, int f32sums) {
    int8_t *q = (int8_t *)buf;
    float *d = (float *)(buf + cols);  // cols is a multiple of 32: aligned as the scratch
    int16_t *s = (int16_t *)(d + cols / 32);
    float *sf = (float *)s;
    for (int64_t b = 0; b < cols / 32; b++) {
        d[b] = quant_block(x + b * 32, q + b * 32);
        __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(q + b * 32)), _mm256_set1_epi8((char)0x80));
        __m256i t = _mm256_sad_epu8(v, _mm256_setzero_si256());  // 4 sums of 8 bytes, each + 8 * 128
        __m128i lo = _mm256_castsi256_si128(t), hi = _mm256_extracti128_si256(t, 1);
        int s0 = _mm_cvtsi128_si32(lo) + _mm_extract_epi32(lo, 2) - 16 * 128, s1 = _mm_cvtsi128_si32(hi) + _mm_extract_epi32(hi, 2) - 16 * 128;
        if (f32sums) sf[b] = (float)(s0 + s1);
        else s[2 * b] = (int16_t)s0, s[2 * b + 1] = (int16_t)s1;
    }
    return (xtok){q, d, s, sf};
}

// 32 nibbles of a 16-byte array: elements 0..15 the low nibbles, 16..31 the high ones.
static inline __m256i nib32(const uint8_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)p);
    return _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1), _mm256_set1_epi8(0x0f));
}

// 0x10 in byte j where bit j of the little-endian 32-bit word at p is set, else 0.
static inline __m256i bit5_32(const uint8_t *p) {
    uint32_t u;
    memcpy(&u, p, 4);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)u), _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(0x10));
}

// The codes of a block of 32 (Q5_0, IQ4_NL: signed weights; Q4_1, Q5_1: unsigned).
static inline __attribute__((always_inline)) __m256i codes32(int dt, const uint8_t *p) {
    switch (dt) {
    case MOR__DT_Q5_0: return _mm256_sub_epi8(_mm256_or_si256(nib32(p + 6), bit5_32(p + 2)), _mm256_set1_epi8(16));
    case MOR__DT_Q4_1: return nib32(p + 4);
    case MOR__DT_Q5_1: return _mm256_or_si256(nib32(p + 8), bit5_32(p + 4));
    default: {  // IQ4_NL
        const __m256i v = _mm256_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113, -127, -104,
                                           -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113);
        return _mm256_shuffle_epi8(v, nib32(p + 2));
    }
    }
}

static inline int bsize32(int dt) {
    return dt == MOR__DT_Q5_0 ? MOR__Q5_0_SIZE : dt == MOR__DT_Q4_1 ? MOR__Q4_1_SIZE : dt == MOR__DT_Q5_1 ? MOR__Q5_1_SIZE : MOR__IQ4_NL_SIZE;
}

// One row (nb blocks of 32 at w) against C tokens.
static inline __attribute__((always_inline)) void tile32(int dt, const uint8_t *w, int64_t nb, const xtok *xt, float *y,
                                                         int64_t ldy, int C) {
    const int bs = bsize32(dt), has_min = dt == MOR__DT_Q4_1 || dt == MOR__DT_Q5_1;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[3];
    __m128 accm[3];
    UNROLL for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps(), accm[c] = _mm_setzero_ps();
    for (int64_t b = 0; b < nb; b++, w += bs) {
        __m256i wv = codes32(dt, w), aw = has_min ? wv : _mm256_sign_epi8(wv, wv);
        float d = rd_f16(w), m = has_min ? rd_f16(w + 2) : 0.0f;
        UNROLL for (int c = 0; c < C; c++) {
            __m256i qv = _mm256_loadu_si256((const __m256i *)(xt[c].q + b * 32));
            if (!has_min) qv = _mm256_sign_epi8(qv, wv);
            __m256i i = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, qv), ones);
            float dx = xt[c].d[b];
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(d * dx), acc[c]);
            if (has_min)
                accm[c] = _mm_fmadd_ss(_mm_set_ss(m * dx), _mm_load_ss(xt[c].sf + b), accm[c]);
        }
    }
    UNROLL for (int c = 0; c < C; c++) y[c * ldy] = has_min ? hsum(acc[c]) + _mm_cvtss_f32(accm[c]) : hsum(acc[c]);
}

static inline int bsizek(int dt) {
    switch (dt) {
    case MOR__DT_Q2_K: return MOR__Q2_K_SIZE;
    case MOR__DT_Q3_K: return MOR__Q3_K_SIZE;
    case MOR__DT_Q4_K: return MOR__Q4_K_SIZE;
    case MOR__DT_Q5_K: return MOR__Q5_K_SIZE;
    default: return MOR__Q6_K_SIZE;
    }
}

// Q4_K/Q5_K: the eight 6-bit scales and mins of the 12 bytes at s (dtype.h), as bytes.
static inline void k4_unpack(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    uint32_t a, b, c;
    memcpy(&a, s, 4), memcpy(&b, s + 4, 4), memcpy(&c, s + 8, 4);
    uint32_t v[4] = {a & 0x3f3f3f3fu, (c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u), b & 0x3f3f3f3fu,
                     ((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u)};
    memcpy(sc, v, 8), memcpy(mn, v + 2, 8);
}

// Q3_K: the sixteen scales (6 bits, minus 32) of the 12 bytes at s (dtype.h), as int8.
static inline __m128i k3_scales(const uint8_t *s) {
    uint32_t a, b, c;
    memcpy(&a, s, 4), memcpy(&b, s + 4, 4), memcpy(&c, s + 8, 4);
    const uint32_t m4 = 0x0f0f0f0fu, m2 = 0x03030303u;
    __m128i v = _mm_setr_epi32((int)((a & m4) | (c & m2) << 4), (int)((b & m4) | ((c >> 2) & m2) << 4),
                               (int)(((a >> 4) & m4) | ((c >> 4) & m2) << 4), (int)(((b >> 4) & m4) | ((c >> 6) & m2) << 4));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

// Words [s_2b x 8, s_2b+1 x 8] of the 16 words sc16 (the scales of block b's two halves).
static inline __m256i half_scales(__m256i sc16, int b) {
    __m256i v = _mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(b));
    return _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3,
                                                   2, 3, 2, 3));
}

// Bits 2g, 2g + 1 of each byte of v, moved to bits 4, 5 (g a constant).
static inline __m256i bits2_to_45(__m256i v, int g) {
    __m256i t = g == 0 ? _mm256_slli_epi16(v, 4) : g == 1 ? _mm256_slli_epi16(v, 2) : g == 2 ? v : _mm256_srli_epi16(v, 2);
    return _mm256_and_si256(t, _mm256_set1_epi8(0x30));
}

// Bits g, g + 1 ... : bit b of each byte of v moved to bit 4 (b a constant), others cleared.
static inline __m256i bit_to_4(__m256i v, int b) {
    __m256i t = b < 4 ? _mm256_slli_epi16(v, 4 - b) : b > 4 ? _mm256_srli_epi16(v, b - 4) : v;
    return _mm256_and_si256(t, _mm256_set1_epi8(0x10));
}

// One row (nsb super-blocks at w) against C tokens.
static inline __attribute__((always_inline)) void tilek(int dt, const uint8_t *w, int64_t nsb, const xtok *xt, float *y,
                                                        int64_t ldy, int C) {
    const int bs = bsizek(dt);
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(0x03);
    __m256 acc[3];
    UNROLL for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++, w += bs) {
        // The super-block's scales: sc16 (16 words, one a half: Q2_K, Q3_K, Q6_K) or scb (8
        // bytes, one a block: Q4_K, Q5_K); mn16 the mins of the 16 halves; d and dmin.
        __m256i sc16 = _mm256_setzero_si256(), mn16, hv = _mm256_setzero_si256();
        _Alignas(8) uint8_t scb[8] = {0}, mnb[8];
        float d, dmin;
        switch (dt) {
        case MOR__DT_Q4_K:
        case MOR__DT_Q5_K: {
            k4_unpack(w + 4, scb, mnb);
            __m128i m8 = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)mnb));
            mn16 = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_unpacklo_epi16(m8, m8)), _mm_unpackhi_epi16(m8, m8), 1);
            d = rd_f16(w), dmin = rd_f16(w + 2);
            if (dt == MOR__DT_Q5_K) hv = _mm256_loadu_si256((const __m256i *)(w + 16));
            break;
        }
        case MOR__DT_Q6_K:
            sc16 = mn16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 192)));
            d = rd_f16(w + 208), dmin = 32.0f * d;
            break;
        case MOR__DT_Q3_K:
            sc16 = mn16 = _mm256_cvtepi8_epi16(k3_scales(w + 96));
            d = rd_f16(w + 108), dmin = 4.0f * d;
            hv = _mm256_loadu_si256((const __m256i *)w);
            break;
        default: {  // Q2_K
            __m256i s = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)w));
            sc16 = _mm256_and_si256(s, _mm256_set1_epi16(15)), mn16 = _mm256_srli_epi16(s, 4);
            d = rd_f16(w + 80), dmin = rd_f16(w + 82);
            break;
        }
        }
        __m256 sacc[3];
        UNROLL for (int c = 0; c < C; c++) sacc[c] = _mm256_setzero_ps();
        UNROLL for (int b = 0; b < 8; b++) {
            __m256i cv, scv;
            const int h = b / 4, g = b % 4;
            switch (dt) {
            case MOR__DT_Q4_K:
            case MOR__DT_Q5_K: {
                __m256i v = _mm256_loadu_si256((const __m256i *)(w + (dt == MOR__DT_Q4_K ? 16 : 48) + 32 * (b / 2)));
                cv = _mm256_and_si256(b % 2 ? _mm256_srli_epi16(v, 4) : v, m4);
                if (dt == MOR__DT_Q5_K) cv = _mm256_or_si256(cv, bit_to_4(hv, b));
                scv = _mm256_set1_epi16(scb[b]);
                break;
            }
            case MOR__DT_Q6_K: {
                __m256i lo = _mm256_loadu_si256((const __m256i *)(w + 64 * h + 32 * (g & 1)));
                __m256i hi = _mm256_loadu_si256((const __m256i *)(w + 128 + 32 * h));
                cv = _mm256_or_si256(_mm256_and_si256(g < 2 ? lo : _mm256_srli_epi16(lo, 4), m4), bits2_to_45(hi, g));
                scv = half_scales(sc16, b);
                break;
            }
            case MOR__DT_Q3_K: {
                __m256i lo = _mm256_loadu_si256((const __m256i *)(w + 32 + 32 * h));
                __m256i t = g == 0 ? lo : _mm256_srli_epi16(lo, 2 * g);
                // bit b of hmask to bit 2: code = lo2 | h << 2 in 0..7 (the weight's q + 4)
                __m256i hb = _mm256_srli_epi16(bit_to_4(hv, b), 2);
                cv = _mm256_or_si256(_mm256_and_si256(t, m2), hb);
                scv = half_scales(sc16, b);
                break;
            }
            default: {  // Q2_K
                __m256i lo = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * h));
                cv = _mm256_and_si256(g == 0 ? lo : _mm256_srli_epi16(lo, 2 * g), m2);
                scv = half_scales(sc16, b);
                break;
            }
            }
            UNROLL for (int c = 0; c < C; c++) {
                __m256i qv = _mm256_loadu_si256((const __m256i *)(xt[c].q + 256 * sb + 32 * b));
                __m256i i = _mm256_madd_epi16(_mm256_maddubs_epi16(cv, qv), scv);
                sacc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_broadcast_ss(xt[c].d + 8 * sb + b), sacc[c]);
            }
        }
        UNROLL for (int c = 0; c < C; c++) {
            acc[c] = _mm256_fmadd_ps(sacc[c], _mm256_set1_ps(d), acc[c]);
            __m256i imn = _mm256_madd_epi16(mn16, _mm256_loadu_si256((const __m256i *)(xt[c].s + 16 * sb)));
            __m256 mt = _mm256_mul_ps(_mm256_cvtepi32_ps(imn), _mm256_loadu_ps(xt[c].d + 8 * sb));
            acc[c] = _mm256_fnmadd_ps(mt, _mm256_set1_ps(dmin), acc[c]);
        }
        (void)sc16;
    }
    UNROLL for (int c = 0; c < C; c++) y[c * ldy] = hsum(acc[c]);
}

static inline __attribute__((always_inline)) void qmatmul_x(int dt, const void *W, int64_t cols, int64_t r0, int64_t r1,
                                                            const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                                                            float *row) {
    const int k = mor__dtype_block((uint32_t)dt) == MOR__QK_K;
    const int64_t nb = cols / (k ? MOR__QK_K : MOR__QK), per = XTOK_BYTES(cols);
    const size_t rb = (size_t)mor__dtype_row_bytes((uint32_t)dt, cols);
    const int64_t ng = (T + 2) / 3;  // groups of nearly equal size, up to 3 tokens (the scratch holds 3)
    for (int64_t g = 0, t0 = 0; g < ng; g++) {
        int64_t C = T / ng + (g < T % ng);
        xtok xt[3];
        for (int64_t t = 0; t < C; t++)
            xt[t] = xtok_prepare(x + (t0 + t) * ldx, cols, (uint8_t *)row + t * per, dt == MOR__DT_Q4_1 || dt == MOR__DT_Q5_1);
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *w = (const uint8_t *)W + (size_t)r * rb;
            float *yt = y + t0 * ldy + r;
            if (k) {
                if (C == 1) tilek(dt, w, nb, xt, yt, ldy, 1);
                else if (C == 2) tilek(dt, w, nb, xt, yt, ldy, 2);
                else tilek(dt, w, nb, xt, yt, ldy, 3);
            } else {
                if (C == 1) tile32(dt, w, nb, xt, yt, ldy, 1);
                else if (C == 2) tile32(dt, w, nb, xt, yt, ldy, 2);
                else tile32(dt, w, nb, xt, yt, ldy, 3);
            }
        }
        t0 += C;
    }
}

#define QMATMUL_X(NAME, DT)                                                                            \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T, \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                               \
        qmatmul_x(DT, W, cols, r0, r1, x, T, ldx, y, ldy, row);                                      \
    }
QMATMUL_X(avx2_matmul_q4_1, MOR__DT_Q4_1)
QMATMUL_X(avx2_matmul_q5_0, MOR__DT_Q5_0)
QMATMUL_X(avx2_matmul_q5_1, MOR__DT_Q5_1)
QMATMUL_X(avx2_matmul_iq4_nl, MOR__DT_IQ4_NL)
QMATMUL_X(avx2_matmul_q2_k, MOR__DT_Q2_K)
QMATMUL_X(avx2_matmul_q3_k, MOR__DT_Q3_K)
QMATMUL_X(avx2_matmul_q4_k, MOR__DT_Q4_K)
QMATMUL_X(avx2_matmul_q5_k, MOR__DT_Q5_K)
QMATMUL_X(avx2_matmul_q6_k, MOR__DT_Q6_K)

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
    k->matmul[MOR__DT_Q4_1] = avx2_matmul_q4_1;
    k->matmul[MOR__DT_Q5_0] = avx2_matmul_q5_0;
    k->matmul[MOR__DT_Q5_1] = avx2_matmul_q5_1;
    k->matmul[MOR__DT_IQ4_NL] = avx2_matmul_iq4_nl;
    k->matmul[MOR__DT_Q2_K] = avx2_matmul_q2_k;
    k->matmul[MOR__DT_Q3_K] = avx2_matmul_q3_k;
    k->matmul[MOR__DT_Q4_K] = avx2_matmul_q4_k;
    k->matmul[MOR__DT_Q5_K] = avx2_matmul_q5_k;
    k->matmul[MOR__DT_Q6_K] = avx2_matmul_q6_k;
    k->quant_act = avx2_quant_act;
}
