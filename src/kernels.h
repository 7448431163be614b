// kernels.h: the compute kernels of the forward pass, the sampler and the exit metrics, as a
// table of function pointers.
//
// src/kernels/ref.c holds the scalar reference of every entry: plain C11, the test oracle and
// the portable fallback. ISA-specific files (src/kernels/<arch>/<isa>.c) override the entries
// they speed up; src/kernels/dispatch.c checks the CPU once and builds the tables. Kernels never
// allocate and never fail.
// docs/KERNELS.md gives the table, the tolerances and how to add an ISA.
#ifndef MOR_KERNELS_H
#define MOR_KERNELS_H

#include "dtype.h"

#include <stdint.h>

// y[t*ldy + r] = sum_i W[r][i] * x[t*ldx + i]  for rows r in [r0, r1), tokens t in [0, T).
// W is row-major with `cols` elements per row in the kernel's type (cols a multiple of the
// type's block, mor__dtype_block()). `row` is scratch of at least `cols` floats.
// The quantized types' products quantize each token's x to 8 bits per block of 32 first
// (quant_act below, as llama.cpp does for Q8_0/Q4_0) and sum integer products per block:
// sum_b (dw_b * dx_b) * isum_b, with the blocks' other integer terms (mins times the sum of x's
// quantized values, sub-block scales) in the same chain (ref.c, docs/KERNELS.md).
typedef void (*mor__matmul_fn)(const void *W, int64_t cols, int64_t r0, int64_t r1,
                               const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                               float *row);

typedef struct mor__kernels {
    const char *name;  // "ref", "avx2", "avx512", "neon"
    // matmul and to_f32 are indexed by type id (dtype.h): set for the types mor__dtype_computed()
    // accepts, NULL for the others.
    mor__matmul_fn matmul[MOR__DT_COUNT];
    // Convert n elements of a row of the given type to float (n a multiple of the type's block).
    void (*to_f32[MOR__DT_COUNT])(const void *src, float *dst, int64_t n);

    // Activation quantization for the quantized products, per block of 32 (n a multiple of
    // 32): amax = max |x|, d = f16(amax / 127), q = round-to-nearest-even(x * (127 / amax))
    // (q = 0 when amax = 0); writes q[n] and the f16-rounded scales as floats, d[n / 32].
    // Every ISA gives the same bytes as the reference. Each file's quantized products call
    // their own; the entry is here for the oracle test.
    void (*quant_act)(const float *x, int64_t n, int8_t *q, float *d);

    // o = w * x / sqrt(mean(x^2) + eps) (sum of squares in double).
    void (*rmsnorm)(float *o, const float *x, const float *w, int64_t n, float eps);
    // g = silu(g) * u = g / (1 + exp(-g)) * u.
    void (*swiglu)(float *g, const float *u, int64_t n);
    // Rotary embedding of n_heads heads of hd values (pairs (2i, 2i+1), or halves (i, i+hd/2)
    // when neox), angle i given by c[i] = cos, s[i] = sin (hd / 2 of each).
    void (*rope)(float *v, int64_t n_heads, int64_t hd, const float *c, const float *s, int neox);
    // One attention head over n cache entries: att[e] = scale * q . k_e, softmax, out =
    // sum_e att[e] v_e. Entry e of K and V starts at k + e * stride (floats); att holds n floats.
    void (*attend)(const float *q, const float *k, const float *v, int64_t n, int64_t hd,
                   int64_t stride, float scale, float *att, float *out);
    // The same over an F16 cache (k, v as IEEE halves, stride in halves).
    void (*attend_f16)(const float *q, const uint16_t *k, const uint16_t *v, int64_t n, int64_t hd,
                       int64_t stride, float scale, float *att, float *out);
    // Index of the largest of x[0..n) (the first on ties; NaN never wins), n >= 1.
    int64_t (*argmax)(const float *x, int64_t n);
    // sum_i exp(x_i - m), summed in double; with zsum, also *zsum = sum_i exp(x_i - m) (x_i - m)
    // over the terms whose exp is not 0 (the entropy's numerator). m >= every x_i, n >= 0.
    double (*expsum)(const float *x, int64_t n, float m, double *zsum);
} mor__kernels;

// The reference table (ref.c, always available) and the best table for this CPU (dispatch.c,
// filled once).
const mor__kernels *mor__kernels_ref(void);
const mor__kernels *mor__kernels_best(void);
// The table of one ISA by name ("ref", "avx2", "avx512", "neon"); NULL when the build or the
// CPU lacks it. The oracle test runs each against the reference.
const mor__kernels *mor__kernels_isa(const char *name);

// Scalar conversions (ref.c), used by the kernels and the rest of the library.
float    mor__f16_to_f32(uint16_t h);
uint16_t mor__f32_to_f16(float f);
float    mor__bf16_to_f32(uint16_t h);
uint16_t mor__f32_to_bf16(float f);

#endif
