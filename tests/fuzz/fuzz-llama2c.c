// fuzz-llama2c.c: the llama2.c importer (tools/lib/llama2c.h, tool code that reads untrusted
// checkpoint and tokenizer files) on arbitrary bytes.
//
// Input: one flags byte (bit 0: vocab-only, no checkpoint; bit 1: a context_length override
// follows as 4 bytes), a 4-byte little-endian checkpoint length, the checkpoint bytes, then the
// tokenizer bytes (the rest). Both parts are copied into exact-size heap buffers. A conversion
// that succeeds must produce an image that mor__gguf_parse accepts and that loads (vocab-only
// for a vocab-only conversion) with a vocabulary of the tokenizer's size; a failure must be a
// documented status with a message. Seeds: tests/fuzz/corpus/llama2c/ (tiny checkpoints of
// versions 0, 1 and 2 with a small tokenizer; tests/fuzz/gen-seeds.c writes them).
#include "fuzz.h"
#include "gguf-write.h"
#include "gguf.h"
#include "llama2c.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    return 0;
}

static uint8_t *dup_exact(const uint8_t *p, size_t n) {
    uint8_t *q = malloc(n ? n : 1);
    if (q && n) memcpy(q, p, n);
    return q;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_in in = {data, size, 0};
    uint8_t flags = fz_u8(&in);
    uint32_t ctx = (flags & 2) ? fz_u32(&in) % 100000u : 0;
    uint32_t model_n = fz_u32(&in);
    size_t rest = size - (in.i < size ? in.i : size);
    if (model_n > rest) model_n = (uint32_t)rest;
    int vocab_only = flags & 1;
    uint8_t *model = vocab_only ? NULL : dup_exact(data + in.i, model_n);
    size_t tok_n = rest - model_n;
    uint8_t *tok = dup_exact(data + in.i + model_n, tok_n);
    if ((!vocab_only && !model) || !tok) goto out;

    char err[512];
    err[0] = 0;
    mor__gguf_writer *w = mor__gguf_writer_create();
    if (!w) goto out;
    int s = mor__llama2c_build(w, model, vocab_only ? 0 : model_n, tok, tok_n, ctx, err, sizeof err);
    FZ_STATUS(s, MOR_OK, MOR_E_FORMAT, MOR_E_UNSUPPORTED, MOR_E_NOMEM);
    if (s != MOR_OK) {
        FZ_CHECK(err[0] != 0, "%s without a message", mor_status_name(s));
    } else {
        uint64_t n = 0;
        uint8_t *img = mor__gguf_writer_finish(w, &n);
        if (img) {
            mor__gguf g;
            int ps = mor__gguf_parse(&g, img, n, err, sizeof err);
            FZ_CHECK(ps == MOR_OK, "converted image does not parse: %s", err);
            uint32_t et = 0;
            uint64_t n_tok = 0;
            FZ_CHECK(mor__gguf_get_arr(&g, "tokenizer.ggml.tokens", &et, &n_tok, err, sizeof err) == MOR_OK,
                     "no token array: %s", err);
            mor__gguf_free(&g);
            mor_model_params p;
            mor_model_params_init(&p);
            p.flags = vocab_only ? MOR_MODEL_VOCAB_ONLY : 0;
            mor_model *m = NULL;
            int ls = mor_model_load_memory(img, (size_t)n, &p, &m, err, sizeof err);
            FZ_CHECK(ls == MOR_OK, "converted image does not load: %s: %s", mor_status_name(ls), err);
            FZ_CHECK(mor_model_n_vocab(m) == (int32_t)n_tok, "n_vocab %d, %llu tokens", mor_model_n_vocab(m),
                     (unsigned long long)n_tok);
            int32_t toks[64];
            size_t nt = 0;
            int ts = mor_tokenize(m, "Once upon a time", 16, toks, 64, MOR_TOKENIZE_ADD_SPECIAL, &nt);
            FZ_STATUS(ts, MOR_OK, MOR_E_ENCODING, MOR_E_BUFFER_SMALL);
            mor_model_free(m);
            free(img);
        }
    }
    mor__gguf_writer_free(w);
out:
    free(model);
    free(tok);
    return 0;
}
