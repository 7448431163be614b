// quant.c: F32 -> quantized blocks with llama.cpp's reference rules (quant.h).
//
// Bit-identity with the reference depends on doing each float operation in its order and
// precision: sums accumulate left to right in float, products are evaluated left to right
// (w*x*l is (w*x)*l), ints convert to float where the reference's mixed expressions do, and
// nothing is contracted into a fused multiply-add: the pragmas below say so to gcc (whose GNU
// modes contract by default) and clang, whatever flags build the file. With contraction on a
// target with FMA, 1 to 30 % of K-type super-blocks come out different.
#include "quant.h"

#include "kernels.h"

#include <float.h>
#include <math.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

static void put_f16(uint8_t *o, float v) {
    uint16_t h = mor__f32_to_f16(v);
    memcpy(o, &h, 2);
}

static float get_f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mor__f16_to_f32(h);
}

// ---- 32-element blocks ------------------------------------------------------------------------

void mor__quantize_q8_0(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / 32; b++, x += 32, o += 34) {
        float amax = 0;
        for (int j = 0; j < 32; j++) {
            float a = fabsf(x[j]);
            amax = amax > a ? amax : a;
        }
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(o, d);
        for (int j = 0; j < 32; j++) o[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

// The element of largest magnitude, the first one on ties (the symmetric types' scale).
static float signed_absmax(const float *x) {
    float amax = 0, m = 0;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j])) amax = fabsf(x[j]), m = x[j];
    return m;
}

static void min_max(const float *x, float *mn, float *mx) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

void mor__quantize_q4_0(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / 32; b++, x += 32, o += 18) {
        float d = signed_absmax(x) / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(o, d);
        for (int j = 0; j < 16; j++) {
            int a = (int8_t)(x[j] * id + 8.5f), c = (int8_t)(x[j + 16] * id + 8.5f);
            a = a < 15 ? a : 15;
            c = c < 15 ? c : 15;
            o[2 + j] = (uint8_t)(a | c << 4);
        }
    }
}

void mor__quantize_q4_1(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / 32; b++, x += 32, o += 20) {
        float mn, mx;
        min_max(x, &mn, &mx);
        float d = (mx - mn) / 15.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(o, d);
        put_f16(o + 2, mn);
        for (int j = 0; j < 16; j++) {
            int a = (int8_t)((x[j] - mn) * id + 0.5f), c = (int8_t)((x[j + 16] - mn) * id + 0.5f);
            a = a < 15 ? a : 15;
            c = c < 15 ? c : 15;
            o[4 + j] = (uint8_t)(a | c << 4);
        }
    }
}

void mor__quantize_q5_0(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / 32; b++, x += 32, o += 22) {
        float d = signed_absmax(x) / -16.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(o, d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int a = (int8_t)(x[j] * id + 16.5f), c = (int8_t)(x[j + 16] * id + 16.5f);
            a = a < 31 ? a : 31;
            c = c < 31 ? c : 31;
            o[6 + j] = (uint8_t)((a & 15) | (c & 15) << 4);
            qh |= (uint32_t)(a >> 4 & 1) << j | (uint32_t)(c >> 4 & 1) << (j + 16);
        }
        for (int k = 0; k < 4; k++) o[2 + k] = (uint8_t)(qh >> (8 * k));
    }
}

void mor__quantize_q5_1(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / 32; b++, x += 32, o += 24) {
        float mn, mx;
        min_max(x, &mn, &mx);
        float d = (mx - mn) / 31.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(o, d);
        put_f16(o + 2, mn);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            unsigned a = (uint8_t)((x[j] - mn) * id + 0.5f), c = (uint8_t)((x[j + 16] - mn) * id + 0.5f);
            o[8 + j] = (uint8_t)((a & 15) | (c & 15) << 4);
            qh |= (a >> 4 & 1) << j | (c >> 4 & 1) << (j + 16);
        }
        for (int k = 0; k < 4; k++) o[4 + k] = (uint8_t)(qh >> (8 * k));
    }
}

// ---- K types: 256-element super-blocks ----------------------------------------------------------

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the integer in the
// low mantissa bits.
static int nearest_int(float v) {
    float t = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &t, 4);
    return (i & 0x007fffff) - 0x00400000;
}

static int clamp_int(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// One sub-block of 32 with a scale and a min (Q4_K, Q5_K): levels q in 0..nmax with
// x ~ scale * q - min_out, found by trying the scales (nmax + rmin + rdelta * k) / (max - min),
// k = 0..nstep, each fitted by weighted least squares (the min kept <= 0), and keeping the one
// of least weighted squared error (the first on ties). Writes the levels to q and the min
// (>= 0, to subtract) to *min_out; returns the scale.
static float fit_scale_min(const float *x, const float *w, int nmax, float rmin, float rdelta,
                           int nstep, uint8_t *q, float *min_out) {
    float lo = x[0], hi = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < 32; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (lo > 0) lo = 0;
    if (hi == lo) {
        memset(q, 0, 32);
        *min_out = -lo;
        return 0.0f;
    }
    float iscale = (float)nmax / (hi - lo), scale = 1 / iscale, best = 0;
    for (int i = 0; i < 32; i++) {
        q[i] = (uint8_t)clamp_int(nearest_int(iscale * (x[i] - lo)), 0, nmax);
        float diff = scale * q[i] + lo - x[i];
        best += w[i] * (diff * diff);
    }
    uint8_t trial[32];
    for (int k = 0; k <= nstep; k++) {
        iscale = (rmin + rdelta * (float)k + (float)nmax) / (hi - lo);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < 32; i++) {
            int l = clamp_int(nearest_int(iscale * (x[i] - lo)), 0, nmax);
            trial[i] = (uint8_t)l;
            float fl = (float)l;
            sum_l += w[i] * fl;
            sum_l2 += w[i] * fl * fl;
            sum_xl += w[i] * fl * x[i];
        }
        float det = sum_w * sum_l2 - sum_l * sum_l;
        if (!(det > 0)) continue;
        float s = (sum_w * sum_xl - sum_x * sum_l) / det, m = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if (m > 0) {
            m = 0;
            s = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < 32; i++) {
            float diff = s * trial[i] + m - x[i];
            err += w[i] * (diff * diff);
        }
        if (err < best) {
            memcpy(q, trial, 32);
            best = err;
            scale = s;
            lo = m;
        }
    }
    *min_out = -lo;
    return scale;
}

// The scale/min half of Q4_K and Q5_K: fits the 8 sub-blocks of the super-block x, writes d,
// dmin and the packed 6-bit scales and mins at o (16 bytes), and the levels (0..nmax) to q.
static void kquant_scales(const float *x, int nmax, float rmin, int nstep, uint8_t *o,
                          uint8_t q[256]) {
    float scales[8], mins[8], w[32], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
        float av = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) w[l] = av + fabsf(xs[l]);
        scales[j] = fit_scale_min(xs, w, nmax, rmin, 0.1f, nstep, q + 32 * j, &mins[j]);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t *sc = o + 4, ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        // The reference keeps the low 8 bits of the rounded value before capping at 63.
        ls[j] = (uint8_t)nearest_int(inv_scale * scales[j]);
        lm[j] = (uint8_t)nearest_int(inv_min * mins[j]);
        if (ls[j] > 63) ls[j] = 63;
        if (lm[j] > 63) lm[j] = 63;
    }
    for (int j = 0; j < 4; j++) {
        sc[j] = (uint8_t)(ls[j] | (ls[j + 4] >> 4) << 6);
        sc[j + 4] = (uint8_t)(lm[j] | (lm[j + 4] >> 4) << 6);
        sc[j + 8] = (uint8_t)((ls[j + 4] & 15) | (lm[j + 4] & 15) << 4);
    }
    put_f16(o, max_scale / 63.0f);
    put_f16(o + 2, max_min / 63.0f);
    // Requantize each sub-block with the rounded scale and min (a zero scale keeps the fit's levels).
    float d_all = get_f16(o), dmin_all = get_f16(o + 2);
    for (int j = 0; j < 8; j++) {
        float d = d_all * (float)ls[j];
        if (d == 0.0f) continue;
        float dm = dmin_all * (float)lm[j];
        for (int l = 0; l < 32; l++)
            q[32 * j + l] = (uint8_t)clamp_int(nearest_int((x[32 * j + l] + dm) / d), 0, nmax);
    }
}

void mor__quantize_q4_k(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst, q[256];
    for (int64_t b = 0; b < n / 256; b++, x += 256, o += 144) {
        kquant_scales(x, 15, -1.0f, 20, o, q);
        for (int p = 0; p < 4; p++)
            for (int l = 0; l < 32; l++)
                o[16 + 32 * p + l] = (uint8_t)(q[64 * p + l] | q[64 * p + 32 + l] << 4);
    }
}

void mor__quantize_q5_k(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst, q[256];
    for (int64_t b = 0; b < n / 256; b++, x += 256, o += 176) {
        kquant_scales(x, 31, -0.5f, 15, o, q);
        uint8_t *qh = o + 16, *qs = o + 48;
        memset(qh, 0, 32);
        for (int p = 0; p < 4; p++)
            for (int l = 0; l < 32; l++) {
                int a = q[64 * p + l], c = q[64 * p + 32 + l];
                qh[l] |= (uint8_t)((a >> 4) << (2 * p) | (c >> 4) << (2 * p + 1));
                qs[32 * p + l] = (uint8_t)((a & 15) | (c & 15) << 4);
            }
    }
}

// One Q6_K sub-block of 16: the scale s with x ~ s * l, l in -32..31, of least x²-weighted
// squared error among 1 / iscale for iscale = -(32 + 0.1 k) / m, k = -9..9, m the element of
// largest |x| (k = 0 first, then the others in order, a later one replacing only when
// strictly better). Writes l + 32 to q; a sub-block of |x| < 1e-15 gets levels 0 and scale 0.
static float fit_scale_q6(const float *x, uint8_t *q) {
    float amax = 0, m = 0;
    for (int i = 0; i < 16; i++)
        if (fabsf(x[i]) > amax) amax = fabsf(x[i]), m = x[i];
    if (amax < 1e-15f) {
        memset(q, 0, 16);
        return 0.0f;
    }
    float sumlx = 0, suml2 = 0, iscale = (float)-32 / m;
    for (int i = 0; i < 16; i++) {
        int l = clamp_int(nearest_int(iscale * x[i]), -32, 31);
        q[i] = (uint8_t)(l + 32);
        float w = x[i] * x[i], fl = (float)l;
        sumlx += w * x[i] * fl;
        suml2 += w * fl * fl;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int k = -9; k <= 9; k++) {
        if (k == 0) continue;
        iscale = -(32.0f + 0.1f * (float)k) / m;
        sumlx = suml2 = 0;
        for (int i = 0; i < 16; i++) {
            float fl = (float)clamp_int(nearest_int(iscale * x[i]), -32, 31);
            float w = x[i] * x[i];
            sumlx += w * x[i] * fl;
            suml2 += w * fl * fl;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < 16; i++)
                q[i] = (uint8_t)(clamp_int(nearest_int(iscale * x[i]), -32, 31) + 32);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

void mor__quantize_q6_k(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst, q[256];
    for (int64_t b = 0; b < n / 256; b++, x += 256, o += 210) {
        float scales[16], max_scale = 0, max_abs = 0;
        for (int s = 0; s < 16; s++) {
            scales[s] = fit_scale_q6(x + 16 * s, q + 16 * s);
            if (fabsf(scales[s]) > max_abs) max_abs = fabsf(scales[s]), max_scale = scales[s];
        }
        uint8_t *ql = o, *qh = o + 128;
        int8_t *sc = (int8_t *)(o + 192);
        if (max_abs < 1e-15f) {  // all (near) zero: an all-zero block
            memset(o, 0, 210);
            continue;
        }
        float iscale = -128.0f / max_scale;
        put_f16(o + 208, 1 / iscale);
        float d_all = get_f16(o + 208);
        for (int s = 0; s < 16; s++) {
            int v = nearest_int(iscale * scales[s]);
            sc[s] = (int8_t)(v < 127 ? v : 127);
        }
        for (int s = 0; s < 16; s++) {
            float d = d_all * (float)sc[s];
            if (d == 0.0f) continue;
            for (int i = 0; i < 16; i++)
                q[16 * s + i] = (uint8_t)(clamp_int(nearest_int(x[16 * s + i] / d), -32, 31) + 32);
        }
        for (int h = 0; h < 2; h++, ql += 64, qh += 32) {
            const uint8_t *qq = q + 128 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = (uint8_t)((qq[l] & 15) | (qq[l + 64] & 15) << 4);
                ql[l + 32] = (uint8_t)((qq[l + 32] & 15) | (qq[l + 96] & 15) << 4);
                qh[l] = (uint8_t)(qq[l] >> 4 | (qq[l + 32] >> 4) << 2 | (qq[l + 64] >> 4) << 4 |
                                  (qq[l + 96] >> 4) << 6);
            }
        }
    }
}

// ---- by type ------------------------------------------------------------------------------------

int mor__quant_block(uint32_t type) {
    switch (type) {
    case MOR__QT_Q4_0: case MOR__QT_Q4_1: case MOR__QT_Q5_0: case MOR__QT_Q5_1: case MOR__QT_Q8_0:
        return 32;
    case MOR__QT_Q4_K: case MOR__QT_Q5_K: case MOR__QT_Q6_K: return 256;
    default: return 0;
    }
}

int mor__quantize(uint32_t type, const float *x, void *dst, int64_t n) {
    int blk = mor__quant_block(type);
    if (!blk || n < 0 || n % blk) return -1;
    switch (type) {
    case MOR__QT_Q4_0: mor__quantize_q4_0(x, dst, n); break;
    case MOR__QT_Q4_1: mor__quantize_q4_1(x, dst, n); break;
    case MOR__QT_Q5_0: mor__quantize_q5_0(x, dst, n); break;
    case MOR__QT_Q5_1: mor__quantize_q5_1(x, dst, n); break;
    case MOR__QT_Q8_0: mor__quantize_q8_0(x, dst, n); break;
    case MOR__QT_Q4_K: mor__quantize_q4_k(x, dst, n); break;
    case MOR__QT_Q5_K: mor__quantize_q5_k(x, dst, n); break;
    default: mor__quantize_q6_k(x, dst, n); break;
    }
    return 0;
}
