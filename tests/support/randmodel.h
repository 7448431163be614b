// randmodel.h: random-weight models of known shapes (header-only; static functions), shared
// by the tests (test-kernels, test-safety, test-sched, the fuzz seed generator) and by the tools
// mor-randmodel and mor-bench, so that neither needs a download.
//
// Shapes: smollm-135m (576/1536/30 layers/9 heads/3 kv/49152, tied), smollm-360m
// (960/2560/32/15/5/49152), stories15m (288/768/6/6/6/32000), tiny (64/160/4/4/2/256),
// tinyllama-1.1b (2048/5632/22/32/4/32000: every width a multiple of 256, so K-quant files of
// it hold real K-quant blocks rather than their fallback types).
// With n_rec > 0 the file is a `mor` model whose unrolled depth equals the vanilla depth
// (middle_cycle: the layers between the unique first and last are split into n_rec recursions of
// shared weights; the depth is rounded down to fit). Weights are N(0, 0.02)-ish from a fixed
// seed, so a shape and type always give the same bytes.
//
// The files carry `tokenizer.ggml.model = "none"` and `<arch>.vocab_size`, which is what
// llama.cpp needs to load a vocabulary-less model (it then adds dummy tokens), so llama-bench
// and mor-bench can run the very same `llama` file. mor treats "none" as "no vocabulary".
#ifndef MOR_SUPPORT_RANDMODEL_H
#define MOR_SUPPORT_RANDMODEL_H

#include "gguf-write.h"
#include "kernels.h"
#include "mor.h"
#include "quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int         d, ff, layers, heads, kv, vocab;
} randmodel_shape;

static const randmodel_shape randmodel_shapes[] = {
    {"smollm-135m", 576, 1536, 30, 9, 3, 49152},
    {"smollm-360m", 960, 2560, 32, 15, 5, 49152},
    {"stories15m", 288, 768, 6, 6, 6, 32000},
    {"tiny", 64, 160, 4, 4, 2, 256},
    {"tinyllama-1.1b", 2048, 5632, 22, 32, 4, 32000},
};

static inline const randmodel_shape *randmodel_find(const char *name) {
    for (size_t i = 0; i < sizeof randmodel_shapes / sizeof randmodel_shapes[0]; i++)
        if (!strcmp(name, randmodel_shapes[i].name)) return &randmodel_shapes[i];
    return NULL;
}

// "f32", "f16", "bf16", "q8_0", "q4_0" -> MOR__DT_*; -1 for a type the generator cannot write.
// Quantized types apply to the matrices (llama.cpp's reference rounding, tools/lib/quant.h); the
// norms stay F32.
static inline int randmodel_type(const char *s) {
    if (!strcmp(s, "f32")) return MOR__DT_F32;
    if (!strcmp(s, "f16")) return MOR__DT_F16;
    if (!strcmp(s, "bf16")) return MOR__DT_BF16;
    if (!strcmp(s, "q8_0")) return MOR__DT_Q8_0;
    if (!strcmp(s, "q4_0")) return MOR__DT_Q4_0;
    return -1;
}

static inline const char *randmodel_type_name(uint32_t type) {
    return type == MOR__DT_F32 ? "f32" : type == MOR__DT_F16 ? "f16" : type == MOR__DT_BF16 ? "bf16"
         : type == MOR__DT_Q8_0 ? "q8_0" : type == MOR__DT_Q4_0 ? "q4_0" : "?";
}

typedef struct {
    uint64_t state;
} randmodel_rng;

static inline float randmodel_randn(randmodel_rng *r) {  // sum of uniforms, scaled: cheap and good enough
    float s = 0;
    for (int i = 0; i < 4; i++) {
        r->state = r->state * 6364136223846793005ull + 1442695040888963407ull;
        s += (float)((r->state >> 40) * (1.0 / 16777216.0)) - 0.5f;
    }
    return s * 1.7320508f;
}

static inline int randmodel_add(mor__gguf_writer *w, randmodel_rng *r, const char *name, uint64_t cols, uint64_t rows,
                         uint32_t type, float mean, float std) {
    uint64_t n = cols * rows, dims[2] = {cols, rows};
    int quant = type == MOR__DT_Q8_0 || type == MOR__DT_Q4_0;
    size_t es = type == MOR__DT_F32 || quant ? 4 : 2;
    unsigned char *buf = malloc(n * es);
    if (!buf) return MOR_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        float v = mean + std * randmodel_randn(r);
        if (type == MOR__DT_F32 || quant) memcpy(buf + 4 * i, &v, 4);
        else {
            uint16_t h = type == MOR__DT_F16 ? mor__f32_to_f16(v) : mor__f32_to_bf16(v);
            memcpy(buf + 2 * i, &h, 2);
        }
    }
    if (quant) {  // in place: a quantized row is shorter than its floats, and rows go in order
        for (uint64_t row = 0; row < rows; row++) {
            float tmp[4096];
            const float *src = (const float *)(void *)buf + row * cols;
            unsigned char *dst = buf + row * (uint64_t)mor__dtype_row_bytes(type, (int64_t)cols);
            for (uint64_t c0 = 0; c0 < cols; c0 += 4096) {
                uint64_t c = cols - c0 < 4096 ? cols - c0 : 4096;
                memcpy(tmp, src + c0, c * 4);
                unsigned char *o = dst + (uint64_t)mor__dtype_row_bytes(type, (int64_t)c0);
                if (type == MOR__DT_Q8_0) mor__quantize_q8_0(tmp, o, (int64_t)c);
                else mor__quantize_q4_0(tmp, o, (int64_t)c);
            }
        }
    }
    int st = mor__gguf_w_tensor(w, name, type, rows == 1 ? 1 : 2, dims, buf);
    free(buf);
    return st;
}

// Unrolled depth and stored layers of `sh` with n_rec recursions (0: vanilla) and `sharing`.
static inline void randmodel_depth(const randmodel_shape *sh, int n_rec, const char *sharing, int *L_out, int *n_store_out) {
    int middle = strstr(sharing, "middle") != NULL;
    int L = sh->layers, n_store = L;
    if (n_rec > 0) {
        int span = L - 2 * middle;
        if (span % n_rec) L = span / n_rec * n_rec + 2 * middle;  // round the depth down to a multiple
        n_store = (L - 2 * middle) / n_rec + 2 * middle;
    }
    *L_out = L;
    *n_store_out = n_store;
}

// Write the model to `path`. n_rec 0: a vanilla `llama` file; n_rec > 0: a `mor` file with
// `sharing` (NULL: middle_cycle). Returns MOR_OK or an error with a message in err.
// randmodel_write_ctx() also sets the trained context length the file declares.
static inline int randmodel_write_ctx(const randmodel_shape *sh, uint32_t type, int n_rec, const char *sharing,
                                      uint32_t n_ctx_train, const char *path, char *err, size_t err_n) {
    if (!sharing) sharing = "middle_cycle";
    int L, n_store;
    randmodel_depth(sh, n_rec, sharing, &L, &n_store);
    randmodel_rng rng = {0x12345678u};
    const char *arch = n_rec > 0 ? "mor" : "llama";
    mor__gguf_writer *w = mor__gguf_writer_create();
    if (!w) return snprintf(err, err_n, "out of memory"), MOR_E_NOMEM;
    char key[96], name[96];
#define RANDMODEL_K(s) (snprintf(key, sizeof key, "%s.%s", arch, s), key)
    int st = mor__gguf_w_str(w, "general.architecture", arch);
    st |= mor__gguf_w_str(w, "general.name", sh->name);
    if (n_rec > 0) {
        st |= mor__gguf_w_u32(w, "mor.format_version", 1);
        st |= mor__gguf_w_u32(w, "mor.recursion.count", (uint32_t)n_rec);
        st |= mor__gguf_w_str(w, "mor.recursion.sharing", sharing);
    }
    st |= mor__gguf_w_u32(w, RANDMODEL_K("context_length"), n_ctx_train);
    st |= mor__gguf_w_u32(w, RANDMODEL_K("embedding_length"), (uint32_t)sh->d);
    st |= mor__gguf_w_u32(w, RANDMODEL_K("feed_forward_length"), (uint32_t)sh->ff);
    st |= mor__gguf_w_u32(w, RANDMODEL_K("block_count"), (uint32_t)L);
    st |= mor__gguf_w_u32(w, RANDMODEL_K("attention.head_count"), (uint32_t)sh->heads);
    st |= mor__gguf_w_u32(w, RANDMODEL_K("attention.head_count_kv"), (uint32_t)sh->kv);
    st |= mor__gguf_w_f32(w, RANDMODEL_K("attention.layer_norm_rms_epsilon"), 1e-5f);
    st |= mor__gguf_w_f32(w, RANDMODEL_K("rope.freq_base"), 10000.0f);
    st |= mor__gguf_w_u32(w, RANDMODEL_K("vocab_size"), (uint32_t)sh->vocab);
    st |= mor__gguf_w_str(w, "tokenizer.ggml.model", "none");
#undef RANDMODEL_K
    uint64_t d = (uint64_t)sh->d, hd = d / (uint64_t)sh->heads, kv = hd * (uint64_t)sh->kv, ff = (uint64_t)sh->ff;
    if (!st) st = randmodel_add(w, &rng, "token_embd.weight", d, (uint64_t)sh->vocab, type, 0, 0.02f);
    if (!st) st = randmodel_add(w, &rng, "output_norm.weight", d, 1, MOR__DT_F32, 1, 0.05f);
    static const char *roles[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    for (int i = 0; i < n_store && !st; i++) {
        uint64_t sz[7][2] = {{d, d}, {d, kv}, {d, kv}, {d, d}, {d, ff}, {d, ff}, {ff, d}};
        for (int r = 0; r < 7 && !st; r++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", i, roles[r]);
            st = randmodel_add(w, &rng, name, sz[r][0], sz[r][1], type, 0, 0.02f);
        }
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", i);
        if (!st) st = randmodel_add(w, &rng, name, d, 1, MOR__DT_F32, 1, 0.05f);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", i);
        if (!st) st = randmodel_add(w, &rng, name, d, 1, MOR__DT_F32, 1, 0.05f);
    }
    if (st) {
        snprintf(err, err_n, "out of memory");
        mor__gguf_writer_free(w);
        return MOR_E_NOMEM;
    }
    st = mor__gguf_writer_save(w, path, err, err_n);
    mor__gguf_writer_free(w);
    return st;
}

static inline int randmodel_write(const randmodel_shape *sh, uint32_t type, int n_rec, const char *sharing, const char *path,
                                  char *err, size_t err_n) {
    return randmodel_write_ctx(sh, type, n_rec, sharing, 2048, path, err, err_n);
}

#endif
