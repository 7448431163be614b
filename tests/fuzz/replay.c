// replay.c: a plain main() for the fuzz targets, so that any compiler can replay inputs.
//
//   fuzz-<name>-replay PATH...
//
// runs LLVMFuzzerInitialize() once, then LLVMFuzzerTestOneInput() on every file named, and on
// every regular file (sorted by name) of every directory named. A broken property aborts, so
// the exit status (and the last "replaying" line with -v) tells which input failed.
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int verbose;

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    size_t cap = 1 << 16, n = 0, k;
    uint8_t *p = malloc(cap);
    while (p && (k = fread(p + n, 1, cap - n, f)) > 0) {
        n += k;
        if (n == cap) {
            uint8_t *q = realloc(p, cap *= 2);
            if (!q) free(p);
            p = q;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (!p || bad) {
        fprintf(stderr, "%s: cannot read\n", path);
        free(p);
        return 1;
    }
    if (verbose) fprintf(stderr, "replaying %s (%zu bytes)\n", path, n);
    // An exact-size copy, so that a read past the input is caught by ASan/valgrind.
    uint8_t *exact = malloc(n ? n : 1);
    if (!exact) return free(p), 1;
    memcpy(exact, p, n);
    free(p);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 0;
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int run_dir(const char *dir, int *count) {
    DIR *d = opendir(dir);
    if (!d) {
        perror(dir);
        return 1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            char **q = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof *q);
            if (!q) break;
            names = q;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp);
    int fail = 0;
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (names[i] && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            fail |= run_file(path);
            (*count)++;
        }
        free(names[i]);
    }
    free(names);
    return fail;
}

int main(int argc, char **argv) {
    LLVMFuzzerInitialize(&argc, &argv);
    int fail = 0, count = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-v")) {
            verbose = 1;
            continue;
        }
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            fail = 1;
        } else if (S_ISDIR(st.st_mode)) {
            fail |= run_dir(argv[i], &count);
        } else {
            fail |= run_file(argv[i]);
            count++;
        }
    }
    printf("%s: %d inputs replayed%s\n", argv[0], count, fail ? ", some could not be read" : "");
    return fail;
}
