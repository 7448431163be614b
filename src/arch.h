// arch.h: the architectures the loader accepts, as a table of data (arch.c).
//
// Each row says what a GGUF file of that `general.architecture` holds beyond the Llama layer
// and how its forward pass differs: optional and fused tensors, the RoPE convention, the MLP
// activation, norm weight offset, embedding scale, soft-caps and sliding-window layers. The
// loader (model.c) reads a row into the hyperparameters and the per-layer table, and the layer
// (layer.c), the K/V propagation (kv.c) and the pass (forward.c) read those: one forward pass
// for every architecture, no copy of it per architecture. docs/FORMAT.md §4 lists the rows.
#ifndef MOR_ARCH_H
#define MOR_ARCH_H

#include <stddef.h>
#include <stdint.h>

// Tensors and key groups a row has (flags).
enum {
    MOR__ARCH_RECURSIVE = 1u << 0,  // the `mor` keys and tensors: sharing, overrides, LoRA, routers, exits
    MOR__ARCH_QKV_BIAS = 1u << 1,   // blk.N.attn_{q,k,v}.bias, required, added after the projections
    MOR__ARCH_ROPE_FREQS = 1u << 2, // rope_freqs.weight [head_dim / 2], optional: divides the inverse frequencies
    MOR__ARCH_FUSED_QKV = 1u << 3,  // blk.N.attn_qkv.weight: Q rows, then K, then V (replaces attn_q/k/v)
    MOR__ARCH_FUSED_UP = 1u << 4,   // blk.N.ffn_up.weight: gate rows, then up rows (no ffn_gate)
    MOR__ARCH_POST_NORMS = 1u << 5, // blk.N.post_attention_norm / post_ffw_norm on each block's output
    MOR__ARCH_SOFTCAP = 1u << 6,    // attention and final logit soft-caps (keys below)
    MOR__ARCH_FREE_HEAD = 1u << 7,  // attention.key_length may differ from embedding / heads
    MOR__ARCH_STRICT = 1u << 8,     // a tensor the row does not name is refused (else ignored, with a warning)
    MOR__ARCH_ROPE_SCALING = 1u << 9, // reads rope.scaling.type: none or linear (rope.scaling.factor)
};

enum { MOR__ROPE_NORM = 0, MOR__ROPE_NEOX = 1, MOR__ROPE_KEY = 2 };  // KEY: `<prefix>rope.type`
enum { MOR__ACT_SILU = 0, MOR__ACT_GELU_TANH = 1 };                  // MLP: act(gate) * up
enum { MOR__SWA_NONE = 0, MOR__SWA_ALL = 1, MOR__SWA_EVEN = 2 };      // layers with a sliding window

typedef struct {
    const char *name;          // general.architecture; the key prefix is name + "."
    uint32_t    flags;         // MOR__ARCH_*
    int8_t      rope;          // MOR__ROPE_*
    int8_t      act;           // MOR__ACT_*
    int8_t      swa;           // MOR__SWA_*: which layers use `<prefix>attention.sliding_window`
    int8_t      embd_scale;    // 1: the embedding row is multiplied by sqrt(n_embd)
    float       norm_offset;   // added to every norm weight at load (0: the file holds the weights used)
    float       attn_cap_def;  // default of <prefix>attn_logit_softcapping (MOR__ARCH_SOFTCAP)
    float       final_cap_def; // default of <prefix>final_logit_softcapping
    int32_t     swa_def;       // default window when the key is absent (0: none)
    int32_t     qscale_embd_layers; // block count whose query scale is 1/sqrt(n_embd/n_head) (0: never)
} mor__arch;

// The row of an architecture name, or NULL.
const mor__arch *mor__arch_find(const char *name);
// "llama, mor, ..." into buf (NUL-terminated, cut to n).
void mor__arch_names(char *buf, size_t n);
// x = cap * tanh(x / cap) over n values (soft-capped logits); nothing when cap is 0.
void mor__arch_softcap(float *x, int64_t n, float cap);

#endif
