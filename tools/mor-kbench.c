// mor-kbench: matrix-product kernels alone, one thread: GFLOP/s and GB/s of weights read.
//
//   mor-kbench [--isa best|avx512|avx2|neon|ref] [--type f32,f16,bf16,q8_0,q4_0,q4_k,...]
//              [--shape 576x576,1536x576,...] [-T 1,4,8,16,32,64] [-r REPEATS] [--min-ms MS]
//              [--offset BYTES]
//
// For every type, shape (rows x cols) and token count T it calls matmul over all rows with
// random weights and x, and times it with the thread's CPU clock (CLOCK_THREAD_CPUTIME_ID): the
// host is shared, so wall time would count other jobs' time slices. One measurement runs
// calls until MS milliseconds of CPU time have passed (the first call is a warm-up); the
// median of REPEATS measurements is printed. FLOPs are 2 * rows * cols * T (a quantized
// product counts its integer multiply-adds the same way); GB/s counts the weight bytes once
// per call. Types without a quantizer here (q4_1, q5_0, q5_1, iq4_nl, q2_k ... q6_k) get random
// codes with small random scales: the kernels' speed does not depend on the values. Weights bigger than the caches are read from memory on every call, smaller ones
// stay in L2 or the shared cache between calls (as a recursive model's shared block does).
// Weights, x and y start BYTES (default 16) past a 64-byte boundary: what calloc'ed activations
// and 32-byte-aligned GGUF tensors give; --offset 0 measures cache-line-aligned operands.
// Not part of `make test`.
#define _POSIX_C_SOURCE 200809L
#include "kernels.h"
#include "quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x6b62656e6368ull;
static float randf(void) {  // uniform in [-1, 1)
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng >> 40) / (double)(1ull << 23) - 1.0);
}

static const struct {
    const char *name;
    int         dt;
} type_list[] = {{"f32", MOR__DT_F32},   {"f16", MOR__DT_F16},   {"bf16", MOR__DT_BF16},    {"q8_0", MOR__DT_Q8_0},
                 {"q4_0", MOR__DT_Q4_0}, {"q4_1", MOR__DT_Q4_1}, {"q5_0", MOR__DT_Q5_0},    {"q5_1", MOR__DT_Q5_1},
                 {"iq4_nl", MOR__DT_IQ4_NL}, {"q2_k", MOR__DT_Q2_K}, {"q3_k", MOR__DT_Q3_K}, {"q4_k", MOR__DT_Q4_K},
                 {"q5_k", MOR__DT_Q5_K}, {"q6_k", MOR__DT_Q6_K}};

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

// Splits a comma-separated list into out[] (at most max entries); returns the count.
static int split_list(char *s, char **out, int max) {
    int n = 0;
    for (char *tok = strtok(s, ","); tok && n < max; tok = strtok(NULL, ",")) out[n++] = tok;
    return n;
}

static int offset = 16;

// size bytes starting `offset` bytes past a 64-byte boundary (free with free_off).
static void *alloc_off(size_t size) {
    uint8_t *p = aligned_alloc(64, (size + 64 + 63) / 64 * 64);
    return p ? p + offset : NULL;
}
static void free_off(void *p) {
    if (p) free((uint8_t *)p - offset);
}

// A row of random blocks of a type without a quantizer: random bytes, then its f16 scales
// (d and m or dmin, at the offsets of dtype.h's layouts) set to small random values.
static void rand_blocks(int dt, uint8_t *dst, int64_t cols) {
    int64_t bw = mor__dtype_block((uint32_t)dt), bs = mor__dtype_row_bytes((uint32_t)dt, bw);
    int od = 0, om = -1;
    if (dt == MOR__DT_Q4_1 || dt == MOR__DT_Q5_1 || dt == MOR__DT_Q4_K || dt == MOR__DT_Q5_K) om = 2;
    if (dt == MOR__DT_Q2_K) od = 80, om = 82;
    if (dt == MOR__DT_Q3_K) od = 108;
    if (dt == MOR__DT_Q6_K) od = 208;
    for (int64_t b = 0; b < cols / bw; b++) {
        uint8_t *p = dst + b * bs;
        for (int64_t i = 0; i < bs; i++) p[i] = (uint8_t)(randf() * 128.0f + 128.0f);
        uint16_t hd = mor__f32_to_f16(0.002f * randf()), hm = mor__f32_to_f16(0.01f * randf());
        memcpy(p + od, &hd, 2);
        if (om >= 0) memcpy(p + om, &hm, 2);
    }
}

static void *make_weights(int dt, int64_t rows, int64_t cols) {
    int64_t rb = mor__dtype_row_bytes(dt, cols);
    uint8_t *W = alloc_off((size_t)(rows * rb));
    float *f = malloc((size_t)cols * sizeof(float));
    if (!W || !f) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *dst = W + r * rb;
        for (int64_t i = 0; i < cols; i++) f[i] = 0.05f * randf();
        switch (dt) {
        case MOR__DT_F32: memcpy(dst, f, (size_t)cols * 4); break;
        case MOR__DT_F16:
            for (int64_t i = 0; i < cols; i++) {
                uint16_t h = mor__f32_to_f16(f[i]);
                memcpy(dst + 2 * i, &h, 2);
            }
            break;
        case MOR__DT_BF16:
            for (int64_t i = 0; i < cols; i++) {
                uint16_t h = mor__f32_to_bf16(f[i]);
                memcpy(dst + 2 * i, &h, 2);
            }
            break;
        case MOR__DT_Q8_0: mor__quantize_q8_0(f, dst, cols); break;
        case MOR__DT_Q4_0: mor__quantize_q4_0(f, dst, cols); break;
        default: rand_blocks(dt, dst, cols); break;
        }
    }
    free(f);
    return W;
}

int main(int argc, char **argv) {
    char types_s[256] = "f32,f16,bf16,q8_0,q4_0";
    char shapes_s[512] = "576x576,1536x576,576x1536,49152x576,1024x384,384x1024";
    char ts_s[256] = "1,4,8,16,32,64";
    const char *isa = "best";
    int reps = 5;
    double min_ms = 20;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--isa") && i + 1 < argc) isa = argv[++i];
        else if (!strcmp(argv[i], "--type") && i + 1 < argc) snprintf(types_s, sizeof types_s, "%s", argv[++i]);
        else if (!strcmp(argv[i], "--shape") && i + 1 < argc) snprintf(shapes_s, sizeof shapes_s, "%s", argv[++i]);
        else if (!strcmp(argv[i], "-T") && i + 1 < argc) snprintf(ts_s, sizeof ts_s, "%s", argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--min-ms") && i + 1 < argc) min_ms = atof(argv[++i]);
        else if (!strcmp(argv[i], "--offset") && i + 1 < argc) offset = atoi(argv[++i]) & 63;
        else {
            fprintf(stderr,
                    "usage: %s [--isa best|avx512|avx2|neon|ref] [--type f32,f16,bf16,q8_0,q4_0,q4_1,q5_0,q5_1,"
                    "iq4_nl,q2_k,q3_k,q4_k,q5_k,q6_k] "
                    "[--shape ROWSxCOLS,...] [-T 1,4,...] [-r REPEATS] [--min-ms MS] [--offset BYTES]\n",
                    argv[0]);
            return 2;
        }
    }
    if (reps < 1) reps = 1;
    const mor__kernels *k = !strcmp(isa, "best") ? mor__kernels_best() : mor__kernels_isa(isa);
    if (!k) {
        fprintf(stderr, "kernels %s are not available on this CPU or build\n", isa);
        return 1;
    }
    char *types[16], *shapes[32], *ts[32];
    int nty = split_list(types_s, types, 16), nsh = split_list(shapes_s, shapes, 32), nts = split_list(ts_s, ts, 32);
    printf("# kernels %s, 1 thread, thread CPU time, median of %d x >= %.0f ms, operands at 64n + %d bytes\n", k->name,
           reps, min_ms, offset);
    printf("%-6s %13s %4s %9s %8s %10s\n", "type", "rows x cols", "T", "GFLOP/s", "GB/s", "us/call");
    for (int ti = 0; ti < nty; ti++) {
        int dt = -1;
        for (size_t j = 0; j < sizeof type_list / sizeof *type_list; j++)
            if (!strcmp(types[ti], type_list[j].name)) dt = type_list[j].dt;
        if (dt < 0) {
            fprintf(stderr, "unknown type %s\n", types[ti]);
            return 2;
        }
        for (int si = 0; si < nsh; si++) {
            long long rows = 0, cols = 0;
            if (sscanf(shapes[si], "%lldx%lld", &rows, &cols) != 2 || rows <= 0 || cols <= 0) {
                fprintf(stderr, "bad shape %s\n", shapes[si]);
                return 2;
            }
            if (cols % mor__dtype_block((uint32_t)dt)) continue;  // rows of whole blocks only
            void *W = make_weights(dt, rows, cols);
            double wbytes = (double)mor__dtype_row_bytes(dt, cols) * (double)rows;
            for (int tj = 0; tj < nts; tj++) {
                int64_t T = atoll(ts[tj]);
                if (T < 1) continue;
                float *x = alloc_off((size_t)(T * cols) * sizeof(float));
                float *y = alloc_off((size_t)(T * rows) * sizeof(float));
                float *row = malloc((size_t)cols * sizeof(float) + 64);
                if (!x || !y || !row) {
                    fprintf(stderr, "out of memory\n");
                    return 1;
                }
                for (int64_t i = 0; i < T * cols; i++) x[i] = randf();
                k->matmul[dt](W, cols, 0, rows, x, T, cols, y, rows, row);  // warm-up
                double *per = malloc((size_t)reps * sizeof(double));
                for (int rep = 0; rep < reps; rep++) {
                    int calls = 0;
                    double t0 = cpu_now(), t1;
                    do {
                        k->matmul[dt](W, cols, 0, rows, x, T, cols, y, rows, row);
                        calls++;
                        t1 = cpu_now();
                    } while ((t1 - t0) * 1e3 < min_ms);
                    per[rep] = (t1 - t0) / calls;
                }
                qsort(per, (size_t)reps, sizeof(double), cmp_double);
                double t = per[reps / 2];
                printf("%-6s %6lldx%-6lld %4lld %9.1f %8.1f %10.1f\n", types[ti], rows, cols, (long long)T,
                       2.0 * (double)rows * (double)cols * (double)T / t * 1e-9, wbytes / t * 1e-9, t * 1e6);
                fflush(stdout);
                free(per), free_off(x), free_off(y), free(row);
            }
            free_off(W);
        }
    }
    return 0;
}
