// quant.h: F32 -> quantized weight blocks with llama.cpp's reference ("ref") quantizers,
// without importance weights, so that a file quantized here has the same bytes as one from
// llama-quantize without an importance matrix. Every float operation is done in the order the
// reference does it (float, not double; no fused multiply-add), since the K-quant encoders
// search scales and a rounding difference picks another scale.
//
// Block layouts (GGUF's, packed, little-endian; "h" is an IEEE half):
//   Q8_0 (34 B / 32):  h d, int8 qs[32]                      w = d*q
//   Q4_0 (18 B / 32):  h d, u8 qs[16]                        w = d*(nib - 8)
//   Q4_1 (20 B / 32):  h d, h m, u8 qs[16]                   w = d*nib + m
//   Q5_0 (22 B / 32):  h d, u8 qh[4], u8 qs[16]              w = d*(q - 16)
//   Q5_1 (24 B / 32):  h d, h m, u8 qh[4], u8 qs[16]         w = d*q + m
//     (32-element blocks: element j < 16 in the low nibble of qs[j], j >= 16 in the high
//     nibble of qs[j - 16]; the fifth bit of element j is bit j of the little-endian qh word)
//   Q4_K (144 B / 256): h d, h dmin, u8 scales[12], u8 qs[128]
//   Q5_K (176 B / 256): h d, h dmin, u8 scales[12], u8 qh[32], u8 qs[128]
//     (8 sub-blocks of 32 with 6-bit scale sc and min m packed in scales[12]: sub-block j < 4
//     has sc = scales[j] & 63, m = scales[j+4] & 63; j >= 4 has sc = scales[j+4] & 15 |
//     (scales[j-4] >> 6) << 4, m = scales[j+4] >> 4 | (scales[j] >> 6) << 4;
//     w = d*sc*q - dmin*m. qs: 64 elements per 32 bytes, the first 32 in the low nibbles;
//     Q5_K's fifth bit of element 64*p + 32*h + l is bit 2p+h of qh[l])
//   Q6_K (210 B / 256): u8 ql[128], u8 qh[64], int8 scales[16], h d
//     (16 sub-blocks of 16, w = d*scales[s]*(q - 32); per 128 elements, 64 bytes of ql and 32
//     of qh: element l + 32k (l < 32, k < 4) has low bits in ql[l + 32*(k&1)] (nibble k>>1)
//     and high two bits at bit 2k of qh[l])
#ifndef MOR_QUANT_H
#define MOR_QUANT_H

#include <stddef.h>
#include <stdint.h>

// GGUF type ids of the block types written here (ggml's numbering).
enum {
    MOR__QT_Q4_0 = 2, MOR__QT_Q4_1 = 3, MOR__QT_Q5_0 = 6, MOR__QT_Q5_1 = 7, MOR__QT_Q8_0 = 8,
    MOR__QT_Q4_K = 12, MOR__QT_Q5_K = 13, MOR__QT_Q6_K = 14
};

// Each quantizes n floats (n a multiple of the block: 32, or 256 for the K types) into
// consecutive blocks at dst. Blocks are independent of each other, so rows, row ranges and
// threads may be split at any block boundary.
//   Q8_0: d = max|x| / 127, q = roundf(x / d) (ties away from zero).
//   Q4_0 / Q5_0: m = the x of largest |x| (the first on ties), d = m / -8 (-16),
//         q = min(15 (31), (int)(x/d + 8.5 (16.5))).
//   Q4_1 / Q5_1: d = (max - min) / 15 (31), q = (int)((x - min)/d + 0.5), capped at 15 for Q4_1.
//   Q4_K / Q5_K: per sub-block of 32, weights av + |x| (av = the root mean square) and a
//         search of 21 (16) candidate scales for the least weighted squared error with a
//         non-positive min; the scales and mins are then quantized to 6 bits against the
//         block's largest, and the elements requantized with the rounded values.
//   Q6_K: per sub-block of 16, a search of 19 candidate scales for the least x²-weighted
//         squared error; scales to int8 against the block's largest |scale|, elements requantized.
// (x/d is computed as x * (1/d) where the reference does; rounding is nearest, ties to even,
// through the 1.5 * 2^23 addition, for the K types.)
void mor__quantize_q8_0(const float *x, void *dst, int64_t n);
void mor__quantize_q4_0(const float *x, void *dst, int64_t n);
void mor__quantize_q4_1(const float *x, void *dst, int64_t n);
void mor__quantize_q5_0(const float *x, void *dst, int64_t n);
void mor__quantize_q5_1(const float *x, void *dst, int64_t n);
void mor__quantize_q4_k(const float *x, void *dst, int64_t n);
void mor__quantize_q5_k(const float *x, void *dst, int64_t n);
void mor__quantize_q6_k(const float *x, void *dst, int64_t n);

// Elements per block of a type above (32 or 256); 0 for another id.
int mor__quant_block(uint32_t type);
// Quantizes n floats to `type` (one of the ids above; n a multiple of its block). Returns 0, or
// -1 for another type or a bad n (nothing written).
int mor__quantize(uint32_t type, const float *x, void *dst, int64_t n);

#endif
