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

enum mor__dtype {
    MOR__DT_F32 = 0, MOR__DT_F16 = 1, MOR__DT_Q4_0 = 2, MOR__DT_Q8_0 = 8, MOR__DT_BF16 = 30,
    MOR__DT_COUNT = 31  // one past the largest id: the length of the kernels' per-type tables
};

// Quantized blocks, exactly as GGUF stores them (ggml's block_q8_0 and block_q4_0), 32 weights
// each, packed without padding (34 and 18 bytes: a block's fields may be misaligned, so
// kernels read `d` with memcpy):
//   Q8_0: uint16 d (IEEE half), int8 qs[32];             weight j = d * qs[j]
//   Q4_0: uint16 d (IEEE half), uint8 qs[16] (nibbles);  weight j = d * (nib_j - 8), where
//         nib_j = qs[j] & 15 for j < 16 and qs[j - 16] >> 4 for j >= 16.
#define MOR__QK        32
#define MOR__Q8_0_SIZE 34
#define MOR__Q4_0_SIZE 18

// 1 for the types above (every kernel table has their entries), 0 for any other id.
static inline int mor__dtype_computed(uint32_t dt) {
    return dt == MOR__DT_F32 || dt == MOR__DT_F16 || dt == MOR__DT_BF16 || dt == MOR__DT_Q8_0 ||
           dt == MOR__DT_Q4_0;
}

// Bytes of a row of n elements of type dt (n a multiple of 32 for Q8_0/Q4_0); 0 for a type
// not computed.
static inline int64_t mor__dtype_row_bytes(uint32_t dt, int64_t n) {
    switch (dt) {
    case MOR__DT_F32: return n * 4;
    case MOR__DT_F16:
    case MOR__DT_BF16: return n * 2;
    case MOR__DT_Q8_0: return n / MOR__QK * MOR__Q8_0_SIZE;
    case MOR__DT_Q4_0: return n / MOR__QK * MOR__Q4_0_SIZE;
    default: return 0;
    }
}

#endif
