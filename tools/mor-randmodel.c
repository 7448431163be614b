// mor-randmodel: write a random-weight model of a known shape, for benchmarks and tests that
// need no download.
//
//   mor-randmodel smollm-135m out.gguf [--type f32|f16|bf16|q8_0|q4_0] [--recursions N --sharing S]
//
// Shapes: smollm-135m (576/1536/30 layers/9 heads/3 kv/49152, tied), smollm-360m
// (960/2560/32/15/5/49152), stories15m (288/768/6/6/6/32000), tiny (64/160/4/4/2/256).
// With --recursions the file is a `mor` model whose unrolled depth equals the vanilla depth
// (middle_cycle: the layers between the unique first and last are split into N recursions of
// shared weights). Weights are N(0, 0.02)-ish from a fixed seed. The generator is in
// randmodel.h (shared with mor-bench).
#include "../tests/support/randmodel.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: mor-randmodel SHAPE OUT.gguf [--type f32|f16|bf16|q8_0|q4_0] [--recursions N] [--sharing S]\n");
        return 2;
    }
    const randmodel_shape *sh = randmodel_find(argv[1]);
    if (!sh) {
        fprintf(stderr, "mor-randmodel: unknown shape '%s'\n", argv[1]);
        return 2;
    }
    uint32_t type = MOR__DT_F32;
    int n_rec = 0;
    const char *sharing = "middle_cycle";
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--type")) {
            int t = randmodel_type(argv[i + 1]);
            type = t < 0 ? MOR__DT_F32 : (uint32_t)t;
        } else if (!strcmp(argv[i], "--recursions")) {
            n_rec = atoi(argv[i + 1]);
        } else if (!strcmp(argv[i], "--sharing")) {
            sharing = argv[i + 1];
        } else {
            fprintf(stderr, "mor-randmodel: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    int L, n_store;
    randmodel_depth(sh, n_rec, sharing, &L, &n_store);
    if (L != sh->layers)
        fprintf(stderr, "mor-randmodel: depth %d rounded to %d for %d recursions\n", sh->layers, L, n_rec);
    char err[256];
    if (randmodel_write(sh, type, n_rec, sharing, argv[2], err, sizeof err) != MOR_OK) {
        fprintf(stderr, "mor-randmodel: %s\n", err);
        return 1;
    }
    fprintf(stderr, "mor-randmodel: wrote %s (%s, %d layers, %d stored)\n", argv[2], n_rec > 0 ? "mor" : "llama", L,
            n_store);
    return 0;
}
