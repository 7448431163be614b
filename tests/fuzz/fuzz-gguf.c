// fuzz-gguf.c: the GGUF parser (mor__gguf_parse) and the model loader (mor_model_load_memory
// with a borrowed buffer) on arbitrary bytes.
//
// Every input goes through mor__gguf_parse(): a parse that succeeds must describe tensors lying
// inside the input, a failure must be a negative status with a message. Inputs that parse are
// loaded (the buffer is borrowed, so ASan sees any read past the input) both fully and with
// MOR_MODEL_VOCAB_ONLY; a model that loads answers its info queries, renders metadata, tokenizes
// and detokenizes a short text, and a full model steps and samples two tokens in a small
// session. Seeds: tests/fuzz/corpus/gguf/ (small hand-made images); tests/data/*.gguf are
// useful extra seeds.
#include "fuzz.h"
#include "gguf.h"

static const char *const meta_keys[] = {"general.architecture", "general.name", "tokenizer.ggml.model",
                                        "tokenizer.ggml.tokens", "llama.context_length", "mor.recursion.count"};

static void exercise(const mor_model *m) {
    for (int32_t k = 0; k <= 24; k++) (void)mor_model_get_int(m, k);
    for (int32_t k = 100; k <= 104; k++) (void)mor_model_get_float(m, k);
    for (int32_t k = 200; k <= 204; k++) {
        const char *s = mor_model_get_str(m, k);
        if (s) (void)strlen(s);
    }
    char buf[256];
    size_t nb = 0;
    for (size_t i = 0; i < sizeof meta_keys / sizeof meta_keys[0]; i++) {
        int s = mor_model_meta_str(m, meta_keys[i], buf, sizeof buf, &nb);
        FZ_STATUS(s, MOR_OK, MOR_E_NOT_FOUND, MOR_E_BUFFER_SMALL);
        if (s == MOR_OK) FZ_CHECK(nb < sizeof buf && buf[nb] == 0, "meta_str %s: %zu bytes", meta_keys[i], nb);
    }
    int32_t nv = mor_model_n_vocab(m);
    if (nv > 0) {
        static const char text[] = "Hello world, \xc3\xa9t\xc3\xa9 42!\xff";
        int32_t toks[128];
        size_t nt = 0;
        int s = mor_tokenize(m, text, sizeof text - 1, toks, 128, MOR_TOKENIZE_ADD_SPECIAL, &nt);
        FZ_STATUS(s, MOR_OK, MOR_E_ENCODING, MOR_E_BUFFER_SMALL, MOR_E_NOMEM);
        if (s == MOR_OK) {
            for (size_t i = 0; i < nt; i++) FZ_CHECK(toks[i] >= 0 && toks[i] < nv, "token %d of %d", toks[i], nv);
            char out[512];
            s = mor_detokenize(m, toks, nt, out, sizeof out, MOR_DETOKENIZE_SPECIAL, &nb);
            FZ_STATUS(s, MOR_OK, MOR_E_BUFFER_SMALL);
        }
        for (int32_t t = 0; t < nv && t < 8; t++) {
            s = mor_token_to_piece(m, nv - 1 - t, buf, sizeof buf, MOR_DETOKENIZE_SPECIAL, &nb);
            FZ_STATUS(s, MOR_OK, MOR_E_BUFFER_SMALL);
        }
    }
    if (mor_model_get_int(m, MOR_INFO_VOCAB_ONLY) == 1) return;
    // Tensors may be huge on paper: only models whose weights fit in the input reach here, and a
    // small context keeps the session small.
    mor_session_params sp;
    mor_session_params_init(&sp);
    sp.n_ctx = 4;
    sp.n_batch = 2;
    mor_session *s = NULL;
    char err[256];
    int st = mor_session_create(m, &sp, &s, err, sizeof err);
    FZ_STATUS(st, MOR_OK, MOR_E_INVALID, MOR_E_NOMEM);
    if (st != MOR_OK) return;
    int32_t nvocab = (int32_t)mor_model_get_int(m, MOR_INFO_N_VOCAB);
    int32_t t[2] = {0, nvocab > 1 ? 1 : 0};
    st = mor_session_step(s, t, 2);
    FZ_STATUS(st, MOR_OK, MOR_E_CONTEXT_FULL);
    if (st == MOR_OK) {
        int32_t tok = -1;
        FZ_STATUS(mor_session_sample(s, &tok), MOR_OK);
        FZ_CHECK(tok >= 0 && tok < nvocab, "sampled %d of %d", tok, nvocab);
    }
    mor_session_free(s);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    return 0;
}

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
            FZ_CHECK(t->offset <= size && t->size <= size - t->offset && t->data == buf + t->offset,
                     "tensor %s at %llu (+%llu) outside the %zu-byte input", t->name,
                     (unsigned long long)t->offset, (unsigned long long)t->size, size);
        }
    } else {
        FZ_CHECK(s < 0 && err[0], "parse error %d without a message", s);
    }
    mor__gguf_free(&g);

    if (s == MOR_OK) {
        for (int vocab_only = 0; vocab_only < 2; vocab_only++) {
            mor_model_params p;
            mor_model_params_init(&p);
            p.flags = vocab_only ? MOR_MODEL_VOCAB_ONLY : 0;
            mor_model *m = NULL;
            err[0] = 0;
            int ls = mor_model_load_memory(buf, size, &p, &m, err, sizeof err);
            FZ_CHECK((ls == MOR_OK) == (m != NULL), "load returned %d with model %p", ls, (void *)m);
            FZ_STATUS(ls, MOR_OK, MOR_E_FORMAT, MOR_E_UNSUPPORTED, MOR_E_NOMEM, MOR_E_LIMIT);
            if (ls != MOR_OK) FZ_CHECK(err[0] != 0, "load error %s without a message", mor_status_name(ls));
            if (m) exercise(m);
            mor_model_free(m);
        }
    }
    free(buf);
    return 0;
}
