// arch.c: the architecture table (arch.h). One row per `general.architecture` the loader
// accepts; the semantics of each column are in docs/FORMAT.md §4.
#include "arch.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const mor__arch table[] = {
    // Llama family (Llama 1-3, TinyLlama, SmolLM2, ...): adjacent-pair RoPE (converters
    // permute Q/K rows), Llama 3.x frequency factors, linear RoPE scaling.
    {.name = "llama", .flags = MOR__ARCH_ROPE_FREQS | MOR__ARCH_ROPE_SCALING, .rope = MOR__ROPE_NORM},
    // Recursive models (docs/FORMAT.md §3): the RoPE convention is a key.
    {.name = "mor", .flags = MOR__ARCH_RECURSIVE | MOR__ARCH_STRICT, .rope = MOR__ROPE_KEY},
    // Qwen2 / Qwen2.5: biases on Q, K and V; rotate-half RoPE.
    {.name = "qwen2", .flags = MOR__ARCH_QKV_BIAS | MOR__ARCH_STRICT | MOR__ARCH_ROPE_SCALING,
     .rope = MOR__ROPE_NEOX},
    // Phi-3 / Phi-3.5 / Phi-4: fused QKV and gate/up matrices, rotate-half RoPE, a sliding
    // window on every layer (0 = none, as Phi-4 files say).
    {.name = "phi3", .flags = MOR__ARCH_FUSED_QKV | MOR__ARCH_FUSED_UP | MOR__ARCH_STRICT,
     .rope = MOR__ROPE_NEOX, .swa = MOR__SWA_ALL, .swa_def = -1},
    // Gemma 2: GeGLU (tanh GELU), embedding scaled by sqrt(n_embd), post-attention and post-FFN
    // norms, attention and final logit soft-caps, a sliding window on even layers, free head
    // size; the 46-layer model scales queries by 1/sqrt(n_embd/n_head). Converters store norm
    // weights as 1 + w, so the offset is 0.
    {.name = "gemma2",
     .flags = MOR__ARCH_POST_NORMS | MOR__ARCH_SOFTCAP | MOR__ARCH_FREE_HEAD | MOR__ARCH_STRICT,
     .rope = MOR__ROPE_NEOX, .act = MOR__ACT_GELU_TANH, .swa = MOR__SWA_EVEN, .embd_scale = 1,
     .attn_cap_def = 50.0f, .final_cap_def = 30.0f, .swa_def = 4096, .qscale_embd_layers = 46},
};

const mor__arch *mor__arch_find(const char *name) {
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strcmp(table[i].name, name) == 0) return &table[i];
    return NULL;
}

void mor__arch_names(char *buf, size_t n) {
    size_t used = 0;
    if (n) buf[0] = 0;
    for (size_t i = 0; i < sizeof table / sizeof table[0] && used < n; i++) {
        int w = snprintf(buf + used, n - used, "%s%s", i ? ", " : "", table[i].name);
        if (w < 0) break;
        used += (size_t)w;
    }
}

void mor__arch_softcap(float *x, int64_t n, float cap) {
    if (!(cap > 0)) return;
    const float inv = 1.0f / cap;
    for (int64_t i = 0; i < n; i++) x[i] = cap * tanhf(x[i] * inv);
}
