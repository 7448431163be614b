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

void mor__kernels_install_neon(mor__kernels *k);
void mor__kernels_install_neon(mor__kernels *k) {
    k->name = "neon";
    k->matmul[MOR__DT_F32] = neon_matmul_f32;
    k->matmul[MOR__DT_F16] = neon_matmul_f16;
    k->matmul[MOR__DT_BF16] = neon_matmul_bf16;
    k->matmul[MOR__DT_Q8_0] = neon_matmul_q8_0;
    k->matmul[MOR__DT_Q4_0] = neon_matmul_q4_0;
    k->to_f32[MOR__DT_F16] = neon_f16_row;
    k->quant_act = neon_quant_act;
}
