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

// The 16 bytes of 4-bit codes of a block of 32: (int8)((x - mn) * id + add), at most 15;
// element j in the low nibble of byte j, element j + 16 in the high one (Q4_0: mn = 0, x - 0
// being x exactly; Q4_1: its min).
static void put_nibbles(uint8_t *o, const float *x, float mn, float id, float add) {
    for (int j = 0; j < 16; j++) {
        int a = (int8_t)((x[j] - mn) * id + add), c = (int8_t)((x[j + 16] - mn) * id + add);
        a = a < 15 ? a : 15;
        c = c < 15 ? c : 15;
        o[j] = (uint8_t)(a | c << 4);
    }
}

void mor__quantize_q4_0(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst;
    for (int64_t b = 0; b < n / 32; b++, x += 32, o += 18) {
        float d = signed_absmax(x) / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put_f16(o, d);
        put_nibbles(o + 2, x, 0.0f, id, 8.5f);
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
        put_nibbles(o + 4, x, mn, id, 0.5f);
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

// (as two selects, which compilers turn into min/max and vectorize)
static inline int clamp_int(int v, int lo, int hi) {
    v = v > lo ? v : lo;
    return v < hi ? v : hi;
}

// The 8 sub-blocks of 32 of a Q4_K / Q5_K super-block, each with a scale and a min: levels q in
// 0..nmax with x ~ scale * q - min, found by trying the scales (nmax + rmin + rdelta * k) /
// (max - min), k = 0..nstep, each fitted by weighted least squares (the min kept <= 0), and
// keeping the one of least weighted squared error (the first on ties). Writes the levels of
// sub-block j to q[32j..], its min (>= 0, to subtract) to mins[j] and its scale to scales[j].
//
// The sub-blocks are independent and go side by side, lane j for sub-block j (arrays indexed
// [element][lane]): each lane sums in the reference's order, while the lanes give the CPU (and
// the vectorizer) eight independent chains instead of one.
static void fit_scale_min8(const float *x, const float (*w)[8], int nmax, float rmin, float rdelta,
                           int nstep, uint8_t *q, float *scales, float *mins) {
    float xt[32][8], lo[8], hi[8], sum_w[8], sum_x[8], scale[8], best[8];
    int flat[8];  // constant sub-blocks: levels 0, scale 0
    float lv[32][8], trial[32][8];  // levels, as floats (exact) so that the lanes vectorize
    for (int i = 0; i < 32; i++)
        for (int j = 0; j < 8; j++) xt[i][j] = x[32 * j + i];
    for (int j = 0; j < 8; j++) {
        lo[j] = hi[j] = xt[0][j];
        sum_w[j] = w[0][j];
        sum_x[j] = sum_w[j] * xt[0][j];
    }
    for (int i = 1; i < 32; i++)
        for (int j = 0; j < 8; j++) {
            lo[j] = xt[i][j] < lo[j] ? xt[i][j] : lo[j];
            hi[j] = xt[i][j] > hi[j] ? xt[i][j] : hi[j];
            sum_w[j] += w[i][j];
            sum_x[j] += w[i][j] * xt[i][j];
        }
    float iscale[8];
    for (int j = 0; j < 8; j++) {
        if (lo[j] > 0) lo[j] = 0;
        flat[j] = hi[j] == lo[j];
        iscale[j] = flat[j] ? 0.0f : (float)nmax / (hi[j] - lo[j]);
        scale[j] = flat[j] ? 0.0f : 1 / iscale[j];
        best[j] = 0;
    }
    for (int i = 0; i < 32; i++)
        for (int j = 0; j < 8; j++) {
            float l = (float)clamp_int(nearest_int(iscale[j] * (xt[i][j] - lo[j])), 0, nmax);
            lv[i][j] = l;
            float diff = scale[j] * l + lo[j] - xt[i][j];
            best[j] += w[i][j] * (diff * diff);
        }
    for (int k = 0; k <= nstep; k++) {
        float sum_l[8] = {0}, sum_l2[8] = {0}, sum_xl[8] = {0}, err[8] = {0}, s[8], m[8];
        // max - min with the min of the best fit so far, as the reference computes it
        for (int j = 0; j < 8; j++)
            iscale[j] = flat[j] ? 0.0f : (rmin + rdelta * (float)k + (float)nmax) / (hi[j] - lo[j]);
        for (int i = 0; i < 32; i++)
            for (int j = 0; j < 8; j++) {
                float fl = (float)clamp_int(nearest_int(iscale[j] * (xt[i][j] - lo[j])), 0, nmax);
                trial[i][j] = fl;
                sum_l[j] += w[i][j] * fl;
                sum_l2[j] += w[i][j] * fl * fl;
                sum_xl[j] += w[i][j] * fl * xt[i][j];
            }
        int any = 0;
        for (int j = 0; j < 8; j++) {
            float det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            s[j] = m[j] = 0;
            if (!(det > 0) || flat[j]) continue;
            any = 1;
            s[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / det;
            m[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / det;
            if (m[j] > 0) {
                m[j] = 0;
                s[j] = sum_xl[j] / sum_l2[j];
            }
        }
        if (!any) continue;
        for (int i = 0; i < 32; i++)
            for (int j = 0; j < 8; j++) {
                float diff = s[j] * trial[i][j] + m[j] - xt[i][j];
                err[j] += w[i][j] * (diff * diff);
            }
        for (int j = 0; j < 8; j++) {
            float det = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            if (!(det > 0) || flat[j] || !(err[j] < best[j])) continue;
            for (int i = 0; i < 32; i++) lv[i][j] = trial[i][j];
            best[j] = err[j];
            scale[j] = s[j];
            lo[j] = m[j];
        }
    }
    for (int j = 0; j < 8; j++) {
        for (int i = 0; i < 32; i++) q[32 * j + i] = flat[j] ? 0 : (uint8_t)lv[i][j];
        scales[j] = scale[j];
        mins[j] = -lo[j];
    }
}

// The scale/min half of Q4_K and Q5_K: fits the 8 sub-blocks of the super-block x, writes d,
// dmin and the packed 6-bit scales and mins at o (16 bytes), and the levels (0..nmax) to q.
static void kquant_scales(const float *x, int nmax, float rmin, int nstep, uint8_t *o,
                          uint8_t q[256]) {
    float scales[8], mins[8], w[32][8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += xs[l] * xs[l];
        float av = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) w[l][j] = av + fabsf(xs[l]);
    }
    fit_scale_min8(x, (const float (*)[8])w, nmax, rmin, 0.1f, nstep, q, scales, mins);
    for (int j = 0; j < 8; j++) {
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

// The 16 sub-blocks of 16 of a Q6_K super-block: for each, the scale s with x ~ s * l, l in
// -32..31, of least x²-weighted squared error among 1 / iscale for iscale = -(32 + 0.1 k) / m,
// k = -9..9, m the element of largest |x| (k = 0 first, then the others in order, a later one
// replacing only when strictly better). Writes l + 32 to q and the scales; a sub-block of
// |x| < 1e-15 gets levels 0 and scale 0. Lanes as in fit_scale_min8, lane s for sub-block s.
static void fit_scale_q6x16(const float *x, uint8_t *q, float *scales) {
    float xt[16][16], w[16][16], wx[16][16], lv[16][16], trial[16][16];
    float amax[16] = {0}, m[16] = {0}, iscale[16], sumlx[16] = {0}, suml2[16] = {0}, scale[16], best[16];
    int tiny[16];
    for (int i = 0; i < 16; i++)
        for (int t = 0; t < 16; t++) {
            float v = x[16 * t + i];
            xt[i][t] = v;
            w[i][t] = v * v;
            wx[i][t] = w[i][t] * v;
        }
    for (int i = 0; i < 16; i++)
        for (int t = 0; t < 16; t++)
            if (fabsf(xt[i][t]) > amax[t]) amax[t] = fabsf(xt[i][t]), m[t] = xt[i][t];
    for (int t = 0; t < 16; t++) {
        tiny[t] = amax[t] < 1e-15f;
        iscale[t] = tiny[t] ? 0.0f : (float)-32 / m[t];
    }
    for (int i = 0; i < 16; i++)
        for (int t = 0; t < 16; t++) {
            float fl = (float)clamp_int(nearest_int(iscale[t] * xt[i][t]), -32, 31);
            lv[i][t] = fl;
            sumlx[t] += wx[i][t] * fl;
            suml2[t] += w[i][t] * fl * fl;
        }
    for (int t = 0; t < 16; t++) {
        scale[t] = suml2[t] != 0.0f ? sumlx[t] / suml2[t] : 0.0f;
        best[t] = scale[t] * sumlx[t];
    }
    for (int k = -9; k <= 9; k++) {
        if (k == 0) continue;
        for (int t = 0; t < 16; t++) {
            iscale[t] = tiny[t] ? 0.0f : -(32.0f + 0.1f * (float)k) / m[t];
            sumlx[t] = suml2[t] = 0;
        }
        for (int i = 0; i < 16; i++)
            for (int t = 0; t < 16; t++) {
                float fl = (float)clamp_int(nearest_int(iscale[t] * xt[i][t]), -32, 31);
                trial[i][t] = fl;
                sumlx[t] += wx[i][t] * fl;
                suml2[t] += w[i][t] * fl * fl;
            }
        for (int t = 0; t < 16; t++) {
            if (tiny[t] || !(suml2[t] > 0) || !(sumlx[t] * sumlx[t] > best[t] * suml2[t])) continue;
            for (int i = 0; i < 16; i++) lv[i][t] = trial[i][t];
            scale[t] = sumlx[t] / suml2[t];
            best[t] = scale[t] * sumlx[t];
        }
    }
    for (int t = 0; t < 16; t++) {
        for (int i = 0; i < 16; i++) q[16 * t + i] = tiny[t] ? 0 : (uint8_t)((int)lv[i][t] + 32);
        scales[t] = tiny[t] ? 0.0f : scale[t];
    }
}

void mor__quantize_q6_k(const float *x, void *dst, int64_t n) {
    uint8_t *o = dst, q[256];
    for (int64_t b = 0; b < n / 256; b++, x += 256, o += 210) {
        float scales[16], max_scale = 0, max_abs = 0;
        fit_scale_q6x16(x, q, scales);
        for (int s = 0; s < 16; s++)
            if (fabsf(scales[s]) > max_abs) max_abs = fabsf(scales[s]), max_scale = scales[s];
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
