// kernels.h: the compute kernels the forward pass calls, as a table of function pointers.
//
// src/kernels/ref.c holds the scalar reference of every entry: plain C11, the test oracle and
// the portable fallback. ISA-specific files (src/kernels/<arch>/<isa>.c) override the entries
// they speed up; src/kernels/dispatch.c checks the CPU once and builds the tables. Kernels never
// allocate and never fail.
// docs/KERNELS.md gives the table, the tolerances and how to add an ISA.
#ifndef MOR_KERNELS_H
#define MOR_KERNELS_H

#include <stdint.h>

// Weight types the kernels compute with.
enum { MOR__KT_F32, MOR__KT_F16, MOR__KT_BF16, MOR__KT_Q8_0, MOR__KT_Q4_0, MOR__KT_COUNT };

// Quantized blocks, exactly as GGUF stores them (ggml's block_q8_0 and block_q4_0), 32 weights
// each, packed without padding (34 and 18 bytes: a block's fields may be misaligned, so
// kernels read `d` with memcpy):
//   Q8_0: uint16 d (IEEE half), int8 qs[32];             weight j = d * qs[j]
//   Q4_0: uint16 d (IEEE half), uint8 qs[16] (nibbles);  weight j = d * (nib_j - 8), where
//         nib_j = qs[j] & 15 for j < 16 and qs[j - 16] >> 4 for j >= 16.
#define MOR__QK        32
#define MOR__Q8_0_SIZE 34
#define MOR__Q4_0_SIZE 18

// GGUF tensor type ids (gguf.h's MOR__DT_*) to kernel types; -1 for a type the kernels do not
// compute with.
static inline int mor__kt_of_dtype(uint32_t dt) {
    switch (dt) {
    case 0: return MOR__KT_F32;
    case 1: return MOR__KT_F16;
    case 30: return MOR__KT_BF16;
    case 8: return MOR__KT_Q8_0;
    case 2: return MOR__KT_Q4_0;
    default: return -1;
    }
}

// Bytes of a row of n elements of kernel type kt (n a multiple of 32 for Q8_0/Q4_0).
static inline int64_t mor__kt_row_bytes(int kt, int64_t n) {
    switch (kt) {
    case MOR__KT_F32: return n * 4;
    case MOR__KT_F16:
    case MOR__KT_BF16: return n * 2;
    case MOR__KT_Q8_0: return n / MOR__QK * MOR__Q8_0_SIZE;
    case MOR__KT_Q4_0: return n / MOR__QK * MOR__Q4_0_SIZE;
    default: return 0;
    }
}

// y[t*ldy + r] = sum_i W[r][i] * x[t*ldx + i]  for rows r in [r0, r1), tokens t in [0, T).
// W is row-major with `cols` elements per row in the kernel's type (cols a multiple of 32 for
// Q8_0/Q4_0). `row` is scratch of at least `cols` floats.
// Q8_0/Q4_0 products quantize each token's x to 8 bits per block of 32 first (quant_act
// below, as llama.cpp does) and sum integer block products: sum_b (dw_b * dx_b) * isum_b.
typedef void (*mor__matmul_fn)(const void *W, int64_t cols, int64_t r0, int64_t r1,
                               const float *x, int64_t T, int64_t ldx, float *y, int64_t ldy,
                               float *row);

typedef struct mor__kernels {
    const char    *name;                    // "ref", "avx2", "avx512", "neon"
    mor__matmul_fn matmul[MOR__KT_COUNT];
    // Convert n elements of a row of the given type to float (n a multiple of 32 for Q types).
    void (*to_f32[MOR__KT_COUNT])(const void *src, float *dst, int64_t n);

    // Activation quantization for the Q8_0/Q4_0 products, per block of 32 (n a multiple of
    // 32): amax = max |x|, d = f16(amax / 127), q = round-to-nearest-even(x * (127 / amax))
    // (q = 0 when amax = 0); writes q[n] and the f16-rounded scales as floats, d[n / 32].
    // Every ISA gives the same bytes as the reference.
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
