// mor-randmodel: write a random-weight model of a known shape, for benchmarks and tests that
// need no download.
//
//   mor-randmodel smollm-135m out.gguf [--type f32|f16|bf16] [--recursions N --sharing S]
//
// Shapes: smollm-135m (576/1536/30 layers/9 heads/3 kv/49152, tied), smollm-360m
// (960/2560/32/15/5/49152), stories15m (288/768/6/6/6/32000), tiny (64/160/4/4/2/256).
// With --recursions the file is a `mor` model whose unrolled depth equals the vanilla depth
// (middle_cycle: the layers between the unique first and last are split into N recursions of
// shared weights). Weights are N(0, 0.02)-ish from a fixed seed.
#include "gguf-write.h"
#include "kernels.h"
#include "mor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *name;
    int         d, ff, layers, heads, kv, vocab;
} shape;

static const shape shapes[] = {
    {"smollm-135m", 576, 1536, 30, 9, 3, 49152},
    {"smollm-360m", 960, 2560, 32, 15, 5, 49152},
    {"stories15m", 288, 768, 6, 6, 6, 32000},
    {"tiny", 64, 160, 4, 4, 2, 256},
};

static uint64_t rng = 0x12345678u;
static float randn(void) {  // sum of uniforms, scaled: cheap and good enough for benchmarks
    float s = 0;
    for (int i = 0; i < 4; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        s += (float)((rng >> 40) * (1.0 / 16777216.0)) - 0.5f;
    }
    return s * 1.7320508f;
}

static int add(mor__gguf_writer *w, const char *name, uint64_t cols, uint64_t rows, uint32_t type, float mean,
               float std) {
    uint64_t n = cols * rows, dims[2] = {cols, rows};
    size_t es = type == MOR__DT_F32 ? 4 : 2;
    unsigned char *buf = malloc(n * es);
    if (!buf) return MOR_E_NOMEM;
    for (uint64_t i = 0; i < n; i++) {
        float v = mean + std * randn();
        if (type == MOR__DT_F32) memcpy(buf + 4 * i, &v, 4);
        else {
            uint16_t h = type == MOR__DT_F16 ? mor__f32_to_f16(v) : mor__f32_to_bf16(v);
            memcpy(buf + 2 * i, &h, 2);
        }
    }
    int st = mor__gguf_w_tensor(w, name, type, rows == 1 ? 1 : 2, dims, buf);
    free(buf);
    return st;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: mor-randmodel SHAPE OUT.gguf [--type f32|f16|bf16] [--recursions N] [--sharing S]\n");
        return 2;
    }
    const shape *sh = NULL;
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        if (!strcmp(argv[1], shapes[i].name)) sh = &shapes[i];
    if (!sh) {
        fprintf(stderr, "mor-randmodel: unknown shape '%s'\n", argv[1]);
        return 2;
    }
    uint32_t type = MOR__DT_F32;
    int n_rec = 0;
    const char *sharing = "middle_cycle";
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--type")) {
            type = !strcmp(argv[i + 1], "f16") ? MOR__DT_F16 : !strcmp(argv[i + 1], "bf16") ? MOR__DT_BF16 : MOR__DT_F32;
        } else if (!strcmp(argv[i], "--recursions")) {
            n_rec = atoi(argv[i + 1]);
        } else if (!strcmp(argv[i], "--sharing")) {
            sharing = argv[i + 1];
        } else {
            fprintf(stderr, "mor-randmodel: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    int middle = strstr(sharing, "middle") != NULL;
    int L = sh->layers, n_store = L;
    if (n_rec > 0) {
        int span = L - 2 * middle;
        if (span % n_rec) {
            L = span / n_rec * n_rec + 2 * middle;  // round the depth down to a multiple
            fprintf(stderr, "mor-randmodel: depth %d rounded to %d for %d recursions\n", sh->layers, L, n_rec);
        }
        n_store = (L - 2 * middle) / n_rec + 2 * middle;
    }
    const char *arch = n_rec > 0 ? "mor" : "llama";
    mor__gguf_writer *w = mor__gguf_writer_create();
    char key[96], name[96];
#define K(s) (snprintf(key, sizeof key, "%s.%s", arch, s), key)
    mor__gguf_w_str(w, "general.architecture", arch);
    mor__gguf_w_str(w, "general.name", sh->name);
    if (n_rec > 0) {
        mor__gguf_w_u32(w, "mor.format_version", 1);
        mor__gguf_w_u32(w, "mor.recursion.count", (uint32_t)n_rec);
        mor__gguf_w_str(w, "mor.recursion.sharing", sharing);
    }
    mor__gguf_w_u32(w, K("context_length"), 2048);
    mor__gguf_w_u32(w, K("embedding_length"), (uint32_t)sh->d);
    mor__gguf_w_u32(w, K("feed_forward_length"), (uint32_t)sh->ff);
    mor__gguf_w_u32(w, K("block_count"), (uint32_t)L);
    mor__gguf_w_u32(w, K("attention.head_count"), (uint32_t)sh->heads);
    mor__gguf_w_u32(w, K("attention.head_count_kv"), (uint32_t)sh->kv);
    mor__gguf_w_f32(w, K("attention.layer_norm_rms_epsilon"), 1e-5f);
    mor__gguf_w_f32(w, K("rope.freq_base"), 10000.0f);
#undef K
    uint64_t d = (uint64_t)sh->d, hd = d / (uint64_t)sh->heads, kv = hd * (uint64_t)sh->kv, ff = (uint64_t)sh->ff;
    int st = add(w, "token_embd.weight", d, (uint64_t)sh->vocab, type, 0, 0.02f);
    st |= add(w, "output_norm.weight", d, 1, MOR__DT_F32, 1, 0.05f);
    static const char *roles[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    for (int i = 0; i < n_store && !st; i++) {
        uint64_t sz[7][2] = {{d, d}, {d, kv}, {d, kv}, {d, d}, {d, ff}, {d, ff}, {ff, d}};
        for (int r = 0; r < 7; r++) {
            snprintf(name, sizeof name, "blk.%d.%s.weight", i, roles[r]);
            st |= add(w, name, sz[r][0], sz[r][1], type, 0, 0.02f);
        }
        snprintf(name, sizeof name, "blk.%d.attn_norm.weight", i);
        st |= add(w, name, d, 1, MOR__DT_F32, 1, 0.05f);
        snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", i);
        st |= add(w, name, d, 1, MOR__DT_F32, 1, 0.05f);
    }
    char err[256];
    if (st || mor__gguf_writer_save(w, argv[2], err, sizeof err) != MOR_OK) {
        fprintf(stderr, "mor-randmodel: %s\n", st ? "out of memory" : err);
        mor__gguf_writer_free(w);
        return 1;
    }
    mor__gguf_writer_free(w);
    fprintf(stderr, "mor-randmodel: wrote %s (%s, %d layers, %d stored)\n", argv[2], arch, L, n_store);
    return 0;
}
