// many_npcs.c: several characters of a game, each its own session with its own sampler,
// generating lines from one model together under one scheduler (continuous depth-wise
// batching): a character whose token needs fewer recursions frees its place in the batch
// for another at once.
// Run: ./build/example-many_npcs [MODEL.gguf] [N_CHARACTERS]
#include <mor.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *lines[] = {"The old wizard said", "The baker smiled and", "Once upon a time, the knight",
                              "The little fox looked at", "In the dark forest, the witch", "The king was angry because",
                              "The girl found a", "The dragon flew over"};

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "tests/data/stories260K.gguf";
    int n = argc > 2 ? atoi(argv[2]) : 4;
    if (n < 1 || n > 8) n = 4;
    char err[256];
    mor_model *model;
    if (mor_model_load(path, NULL, &model, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    mor_sched *sched;
    if (mor_sched_create(model, NULL, &sched, err, sizeof err) != MOR_OK) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    mor_session *npc[8];
    mor_detok *detok[8];
    char text[8][1024];
    size_t len[8] = {0};
    for (int i = 0; i < n; i++) {
        mor_session_params sp;
        mor_session_params_init(&sp);
        sp.n_ctx = 256;
        sp.n_batch = 16;
        if (mor_session_create(model, &sp, &npc[i], err, sizeof err) != MOR_OK) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        mor_sampler_params smp;  // every character has its own voice: temperature and seed
        mor_sampler_params_init(&smp);
        smp.temperature = 0.7f + 0.1f * (float)i;
        smp.seed = 100 + (uint64_t)i;
        mor_session_set_sampler(npc[i], &smp);
        mor_detok_create(model, MOR_DETOKENIZE_KEEP_PREFIX, &detok[i]);
        int32_t toks[64];
        size_t nt = 0;
        mor_tokenize(model, lines[i], strlen(lines[i]), toks, 64, MOR_TOKENIZE_ADD_SPECIAL, &nt);
        mor_sched_add(sched, npc[i]);
        if (mor_sched_submit(sched, npc[i], toks, (int32_t)nt, 40) != MOR_OK)
            fprintf(stderr, "character %d: %s\n", i, mor_session_last_error(npc[i]));
        len[i] = (size_t)snprintf(text[i], sizeof text[i], "%s", lines[i]);
    }
    while (mor_sched_pending(sched) > 0) {
        mor_sched_step(sched);
        mor_session *who;
        int32_t tok, status;
        while (mor_sched_poll(sched, &who, &tok, &status) == MOR_OK) {
            int i = 0;
            while (i < n && npc[i] != who) i++;
            if (status != MOR_OK) fprintf(stderr, "character %d: %s\n", i, mor_session_last_error(who));
            if (tok < 0 || mor_model_token_is_eog(model, tok)) continue;
            size_t got = 0;
            if (len[i] + 64 < sizeof text[i] &&
                mor_detok_push(detok[i], tok, text[i] + len[i], sizeof text[i] - len[i] - 1, &got) == MOR_OK)
                len[i] += got;
        }
    }
    mor_sched_counters cn;
    cn.size = sizeof cn;
    mor_sched_get_counters(sched, &cn);
    for (int i = 0; i < n; i++) {
        text[i][len[i]] = 0;
        for (char *c = text[i]; *c; c++)
            if (*c == '\n') *c = ' ';
        printf("[%d] %s\n", i, text[i]);
    }
    fprintf(stderr, "%lld rounds, %lld tokens; %.1f token rows per batched layer, %.1f per head product on average\n",
            (long long)cn.rounds, (long long)cn.tokens, cn.layer_runs ? (double)cn.layer_rows / (double)cn.layer_runs : 0.0,
            cn.head_runs ? (double)cn.head_rows / (double)cn.head_runs : 0.0);
    for (int i = 0; i < n; i++) {
        mor_detok_free(detok[i]);
        mor_session_free(npc[i]);
    }
    mor_sched_free(sched);
    mor_model_free(model);
    return 0;
}
