// mor-tokbench: tokenization throughput (MB/s of UTF-8 input) on one core.
//
//   mor-tokbench -f TEXT [-m VOCAB.gguf] [-r REPEATS] [-c CHUNK_BYTES]
//
// TEXT is required (docs/TOKENIZER.md measured a Project Gutenberg book, Pride and Prejudice);
// the vocabulary defaults to the starcoder one of the test data. The text is tokenized whole
// (one call) and in chunks of CHUNK_BYTES (split at the next newline, default 4096), REPEATS
// times each; the best time is reported. The result is checked by detokenizing (the text must
// come back). Not part of `make test`.
#define _POSIX_C_SOURCE 200809L
#include "mor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    const char *vocab = "tests/data/vocab/ggml-vocab-starcoder.gguf";
    const char *text_path = NULL;
    int repeats = 5;
    size_t chunk = 4096;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) vocab = argv[++i];
        else if (!strcmp(argv[i], "-f") && i + 1 < argc) text_path = argv[++i];
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-c") && i + 1 < argc) chunk = (size_t)atol(argv[++i]);
        else {
            fprintf(stderr, "usage: %s -f TEXT [-m VOCAB.gguf] [-r REPEATS] [-c CHUNK_BYTES]\n", argv[0]);
            return 2;
        }
    }
    if (!text_path) {
        fprintf(stderr, "%s: -f TEXT is required (a UTF-8 text file to tokenize)\n"
                        "usage: %s -f TEXT [-m VOCAB.gguf] [-r REPEATS] [-c CHUNK_BYTES]\n", argv[0], argv[0]);
        return 2;
    }
    if (repeats < 1) repeats = 1;
    if (chunk < 1) chunk = 1;
    FILE *f = fopen(text_path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", text_path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    if (!text || fread(text, 1, (size_t)len, f) != (size_t)len) {
        fprintf(stderr, "cannot read %s\n", text_path);
        return 1;
    }
    fclose(f);
    size_t n = (size_t)len;

    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = MOR_MODEL_VOCAB_ONLY;
    mor_model *m = NULL;
    char err[256];
    double t0 = now();
    int rc = mor_model_load(vocab, &p, &m, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s: %s\n", vocab, err);
        return 1;
    }
    double t_load = now() - t0;

    size_t cap = n + 16, nt = 0;
    int32_t *toks = malloc(cap * sizeof *toks);
    double best_whole = 1e30, best_chunk = 1e30;
    size_t nt_chunks = 0;
    for (int r = 0; r < repeats; r++) {
        t0 = now();
        rc = mor_tokenize(m, text, n, toks, cap, 0, &nt);
        double t = now() - t0;
        if (rc) {
            fprintf(stderr, "tokenize failed: %s\n", mor_status_name(rc));
            return 1;
        }
        if (t < best_whole) best_whole = t;
        t0 = now();
        size_t off = 0, total = 0;
        while (off < n) {
            size_t end = off + chunk < n ? off + chunk : n;
            while (end < n && text[end - 1] != '\n') end++;
            size_t k;
            rc = mor_tokenize(m, text + off, end - off, toks, cap, 0, &k);
            if (rc) return 1;
            total += k;
            off = end;
        }
        t = now() - t0;
        nt_chunks = total;
        if (t < best_chunk) best_chunk = t;
    }
    // check: the text comes back
    rc = mor_tokenize(m, text, n, toks, cap, 0, &nt);
    char *back = malloc(n + 64);
    size_t nb = 0;
    int ok = !rc && mor_detokenize(m, toks, nt, back, n + 64, 0, &nb) == MOR_OK && nb == n && !memcmp(back, text, n);

    double mb = (double)n / 1e6;
    printf("vocabulary      %s (%d tokens, loaded in %.1f ms)\n", vocab, mor_model_n_vocab(m), t_load * 1e3);
    printf("text            %s (%.3f MB)\n", text_path, mb);
    printf("whole text      %zu tokens  %.1f ms  %.2f MB/s  %.2f M tokens/s  (best of %d)\n", nt, best_whole * 1e3,
           mb / best_whole, (double)nt / best_whole / 1e6, repeats);
    printf("%zu-byte chunks %zu tokens  %.1f ms  %.2f MB/s\n", chunk, nt_chunks, best_chunk * 1e3, mb / best_chunk);
    printf("round trip      %s\n", ok ? "ok" : "FAILED");
    free(back);
    free(toks);
    free(text);
    mor_model_free(m);
    return ok ? 0 : 1;
}
