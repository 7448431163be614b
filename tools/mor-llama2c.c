// mor-llama2c: convert a llama2.c checkpoint and tokenizer to a GGUF file (architecture llama).
//
//   mor-llama2c [--ctx N] MODEL.bin TOKENIZER.bin OUT.gguf
//   mor-llama2c --vocab-only TOKENIZER.bin OUT.gguf
//
// The output matches llama.cpp's convert-llama2c-to-ggml (keys, tensor names, order, F32
// data, no Q/K permutation) except that llama.context_length is the checkpoint's seq_len
// unless --ctx overrides it (llama.cpp writes 2048). Checkpoints of llama2.c export versions
// 0 (legacy), 1 and 2 (int8, dequantized to F32) are accepted. See tools/lib/llama2c.h.
// Exit status: 0 on success, 1 on any error (message on stderr), 2 on bad usage.
#include "gguf-write.h"
#include "llama2c.h"
#include "mor.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f) {
    fprintf(f,
            "usage: mor-llama2c [--ctx N] MODEL.bin TOKENIZER.bin OUT.gguf\n"
            "       mor-llama2c --vocab-only TOKENIZER.bin OUT.gguf\n"
            "Converts a llama2.c checkpoint (export versions 0, 1, 2) and tokenizer to GGUF.\n"
            "  --ctx N        write llama.context_length = N (default: the checkpoint's seq_len)\n"
            "  --vocab-only   write only the tokenizer (no tensors)\n");
}

int main(int argc, char **argv) {
    int vocab_only = 0;
    unsigned long ctx = 0;
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1]; i++) {
        if (strcmp(argv[i], "--vocab-only") == 0) {
            vocab_only = 1;
        } else if (strcmp(argv[i], "--ctx") == 0 && i + 1 < argc) {
            char *end;
            ctx = strtoul(argv[++i], &end, 10);
            if (*end || ctx == 0 || ctx > 0xffffffffUL) {
                fprintf(stderr, "mor-llama2c: --ctx needs a positive 32-bit integer, got '%s'\n",
                        argv[i]);
                return 2;
            }
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "mor-llama2c: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    int need = vocab_only ? 2 : 3;
    if (argc - i != need) {
        usage(stderr);
        return 2;
    }
    const char *model_path = vocab_only ? NULL : argv[i];
    const char *tok_path = argv[i + need - 2];
    const char *out_path = argv[i + need - 1];

    char err[512] = "";
    void *model = NULL, *tok = NULL;
    uint64_t model_size = 0, tok_size = 0;
    mor__gguf_writer *w = NULL;
    int s = MOR_OK;
    if (model_path && (s = mor__gguf_w_read_file(model_path, &model, &model_size, err, sizeof err)))
        goto fail;
    if ((s = mor__gguf_w_read_file(tok_path, &tok, &tok_size, err, sizeof err))) goto fail;
    if (!(w = mor__gguf_writer_create())) {
        s = MOR_E_NOMEM;
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    s = mor__llama2c_build(w, model, (size_t)model_size, tok, (size_t)tok_size, (uint32_t)ctx, err,
                           sizeof err);
    free(model);
    model = NULL;
    if (s) goto fail;
    if ((s = mor__gguf_writer_save(w, out_path, err, sizeof err))) {
        remove(out_path);  // no partial file left behind
        goto fail;
    }
    printf("wrote %s: %llu keys, %llu tensors\n", out_path,
           (unsigned long long)mor__gguf_w_n_kv(w), (unsigned long long)mor__gguf_w_n_tensors(w));
    mor__gguf_writer_free(w);
    free(tok);
    return 0;

fail:
    fprintf(stderr, "mor-llama2c: %s (%s)\n", err[0] ? err : "error", mor_status_name(s));
    if (model_path && s != MOR_E_IO && strstr(err, "checkpoint"))
        fprintf(stderr, "  in %s\n", model_path);
    else if (s != MOR_E_IO && strstr(err, "tokenizer"))
        fprintf(stderr, "  in %s\n", tok_path);
    mor__gguf_writer_free(w);
    free(model);
    free(tok);
    return 1;
}
