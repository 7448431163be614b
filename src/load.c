// load.c: mor_model_load and mor_model_load_memory: the model's weights and the vocabulary
// of the same file, in one call.
//
// The model (model.c) does not know the tokenizer and the tokenizer does not load weights, so
// the loader sits above both: it opens the image with the model's first step, reads the
// vocabulary, binds the weights, checks that the two agree on the vocabulary size, and
// attaches the vocabulary to the model, which frees it with its last reference.
#include "model.h"
#include "tokenizer.h"

#include <time.h>

static void vocab_release(void *v) { mor__vocab_free(v); }

// Everything after the header: the vocabulary (when the file has one), then the weights.
static int load_rest(mor_model *m, char *err, size_t err_n) {
    // The tokenizer matches these names by their bytes; a NUL inside is refused here, naming the
    // key, rather than reported as an unknown name that prints cut short.
    static const char *const tok_names[] = {"tokenizer.ggml.model", "tokenizer.ggml.pre"};
    int s;
    for (size_t i = 0; i < sizeof tok_names / sizeof tok_names[0]; i++) {
        mor__gguf_str t;
        s = mor__gguf_get_cstr(&m->gguf, tok_names[i], &t, err, err_n);
        if (s && s != MOR_E_NOT_FOUND) return s;
    }
    mor__vocab *v = NULL;
    s = mor__vocab_load(&v, &m->gguf, &m->alloc, err, err_n);
    if (s && s != MOR_E_NOT_FOUND) return s;
    if (v) {
        m->vocab = v;
        m->vocab_free = vocab_release;
    }
    if (m->vocab_only) {
        if (!v) return mor__errf(err, err_n, MOR_E_FORMAT, "vocab-only load: the file has no tokenizer");
        return MOR_OK;
    }
    if ((s = mor__model_bind(m, err, err_n))) return s;
    // One vocabulary size: mor_model_n_vocab() (the token list) is what callers size logits
    // and validate ids with, so it must equal the rows of the embedding and of every output
    // head (the model checked those equal): fewer tokens would let sampling return ids that
    // detokenize refuses, more would name ids the model has no row for.
    if (v && mor__vocab_n_tokens(v) != m->hp.n_vocab)
        return mor__errf(err, err_n, MOR_E_FORMAT,
                         "tokenizer.ggml.tokens has %d tokens but token_embd.weight and the output "
                         "head have %d rows; they must be equal",
                         mor__vocab_n_tokens(v), m->hp.n_vocab);
    return MOR_OK;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

// Runs the rest of the load on an opened model: *out on success, freed on failure. A loaded
// model is described at MOR_LOG_DEBUG: where from, architecture, shape, sizes and time.
static int finish(mor_model *m, mor_model **out, const char *path, size_t image_size, double t0, char *err,
                  size_t err_size) {
    int s = load_rest(m, err, err_size);
    if (s) {
        mor_model_free(m);
        return s;
    }
    *out = m;
    const char *name = mor_model_get_str(m, MOR_INFO_NAME);
    mor__log(MOR_LOG_DEBUG,
             "model load: %s%s%s%.0zu%s: arch %s%s%s%s, %d layers (%d stored, %d recursions, %d steps), n_embd %d, n_vocab %d, "
             "n_ctx_train %d, %lld parameters, %.2f MiB of weights (%s), %s, in %.1f ms",
             path ? "file '" : "memory image of ", path ? path : "", path ? "'" : "", path ? 0 : image_size,
             path ? "" : " bytes", mor_model_get_str(m, MOR_INFO_ARCH), name && name[0] ? " '" : "", name ? name : "",
             name && name[0] ? "'" : "", m->hp.n_layer, (int)mor_model_get_int(m, MOR_INFO_N_STORED_LAYER),
             (int)mor_model_get_int(m, MOR_INFO_N_RECURSION), (int)mor_model_get_int(m, MOR_INFO_N_STEPS), m->hp.n_embd,
             m->hp.n_vocab, m->hp.n_ctx_train, (long long)mor_model_get_int(m, MOR_INFO_N_PARAMS),
             (double)mor_model_get_int(m, MOR_INFO_WEIGHT_BYTES) / 1048576.0,
             m->map ? "mapped" : m->heap ? "copied" : "borrowed", m->vocab_only ? "vocabulary only" : "weights bound",
             now_ms() - t0);
    return MOR_OK;
}

int mor_model_load(const char *path, const mor_model_params *params, mor_model **out, char *err,
                   size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (!out) return mor__errf(err, err_size, MOR_E_INVALID, "out is NULL");
    *out = NULL;
    mor_model *m;
    double t0 = now_ms();
    int s = mor__model_open_file(path, params, &m, err, err_size);
    if (s) return s;
    return finish(m, out, path, 0, t0, err, err_size);
}

int mor_model_load_memory(const void *data, size_t size, const mor_model_params *params,
                          mor_model **out, char *err, size_t err_size) {
    if (err && err_size) err[0] = 0;
    if (!out) return mor__errf(err, err_size, MOR_E_INVALID, "out is NULL");
    *out = NULL;
    mor_model *m;
    double t0 = now_ms();
    int s = mor__model_open_memory(data, size, params, &m, err, err_size);
    if (s) return s;
    return finish(m, out, NULL, size, t0, err, err_size);
}
