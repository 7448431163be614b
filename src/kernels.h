// kernels.h: the compute kernels the forward pass calls, as a table of function pointers.
//
// src/kernels/ref.c holds the scalar reference of every entry: plain C11, the test oracle and
// the portable fallback. ISA-specific files (src/kernels/<arch>/<isa>.c) override the entries
// they speed up after a run-time CPU check. Kernels never allocate and never fail.
#ifndef MOR_KERNELS_H
#define MOR_KERNELS_H

#include <stdint.h>

// y[t*ldy + r] = sum_i W[r][i] * x[t*ldx + i]  for rows r in [r0, r1), tokens t in [0, T).
// W is row-major with `cols` elements per row in the kernel's type. `row` is scratch of at
// least `cols` floats (used by types that convert a row once for all tokens).
typedef void (*mor__matmul_fn)(const void *W, int64_t cols, int64_t r0, int64_t r1,
                               const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                               float *row);

enum { MOR__KT_F32, MOR__KT_F16, MOR__KT_BF16, MOR__KT_COUNT };

typedef struct mor__kernels {
    const char    *name;                    // "ref", "avx2", ...
    mor__matmul_fn matmul[MOR__KT_COUNT];
    float (*dot)(const float *a, const float *b, int64_t n);
    // y += a * x
    void (*axpy)(float *y, float a, const float *x, int64_t n);
    // Convert n elements of a row of the given type to float.
    void (*to_f32[MOR__KT_COUNT])(const void *src, float *dst, int64_t n);
} mor__kernels;

// The reference table (always available) and the best table for this CPU (filled once).
const mor__kernels *mor__kernels_ref(void);
const mor__kernels *mor__kernels_best(void);

// Scalar conversions used outside the kernels.
float    mor__f16_to_f32(uint16_t h);
uint16_t mor__f32_to_f16(float f);
float    mor__bf16_to_f32(uint16_t h);
uint16_t mor__f32_to_bf16(float f);

#endif
