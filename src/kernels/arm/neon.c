// kernels/arm/neon.c: AArch64 Advanced SIMD (NEON) kernels. NEON is part of the AArch64
// baseline, so this file needs no extra flags and dispatch.c installs it over the reference
// table on every AArch64 CPU. Each kernel computes what its reference in kernels/ref.c computes: the activation
// quantization and the integer block sums bit for bit, float sums up to summation order.
#include "kernels.h"

#include <arm_neon.h>
#include <string.h>

static inline float rd_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mor__f16_to_f32(h);
}

static inline float32x4_t ld4(int dt, const void *w, int64_t i) {
    if (dt == MOR__DT_F32) return vld1q_f32((const float *)w + i);
    uint16x4_t h = vld1_u16((const uint16_t *)w + i);
    if (dt == MOR__DT_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
}

static inline float sc1(int dt, const void *w, int64_t i) {
    if (dt == MOR__DT_F32) return ((const float *)w)[i];
    uint16_t h;
    memcpy(&h, (const uint8_t *)w + 2 * i, 2);
    return dt == MOR__DT_F16 ? mor__f16_to_f32(h) : mor__bf16_to_f32(h);
}

// Four rows against one token at a time; the weights stream once per token.
static inline __attribute__((always_inline)) void fgemv(int dt, const void *W, int64_t cols, int64_t r0, int64_t r1,
                                                        const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy) {
    size_t rb = (size_t)mor__dtype_row_bytes(dt, cols);
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * ldx;
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            const uint8_t *w0 = (const uint8_t *)W + r * rb;
            float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
            int64_t i = 0;
            for (; i + 4 <= cols; i += 4) {
                float32x4_t xv = vld1q_f32(xt + i);
                a0 = vfmaq_f32(a0, ld4(dt, w0, i), xv);
                a1 = vfmaq_f32(a1, ld4(dt, w0 + rb, i), xv);
                a2 = vfmaq_f32(a2, ld4(dt, w0 + 2 * rb, i), xv);
                a3 = vfmaq_f32(a3, ld4(dt, w0 + 3 * rb, i), xv);
            }
            float s[4] = {vaddvq_f32(a0), vaddvq_f32(a1), vaddvq_f32(a2), vaddvq_f32(a3)};
            for (; i < cols; i++)
                for (int a = 0; a < 4; a++) s[a] += sc1(dt, w0 + a * rb, i) * xt[i];
            for (int a = 0; a < 4; a++) y[t * ldy + r + a] = s[a];
        }
        for (; r < r1; r++) {
            const uint8_t *w0 = (const uint8_t *)W + r * rb;
            float32x4_t a0 = vdupq_n_f32(0);
            int64_t i = 0;
            for (; i + 4 <= cols; i += 4) a0 = vfmaq_f32(a0, ld4(dt, w0, i), vld1q_f32(xt + i));
            float s = vaddvq_f32(a0);
            for (; i < cols; i++) s += sc1(dt, w0, i) * xt[i];
            y[t * ldy + r] = s;
        }
    }
}

#define FMATMUL(NAME, DT)                                                                                \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,   \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                                 \
        (void)row;                                                                                     \
        fgemv(DT, W, cols, r0, r1, x, T, ldx, y, ldy);                                                 \
    }
FMATMUL(neon_matmul_f32, MOR__DT_F32)
FMATMUL(neon_matmul_f16, MOR__DT_F16)
FMATMUL(neon_matmul_bf16, MOR__DT_BF16)

static void neon_f16_row(const void *src, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(dst + i, ld4(MOR__DT_F16, src, i));
    for (; i < n; i++) dst[i] = sc1(MOR__DT_F16, src, i);
}

// ---- quantized ------------------------------------------------------------------------------

// One block of 32 as the reference: FCVTNS rounds to nearest even.
static inline float quant_block(const float *x, int8_t *q) {
    float32x4_t v[8], m = vdupq_n_f32(0);
    for (int j = 0; j < 8; j++) v[j] = vld1q_f32(x + 4 * j), m = vmaxq_f32(m, vabsq_f32(v[j]));
    float amax = vmaxvq_f32(m), id = amax != 0.0f ? 127.0f / amax : 0.0f;
    for (int j = 0; j < 8; j += 2) {
        int32x4_t a = vcvtnq_s32_f32(vmulq_n_f32(v[j], id)), b = vcvtnq_s32_f32(vmulq_n_f32(v[j + 1], id));
        int16x8_t h = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
        vst1_s8(q + 4 * j, vqmovn_s16(h));
    }
    return mor__f16_to_f32(mor__f32_to_f16(amax / 127.0f));
}

static void neon_quant_act(const float *x, int64_t n, int8_t *q, float *d) {
    for (int64_t b = 0; b < n / MOR__QK; b++) d[b] = quant_block(x + b * MOR__QK, q + b * MOR__QK);
}

static inline int32_t block_isum(int8x16_t w0, int8x16_t w1, const int8_t *q) {
    int8x16_t q0 = vld1q_s8(q), q1 = vld1q_s8(q + 16);
    int16x8_t p = vmull_s8(vget_low_s8(w0), vget_low_s8(q0));
    p = vmlal_s8(p, vget_high_s8(w0), vget_high_s8(q0));
    int16x8_t p2 = vmull_s8(vget_low_s8(w1), vget_low_s8(q1));
    p2 = vmlal_s8(p2, vget_high_s8(w1), vget_high_s8(q1));
    return vaddvq_s32(vaddq_s32(vpaddlq_s16(p), vpaddlq_s16(p2)));
}

#define QMATMUL(NAME, BSIZE, Q4)                                                                          \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T,    \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                                  \
        int64_t nb = cols / MOR__QK;                                                                    \
        int8_t *q = (int8_t *)row;                                                                      \
        float *d = row + cols / 4;                                                                      \
        for (int64_t t = 0; t < T; t++) {                                                               \
            neon_quant_act(x + t * ldx, cols, q, d);                                                    \
            for (int64_t r = r0; r < r1; r++) {                                                         \
                const uint8_t *w = (const uint8_t *)W + (size_t)(r * nb) * BSIZE;                       \
                float acc = 0;                                                                          \
                for (int64_t b = 0; b < nb; b++, w += BSIZE) {                                          \
                    int8x16_t w0, w1;                                                                   \
                    if (Q4) {                                                                           \
                        uint8x16_t v = vld1q_u8(w + 2);                                                 \
                        w0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(15))), vdupq_n_s8(8)); \
                        w1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vdupq_n_s8(8));            \
                    } else {                                                                            \
                        w0 = vld1q_s8((const int8_t *)w + 2), w1 = vld1q_s8((const int8_t *)w + 18);    \
                    }                                                                                   \
                    acc += rd_f16(w) * d[b] * (float)block_isum(w0, w1, q + b * MOR__QK);               \
                }                                                                                       \
                y[t * ldy + r] = acc;                                                                   \
            }                                                                                           \
        }                                                                                               \
    }
QMATMUL(neon_matmul_q8_0, MOR__Q8_0_SIZE, 0)
QMATMUL(neon_matmul_q4_0, MOR__Q4_0_SIZE, 1)

// ---- the other quantized types ---------------------------------------------------------------
//
// The reference's chain, with its float expressions, per output: exact integer sums per block
// of 32 of x (vmull/vmlal of signed codes and x, the K types' sub-block sums multiplied by
// their scales in 32-bit lanes), then acc += (d * dx_b) * isum [+ (m * dx_b) * qsum] or, for the
// K types, acc += (d * dx_b) * isc - (dmin * dx_b) * imn. Codes are made signed (Q5_0: - 16,
// Q3_K: - 4, Q6_K: - 32) so no offset terms are needed. Tokens go in groups of up to 3 through
// the row scratch; a tile is one row and the group's tokens, each block decoded once for them.

typedef struct {
    const int8_t  *q;  // cols int8
    const float   *d;  // cols / 32 scales
    const int16_t *s;  // cols / 16 sums of 16 quantized values
} xtok;

static xtok xtok_prepare(const float *x, int64_t cols, uint8_t *buf) {
    int8_t *q = (int8_t *)buf;
    float *d = (float *)(buf + cols);
    int16_t *s = (int16_t *)(d + cols / MOR__QK);
    for (int64_t b = 0; b < cols / MOR__QK; b++) {
        d[b] = quant_block(x + b * MOR__QK, q + b * MOR__QK);
        s[2 * b] = (int16_t)vaddlvq_s8(vld1q_s8(q + b * MOR__QK));
        s[2 * b + 1] = (int16_t)vaddlvq_s8(vld1q_s8(q + b * MOR__QK + 16));
    }
    return (xtok){q, d, s};
}

// sum of a[i] * x[i] over 16 signed bytes, as 4 lanes of int32 (each the sum of 4 products).
static inline int32x4_t dot16(int8x16_t a, const int8_t *x) {
    int8x16_t xv = vld1q_s8(x);
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(xv));
    p = vmlal_s8(p, vget_high_s8(a), vget_high_s8(xv));
    return vpaddlq_s16(p);
}

// 0x10 in byte j where bit j of the 16-bit value h is set.
static inline uint8x16_t bit5_16(uint32_t h) {
    static const uint8_t bits[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)(h & 0xff)), vdup_n_u8((uint8_t)((h >> 8) & 0xff)));
    return vandq_u8(vtstq_u8(v, vld1q_u8(bits)), vdupq_n_u8(0x10));
}

static inline uint32_t rd32(const uint8_t *p) {
    uint32_t u;
    memcpy(&u, p, 4);
    return u;
}

static inline int bsize32(int dt) {
    return dt == MOR__DT_Q5_0 ? MOR__Q5_0_SIZE : dt == MOR__DT_Q4_1 ? MOR__Q4_1_SIZE : dt == MOR__DT_Q5_1 ? MOR__Q5_1_SIZE : MOR__IQ4_NL_SIZE;
}

// The codes of a block of 32 at p: elements 0..15 in c[0], 16..31 in c[1].
static inline __attribute__((always_inline)) void codes32(int dt, const uint8_t *p, int8x16_t *c) {
    static const int8_t iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
    const int o = dt == MOR__DT_Q4_1 ? 4 : dt == MOR__DT_Q5_0 ? 6 : dt == MOR__DT_Q5_1 ? 8 : 2;
    uint8x16_t v = vld1q_u8(p + o), lo = vandq_u8(v, vdupq_n_u8(15)), hi = vshrq_n_u8(v, 4);
    if (dt == MOR__DT_Q5_0 || dt == MOR__DT_Q5_1) {
        uint32_t h = rd32(p + (dt == MOR__DT_Q5_0 ? 2 : 4));
        lo = vorrq_u8(lo, bit5_16(h & 0xffff)), hi = vorrq_u8(hi, bit5_16(h >> 16));
    }
    if (dt == MOR__DT_IQ4_NL) {
        int8x16_t t = vld1q_s8(iq4nl);
        c[0] = vqtbl1q_s8(t, lo), c[1] = vqtbl1q_s8(t, hi);
    } else if (dt == MOR__DT_Q5_0) {
        c[0] = vsubq_s8(vreinterpretq_s8_u8(lo), vdupq_n_s8(16)), c[1] = vsubq_s8(vreinterpretq_s8_u8(hi), vdupq_n_s8(16));
    } else {
        c[0] = vreinterpretq_s8_u8(lo), c[1] = vreinterpretq_s8_u8(hi);
    }
}

static inline __attribute__((always_inline)) void tile32(int dt, const uint8_t *w, int64_t nb, const xtok *xt, float *y,
                                                         int64_t ldy, int C) {
    const int bs = bsize32(dt), has_min = dt == MOR__DT_Q4_1 || dt == MOR__DT_Q5_1;
    float acc[3] = {0, 0, 0};
    for (int64_t b = 0; b < nb; b++, w += bs) {
        int8x16_t c[2];
        codes32(dt, w, c);
        float dw = rd_f16(w), m = has_min ? rd_f16(w + 2) : 0.0f;
        for (int t = 0; t < C; t++) {
            const int8_t *q = xt[t].q + b * MOR__QK;
            int32_t isum = vaddvq_s32(vaddq_s32(dot16(c[0], q), dot16(c[1], q + 16)));
            float dx = xt[t].d[b];
            if (has_min) acc[t] += (dw * dx) * (float)isum + (m * dx) * (float)(xt[t].s[2 * b] + xt[t].s[2 * b + 1]);
            else acc[t] += (dw * dx) * (float)isum;
        }
    }
    for (int t = 0; t < C; t++) y[t * ldy] = acc[t];
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

// The scales (and mins) of a super-block, one per half of 16 (Q4_K/Q5_K's repeated per 32).
static inline __attribute__((always_inline)) void kscales(int dt, const uint8_t *w, int *sc, int *mn) {
    switch (dt) {
    case MOR__DT_Q4_K:
    case MOR__DT_Q5_K: {
        const uint8_t *s = w + 4;
        for (int j = 0; j < 8; j++) {
            int a = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
            int b = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | (s[j] >> 6) << 4;
            sc[2 * j] = sc[2 * j + 1] = a, mn[2 * j] = mn[2 * j + 1] = b;
        }
        break;
    }
    case MOR__DT_Q6_K:
        for (int k = 0; k < 16; k++) sc[k] = (int8_t)w[192 + k];
        break;
    case MOR__DT_Q3_K: {
        const uint8_t *s = w + 96;
        for (int k = 0; k < 16; k++) {
            int lo = k < 8 ? s[k] & 15 : s[k - 8] >> 4, hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
            sc[k] = (lo | hi << 4) - 32;
        }
        break;
    }
    default:  // Q2_K
        for (int k = 0; k < 16; k++) sc[k] = w[k] & 15, mn[k] = w[k] >> 4;
        break;
    }
}

// The signed codes of block b (0..7) of the super-block at w: elements 0..15 in c[0], 16..31 in c[1].
static inline __attribute__((always_inline)) void kcodes(int dt, const uint8_t *w, int b, int8x16_t *c) {
    const int h = b / 4, g = b % 4;
    const uint8x16_t m4 = vdupq_n_u8(15), m2 = vdupq_n_u8(3);
    for (int i = 0; i < 2; i++) {
        uint8x16_t v;
        switch (dt) {
        case MOR__DT_Q4_K:
        case MOR__DT_Q5_K: {
            uint8x16_t n = vld1q_u8(w + (dt == MOR__DT_Q4_K ? 16 : 48) + 32 * (b / 2) + 16 * i);
            v = b % 2 ? vshrq_n_u8(n, 4) : vandq_u8(n, m4);
            if (dt == MOR__DT_Q5_K)
                v = vorrq_u8(v, vandq_u8(vtstq_u8(vld1q_u8(w + 16 + 16 * i), vdupq_n_u8((uint8_t)(1 << b))), vdupq_n_u8(16)));
            c[i] = vreinterpretq_s8_u8(v);
            break;
        }
        case MOR__DT_Q6_K: {
            uint8x16_t lo = vld1q_u8(w + 64 * h + 32 * (g & 1) + 16 * i), hi = vld1q_u8(w + 128 + 32 * h + 16 * i);
            lo = g < 2 ? vandq_u8(lo, m4) : vshrq_n_u8(lo, 4);
            hi = vandq_u8(vshlq_u8(hi, vdupq_n_s8((int8_t)(-2 * g))), m2);
            c[i] = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hi, 4))), vdupq_n_s8(32));
            break;
        }
        case MOR__DT_Q3_K: {
            uint8x16_t lo = vandq_u8(vshlq_u8(vld1q_u8(w + 32 + 32 * h + 16 * i), vdupq_n_s8((int8_t)(-2 * g))), m2);
            uint8x16_t hb = vtstq_u8(vld1q_u8(w + 16 * i), vdupq_n_u8((uint8_t)(1 << b)));  // set: q = lo, clear: lo - 4
            c[i] = vsubq_s8(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(vbicq_u8(vdupq_n_u8(4), hb)));
            break;
        }
        default:  // Q2_K
            c[i] = vreinterpretq_s8_u8(vandq_u8(vshlq_u8(vld1q_u8(w + 16 + 32 * h + 16 * i), vdupq_n_s8((int8_t)(-2 * g))), m2));
            break;
        }
    }
}

static inline __attribute__((always_inline)) void tilek(int dt, const uint8_t *w, int64_t nsb, const xtok *xt, float *y,
                                                        int64_t ldy, int C) {
    const int bs = bsizek(dt), mins = dt == MOR__DT_Q2_K || dt == MOR__DT_Q4_K || dt == MOR__DT_Q5_K;
    float acc[3] = {0, 0, 0};
    for (int64_t sb = 0; sb < nsb; sb++, w += bs) {
        int sc[16], mn[16] = {0};
        kscales(dt, w, sc, mn);
        float d, dmin = 0.0f;
        switch (dt) {
        case MOR__DT_Q6_K: d = rd_f16(w + 208); break;
        case MOR__DT_Q3_K: d = rd_f16(w + 108); break;
        case MOR__DT_Q2_K: d = rd_f16(w + 80), dmin = rd_f16(w + 82); break;
        default: d = rd_f16(w), dmin = rd_f16(w + 2); break;
        }
        for (int b = 0; b < 8; b++) {
            int8x16_t c[2];
            kcodes(dt, w, b, c);
            for (int t = 0; t < C; t++) {
                const int8_t *q = xt[t].q + 256 * sb + 32 * b;
                int32x4_t s = vmulq_n_s32(dot16(c[0], q), sc[2 * b]);
                s = vmlaq_n_s32(s, dot16(c[1], q + 16), sc[2 * b + 1]);
                int32_t isc = vaddvq_s32(s);
                float dx = xt[t].d[8 * sb + b];
                if (mins) {
                    const int16_t *qs = xt[t].s + 16 * sb + 2 * b;
                    int32_t imn = mn[2 * b] * qs[0] + mn[2 * b + 1] * qs[1];
                    acc[t] += (d * dx) * (float)isc - (dmin * dx) * (float)imn;
                } else {
                    acc[t] += (d * dx) * (float)isc;
                }
            }
        }
    }
    for (int t = 0; t < C; t++) y[t * ldy] = acc[t];
}

static inline __attribute__((always_inline)) void qmatmul_x(int dt, const void *W, int64_t cols, int64_t r0, int64_t r1,
                                                            const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                                                            float *row) {
    const int k = mor__dtype_block((uint32_t)dt) == MOR__QK_K;
    const int64_t nb = cols / (k ? MOR__QK_K : MOR__QK), per = cols + cols / 4;  // scratch bytes a token
    const size_t rb = (size_t)mor__dtype_row_bytes((uint32_t)dt, cols);
    const int64_t ng = (T + 2) / 3;  // groups of nearly equal size, up to 3 tokens (the scratch holds 3)
    for (int64_t g = 0, t0 = 0; g < ng; g++) {
        int64_t C = T / ng + (g < T % ng);
        xtok xt[3];
        for (int64_t t = 0; t < C; t++) xt[t] = xtok_prepare(x + (t0 + t) * ldx, cols, (uint8_t *)row + t * per);
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
QMATMUL_X(neon_matmul_q4_1, MOR__DT_Q4_1)
QMATMUL_X(neon_matmul_q5_0, MOR__DT_Q5_0)
QMATMUL_X(neon_matmul_q5_1, MOR__DT_Q5_1)
QMATMUL_X(neon_matmul_iq4_nl, MOR__DT_IQ4_NL)
QMATMUL_X(neon_matmul_q2_k, MOR__DT_Q2_K)
QMATMUL_X(neon_matmul_q3_k, MOR__DT_Q3_K)
QMATMUL_X(neon_matmul_q4_k, MOR__DT_Q4_K)
QMATMUL_X(neon_matmul_q5_k, MOR__DT_Q5_K)
QMATMUL_X(neon_matmul_q6_k, MOR__DT_Q6_K)

void mor__kernels_install_neon(mor__kernels *k);
void mor__kernels_install_neon(mor__kernels *k) {
    k->name = "neon";
    k->matmul[MOR__DT_F32] = neon_matmul_f32;
    k->matmul[MOR__DT_F16] = neon_matmul_f16;
    k->matmul[MOR__DT_BF16] = neon_matmul_bf16;
    k->matmul[MOR__DT_Q8_0] = neon_matmul_q8_0;
    k->matmul[MOR__DT_Q4_0] = neon_matmul_q4_0;
    k->to_f32[MOR__DT_F16] = neon_f16_row;
    k->matmul[MOR__DT_Q4_1] = neon_matmul_q4_1;
    k->matmul[MOR__DT_Q5_0] = neon_matmul_q5_0;
    k->matmul[MOR__DT_Q5_1] = neon_matmul_q5_1;
    k->matmul[MOR__DT_IQ4_NL] = neon_matmul_iq4_nl;
    k->matmul[MOR__DT_Q2_K] = neon_matmul_q2_k;
    k->matmul[MOR__DT_Q3_K] = neon_matmul_q3_k;
    k->matmul[MOR__DT_Q4_K] = neon_matmul_q4_k;
    k->matmul[MOR__DT_Q5_K] = neon_matmul_q5_k;
    k->matmul[MOR__DT_Q6_K] = neon_matmul_q6_k;
    k->quant_act = neon_quant_act;
}
