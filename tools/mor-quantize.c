// mor-quantize: quantize a GGUF model file (architecture llama or mor; F32, F16 or BF16
// tensors) to one of llama.cpp's quantization recipes.
//
//   mor-quantize IN.gguf OUT.gguf TYPE [--threads N] [--progress | --no-progress] [-q]
//
// TYPE: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q6_K, Q5_K_M, Q5_K_S, Q4_K_M, Q4_K_S. For llama files
// the output has the bytes llama-quantize writes for the same input and type without an
// importance matrix; the recipe and the choices for mor files: docs/CONVERT.md. The work is
// in tools/lib/quantize.c. Exit status: 0 on success, 1 on any error (one message on stderr,
// no output file left), 2 on bad usage.
#include "quantize.h"

#include "mor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: mor-quantize IN.gguf OUT.gguf TYPE [--threads N] [--progress | --no-progress] [-q]\n"
            "Quantizes a GGUF file (architecture llama or mor; F32, F16 or BF16 tensors).\n"
            "  TYPE           %s\n"
            "  --threads N    conversion threads (default 1)\n"
            "  --progress     progress bar on stderr (default: when stderr is a terminal)\n"
            "  -q             no summary\n",
            mor__qrecipe_names());
}

typedef struct {
    double t0, last;
} bar;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void draw(void *user, uint64_t done, uint64_t total, uint64_t tensors_done, uint64_t n_tensors) {
    bar *b = user;
    double t = now_s();
    int end = tensors_done == n_tensors;
    if (!end && t - b->last < 0.1) return;
    b->last = t;
    double frac = total ? (double)done / (double)total : 1.0;
    int fill = (int)(frac * 30 + 0.5);
    char line[31];
    for (int i = 0; i < 30; i++) line[i] = i < fill ? '#' : '.';
    line[30] = 0;
    double mb = (double)done / 1e6, dt = t - b->t0;
    fprintf(stderr, "\r[%s] %3d%%  %llu/%llu tensors  %.0f MB  %.1f MB/s ", line, (int)(frac * 100 + 0.5),
            (unsigned long long)tensors_done, (unsigned long long)n_tensors, mb, dt > 0 ? mb / dt : 0.0);
    if (end) fputc('\n', stderr);
    fflush(stderr);
}

// A message may quote names from the file: control bytes are written as \xNN.
static void print_escaped(FILE *f, const char *s) {
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
        else fputc(c, f);
    }
}

int main(int argc, char **argv) {
    const char *pos[3];
    int n_pos = 0, threads = 1, progress = -1, quiet = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--threads") == 0 || strcmp(a, "-t") == 0) {
            char *end;
            long v = i + 1 < argc ? strtol(argv[i + 1], &end, 10) : 0;
            if (i + 1 >= argc || *end || v < 1 || v > 64) {
                fprintf(stderr, "mor-quantize: --threads needs a number from 1 to 64\n");
                return 2;
            }
            threads = (int)v;
            i++;
        } else if (strcmp(a, "--progress") == 0) {
            progress = 1;
        } else if (strcmp(a, "--no-progress") == 0) {
            progress = 0;
        } else if (strcmp(a, "-q") == 0) {
            quiet = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "mor-quantize: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (n_pos < 3) {
            pos[n_pos++] = a;
        } else {
            fprintf(stderr, "mor-quantize: too many arguments ('%s')\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (n_pos != 3) {
        usage(stderr);
        return 2;
    }
    if (!mor__qrecipe_find(pos[2])) {
        fprintf(stderr, "mor-quantize: unknown type '%s' (one of %s)\n", pos[2], mor__qrecipe_names());
        return 2;
    }
    if (progress < 0) progress = isatty(2);
    bar b = {now_s(), 0};
    mor__qopts o = {threads, 0, progress ? draw : NULL, &b};
    mor__qstats st;
    char err[1024] = "";
    int s = mor__quantize_file(pos[0], pos[1], pos[2], &o, &st, err, sizeof err);
    if (s) {
        if (progress) fputc('\n', stderr);
        fputs("mor-quantize: ", stderr);
        print_escaped(stderr, err);
        fprintf(stderr, " (%s)\n", mor_status_name(s));
        return 1;
    }
    if (quiet) return 0;
    printf("wrote %s (%s): %llu tensors:", pos[1], mor__qrecipe_find(pos[2])->name,
           (unsigned long long)st.n_tensors);
    for (uint32_t t = 0; t < 64; t++)
        if (st.per_type[t]) printf(" %s %llu", mor__dtype_name(t), (unsigned long long)st.per_type[t]);
    printf("\n  %llu converted", (unsigned long long)st.n_converted);
    if (st.n_fallback)
        printf(", %llu with a fallback type (row width not a multiple of 256)", (unsigned long long)st.n_fallback);
    double in_mb = (double)st.in_bytes / 1e6, out_mb = (double)st.out_bytes / 1e6;
    printf("\n  %.2f MB -> %.2f MB in %.2f s: %.1f MB/s of input, %d thread%s\n", in_mb, out_mb, st.seconds,
           st.seconds > 0 ? in_mb / st.seconds : 0.0, threads, threads > 1 ? "s" : "");
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        printf("  buffers %.1f MB, peak resident %.1f MB\n", (double)st.buffer_bytes / 1e6, (double)ru.ru_maxrss / 1e3);
    return 0;
}
