// gen-seeds.c: writes the small hand-made seeds of tests/fuzz/corpus/{gguf,llama2c}/.
//
//   cc -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Iinclude -Isrc -Itools/lib
//       tests/fuzz/gen-seeds.c build/libmor-tools.a lib/libmor.a -lm -pthread -o build/gen-seeds
//   ./build/gen-seeds tests/fuzz/corpus
//
// gguf: tiny random-weight models (a `llama` model in F32, `mor` models in Q8_0 and Q4_0 and
// F16), and vocab-only images converted from a small llama.2c tokenizer. llama2c: checkpoints of
// versions 0, 1 and 2 (dim 8, one layer, 8 tokens) with that tokenizer, in the input layout of
// fuzz-llama2c.c, and the tokenizer alone (vocab-only mode).
#include "../support/randmodel.h"
#include "gguf-write.h"
#include "gguf.h"
#include "llama2c.h"
#include "mor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t *p;
    size_t   n, cap;
} buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
        if (!b->p) exit(1);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void put_i32(buf *b, int32_t v) { put(b, &v, 4); }
static void put_f32(buf *b, float v) { put(b, &v, 4); }

static void write_file(const char *dir, const char *name, const void *p, size_t n) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    printf("%s: %zu bytes\n", path, n);
}

// A tokenizer of 8 tokens (llama2.c tokenizer.bin layout), some byte tokens among them.
static buf tokenizer(void) {
    static const char *const pieces[8] = {"<unk>", "<s>", "</s>", "<0x0A>", " a", "b", " ab", "\xc3\xa9"};
    buf b = {0};
    put_i32(&b, 8);
    for (int i = 0; i < 8; i++) {
        put_f32(&b, (float)-i);
        put_i32(&b, (int32_t)strlen(pieces[i]));
        put(&b, pieces[i], strlen(pieces[i]));
    }
    return b;
}

// dim 8, hidden 16, 1 layer, 2 heads, 1 kv head, 8 tokens, seq 4.
enum { D = 8, H = 16, NL = 1, NH = 2, NKV = 1, V = 8, SEQ = 4, HS = D / NH, KVD = HS * NKV, GS = 8 };

static float fval(int i) { return (float)((i * 37) % 17 - 8) / 32.0f; }

static void floats(buf *b, size_t n) {
    for (size_t i = 0; i < n; i++) put_f32(b, fval((int)i));
}
static void qmat(buf *b, size_t n) {  // version 2: int8 values, then one fp32 scale per group
    for (size_t i = 0; i < n; i++) {
        int8_t q = (int8_t)((i * 29) % 255 - 127);
        put(b, &q, 1);
    }
    for (size_t g = 0; g < n / GS; g++) put_f32(b, 1.0f / 127);
}

static buf checkpoint(int version) {
    buf b = {0};
    const int32_t hdr[7] = {D, H, NL, NH, NKV, V, SEQ};
    if (version > 0) {
        put_i32(&b, 0x616b3432);
        put_i32(&b, version);
    }
    for (int i = 0; i < 7; i++) put_i32(&b, hdr[i]);
    if (version > 0) {
        uint8_t shared = 1;
        put(&b, &shared, 1);
        if (version == 2) put_i32(&b, GS);
        while (b.n < 256) put(&b, "", 1);
    }
    if (version == 0) {
        floats(&b, V * D);
        floats(&b, NL * D);
        floats(&b, NL * D * D);
        floats(&b, NL * KVD * D);
        floats(&b, NL * KVD * D);
        floats(&b, NL * D * D);
        floats(&b, NL * D);
        floats(&b, NL * H * D);
        floats(&b, NL * D * H);
        floats(&b, NL * H * D);
        floats(&b, D);
        floats(&b, 2 * SEQ * HS / 2);
        return b;
    }
    void (*mat)(buf *, size_t) = version == 2 ? qmat : floats;
    floats(&b, NL * D);  // rms_att
    floats(&b, NL * D);  // rms_ffn
    floats(&b, D);       // rms_final
    mat(&b, V * D);
    for (int l = 0; l < NL; l++) mat(&b, D * D);
    for (int l = 0; l < NL; l++) mat(&b, KVD * D);
    for (int l = 0; l < NL; l++) mat(&b, KVD * D);
    for (int l = 0; l < NL; l++) mat(&b, D * D);
    for (int l = 0; l < NL; l++) mat(&b, H * D);
    for (int l = 0; l < NL; l++) mat(&b, D * H);
    for (int l = 0; l < NL; l++) mat(&b, H * D);
    return b;
}

// fuzz-llama2c input: flags, checkpoint length, checkpoint, tokenizer.
static void llama2c_seed(const char *dir, const char *name, uint8_t flags, const buf *ck, const buf *tok) {
    buf b = {0};
    put(&b, &flags, 1);
    if (flags & 2) put_i32(&b, 2048);
    put_i32(&b, ck ? (int32_t)ck->n : 0);
    if (ck) put(&b, ck->p, ck->n);
    put(&b, tok->p, tok->n);
    write_file(dir, name, b.p, b.n);
    free(b.p);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: gen-seeds CORPUS_DIR (with gguf/ and llama2c/ inside)\n");
        return 2;
    }
    char dir[1024], err[256];
    buf tok = tokenizer();
    buf ck[3];
    snprintf(dir, sizeof dir, "%s/llama2c", argv[1]);
    for (int v = 0; v < 3; v++) {
        ck[v] = checkpoint(v);
        char name[64];
        snprintf(name, sizeof name, "v%d", v);
        llama2c_seed(dir, name, v == 1 ? 2 : 0, &ck[v], &tok);
        void *img = NULL;
        size_t n = 0;
        if (mor__llama2c_convert(ck[v].p, ck[v].n, tok.p, tok.n, &img, &n, err, sizeof err)) {
            fprintf(stderr, "version %d: %s\n", v, err);
            return 1;
        }
        if (v == 0) {
            char gdir[1024];
            snprintf(gdir, sizeof gdir, "%s/gguf", argv[1]);
            write_file(gdir, "llama2c-v0.gguf", img, n);
        }
        free(img);
    }
    llama2c_seed(dir, "vocab-only", 1, NULL, &tok);

    snprintf(dir, sizeof dir, "%s/gguf", argv[1]);
    void *img = NULL;
    size_t n = 0;
    if (mor__llama2c_convert(NULL, 0, tok.p, tok.n, &img, &n, err, sizeof err)) return fprintf(stderr, "%s\n", err), 1;
    write_file(dir, "vocab-spm.gguf", img, n);
    free(img);
    static const randmodel_shape tiny8 = {"fz8", 8, 16, 2, 2, 1, 16}, tiny32 = {"fz32", 32, 32, 3, 2, 1, 32};
    struct {
        const randmodel_shape *sh;
        uint32_t type;
        int n_rec;
        const char *sharing, *name;
    } m[] = {{&tiny8, MOR__DT_F32, 0, NULL, "llama-f32.gguf"},
             {&tiny8, MOR__DT_F16, 2, "cycle", "mor-cycle-f16.gguf"},
             {&tiny32, MOR__DT_Q8_0, 1, "middle_cycle", "mor-middle-q8_0.gguf"},
             {&tiny32, MOR__DT_Q4_0, 0, NULL, "llama-q4_0.gguf"}};
    for (size_t i = 0; i < sizeof m / sizeof m[0]; i++) {
        char path[1100];
        snprintf(path, sizeof path, "%s/%s", dir, m[i].name);
        if (randmodel_write(m[i].sh, m[i].type, m[i].n_rec, m[i].sharing, path, err, sizeof err)) {
            fprintf(stderr, "%s: %s\n", m[i].name, err);
            return 1;
        }
        printf("%s\n", path);
    }
    free(tok.p);
    for (int v = 0; v < 3; v++) free(ck[v].p);
    return 0;
}
