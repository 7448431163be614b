// quant.h: F32 -> Q8_0 / Q4_0 weight quantization with llama.cpp's reference rounding, so a
// file quantized here has the same bytes as one from llama-quantize (without an importance
// matrix). Block layouts: kernels.h.
#ifndef MOR_QUANT_H
#define MOR_QUANT_H

#include <stddef.h>
#include <stdint.h>

// Quantizes n floats (n a multiple of 32) into n / 32 blocks at dst (34 or 18 bytes each).
//   Q8_0: amax = max |x|, d = amax / 127, id = d ? 1 / d : 0, q = roundf(x * id) (ties away
//         from zero); the block stores f16(d).
//   Q4_0: m = the x of largest |x| (the first on ties), d = m / -8, id = d ? 1 / d : 0,
//         nib = min(15, (int)(x * id + 8.5f)) (truncation); elements 0..15 in the low nibbles,
//         16..31 in the high nibbles; the block stores f16(d).
void mor__quantize_q8_0(const float *x, void *dst, int64_t n);
void mor__quantize_q4_0(const float *x, void *dst, int64_t n);

#endif
