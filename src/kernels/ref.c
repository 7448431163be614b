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

// The blocks of 32 with a nibble array qs: element j's 4-bit code.
static int nib(const uint8_t *qs, int j) { return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4; }

// The fifth bit of element j of a Q5_0/Q5_1 block: bit j of the little-endian word qh.
static int bit5(const uint8_t *qh, int j) { return (qh[j >> 3] >> (j & 7)) & 1; }

static const int8_t iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                        1,    13,   25,  38,  53,  69,  89,  113};

// Integer codes of one block of 32 (or of one super-block of 256 for the K types), and per
// sub-block the integer scale and min, so that weight i = d * sc[i / SB] * q[i] - dmin *
// mn[i / SB] (SB = 32 for Q4_K/Q5_K, 16 for Q2_K/Q3_K/Q6_K). Each kernel below reads a block
// through one of these: to_f32 and the products see the same codes.
static void q4_1_codes(const uint8_t *b, int8_t *q) {
    for (int j = 0; j < MOR__QK; j++) q[j] = (int8_t)nib(b + 4, j);
}

static void q5_0_codes(const uint8_t *b, int8_t *q) {
    for (int j = 0; j < MOR__QK; j++) q[j] = (int8_t)((nib(b + 6, j) | bit5(b + 2, j) << 4) - 16);
}

static void q5_1_codes(const uint8_t *b, int8_t *q) {
    for (int j = 0; j < MOR__QK; j++) q[j] = (int8_t)(nib(b + 8, j) | bit5(b + 4, j) << 4);
}

static void iq4_nl_codes(const uint8_t *b, int8_t *q) {
    for (int j = 0; j < MOR__QK; j++) q[j] = iq4nl_values[nib(b + 2, j)];
}

// The six-bit scales and mins of Q4_K/Q5_K (12 bytes, dtype.h).
static void k4_scales(const uint8_t *s, int *sc, int *mn) {
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
            mn[j] = (s[j + 4] >> 4) | (s[j] >> 6) << 4;
        }
    }
}

static void q4_k_codes(const uint8_t *b, int8_t *q, int *sc, int *mn) {
    k4_scales(b + 4, sc, mn);
    for (int i = 0; i < MOR__QK_K; i++) {
        uint8_t byte = b[16 + (i / 64) * 32 + i % 32];
        q[i] = (int8_t)((i / 32) & 1 ? byte >> 4 : byte & 15);
    }
}

static void q5_k_codes(const uint8_t *b, int8_t *q, int *sc, int *mn) {
    k4_scales(b + 4, sc, mn);
    for (int i = 0; i < MOR__QK_K; i++) {
        uint8_t byte = b[48 + (i / 64) * 32 + i % 32];
        int hi = (b[16 + i % 32] >> (i / 32)) & 1;
        q[i] = (int8_t)(((i / 32) & 1 ? byte >> 4 : byte & 15) | hi << 4);
    }
}

static void q6_k_codes(const uint8_t *b, int8_t *q, int *sc) {
    for (int i = 0; i < MOR__QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        uint8_t lo = b[64 * h + 32 * (g & 1) + l], hi = b[128 + 32 * h + l];
        q[i] = (int8_t)(((g < 2 ? lo & 15 : lo >> 4) | ((hi >> (2 * g)) & 3) << 4) - 32);
    }
    for (int k = 0; k < 16; k++) sc[k] = (int8_t)b[192 + k];
}

static void q2_k_codes(const uint8_t *b, int8_t *q, int *sc, int *mn) {
    for (int i = 0; i < MOR__QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        q[i] = (int8_t)((b[16 + 32 * h + l] >> (2 * g)) & 3);
    }
    for (int k = 0; k < 16; k++) sc[k] = b[k] & 15, mn[k] = b[k] >> 4;
}

static void q3_k_codes(const uint8_t *b, int8_t *q, int *sc) {
    for (int i = 0; i < MOR__QK_K; i++) {
        int h = i / 128, g = (i % 128) / 32, l = i % 32;
        int lo = (b[32 + 32 * h + l] >> (2 * g)) & 3, hbit = (b[l] >> (i / 32)) & 1;
        q[i] = (int8_t)(lo - (hbit ? 0 : 4));
    }
    const uint8_t *s = b + 96;
    for (int k = 0; k < 16; k++) {
        int lo = k < 8 ? s[k] & 15 : s[k - 8] >> 4, hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        sc[k] = (lo | hi << 4) - 32;
    }
}

// Rows as floats. The products d * sc * q are exact in float (at most 24 significant bits), so
// the one rounding of each weight is that of the min's subtraction (or addition, Q4_1/Q5_1):
// the values are those of ggml's dequantization, bit for bit.
static void q4_1_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK];
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q4_1_SIZE, dst += MOR__QK) {
        float d = mor__f16_to_f32(rd16(p)), m = mor__f16_to_f32(rd16(p + 2));
        q4_1_codes(p, q);
        for (int j = 0; j < MOR__QK; j++) dst[j] = (float)q[j] * d + m;
    }
}

static void q5_0_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK];
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q5_0_SIZE, dst += MOR__QK) {
        float d = mor__f16_to_f32(rd16(p));
        q5_0_codes(p, q);
        for (int j = 0; j < MOR__QK; j++) dst[j] = (float)q[j] * d;
    }
}

static void q5_1_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK];
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__Q5_1_SIZE, dst += MOR__QK) {
        float d = mor__f16_to_f32(rd16(p)), m = mor__f16_to_f32(rd16(p + 2));
        q5_1_codes(p, q);
        for (int j = 0; j < MOR__QK; j++) dst[j] = (float)q[j] * d + m;
    }
}

static void iq4_nl_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK];
    for (int64_t b = 0; b < n / MOR__QK; b++, p += MOR__IQ4_NL_SIZE, dst += MOR__QK) {
        float d = mor__f16_to_f32(rd16(p));
        iq4_nl_codes(p, q);
        for (int j = 0; j < MOR__QK; j++) dst[j] = d * (float)q[j];
    }
}

// A K super-block as floats: weight i = (d * sc) * q - dmin * mn, sub-blocks of sb weights.
static void k_floats(float *dst, const int8_t *q, const int *sc, const int *mn, int sb, float d, float dmin) {
    for (int k = 0; k < MOR__QK_K / sb; k++) {
        float ds = d * (float)sc[k], dm = mn ? dmin * (float)mn[k] : 0.0f;
        for (int l = 0; l < sb; l++) dst[k * sb + l] = ds * (float)q[k * sb + l] - dm;
    }
}

static void q4_k_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK_K];
    int sc[8], mn[8];
    for (int64_t b = 0; b < n / MOR__QK_K; b++, p += MOR__Q4_K_SIZE, dst += MOR__QK_K) {
        q4_k_codes(p, q, sc, mn);
        k_floats(dst, q, sc, mn, 32, mor__f16_to_f32(rd16(p)), mor__f16_to_f32(rd16(p + 2)));
    }
}

static void q5_k_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK_K];
    int sc[8], mn[8];
    for (int64_t b = 0; b < n / MOR__QK_K; b++, p += MOR__Q5_K_SIZE, dst += MOR__QK_K) {
        q5_k_codes(p, q, sc, mn);
        k_floats(dst, q, sc, mn, 32, mor__f16_to_f32(rd16(p)), mor__f16_to_f32(rd16(p + 2)));
    }
}

static void q6_k_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK_K];
    int sc[16];
    for (int64_t b = 0; b < n / MOR__QK_K; b++, p += MOR__Q6_K_SIZE, dst += MOR__QK_K) {
        q6_k_codes(p, q, sc);
        k_floats(dst, q, sc, NULL, 16, mor__f16_to_f32(rd16(p + 208)), 0.0f);
    }
}

static void q2_k_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK_K];
    int sc[16], mn[16];
    for (int64_t b = 0; b < n / MOR__QK_K; b++, p += MOR__Q2_K_SIZE, dst += MOR__QK_K) {
        q2_k_codes(p, q, sc, mn);
        k_floats(dst, q, sc, mn, 16, mor__f16_to_f32(rd16(p + 80)), mor__f16_to_f32(rd16(p + 82)));
    }
}

static void q3_k_row(const void *src, float *dst, int64_t n) {
    const uint8_t *p = src;
    int8_t q[MOR__QK_K];
    int sc[16];
    for (int64_t b = 0; b < n / MOR__QK_K; b++, p += MOR__Q3_K_SIZE, dst += MOR__QK_K) {
        q3_k_codes(p, q, sc);
        k_floats(dst, q, sc, NULL, 16, mor__f16_to_f32(rd16(p + 108)), 0.0f);
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
        for (int j = 0; j < MOR__QK; j++) {  // NaN (a non-finite x): -128, the x86 conversions' value
            float v = nearbyintf(xb[j] * id);
            q[b * MOR__QK + j] = v >= -128.0f && v <= 127.0f ? (int8_t)v : (int8_t)-128;
        }
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

// The other quantized types need, besides x's int8 values and scales, the sums of its quantized
// values over each 16 (the mins' terms, and the 16-weight sub-blocks of Q2_K): the scratch row
// holds cols int8, cols / 32 scales, then cols / 16 sums (floats holding exact small integers).
static void ref_act_sums(const int8_t *q, int64_t n, float *s) {
    for (int64_t k = 0; k < n / 16; k++) {
        int32_t sum = 0;
        for (int l = 0; l < 16; l++) sum += q[k * 16 + l];
        s[k] = (float)sum;
    }
}

static int32_t ref_isum(const int8_t *a, const int8_t *b, int n) {
    int32_t s = 0;
    for (int j = 0; j < n; j++) s += (int32_t)a[j] * b[j];
    return s;
}

// Blocks of 32 with a scale d (and Q4_1/Q5_1's min m): one chain over the blocks,
// acc += (d * dx_b) * isum_b [+ (m * dx_b) * qsum_b], qsum_b the sum of x's quantized values.
#define REF_DOT32(NAME, CODES, BSIZE, HAS_MIN)                                                         \
    static float NAME(const uint8_t *w, const int8_t *q, const float *d, const float *s, int64_t nb) { \
        float acc = 0;                                                                                 \
        int8_t c[MOR__QK];                                                                             \
        for (int64_t b = 0; b < nb; b++, w += BSIZE) {                                                 \
            CODES(w, c);                                                                               \
            int32_t isum = ref_isum(c, q + b * MOR__QK, MOR__QK);                                      \
            float dw = mor__f16_to_f32(rd16(w));                                                       \
            if (HAS_MIN)                                                                               \
                acc += (dw * d[b]) * (float)isum +                                                     \
                       (mor__f16_to_f32(rd16(w + 2)) * d[b]) * (s[2 * b] + s[2 * b + 1]);              \
            else acc += (dw * d[b]) * (float)isum;                                                     \
        }                                                                                              \
        (void)s;                                                                                       \
        return acc;                                                                                    \
    }
REF_DOT32(ref_dot_q4_1, q4_1_codes, MOR__Q4_1_SIZE, 1)
REF_DOT32(ref_dot_q5_0, q5_0_codes, MOR__Q5_0_SIZE, 0)
REF_DOT32(ref_dot_q5_1, q5_1_codes, MOR__Q5_1_SIZE, 1)
REF_DOT32(ref_dot_iq4_nl, iq4_nl_codes, MOR__IQ4_NL_SIZE, 0)

// One K super-block (codes c, sub-blocks of sb weights with integer scales sc and mins mn, or
// no mins) against its 8 blocks of x (q, dx, the 16 sums s): per block of x the integer parts
// isc = sum over its two halves of sc_k * isum_half and imn = sum of mn_k * qsum_half, then
// acc += (d * dx) * isc - (dmin * dx) * imn. Every integer is below 2^24: exact as a float.
static float ref_k_dot(float acc, const int8_t *c, const int *sc, const int *mn, int sb, float d, float dmin,
                       const int8_t *q, const float *dx, const float *s) {
    for (int b = 0; b < MOR__QK_K / MOR__QK; b++) {
        int32_t isc = 0, imn = 0;
        for (int h = 0; h < 2; h++) {
            int o = b * MOR__QK + h * 16, k = o / sb;
            isc += sc[k] * ref_isum(c + o, q + o, 16);
            if (mn) imn += mn[k] * (int32_t)s[2 * b + h];
        }
        if (mn) acc += (d * dx[b]) * (float)isc - (dmin * dx[b]) * (float)imn;
        else acc += (d * dx[b]) * (float)isc;
    }
    return acc;
}

static float ref_dot_q4_k(const uint8_t *w, const int8_t *q, const float *d, const float *s, int64_t nb) {
    float acc = 0;
    int8_t c[MOR__QK_K];
    int sc[8], mn[8];
    for (int64_t b = 0; b < nb; b++, w += MOR__Q4_K_SIZE, q += MOR__QK_K, d += 8, s += 16) {
        q4_k_codes(w, c, sc, mn);
        acc = ref_k_dot(acc, c, sc, mn, 32, mor__f16_to_f32(rd16(w)), mor__f16_to_f32(rd16(w + 2)), q, d, s);
    }
    return acc;
}

static float ref_dot_q5_k(const uint8_t *w, const int8_t *q, const float *d, const float *s, int64_t nb) {
    float acc = 0;
    int8_t c[MOR__QK_K];
    int sc[8], mn[8];
    for (int64_t b = 0; b < nb; b++, w += MOR__Q5_K_SIZE, q += MOR__QK_K, d += 8, s += 16) {
        q5_k_codes(w, c, sc, mn);
        acc = ref_k_dot(acc, c, sc, mn, 32, mor__f16_to_f32(rd16(w)), mor__f16_to_f32(rd16(w + 2)), q, d, s);
    }
    return acc;
}

static float ref_dot_q6_k(const uint8_t *w, const int8_t *q, const float *d, const float *s, int64_t nb) {
    float acc = 0;
    int8_t c[MOR__QK_K];
    int sc[16];
    for (int64_t b = 0; b < nb; b++, w += MOR__Q6_K_SIZE, q += MOR__QK_K, d += 8, s += 16) {
        q6_k_codes(w, c, sc);
        acc = ref_k_dot(acc, c, sc, NULL, 16, mor__f16_to_f32(rd16(w + 208)), 0.0f, q, d, s);
    }
    return acc;
}

static float ref_dot_q2_k(const uint8_t *w, const int8_t *q, const float *d, const float *s, int64_t nb) {
    float acc = 0;
    int8_t c[MOR__QK_K];
    int sc[16], mn[16];
    for (int64_t b = 0; b < nb; b++, w += MOR__Q2_K_SIZE, q += MOR__QK_K, d += 8, s += 16) {
        q2_k_codes(w, c, sc, mn);
        acc = ref_k_dot(acc, c, sc, mn, 16, mor__f16_to_f32(rd16(w + 80)), mor__f16_to_f32(rd16(w + 82)), q,
                        d, s);
    }
    return acc;
}

static float ref_dot_q3_k(const uint8_t *w, const int8_t *q, const float *d, const float *s, int64_t nb) {
    float acc = 0;
    int8_t c[MOR__QK_K];
    int sc[16];
    for (int64_t b = 0; b < nb; b++, w += MOR__Q3_K_SIZE, q += MOR__QK_K, d += 8, s += 16) {
        q3_k_codes(w, c, sc);
        acc = ref_k_dot(acc, c, sc, NULL, 16, mor__f16_to_f32(rd16(w + 108)), 0.0f, q, d, s);
    }
    return acc;
}

// The products of these types: per token, x quantized (ref_quant_act) and its sums of 16 into
// the scratch row (11/32 of cols floats), then each row's chain; the same code per (r, t)
// whatever the call's shape.
#define REF_QMATMUL_S(NAME, DOT, BW, BSIZE)                                                          \
    static void NAME(const void *W, int64_t cols, int64_t r0, int64_t r1, const float *x, int64_t T, \
                     int64_t ldx, float *y, int64_t ldy, float *row) {                               \
        int64_t nb = cols / BW;                                                                      \
        int8_t *q = (int8_t *)row;                                                                   \
        float *d = row + cols / 4, *s = d + cols / MOR__QK;                                          \
        for (int64_t t = 0; t < T; t++) {                                                            \
            ref_quant_act(x + t * ldx, cols, q, d);                                                  \
            ref_act_sums(q, cols, s);                                                                \
            for (int64_t r = r0; r < r1; r++)                                                        \
                y[t * ldy + r] = DOT((const uint8_t *)W + (size_t)(r * nb) * BSIZE, q, d, s, nb);    \
        }                                                                                            \
    }
REF_QMATMUL_S(ref_matmul_q4_1, ref_dot_q4_1, MOR__QK, MOR__Q4_1_SIZE)
REF_QMATMUL_S(ref_matmul_q5_0, ref_dot_q5_0, MOR__QK, MOR__Q5_0_SIZE)
REF_QMATMUL_S(ref_matmul_q5_1, ref_dot_q5_1, MOR__QK, MOR__Q5_1_SIZE)
REF_QMATMUL_S(ref_matmul_iq4_nl, ref_dot_iq4_nl, MOR__QK, MOR__IQ4_NL_SIZE)
REF_QMATMUL_S(ref_matmul_q2_k, ref_dot_q2_k, MOR__QK_K, MOR__Q2_K_SIZE)
REF_QMATMUL_S(ref_matmul_q3_k, ref_dot_q3_k, MOR__QK_K, MOR__Q3_K_SIZE)
REF_QMATMUL_S(ref_matmul_q4_k, ref_dot_q4_k, MOR__QK_K, MOR__Q4_K_SIZE)
REF_QMATMUL_S(ref_matmul_q5_k, ref_dot_q5_k, MOR__QK_K, MOR__Q5_K_SIZE)
REF_QMATMUL_S(ref_matmul_q6_k, ref_dot_q6_k, MOR__QK_K, MOR__Q6_K_SIZE)

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
    .matmul = {[MOR__DT_F32] = ref_matmul_f32,
               [MOR__DT_F16] = ref_matmul_f16,
               [MOR__DT_BF16] = ref_matmul_bf16,
               [MOR__DT_Q8_0] = ref_matmul_q8_0,
               [MOR__DT_Q4_0] = ref_matmul_q4_0,
               [MOR__DT_Q4_1] = ref_matmul_q4_1,
               [MOR__DT_Q5_0] = ref_matmul_q5_0,
               [MOR__DT_Q5_1] = ref_matmul_q5_1,
               [MOR__DT_IQ4_NL] = ref_matmul_iq4_nl,
               [MOR__DT_Q2_K] = ref_matmul_q2_k,
               [MOR__DT_Q3_K] = ref_matmul_q3_k,
               [MOR__DT_Q4_K] = ref_matmul_q4_k,
               [MOR__DT_Q5_K] = ref_matmul_q5_k,
               [MOR__DT_Q6_K] = ref_matmul_q6_k},
    .to_f32 = {[MOR__DT_F32] = f32_row,
               [MOR__DT_F16] = f16_row,
               [MOR__DT_BF16] = bf16_row,
               [MOR__DT_Q8_0] = q8_0_row,
               [MOR__DT_Q4_0] = q4_0_row,
               [MOR__DT_Q4_1] = q4_1_row,
               [MOR__DT_Q5_0] = q5_0_row,
               [MOR__DT_Q5_1] = q5_1_row,
               [MOR__DT_IQ4_NL] = iq4_nl_row,
               [MOR__DT_Q2_K] = q2_k_row,
               [MOR__DT_Q3_K] = q3_k_row,
               [MOR__DT_Q4_K] = q4_k_row,
               [MOR__DT_Q5_K] = q5_k_row,
               [MOR__DT_Q6_K] = q6_k_row},
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
