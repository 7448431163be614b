// kernels/ref.c: the scalar reference of every kernel table entry, plain C11 without
// intrinsics, always compiled. It is the specification, the oracle every ISA kernel is tested
// against (tests/test-kernels.c) and the table used where no ISA applies. Also here: the scalar
// f16/bf16 conversions the ISA files and the rest of the library share. Which table runs is
// decided in dispatch.c.
#include "kernels.h"

#include <math.h>
#include <string.h>

float mor__f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  // subnormal: shift the mantissa up until it is normal
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            u = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Round to nearest even; overflow gives infinity, NaN stays NaN.
uint16_t mor__f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, exp = (u >> 23) & 0xff, man = u & 0x7fffff;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    int32_t e = (int32_t)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - e), half = 1u << (shift - 1);
        uint32_t r = man >> shift, rem = man & ((1u << shift) - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

float mor__bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t mor__f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

// The dot product of the float products and the attention scores below. Eight partial sums in
// a fixed order: the result does not depend on how the caller splits rows among threads, and
// compilers vectorize the inner loop.
static float ref_dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    for (; i < n; i++) acc[i & 7] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// y += a * x (the attention's weighted sum of values).
static void ref_axpy(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

// ---- rows of each weight type as floats -----------------------------------------------------

static uint16_t rd16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

static void f32_row(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

static void f16_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = mor__f16_to_f32(rd16(p + 2 * i));
}

static void bf16_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t i = 0; i < n; i++) dst[i] = mor__bf16_to_f32(rd16(p + 2 * i));
}

static void q8_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q8_0_SIZE) {
        float d = mor__f16_to_f32(rd16(p));
        for (int j = 0; j < MOR__QK; j++) dst[b * MOR__QK + j] = d * (float)(int8_t)p[2 + j];
    }
}

static void q4_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q4_0_SIZE) {
        float d = mor__f16_to_f32(rd16(p));
        for (int j = 0; j < 16; j++) {
            dst[b * MOR__QK + j] = d * (float)((p[2 + j] & 15) - 8);
            dst[b * MOR__QK + j + 16] = d * (float)((p[2 + j] >> 4) - 8);
        }
    }
}

// ---- float products -------------------------------------------------------------------------

static void ref_matmul_f32(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x,
                           int64_t T, int64_t ldx, float *y, int64_t ldy, float *row) {
    (void)row;
    const float *w = W;
    for (int64_t r = r0; r < r1; r++)
        for (int64_t t = 0; t < T; t++) y[t * ldy + r] = ref_dot(w + r * cols, x + t * ldx, cols);
}

static void ref_matmul_f16(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x,
                           int64_t T, int64_t ldx, float *y, int64_t ldy, float *row) {
    const uint8_t *w = W;
    for (int64_t r = r0; r < r1; r++) {
        f16_row(w + (size_t)(r * cols) * 2, row, cols);
        for (int64_t t = 0; t < T; t++) y[t * ldy + r] = ref_dot(row, x + t * ldx, cols);
    }
}

static void ref_matmul_bf16(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x,
                            int64_t T, int64_t ldx, float *y, int64_t ldy, float *row) {
    const uint8_t *w = W;
    for (int64_t r = r0; r < r1; r++) {
        bf16_row(w + (size_t)(r * cols) * 2, row, cols);
        for (int64_t t = 0; t < T; t++) y[t * ldy + r] = ref_dot(row, x + t * ldx, cols);
    }
}

// ---- quantized products ---------------------------------------------------------------------

// Round to nearest, ties to even (the default floating-point environment), as the SIMD
// conversions do.
static void ref_quant_act(const float *x, int64_t n, int8_t *q, float *d) {
    for (int64_t b = 0; b < n / MOR__QK; b++) {
        const float *xb = x + b * MOR__QK;
        float amax = 0;
        for (int j = 0; j < MOR__QK; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        d[b] = mor__f16_to_f32(mor__f32_to_f16(amax / 127.0f));
        for (int j = 0; j < MOR__QK; j++) q[b * MOR__QK + j] = (int8_t)nearbyintf(xb[j] * id);
    }
}

// The quantized x of one token lives in the row scratch: cols int8, then cols / 32 floats.
static float ref_dot_q8_0(const uint8_t *w, const int8_t *q, const float *d, int64_t nb) {
    float acc = 0;
    for (int64_t b = 0; b < nb; b++, w += MOR__Q8_0_SIZE) {
        int32_t s = 0;
        for (int j = 0; j < MOR__QK; j++) s += (int32_t)(int8_t)w[2 + j] * q[b * MOR__QK + j];
        acc += mor__f16_to_f32(rd16(w)) * d[b] * (float)s;
    }
    return acc;
}

static float ref_dot_q4_0(const uint8_t *w, const int8_t *q, const float *d, int64_t nb) {
    float acc = 0;
    for (int64_t b = 0; b < nb; b++, w += MOR__Q4_0_SIZE) {
        const int8_t *qb = q + b * MOR__QK;
        int32_t s = 0;
        for (int j = 0; j < 16; j++) s += ((w[2 + j] & 15) - 8) * qb[j] + ((w[2 + j] >> 4) - 8) * qb[j + 16];
        acc += mor__f16_to_f32(rd16(w)) * d[b] * (float)s;
    }
    return acc;
}

#define REF_QMATMUL(NAME, DOT, BSIZE)                                                              \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T, \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                           \
        int64_t nb = cols / MOR__QK;                                                             \
        int8_t *q = (int8_t *)row;                                                               \
        float *d = row + cols / 4;                                                               \
        for (int64_t t = 0; t < T; t++) {                                                        \
            ref_quant_act(x + t * ldx, cols, q, d);                                              \
            for (int64_t r = r0; r < r1; r++)                                                    \
                y[t * ldy + r] = DOT((const uint8_t *)W + (size_t)(r * nb) * BSIZE, q, d, nb);   \
        }                                                                                        \
    }
REF_QMATMUL(ref_matmul_q8_0, ref_dot_q8_0, MOR__Q8_0_SIZE)
REF_QMATMUL(ref_matmul_q4_0, ref_dot_q4_0, MOR__Q4_0_SIZE)

// ---- the other layer operations --------------------------------------------------------------

static void ref_rmsnorm(float *o, const float *x, const float *w, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++) o[i] = w[i] * (x[i] * scale);
}

static void ref_swiglu(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void ref_rope(float *v, int64_t n_heads, int64_t hd, const float *c, const float *sn, int neox) {
    int64_t half = hd / 2;
    for (int64_t h = 0; h < n_heads; h++, v += hd) {
        if (neox) {
            for (int64_t i = 0; i < half; i++) {
                float x0 = v[i], x1 = v[i + half];
                v[i] = x0 * c[i] - x1 * sn[i];
                v[i + half] = x1 * c[i] + x0 * sn[i];
            }
        } else {
            for (int64_t i = 0; i < half; i++) {
                float x0 = v[2 * i], x1 = v[2 * i + 1];
                v[2 * i] = x0 * c[i] - x1 * sn[i];
                v[2 * i + 1] = x0 * sn[i] + x1 * c[i];
            }
        }
    }
}

// The operations of forward.c's attention in its order: scores, max, exp, sum, weighted sum.
static void ref_attend(const float *q, const float *k, const float *v, int64_t n, int64_t hd, int64_t stride,
                       float scale, float *att, float *out) {
    float mx = -INFINITY, sum = 0;
    for (int64_t e = 0; e < n; e++) {
        att[e] = ref_dot(q, k + e * stride, hd) * scale;
        if (att[e] > mx) mx = att[e];
    }
    for (int64_t e = 0; e < n; e++) sum += (att[e] = expf(att[e] - mx));
    float inv = 1.0f / sum;
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int64_t e = 0; e < n; e++) ref_axpy(out, att[e] * inv, v + e * stride, hd);
}

static void ref_attend_f16(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t hd,
                           int64_t stride, float scale, float *att, float *out) {
    float mx = -INFINITY, sum = 0;
    for (int64_t e = 0; e < n; e++) {
        float acc[8] = {0};
        const uint16_t *ke = k + e * stride;
        for (int64_t i = 0; i < hd; i++) acc[i & 7] += q[i] * mor__f16_to_f32(ke[i]);
        att[e] = (((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))) * scale;
        if (att[e] > mx) mx = att[e];
    }
    for (int64_t e = 0; e < n; e++) sum += (att[e] = expf(att[e] - mx));
    float inv = 1.0f / sum;
    memset(out, 0, (size_t)hd * sizeof(float));
    for (int64_t e = 0; e < n; e++) {
        float a = att[e] * inv;
        const uint16_t *ve = v + e * stride;
        for (int64_t i = 0; i < hd; i++) out[i] += a * mor__f16_to_f32(ve[i]);
    }
}

static int64_t ref_argmax(const float *x, int64_t n) {
    int64_t b = 0;
    float bv = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (x[i] > bv) bv = x[i], b = i;
    return b;
}

static double ref_expsum(const float *x, int64_t n, float m, double *zsum) {
    double s = 0, zs = 0;
    for (int64_t i = 0; i < n; i++) {
        double z = (double)(x[i] - m), e = exp(z);
        s += e;
        if (e > 0) zs += e * z;
    }
    if (zsum) *zsum = zs;
    return s;
}

static const mor__kernels ref_table = {
    .name = "ref",
    .matmul = {[MOR__DT_F32] = ref_matmul_f32, [MOR__DT_F16] = ref_matmul_f16,
               [MOR__DT_BF16] = ref_matmul_bf16, [MOR__DT_Q8_0] = ref_matmul_q8_0,
               [MOR__DT_Q4_0] = ref_matmul_q4_0},
    .to_f32 = {[MOR__DT_F32] = f32_row, [MOR__DT_F16] = f16_row, [MOR__DT_BF16] = bf16_row,
               [MOR__DT_Q8_0] = q8_0_row, [MOR__DT_Q4_0] = q4_0_row},
    .quant_act = ref_quant_act,
    .rmsnorm = ref_rmsnorm,
    .swiglu = ref_swiglu,
    .rope = ref_rope,
    .attend = ref_attend,
    .attend_f16 = ref_attend_f16,
    .argmax = ref_argmax,
    .expsum = ref_expsum,
};

const mor__kernels *mor__kernels_ref(void) { return &ref_table; }
