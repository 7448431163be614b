// fuzz.h: helpers shared by the fuzz targets in tests/fuzz/ (header-only).
//
// Every target defines LLVMFuzzerInitialize() and LLVMFuzzerTestOneInput(). Built with
// -fsanitize=fuzzer they are libFuzzer targets; linked with tests/fuzz/replay.c they replay
// files (the corpus and the regression inputs) under any compiler. A broken property calls
// FZ_CHECK, which prints the condition and aborts: libFuzzer and the replay driver both report
// that as a crash.
#ifndef MOR_FUZZ_H
#define MOR_FUZZ_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mor.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FZ_CHECK(cond, ...)                                                          \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fprintf(stderr, "\n");                                                   \
            abort();                                                                 \
        }                                                                            \
    } while (0)

// The status must be one of the listed ones (a -1000 sentinel ends the list).
static inline int fz_status_in(int s, const int *ok) {
    for (; *ok != -1000; ok++)
        if (s == *ok) return 1;
    return 0;
}
#define FZ_STATUS(s, ...)                                                                       \
    do {                                                                                        \
        int s__ = (s);                                                                          \
        const int ok__[] = {__VA_ARGS__, -1000};                                                \
        FZ_CHECK(fz_status_in(s__, ok__), "%s returned %s (%d)", #s, mor_status_name(s__), s__); \
    } while (0)

// Test data directory: tests/data, or $MOR_TEST_DATA (targets are run from the repository root).
static inline const char *fz_path(char *buf, size_t n, const char *file) {
    const char *d = getenv("MOR_TEST_DATA");
    snprintf(buf, n, "%s/%s", d ? d : "tests/data", file);
    return buf;
}

// Loads a model of tests/data once (fatal if it is missing: the fuzzer would test nothing).
static inline mor_model *fz_load(const char *file, uint32_t flags) {
    char path[512], err[256];
    mor_model_params p;
    mor_model_params_init(&p);
    p.flags = flags;
    mor_model *m = NULL;
    int s = mor_model_load(fz_path(path, sizeof path, file), &p, &m, err, sizeof err);
    if (s != MOR_OK) {
        fprintf(stderr, "fuzz: cannot load %s: %s\n", path, err);
        exit(2);
    }
    return m;
}

// A cursor over the input bytes; reads past the end give zeros.
typedef struct {
    const uint8_t *p;
    size_t         n, i;
} fz_in;

static inline int fz_left(const fz_in *in) { return in->i < in->n; }
static inline uint8_t fz_u8(fz_in *in) { return in->i < in->n ? in->p[in->i++] : 0; }
static inline uint16_t fz_u16(fz_in *in) {
    uint16_t a = fz_u8(in);
    return (uint16_t)(a | (uint16_t)fz_u8(in) << 8);
}
static inline uint32_t fz_u32(fz_in *in) {
    uint32_t a = fz_u16(in);
    return a | (uint32_t)fz_u16(in) << 16;
}
static inline uint64_t fz_u64(fz_in *in) {
    uint64_t a = fz_u32(in);
    return a | (uint64_t)fz_u32(in) << 32;
}
// An int32 that is often a small or boundary value and sometimes any bit pattern.
static inline int32_t fz_int(fz_in *in, int32_t small) {
    uint8_t k = fz_u8(in);
    switch (k & 7) {
    case 0: return 0;
    case 1: return -1;
    case 2: return (int32_t)(fz_u32(in));
    case 3: return INT32_MAX;
    case 4: return INT32_MIN;
    default: return small > 0 ? (int32_t)(k >> 3) % (small + 1) : (int32_t)(k >> 3);
    }
}
// A float that is often in [0, 2] and sometimes NaN, infinite, negative or any bit pattern.
static inline float fz_float(fz_in *in) {
    uint8_t k = fz_u8(in);
    switch (k & 7) {
    case 0: return 0.0f;
    case 1: return NAN;
    case 2: return (k & 8) ? INFINITY : -INFINITY;
    case 3: return -(float)(k >> 4) / 4.0f;
    case 4: {
        uint32_t b = fz_u32(in);
        float f;
        memcpy(&f, &b, 4);
        return f;
    }
    default: return (float)fz_u8(in) / 128.0f;
    }
}

#endif
