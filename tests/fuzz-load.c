// fuzz-load.c: libFuzzer target for the GGUF parser and the model loader.
//
// Every input goes through mor__gguf_parse(); inputs that parse also go through
// mor_model_load_memory() (borrowed buffer, so ASan sees any read past the input). A parse
// that succeeds must describe tensors lying inside the input. Not part of `make test` (the
// Makefile only picks up tests/test-*.c).
//
// Build and run (clang with libFuzzer; on Debian/Ubuntu: apt-get install libclang-rt-14-dev):
//
//   mkdir -p build/fuzz-corpus && cp tests/data/*.gguf build/fuzz-corpus/
//   clang -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -DMOR_NO_SIMD -g -O1 \
//       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Iinclude -Isrc \
//       tests/fuzz-load.c src/*.c src/kernels/*.c -lm -pthread -o build/fuzz-load
//   ./build/fuzz-load -max_total_time=300 -max_len=65536 -rss_limit_mb=4096 build/fuzz-corpus
//
// Parser only (while the loader is in flux): add -DFUZZ_PARSER_ONLY and compile just
// src/gguf.c src/status.c. Without libFuzzer, -DFUZZ_STANDALONE builds a main() that runs the
// target on each file named on the command line (to replay a crash-* artifact under gdb or
// valgrind):
//
//   cc -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -DFUZZ_STANDALONE -g -Iinclude \
//       -Isrc tests/fuzz-load.c lib/libmor.a -lm -pthread -o build/fuzz-replay
#include "gguf.h"
#include "mor.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    // Copy into an exact-size heap buffer so that any over-read is caught by ASan.
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    mor__gguf g;
    char err[256];
    err[0] = 0;
    int s = mor__gguf_parse(&g, buf, size, err, sizeof err);
    if (s == MOR_OK) {
        for (uint64_t i = 0; i < g.n_tensors; i++) {
            const mor__gguf_tensor *t = &g.tensors[i];
            if (t->offset > size || t->size > size - t->offset || t->data != buf + t->offset)
                abort();
        }
    } else if (s >= 0 || !err[0]) {
        abort();  // errors are negative and always come with a message
    }
    mor__gguf_free(&g);

#ifndef FUZZ_PARSER_ONLY
    if (s == MOR_OK) {
        mor_model *m = NULL;
        int ls = mor_model_load_memory(buf, size, NULL, &m, err, sizeof err);
        if ((ls == MOR_OK) != (m != NULL)) abort();
        mor_model_free(m);
    }
#endif
    free(buf);
    return 0;
}

#ifdef FUZZ_STANDALONE
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            perror(argv[i]);
            return 1;
        }
        size_t cap = 1 << 16, n = 0;
        uint8_t *p = malloc(cap);
        size_t k;
        while (p && (k = fread(p + n, 1, cap - n, f)) > 0) {
            n += k;
            if (n == cap) {
                uint8_t *q = realloc(p, cap *= 2);
                if (!q) free(p);
                p = q;
            }
        }
        fclose(f);
        if (!p) return 1;
        LLVMFuzzerTestOneInput(p, n);
        free(p);
        printf("%s: ok (%zu bytes)\n", argv[i], n);
    }
    return 0;
}
#endif
