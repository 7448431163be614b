// simple.c: load a model, generate text greedily from a prompt, print it as it comes.
// Build: cc simple.c $(pkg-config --cflags --libs mor)      Run: ./simple model.gguf "Once upon"
#include <mor.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    const char *prompt = argc > 2 ? argv[2] : "Once upon a time";
    char err[256], piece[64];
    mor_model *model;
    mor_session *sess;
    if (argc < 2 || mor_model_load(argv[1], NULL, &model, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "usage: simple MODEL.gguf [PROMPT]\n%s\n", argc < 2 ? "" : err);
        return 1;
    }
    if (mor_session_create(model, NULL, &sess, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    int32_t tokens[256];
    size_t n = 0;
    if (mor_tokenize(model, prompt, strlen(prompt), tokens, 256, MOR_TOKENIZE_ADD_SPECIAL, &n) != MOR_OK) {
        fprintf(stderr, "prompt too long\n");
        return 1;
    }
    mor_detok *detok;
    mor_detok_create(model, MOR_DETOKENIZE_KEEP_PREFIX, &detok);  // continuing the prompt text
    printf("%s", prompt);
    for (int i = 0; i < 64 && mor_session_step(sess, tokens, (int32_t)n) == MOR_OK; i++) {
        mor_session_sample(sess, &tokens[0]);  // greedy: the default sampler
        if (mor_model_token_is_eog(model, tokens[0])) break;
        size_t len = 0;
        mor_detok_push(detok, tokens[0], piece, sizeof piece, &len);
        fwrite(piece, 1, len, stdout);
        fflush(stdout);
        n = 1;
    }
    printf("\n");
    mor_detok_free(detok);
    mor_session_free(sess);
    mor_model_free(model);
    return 0;
}
