// dtype.h: the tensor types the engine computes with: their ids, block layouts and row sizes.
//
// The ids are GGUF's type numbers (the type field of a tensor record), so a parsed tensor's
// type is used as it is: the loader admits a tensor when mor__dtype_computed() says so, and the
// kernel tables (kernels.h) are indexed by the id. GGUF defines other types: the reader knows
// their names and sizes (mor__dtype_name, mor__dtype_size in gguf.h), the loader refuses them.
// This header depends on nothing in the library: the kernels, the GGUF reader and the model
// all include it.
#ifndef MOR_DTYPE_H
#define MOR_DTYPE_H

#include <stdint.h>

// clang-format off
enum mor__dtype {
    MOR__DT_F32 = 0, MOR__DT_F16 = 1, MOR__DT_Q4_0 = 2, MOR__DT_Q4_1 = 3, MOR__DT_Q5_0 = 6,
    MOR__DT_Q5_1 = 7, MOR__DT_Q8_0 = 8, MOR__DT_Q2_K = 10, MOR__DT_Q3_K = 11, MOR__DT_Q4_K = 12,
    MOR__DT_Q5_K = 13, MOR__DT_Q6_K = 14, MOR__DT_IQ4_NL = 20, MOR__DT_BF16 = 30,
    MOR__DT_COUNT = 31  // one past the largest id: the length of the kernels' per-type tables
};
// clang-format on

// Quantized blocks, exactly as GGUF stores them (ggml's block structs), packed without padding:
// a block's fields may be misaligned, so kernels read the 16-bit scales with memcpy. Scales
// `d`, `m`, `dmin` are IEEE halves; "nib_j" of a 16-byte array qs is qs[j] & 15 for j < 16 and
// qs[j - 16] >> 4 for j >= 16 (low nibbles hold the first half of the block, high nibbles the
// second).
//
// Blocks of 32 weights:
//   Q8_0   (34 bytes): d, int8 qs[32];                weight j = d * qs[j]
//   Q4_0   (18 bytes): d, qs[16];                     weight j = d * (nib_j - 8)
//   Q4_1   (20 bytes): d, m, qs[16];                  weight j = d * nib_j + m
//   Q5_0   (22 bytes): d, qh[4], qs[16];              weight j = d * ((nib_j | h_j << 4) - 16),
//                      h_j = bit j of qh read as a little-endian uint32
//   Q5_1   (24 bytes): d, m, qh[4], qs[16];           weight j = d * (nib_j | h_j << 4) + m
//   IQ4_NL (18 bytes): d, qs[16];                     weight j = d * v[nib_j], v = the 16 codes
//                      -127 -104 -83 -65 -49 -35 -22 -10 1 13 25 38 53 69 89 113 (a non-uniform
//                      grid, denser near zero)
//
// Super-blocks of 256 weights (i = 0..255 below):
//   Q4_K (144 bytes): d, dmin, scales[12], qs[128]. Eight sub-blocks of 32 (s = i / 32), each
//        with a 6-bit scale sc_s and a 6-bit min mn_s packed into the 12 bytes: for s < 4,
//        sc_s = scales[s] & 63 and mn_s = scales[s + 4] & 63; for s >= 4, sc_s = (scales[s + 4]
//        & 15) | (scales[s - 4] >> 6) << 4 and mn_s = (scales[s + 4] >> 4) | (scales[s] >> 6)
//        << 4. The quants of sub-blocks 2c and 2c + 1 share the 32 bytes qs[32c..32c+31]: low
//        nibbles for 2c, high nibbles for 2c + 1. weight i = d * sc_s * q_i - dmin * mn_s.
//   Q5_K (176 bytes): d, dmin, scales[12], qh[32], qs[128]: Q4_K's scales and nibbles, plus a
//        fifth bit: bit s of qh[i % 32]. weight i = d * sc_s * (q_i | h_i << 4) - dmin * mn_s.
//   Q6_K (210 bytes): ql[128], qh[64], int8 scales[16], d (last). Sixteen sub-blocks of 16 with
//        scale scales[i / 16]. With h = i / 128, g = (i % 128) / 32, l = i % 32: the low four
//        bits are a nibble of ql[64h + 32(g & 1) + l] (low for g < 2, high for g >= 2), the top
//        two are bits 2g, 2g + 1 of qh[32h + l]; weight i = d * scales[i / 16] * (q_i - 32).
//   Q2_K (84 bytes):  scales[16], qs[64], d, dmin. Sixteen sub-blocks of 16: scale =
//        scales[i / 16] & 15, min = scales[i / 16] >> 4; q_i = bits 2g, 2g + 1 of qs[32h + l]
//        (h, g, l as for Q6_K); weight i = d * scale * q_i - dmin * min.
//   Q3_K (110 bytes): hmask[32], qs[64], scales[12], d. Sixteen 6-bit scales packed into 12
//        bytes: sc_k = (lo_k | hi_k << 4) - 32 with lo_k = scales[k] & 15 (k < 8) or
//        scales[k - 8] >> 4 (k >= 8) and hi_k = bits 2(k / 4), 2(k / 4) + 1 of scales[8 + k % 4].
//        q_i = (bits 2g, 2g + 1 of qs[32h + l]) - 4 when bit i / 32 of hmask[l] is clear (so q_i
//        is in -4..3); weight i = d * sc_{i / 16} * q_i.
#define MOR__QK          32
#define MOR__QK_K        256
#define MOR__Q8_0_SIZE   34
#define MOR__Q4_0_SIZE   18
#define MOR__Q4_1_SIZE   20
#define MOR__Q5_0_SIZE   22
#define MOR__Q5_1_SIZE   24
#define MOR__IQ4_NL_SIZE 18
#define MOR__Q2_K_SIZE   84
#define MOR__Q3_K_SIZE   110
#define MOR__Q4_K_SIZE   144
#define MOR__Q5_K_SIZE   176
#define MOR__Q6_K_SIZE   210

// The types computed, as the loader's messages list them.
#define MOR__DTYPE_COMPUTED_NAMES \
    "F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K"

// Weights per block of type dt: 1 for F32/F16/BF16, 32 or 256 for the quantized types above;
// 0 for a type not computed. A row's length must be a multiple of it.
static inline int64_t mor__dtype_block(uint32_t dt) {
    switch (dt) {
    case MOR__DT_F32:
    case MOR__DT_F16:
    case MOR__DT_BF16: return 1;
    case MOR__DT_Q8_0:
    case MOR__DT_Q4_0:
    case MOR__DT_Q4_1:
    case MOR__DT_Q5_0:
    case MOR__DT_Q5_1:
    case MOR__DT_IQ4_NL: return MOR__QK;
    case MOR__DT_Q2_K:
    case MOR__DT_Q3_K:
    case MOR__DT_Q4_K:
    case MOR__DT_Q5_K:
    case MOR__DT_Q6_K: return MOR__QK_K;
    default: return 0;
    }
}

// 1 for the types above (every kernel table has their entries), 0 for any other id.
static inline int mor__dtype_computed(uint32_t dt) { return mor__dtype_block(dt) != 0; }

// 1 for the block-quantized types (their products quantize x first: kernels.h).
static inline int mor__dtype_quantized(uint32_t dt) { return mor__dtype_block(dt) > 1; }

// Bytes of a row of n elements of type dt (n a multiple of mor__dtype_block(dt)); 0 for a
// type not computed.
static inline int64_t mor__dtype_row_bytes(uint32_t dt, int64_t n) {
    switch (dt) {
    case MOR__DT_F32: return n * 4;
    case MOR__DT_F16:
    case MOR__DT_BF16: return n * 2;
    case MOR__DT_Q8_0: return n / MOR__QK * MOR__Q8_0_SIZE;
    case MOR__DT_Q4_0: return n / MOR__QK * MOR__Q4_0_SIZE;
    case MOR__DT_Q4_1: return n / MOR__QK * MOR__Q4_1_SIZE;
    case MOR__DT_Q5_0: return n / MOR__QK * MOR__Q5_0_SIZE;
    case MOR__DT_Q5_1: return n / MOR__QK * MOR__Q5_1_SIZE;
    case MOR__DT_IQ4_NL: return n / MOR__QK * MOR__IQ4_NL_SIZE;
    case MOR__DT_Q2_K: return n / MOR__QK_K * MOR__Q2_K_SIZE;
    case MOR__DT_Q3_K: return n / MOR__QK_K * MOR__Q3_K_SIZE;
    case MOR__DT_Q4_K: return n / MOR__QK_K * MOR__Q4_K_SIZE;
    case MOR__DT_Q5_K: return n / MOR__QK_K * MOR__Q5_K_SIZE;
    case MOR__DT_Q6_K: return n / MOR__QK_K * MOR__Q6_K_SIZE;
    default: return 0;
    }
}

#endif
