// kernels/x86/avx512.c: AVX-512 (F, BW, VL, DQ) + VNNI kernels. Compiled with the AVX-512 flags
// (this file only) and installed over the AVX2 table when the CPU has them. Each kernel
// computes what its reference in kernels/ref.c computes: the integer parts of the quantized
// products and the activation quantization bit for bit, float sums up to summation order.
//
// Two shapes of matrix product:
// - Few tokens (decode): stream each weight row once, all tokens of the call against it, one
//   64-byte line per load; the reduction runs along the row.
// - Many tokens (prompt): vector lanes are 16 tokens. x is packed once per call and k-chunk,
//   token-major within each k (floats) or each 4-byte group (int8); each weight element is
//   broadcast against 16 tokens, so a tile of rows x tokens stays in registers and there is
//   no horizontal sum. Outputs go to y with scatter (gather-add for later k-chunks).
// Q8_0/Q4_0 products use vpdpbusd (u8 x s8): x + 128 as the unsigned side with the weight
// bytes signed, corrected by -128 * sum(w) per block; for the single-token path the nibbles are
// the unsigned side and x the signed one, corrected by -8 * sum(x).
#include "kernels.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define UNROLL _Pragma("GCC unroll 32")

static inline float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

static inline __mmask16 tail16(int64_t n) { return (__mmask16)((1u << n) - 1u); }

// ---- exp ------------------------------------------------------------------------------------

// e^x for x in [-88, 88] (clamped), about 1 ulp: 2^n * p(r), r = x - n ln2, |r| <= ln2 / 2.
static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

// ---- vector helpers ------------------------------------------------------------------------

static float avx512_dot(const float *a, const float *b, int64_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
    }
    for (; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

static void avx512_axpy(float *y, float a, const float *x, int64_t n) {
    __m512 va = _mm512_set1_ps(a);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
    }
}

// 16 weights (masked) as floats.
static inline __m512 ld_w(int kt, const void *w, int64_t i, __mmask16 m) {
    if (kt == MOR__KT_F32) return _mm512_maskz_loadu_ps(m, (const float *)w + i);
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (kt == MOR__KT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static void avx512_f16_row(const void *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(dst + i, m, ld_w(MOR__KT_F16, src, i, m));
    }
}

static void avx512_bf16_row(const void *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(dst + i, m, ld_w(MOR__KT_BF16, src, i, m));
    }
}

// ---- float products, few tokens ------------------------------------------------------------

// RR rows x TT tokens, the whole row length in registers.
static inline __attribute__((always_inline)) void gemv_tile(int kt, const uint8_t *w, size_t rb, int64_t cols,
                                                            const float *x, int64_t ldx, float *y, int64_t ldy,
                                                            int RR, int TT) {
    __m512 acc[4][4];
    UNROLL for (int a = 0; a < RR; a++) UNROLL for (int b = 0; b < TT; b++) acc[a][b] = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= cols; i += 16) {
        UNROLL for (int a = 0; a < RR; a++) {
            __m512 wv = ld_w(kt, w + a * rb, i, 0xffff);
            UNROLL for (int b = 0; b < TT; b++) acc[a][b] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + b * ldx + i), acc[a][b]);
        }
    }
    if (i < cols) {
        __mmask16 m = tail16(cols - i);
        UNROLL for (int a = 0; a < RR; a++) {
            __m512 wv = ld_w(kt, w + a * rb, i, m);
            UNROLL for (int b = 0; b < TT; b++) acc[a][b] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + b * ldx + i), acc[a][b]);
        }
    }
    UNROLL for (int a = 0; a < RR; a++) UNROLL for (int b = 0; b < TT; b++) y[b * ldy + a] = _mm512_reduce_add_ps(acc[a][b]);
}

static inline __attribute__((always_inline)) void gemv(int kt, const void *W, int64_t cols, int64_t r0, int64_t r1,
                                                       const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy) {
    size_t rb = (size_t)mor__kt_row_bytes(kt, cols);
    const uint8_t *w = W;
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) gemv_tile(kt, w + r * rb, rb, cols, x + t * ldx, ldx, y + t * ldy + r, ldy, 2, 4);
        for (; r < r1; r++) gemv_tile(kt, w + r * rb, rb, cols, x + t * ldx, ldx, y + t * ldy + r, ldy, 1, 4);
    }
    for (; t < T; t++) {
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) gemv_tile(kt, w + r * rb, rb, cols, x + t * ldx, ldx, y + t * ldy + r, ldy, 4, 1);
        for (; r < r1; r++) gemv_tile(kt, w + r * rb, rb, cols, x + t * ldx, ldx, y + t * ldy + r, ldy, 1, 1);
    }
}

// ---- float products, many tokens -----------------------------------------------------------

#define KC 512   // k-chunk of the packed x (floats): 512 x 32 tokens = 64 KiB
#define TL 32    // tokens per tile of the float products
#define TLQ 64   // tokens per tile of the quantized products

// Writes (first k-chunk) or adds the 16 token lanes of acc (row r) to y, lanes under m.
static inline void put_lanes(float *y, __m512i idx, __m512 acc, __mmask16 m, int first) {
    if (!first) acc = _mm512_add_ps(acc, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, y, 4));
    _mm512_mask_i32scatter_ps(y, m, idx, acc, 4);
}

// RR rows x NT token vectors over kc packed k values; wr[a] points at row a's kc floats.
static inline __attribute__((always_inline)) void lane_tile(const float *const *wr, const float *xt, int64_t kc,
                                                            float *y, int64_t ldy, __m512i idx, int64_t nt,
                                                            int first, int RR, int NT) {
    __m512 acc[12][2];
    UNROLL for (int a = 0; a < RR; a++) UNROLL for (int b = 0; b < NT; b++) acc[a][b] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m512 xv[4];
        UNROLL for (int b = 0; b < NT; b++) xv[b] = _mm512_load_ps(xt + k * TL + 16 * b);
        UNROLL for (int a = 0; a < RR; a++) {
            __m512 wv = _mm512_set1_ps(wr[a][k]);
            UNROLL for (int b = 0; b < NT; b++) acc[a][b] = _mm512_fmadd_ps(wv, xv[b], acc[a][b]);
        }
    }
    UNROLL for (int b = 0; b < NT; b++) {
        int64_t left = nt - 16 * b;
        __mmask16 m = left >= 16 ? 0xffff : tail16(left);
        UNROLL for (int a = 0; a < RR; a++) put_lanes(y + 16 * b * ldy + a, idx, acc[a][b], m, first);
    }
}

static inline __attribute__((always_inline)) void lane_rows(int kt, const uint8_t *w, size_t rb, int64_t k0,
                                                            int64_t kc, int64_t r0, int64_t r1, const float *xt,
                                                            float *y, int64_t ldy, __m512i idx, int64_t nt,
                                                            int first, float *wbuf, int RR, int NT) {
    int64_t r = r0;
    for (; r + RR <= r1; r += RR) {
        const float *wr[12];
        UNROLL for (int a = 0; a < RR; a++) {
            const uint8_t *src = w + (size_t)(r + a) * rb;  // copied (converted) to L1-resident rows
            float *dst = wbuf + a * KC;
            for (int64_t i = 0; i < kc; i += 16) {
                __mmask16 m = kc - i >= 16 ? 0xffff : tail16(kc - i);
                _mm512_mask_storeu_ps(dst + i, m, ld_w(kt, src, k0 + i, m));
            }
            wr[a] = dst;
        }
        lane_tile(wr, xt, kc, y + r, ldy, idx, nt, first, RR, NT);
    }
    for (; r < r1; r++) {
        const float *wr[1];
        const uint8_t *src = w + (size_t)r * rb;
        if (kt == MOR__KT_F32) {
            wr[0] = (const float *)src + k0;
        } else {
            for (int64_t i = 0; i < kc; i += 16) {
                __mmask16 m = kc - i >= 16 ? 0xffff : tail16(kc - i);
                _mm512_mask_storeu_ps(wbuf + i, m, ld_w(kt, src, k0 + i, m));
            }
            wr[0] = wbuf;
        }
        lane_tile(wr, xt, kc, y + r, ldy, idx, nt, first, 1, NT);
    }
}

static inline __attribute__((always_inline)) void gemm_lanes(int kt, const void *W, int64_t cols, int64_t r0,
                                                             int64_t r1, const float *x, int64_t T, int64_t ldx,
                                                             float *y, int64_t ldy) {
    _Alignas(64) float xt[KC * TL];
    _Alignas(64) float wbuf[12 * KC];
    size_t rb = (size_t)mor__kt_row_bytes(kt, cols);
    __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                     _mm512_set1_epi32((int)ldy));
    for (int64_t t0 = 0; t0 < T; t0 += TL) {
        int64_t nt = T - t0 < TL ? T - t0 : TL, NT = (nt + 15) / 16;
        for (int64_t k0 = 0; k0 < cols; k0 += KC) {
            int64_t kc = cols - k0 < KC ? cols - k0 : KC;
            // pack: xt[k][t] = x[t0 + t][k0 + k], zero beyond nt
            for (int64_t t = 0; t < NT * 16; t++) {
                if (t < nt) {
                    const float *src = x + (t0 + t) * ldx + k0;
                    for (int64_t k = 0; k < kc; k++) xt[k * TL + t] = src[k];
                } else {
                    for (int64_t k = 0; k < kc; k++) xt[k * TL + t] = 0;
                }
            }
            float *yt = y + t0 * ldy;
            int first = k0 == 0;
            switch (NT) {
            case 1: lane_rows(kt, W, rb, k0, kc, r0, r1, xt, yt, ldy, idx, nt, first, wbuf, 12, 1); break;
            default: lane_rows(kt, W, rb, k0, kc, r0, r1, xt, yt, ldy, idx, nt, first, wbuf, 12, 2); break;
            }
        }
    }
}

// Lanes pay off once the 16 lanes are mostly full; the scatter index needs ldy * 16 in int32.
#define LANE_MIN_T 12

#define FMATMUL(NAME, KT)                                                                                    \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,       \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                                     \
        (void)row;                                                                                         \
        if (T >= LANE_MIN_T && cols > 0 && ldy < (1 << 24)) gemm_lanes(KT, W, cols, r0, r1, x, T, ldx, y, ldy);       \
        else gemv(KT, W, cols, r0, r1, x, T, ldx, y, ldy);                                                 \
    }
FMATMUL(avx512_matmul_f32, MOR__KT_F32)
FMATMUL(avx512_matmul_f16, MOR__KT_F16)
FMATMUL(avx512_matmul_bf16, MOR__KT_BF16)

// ---- activation quantization ---------------------------------------------------------------

// One block of 32: q and the f16-rounded scale, exactly as the reference.
static inline float quant_block(const float *x, int8_t *q) {
    __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    __m512 vid = _mm512_set1_ps(id);
    __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, vid)), qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, vid));
    _mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(qa));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtsepi32_epi8(qb));
    return _cvtsh_ss(_cvtss_sh(amax / 127.0f, _MM_FROUND_TO_NEAREST_INT));
}

static void avx512_quant_act(const float *x, int64_t n, int8_t *q, float *d) {
    for (int64_t b = 0; b < n / MOR__QK; b++) d[b] = quant_block(x + b * MOR__QK, q + b * MOR__QK);
}

// ---- quantized products, few tokens --------------------------------------------------------

// Scratch of one token (in the caller's row scratch, 3 * cols bytes):
//   q[cols] int8; xu[cols] = q + 128 (Q8_0) or the -8 * sum(q) block corrections, one int32 in
//   the first lane of each 8-lane half (Q4_0); dxe[cols / 4] floats: each block's scale 8 times.
typedef struct {
    int8_t  *q;
    uint8_t *xu;
    int32_t *corr;
    float   *dxe;
} qx;

static qx qx_prepare(int kt, const float *x, int64_t cols, float *row) {
    qx s;
    int64_t nb = cols / MOR__QK;
    s.q = (int8_t *)row;
    s.dxe = row + cols / 4;              // cols / 4 floats
    s.xu = (uint8_t *)(row + cols / 2);  // cols bytes
    s.corr = (int32_t *)(row + cols / 2);
    for (int64_t b = 0; b < nb; b++) {
        float d = quant_block(x + b * MOR__QK, s.q + b * MOR__QK);
        _mm256_storeu_ps(s.dxe + b * 8, _mm256_set1_ps(d));
        __m256i v = _mm256_loadu_si256((const __m256i *)(s.q + b * MOR__QK));
        if (kt == MOR__KT_Q8_0) {
            _mm256_storeu_si256((__m256i *)(s.xu + b * MOR__QK), _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)));
        } else {
            __m256i sum = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
            __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
            int32_t tot = (int32_t)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1)) - 32 * 128;
            _mm256_storeu_si256((__m256i *)(s.corr + b * 8), _mm256_setr_epi32(-8 * tot, 0, 0, 0, 0, 0, 0, 0));
        }
    }
    return s;
}

// Two blocks' f16 scales at byte offsets 0 and BS of p, each spread over 8 lanes.
static inline __m512 two_scales(const uint8_t *p, int bs) {
    __m256i h = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)(p[0] | p[1] << 8))),
                                        _mm_set1_epi16((short)(p[bs] | p[bs + 1] << 8)), 1);
    return _mm512_cvtph_ps(h);
}

static inline __m512i q4_two(const uint8_t *p) {  // nibbles of two Q4_0 blocks at p, p + 18
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(p + 2))),
                                        _mm_loadu_si128((const __m128i *)(p + 20)), 1);
    __m512i z = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), _mm512_castsi256_si512(v));
    z = _mm512_srlv_epi16(z, _mm512_setr_epi64(0, 0, 0x0004000400040004LL, 0x0004000400040004LL, 0, 0,
                                               0x0004000400040004LL, 0x0004000400040004LL));
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
}

static inline __m256i q4_one(const uint8_t *p) {
    __m128i v = _mm_loadu_si128((const __m128i *)(p + 2));
    return _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1),
                            _mm256_set1_epi8(0x0f));
}

// RR rows at once (shared x loads, RR independent streams in flight), prefetching ahead.
static inline __attribute__((always_inline)) void qdot_rows(int kt, const uint8_t *w, size_t rb, const qx *s,
                                                            int64_t nb, float *y, int RR) {
    __m512 acc[4];
    const __m512i c128 = _mm512_set1_epi8((char)0x80);
    const int bs = kt == MOR__KT_Q8_0 ? MOR__Q8_0_SIZE : MOR__Q4_0_SIZE;
    UNROLL for (int a = 0; a < RR; a++) acc[a] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512 dx = _mm512_loadu_ps(s->dxe + b * 8);
        __m512i xv = kt == MOR__KT_Q8_0 ? _mm512_loadu_si512(s->xu + b * MOR__QK) : _mm512_loadu_si512(s->q + b * MOR__QK);
        UNROLL for (int a = 0; a < RR; a++) {
            const uint8_t *p = w + a * rb + b * bs;
            _mm_prefetch((const char *)(p + 4 * rb), _MM_HINT_T0);
            __m512i i;
            if (kt == MOR__KT_Q8_0) {
                __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p + 2))),
                                                _mm256_loadu_si256((const __m256i *)(p + 36)), 1);
                i = _mm512_sub_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xv, wv),
                                     _mm512_dpbusd_epi32(_mm512_setzero_si512(), c128, wv));
            } else {
                i = _mm512_dpbusd_epi32(_mm512_loadu_si512(s->corr + b * 8), q4_two(p), xv);
            }
            acc[a] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_mul_ps(two_scales(p, bs), dx), acc[a]);
        }
    }
    UNROLL for (int a = 0; a < RR; a++) {
        float r = _mm512_reduce_add_ps(acc[a]);
        if (b < nb) {  // an odd last block
            const uint8_t *p = w + a * rb + b * bs;
            __m256i i;
            if (kt == MOR__KT_Q8_0) {
                __m256i wv = _mm256_loadu_si256((const __m256i *)(p + 2));
                i = _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_loadu_si256((const __m256i *)(s->xu + b * MOR__QK)), wv),
                                     _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), wv));
            } else {
                i = _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)(s->corr + b * 8)), q4_one(p),
                                        _mm256_loadu_si256((const __m256i *)(s->q + b * MOR__QK)));
            }
            __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(rd_f16(p) * s->dxe[b * 8]));
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            r += _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
        }
        y[a] = r;
    }
}

static inline __attribute__((always_inline)) void qgemv(int kt, const void *W, int64_t cols, int64_t r0, int64_t r1,
                                                        const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                                                        float *row) {
    int64_t nb = cols / MOR__QK;
    size_t rb = (size_t)mor__kt_row_bytes(kt, cols);
    for (int64_t t = 0; t < T; t++) {
        qx s = qx_prepare(kt, x + t * ldx, cols, row);
        const uint8_t *w = (const uint8_t *)W;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) qdot_rows(kt, w + r * rb, rb, &s, nb, y + t * ldy + r, 4);
        for (; r < r1; r++) qdot_rows(kt, w + r * rb, rb, &s, nb, y + t * ldy + r, 1);
    }
}

// ---- quantized products, many tokens -------------------------------------------------------

#define KCQ 512  // k-chunk of the packed x (int8): 512 x 64 tokens = 32 KiB

// Packed x for a tile of up to 64 tokens and a k-chunk: xq[(g * NT + j) * 64 + 4 * l + m] is
// x + 128 of token 16 j + l, element 4 g + m; xd[b * 64 + t] the block scales; xc[b * 64 + t]
// the Q4_0 corrections -8 * sum(q).
typedef struct {
    uint8_t xq[KCQ * TLQ];
    float   xd[KCQ / MOR__QK * TLQ];
    int32_t xc[KCQ / MOR__QK * TLQ];
} qpack;

// Sum of 32 bytes read as int8.
static inline int32_t sum_s8(__m256i v) {
    __m256i s = _mm256_sad_epu8(_mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)), _mm256_setzero_si256());
    __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (int32_t)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1)) - 32 * 128;
}

static inline __attribute__((always_inline)) void qlane_tile(int kt, const uint8_t *w, size_t rb, int64_t b0,
                                                             int64_t nbc, const qpack *pk, float *y, int64_t ldy,
                                                             __m512i idx, int64_t nt, int first, int RR, int NT) {
    __m512 facc[12][4];
    UNROLL for (int a = 0; a < RR; a++) UNROLL for (int j = 0; j < NT; j++) facc[a][j] = _mm512_setzero_ps();
    const int bs = kt == MOR__KT_Q8_0 ? MOR__Q8_0_SIZE : MOR__Q4_0_SIZE;
    for (int64_t b = 0; b < nbc; b++) {
        const uint8_t *wq[12];
        _Alignas(32) uint8_t un[12][32];
        __m512i iacc[12][4];
        float dw[12];
        UNROLL for (int a = 0; a < RR; a++) {
            const uint8_t *blk = w + (size_t)a * rb + (size_t)(b0 + b) * bs;
            dw[a] = rd_f16(blk);
            __m256i v;
            if (kt == MOR__KT_Q8_0) {
                wq[a] = blk + 2;
                v = _mm256_loadu_si256((const __m256i *)wq[a]);
            } else {
                v = q4_one(blk);
                _mm256_store_si256((__m256i *)un[a], v);
                wq[a] = un[a];
            }
            __m512i c = _mm512_set1_epi32(-128 * sum_s8(v));
            UNROLL for (int j = 0; j < NT; j++)
                iacc[a][j] = kt == MOR__KT_Q8_0 ? c : _mm512_add_epi32(c, _mm512_load_si512(pk->xc + b * TLQ + 16 * j));
        }
        UNROLL for (int g = 0; g < 8; g++) {
            __m512i xv[4];
            UNROLL for (int j = 0; j < NT; j++) xv[j] = _mm512_load_si512(pk->xq + ((b * 8 + g) * NT + j) * 64);
            UNROLL for (int a = 0; a < RR; a++) {
                int32_t wd;
                memcpy(&wd, wq[a] + 4 * g, 4);
                __m512i wv = _mm512_set1_epi32(wd);
                UNROLL for (int j = 0; j < NT; j++) iacc[a][j] = _mm512_dpbusd_epi32(iacc[a][j], xv[j], wv);
            }
        }
        UNROLL for (int j = 0; j < NT; j++) {
            __m512 dx = _mm512_load_ps(pk->xd + b * TLQ + 16 * j);
            UNROLL for (int a = 0; a < RR; a++)
                facc[a][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[a][j]), _mm512_mul_ps(_mm512_set1_ps(dw[a]), dx), facc[a][j]);
        }
    }
    UNROLL for (int j = 0; j < NT; j++) {
        int64_t left = nt - 16 * j;
        __mmask16 m = left >= 16 ? 0xffff : tail16(left);
        UNROLL for (int a = 0; a < RR; a++) put_lanes(y + 16 * j * ldy + a, idx, facc[a][j], m, first);
    }
}

static inline __attribute__((always_inline)) void qlane_rows(int kt, const uint8_t *W, size_t rb, int64_t b0,
                                                             int64_t nbc, int64_t r0, int64_t r1, const qpack *pk,
                                                             float *y, int64_t ldy, __m512i idx, int64_t nt,
                                                             int first, int RR, int NT) {
    int64_t r = r0;
    for (; r + RR <= r1; r += RR) qlane_tile(kt, W + (size_t)r * rb, rb, b0, nbc, pk, y + r, ldy, idx, nt, first, RR, NT);
    for (; r < r1; r++) qlane_tile(kt, W + (size_t)r * rb, rb, b0, nbc, pk, y + r, ldy, idx, nt, first, 1, NT);
}

static void qgemm_lanes(int kt, const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,
                        int64_t ldx, float *y, int64_t ldy) {
    _Alignas(64) qpack pk;
    size_t rb = (size_t)mor__kt_row_bytes(kt, cols);
    __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                     _mm512_set1_epi32((int)ldy));
    for (int64_t t0 = 0; t0 < T; t0 += TLQ) {
        int64_t nt = T - t0 < TLQ ? T - t0 : TLQ, NT = (nt + 15) / 16;
        for (int64_t k0 = 0; k0 < cols; k0 += KCQ) {
            int64_t kc = cols - k0 < KCQ ? cols - k0 : KCQ, nbc = kc / MOR__QK;
            for (int64_t t = 0; t < NT * 16; t++) {
                int64_t j = t / 16, l = t % 16;
                for (int64_t b = 0; b < nbc; b++) {
                    _Alignas(32) int8_t q[32];
                    float d = 0;
                    if (t < nt) d = quant_block(x + (t0 + t) * ldx + k0 + b * MOR__QK, q);
                    else memset(q, 0, sizeof q);
                    __m256i v = _mm256_load_si256((const __m256i *)q);
                    pk.xd[b * TLQ + t] = d;
                    pk.xc[b * TLQ + t] = -8 * sum_s8(v);
                    v = _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
                    _Alignas(32) uint32_t g[8];
                    _mm256_store_si256((__m256i *)g, v);
                    for (int gi = 0; gi < 8; gi++) memcpy(pk.xq + ((b * 8 + gi) * NT + j) * 64 + 4 * l, &g[gi], 4);
                }
            }
            float *yt = y + t0 * ldy;
            int first = k0 == 0;
            const uint8_t *w = W;
            switch (NT) {
            case 1: qlane_rows(kt, w, rb, k0 / MOR__QK, nbc, r0, r1, &pk, yt, ldy, idx, nt, first, 8, 1); break;
            case 2: qlane_rows(kt, w, rb, k0 / MOR__QK, nbc, r0, r1, &pk, yt, ldy, idx, nt, first, 5, 2); break;
            case 3: qlane_rows(kt, w, rb, k0 / MOR__QK, nbc, r0, r1, &pk, yt, ldy, idx, nt, first, 4, 3); break;
            default: qlane_rows(kt, w, rb, k0 / MOR__QK, nbc, r0, r1, &pk, yt, ldy, idx, nt, first, 3, 4); break;
            }
        }
    }
}

#define QLANE_MIN_T 4

static void avx512_matmul_q8_0(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,
                               int64_t ldx, float *y, int64_t ldy, float *row) {
    if (T >= QLANE_MIN_T && ldy < (1 << 24)) qgemm_lanes(MOR__KT_Q8_0, W, cols, r0, r1, x, T, ldx, y, ldy);
    else qgemv(MOR__KT_Q8_0, W, cols, r0, r1, x, T, ldx, y, ldy, row);
}

static void avx512_matmul_q4_0(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,
                               int64_t ldx, float *y, int64_t ldy, float *row) {
    if (T >= QLANE_MIN_T && ldy < (1 << 24)) qgemm_lanes(MOR__KT_Q4_0, W, cols, r0, r1, x, T, ldx, y, ldy);
    else qgemv(MOR__KT_Q4_0, W, cols, r0, r1, x, T, ldx, y, ldy, row);
}

static void avx512_q8_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q8_0_SIZE) {
        __m512 d = _mm512_set1_ps(rd_f16(p));
        __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)));
        __m512i u = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18)));
        _mm512_storeu_ps(dst + b * MOR__QK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(v)));
        _mm512_storeu_ps(dst + b * MOR__QK + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(u)));
    }
}

static void avx512_q4_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q4_0_SIZE) {
        __m512 d = _mm512_set1_ps(rd_f16(p));
        __m256i v = _mm256_sub_epi8(q4_one(p), _mm256_set1_epi8(8));
        __m512i lo = _mm512_cvtepi8_epi32(_mm256_castsi256_si128(v)), hi = _mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1));
        _mm512_storeu_ps(dst + b * MOR__QK, _mm512_mul_ps(d, _mm512_cvtepi32_ps(lo)));
        _mm512_storeu_ps(dst + b * MOR__QK + 16, _mm512_mul_ps(d, _mm512_cvtepi32_ps(hi)));
    }
}

// ---- the other layer operations ------------------------------------------------------------

static void avx512_rmsnorm(float *o, const float *x, const float *w, int64_t n, float eps) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512d a = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), b = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        s0 = _mm512_fmadd_pd(a, a, s0);
        s1 = _mm512_fmadd_pd(b, b, s1);
    }
    double ss = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    __m512 sc = _mm512_set1_ps((float)(1.0 / sqrt(ss / (double)n + eps)));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), sc)));
    }
}

static void avx512_swiglu(float *g, const float *u, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
        __m512 s = _mm512_div_ps(gv, _mm512_add_ps(one, exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

static void avx512_softmax(float *x, int64_t n) {
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        mx = _mm512_mask_max_ps(mx, m, _mm512_maskz_loadu_ps(m, x + i), mx);
    }
    __m512 vm = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
        sum = _mm512_mask_add_ps(sum, m, sum, e);
        _mm512_mask_storeu_ps(x + i, m, e);
    }
    __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

static void avx512_attend(const float *q, const float *k, const float *v, int64_t n, int64_t hd, int64_t stride,
                          float scale, float *att, float *out) {
    for (int64_t e = 0; e < n; e++) att[e] = avx512_dot(q, k + e * stride, hd) * scale;
    avx512_softmax(att, n);
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int64_t e = 0; e < n; e++) avx512_axpy(out, att[e], v + e * stride, hd);
}

static void avx512_attend_f16(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t hd,
                              int64_t stride, float scale, float *att, float *out) {
    for (int64_t e = 0; e < n; e++) {
        __m512 s = _mm512_setzero_ps();
        for (int64_t i = 0; i < hd; i += 16) {
            __mmask16 m = hd - i >= 16 ? 0xffff : tail16(hd - i);
            s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), ld_w(MOR__KT_F16, k + e * stride, i, m), s);
        }
        att[e] = _mm512_reduce_add_ps(s) * scale;
    }
    avx512_softmax(att, n);
    for (int64_t i = 0; i < hd; i += 16) {
        __mmask16 m = hd - i >= 16 ? 0xffff : tail16(hd - i);
        __m512 o = _mm512_setzero_ps();
        for (int64_t e = 0; e < n; e++) o = _mm512_fmadd_ps(_mm512_set1_ps(att[e]), ld_w(MOR__KT_F16, v + e * stride, i, m), o);
        _mm512_mask_storeu_ps(out + i, m, o);
    }
}

static int64_t avx512_argmax(const float *x, int64_t n) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        best = _mm512_mask_max_ps(best, m, _mm512_maskz_loadu_ps(m, x + i), best);  // a NaN x keeps best
    }
    float bv = _mm512_reduce_max_ps(best);
    if (!(bv > -INFINITY)) return 0;
    __m512 vb = _mm512_set1_ps(bv);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xffff : tail16(n - i);
        __mmask16 eq = _mm512_mask_cmp_ps_mask(m, _mm512_maskz_loadu_ps(m, x + i), vb, _CMP_EQ_OQ);
        if (eq) return i + __builtin_ctz(eq);
    }
    return 0;
}

void mor__kernels_install_avx512(mor__kernels *k);
void mor__kernels_install_avx512(mor__kernels *k) {
    k->name = "avx512";
    k->matmul[MOR__KT_F32] = avx512_matmul_f32;
    k->matmul[MOR__KT_F16] = avx512_matmul_f16;
    k->matmul[MOR__KT_BF16] = avx512_matmul_bf16;
    k->matmul[MOR__KT_Q8_0] = avx512_matmul_q8_0;
    k->matmul[MOR__KT_Q4_0] = avx512_matmul_q4_0;
    k->dot = avx512_dot;
    k->axpy = avx512_axpy;
    k->to_f32[MOR__KT_F16] = avx512_f16_row;
    k->to_f32[MOR__KT_BF16] = avx512_bf16_row;
    k->to_f32[MOR__KT_Q8_0] = avx512_q8_0_row;
    k->to_f32[MOR__KT_Q4_0] = avx512_q4_0_row;
    k->quant_act = avx512_quant_act;
    k->rmsnorm = avx512_rmsnorm;
    k->swiglu = avx512_swiglu;
    k->softmax = avx512_softmax;
    k->attend = avx512_attend;
    k->attend_f16 = avx512_attend_f16;
    k->argmax = avx512_argmax;
}
