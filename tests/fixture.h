// fixture.h: reader for the golden fixtures written by tools/make-fixtures.py (the PyTorch
// reference): tests/data/<name>.fix, a small text format:
//
//   mor-fixture 1
//   model X.gguf
//   prompt <n> <id>...
//   logits <n_pos> <n_vocab>
//   <n_pos lines of n_vocab floats>
//   greedy <n> <id>...
//   depths <n> <d>...        (optional)
//   policy fixed <k>         (optional: the reference ran with every token capped at k steps)
//   policy kv share          (optional: the reference forced recursive KV sharing)
//   end
#ifndef MOR_TEST_FIXTURE_H
#define MOR_TEST_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dirent.h>

// Appends to names[n..max) the files of dir ending in ext, each as prefix + the name with ext
// cut when cut is set (else whole), and returns the new count; names stay sorted.
static int fixture_list(const char *dir, const char *ext, const char *prefix, int cut, char names[][128], int n,
                        int max) {
    DIR *d = opendir(dir);
    if (!d) return n;
    const size_t el = strlen(ext);
    struct dirent *e;
    while ((e = readdir(d)) && n < max) {
        size_t len = strlen(e->d_name);
        if (len > el && len < 100 && strcmp(e->d_name + len - el, ext) == 0)
            snprintf(names[n++], 128, "%s%.*s", prefix, (int)(cut ? len - el : len), e->d_name);
    }
    closedir(d);
    for (int i = 1; i < n; i++)  // sorted, for a stable order
        for (int j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char t[128];
            memcpy(t, names[j], 128);
            memcpy(names[j], names[j - 1], 128);
            memcpy(names[j - 1], t, 128);
        }
    return n;
}

typedef struct {
    char     model[256];
    int      n_prompt, n_pos, n_vocab, n_greedy, n_depths;
    int      fixed_depth;  // `policy fixed K` line: run with MOR_EXIT_FIXED depth K (0: default)
    int      kv_share;     // `policy kv share` line: run with MOR_KV_SHARE
    int32_t *prompt, *greedy, *depths;
    float   *logits;  // [n_pos][n_vocab]
} fixture;

static void fixture_free(fixture *f) {
    free(f->prompt);
    free(f->greedy);
    free(f->depths);
    free(f->logits);
    memset(f, 0, sizeof *f);
}

static int fixture_ids(FILE *fp, int *n, int32_t **out) {
    if (fscanf(fp, "%d", n) != 1 || *n < 0 || *n > 1000000) return -1;
    *out = malloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
    if (!*out) return -1;
    for (int i = 0; i < *n; i++)
        if (fscanf(fp, "%d", &(*out)[i]) != 1) return -1;
    return 0;
}

// Returns 0 on success; prints the reason and returns -1 otherwise.
static int fixture_load(const char *path, fixture *f) {
    memset(f, 0, sizeof *f);
    FILE *fp = fopen(path, "r");
    if (!fp) {
        printf("# cannot open fixture %s\n", path);
        return -1;
    }
    char word[64];
    int version = 0, rc = -1;
    if (fscanf(fp, "%63s %d", word, &version) != 2 || strcmp(word, "mor-fixture") || version != 1) goto done;
    while (fscanf(fp, "%63s", word) == 1) {
        if (!strcmp(word, "end")) {
            rc = 0;
            break;
        } else if (!strcmp(word, "model")) {
            if (fscanf(fp, "%255s", f->model) != 1) goto done;
        } else if (!strcmp(word, "prompt")) {
            if (fixture_ids(fp, &f->n_prompt, &f->prompt)) goto done;
        } else if (!strcmp(word, "greedy")) {
            if (fixture_ids(fp, &f->n_greedy, &f->greedy)) goto done;
        } else if (!strcmp(word, "policy")) {
            char kind[32], arg[32];
            if (fscanf(fp, "%31s %31s", kind, arg) != 2) goto done;
            if (!strcmp(kind, "fixed")) f->fixed_depth = atoi(arg);
            else if (!strcmp(kind, "kv") && !strcmp(arg, "share")) f->kv_share = 1;
            else goto done;
        } else if (!strcmp(word, "depths")) {
            if (fixture_ids(fp, &f->n_depths, &f->depths)) goto done;
        } else if (!strcmp(word, "logits")) {
            if (fscanf(fp, "%d %d", &f->n_pos, &f->n_vocab) != 2 || f->n_pos < 0 || f->n_vocab < 1 ||
                (long long)f->n_pos * f->n_vocab > 50000000)
                goto done;
            f->logits = malloc(sizeof(float) * (size_t)f->n_pos * (size_t)f->n_vocab + 1);
            if (!f->logits) goto done;
            for (long long i = 0; i < (long long)f->n_pos * f->n_vocab; i++)
                if (fscanf(fp, "%f", &f->logits[i]) != 1) goto done;
        } else {
            goto done;
        }
    }
done:
    fclose(fp);
    if (rc) {
        printf("# malformed fixture %s near '%s'\n", path, word);
        fixture_free(f);
    }
    return rc;
}

#endif
