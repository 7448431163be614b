// fuzz-state.c: mor_session_state_load() of arbitrary bytes into a session of a small model
// (tests/data/cycle.gguf).
//
// Input: one mode byte, then the payload. Bit 0 of the mode chooses how the state is made:
//   0: the payload is the state, loaded as it is;
//   1: the payload edits one of the reference states that LLVMFuzzerInitialize saves from the
//      current library (payload byte 0 picks it; then 5-byte records: a 24-bit offset, taken
//      modulo the size, and a byte XORed there; a record whose XOR byte is 0 truncates the
//      state at that offset instead). Edits keep working when the format changes.
// Bit 1: the receiving session has a context of 8 tokens (else 48); bit 2: it keeps K/V in F16.
//
// Properties: a load returns MOR_OK or MOR_E_STATE; a refused load leaves the session as it
// was (its saved state is byte-identical); after any load the session is usable: it saves and
// reloads its state, steps a token (MOR_OK, or MOR_E_CONTEXT_FULL and then, after a rewind,
// MOR_OK) and samples an id inside the vocabulary.
//
// Seeds: MOR_FUZZ_STATE_SEEDS=DIR fuzz-state writes the reference states as raw (mode 0) seeds
// into DIR and exits (`make fuzz` does this before fuzzing), so the seeds always match the
// current format; tests/fuzz/corpus/state/ holds only small edit-mode seeds.
#include "fuzz.h"

#define MODEL_FILE "cycle.gguf"
#define N_REF 6
static mor_model *model;
static int32_t n_vocab;
static uint8_t *ref[N_REF];
static size_t ref_n[N_REF];
static uint32_t ref_kv16[N_REF];

static uint8_t *save(const mor_session *s, size_t *n) {
    size_t need = mor_session_state_size(s), got = 0;
    uint8_t *buf = malloc(need ? need : 1);
    if (!buf) abort();
    FZ_STATUS(mor_session_state_save(s, buf, need, &got), MOR_OK);
    FZ_CHECK(got == need, "state_save wrote %zu bytes, state_size said %zu", got, need);
    *n = got;
    return buf;
}

static mor_session *new_session(int32_t n_ctx, uint32_t flags) {
    mor_session_params p;
    mor_session_params_init(&p);
    p.n_ctx = n_ctx;
    p.n_batch = 8;
    p.flags = flags;
    mor_session *s = NULL;
    char err[256];
    int st = mor_session_create(model, &p, &s, err, sizeof err);
    FZ_CHECK(st == MOR_OK, "session_create: %s", err);
    return s;
}

// Reference states: empty, greedy default, sampler + fixed depth, confidence exits, FREE with
// synchronized decoding (stacked tokens), and F16 K/V.
static void make_refs(void) {
    for (int r = 0; r < N_REF; r++) {
        uint32_t flags = r == 5 ? MOR_SESSION_KV_F16 : 0;
        mor_session *s = new_session(48, flags);
        mor_exit_policy ep;
        mor_exit_policy_init(&ep);
        if (r == 2) ep.policy = MOR_EXIT_FIXED, ep.depth = 2;
        if (r == 3) ep.policy = MOR_EXIT_CONFIDENCE, ep.threshold = 0.3f;
        if (r == 4) ep.policy = MOR_EXIT_FREE, ep.threshold = 0.2f, ep.adaptive = 1;
        if (r >= 2 && mor_session_set_exit_policy(s, &ep) != MOR_OK)
            fprintf(stderr, "fuzz-state: reference %d keeps the default policy: %s\n", r, mor_session_last_error(s));
        if (r == 2 || r == 4) {
            mor_sampler_params sp;
            mor_sampler_params_init(&sp);
            sp.temperature = 0.8f;
            sp.top_k = 10;
            sp.repeat_penalty = 1.1f;
            sp.seed = 1234 + (uint64_t)r;
            FZ_STATUS(mor_session_set_sampler(s, &sp), MOR_OK);
        }
        int32_t tok = 1;
        for (int i = 0; r > 0 && i < 4 + 3 * r; i++) {
            FZ_STATUS(mor_session_step(s, &tok, 1), MOR_OK);
            FZ_STATUS(mor_session_sample(s, &tok), MOR_OK);
        }
        ref[r] = save(s, &ref_n[r]);
        ref_kv16[r] = flags;
        mor_session_free(s);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    model = fz_load(MODEL_FILE, 0);
    n_vocab = (int32_t)mor_model_get_int(model, MOR_INFO_N_VOCAB);
    make_refs();
    const char *dir = getenv("MOR_FUZZ_STATE_SEEDS");
    if (dir) {
        for (int r = 0; r < N_REF; r++) {
            char path[1024];
            snprintf(path, sizeof path, "%s/ref-%d", dir, r);
            FILE *f = fopen(path, "wb");
            uint8_t mode = ref_kv16[r] ? 4 : 0;
            if (!f || fwrite(&mode, 1, 1, f) != 1 || fwrite(ref[r], 1, ref_n[r], f) != ref_n[r] || fclose(f)) {
                fprintf(stderr, "fuzz-state: cannot write %s\n", path);
                exit(2);
            }
        }
        printf("fuzz-state: %d seed states written to %s\n", N_REF, dir);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t mode = data[0];
    uint8_t *st;
    size_t n;
    if (!(mode & 1)) {
        n = size - 1;
        st = malloc(n ? n : 1);
        if (!st) return 0;
        memcpy(st, data + 1, n);
    } else {
        fz_in in = {data + 1, size - 1, 0};
        int r = fz_u8(&in) % N_REF;
        n = ref_n[r];
        uint8_t *tmp = malloc(n);
        if (!tmp) return 0;
        memcpy(tmp, ref[r], n);
        while (in.n - in.i >= 4) {
            uint32_t off = fz_u8(&in) | (uint32_t)fz_u16(&in) << 8;
            uint8_t x = fz_u8(&in);
            if (n == 0) break;
            off %= (uint32_t)n;
            if (x)
                tmp[off] ^= x;
            else
                n = off;
        }
        st = malloc(n ? n : 1);  // exact size, for ASan
        if (!st) abort();
        memcpy(st, tmp, n);
        free(tmp);
    }
    mor_session *s = new_session((mode & 2) ? 8 : 48, (mode & 4) ? MOR_SESSION_KV_F16 : 0);
    size_t before_n, after_n;
    uint8_t *before = save(s, &before_n);
    int ls = mor_session_state_load(s, st, n);
    FZ_STATUS(ls, MOR_OK, MOR_E_STATE);
    if (ls != MOR_OK) {
        FZ_CHECK(mor_session_last_error(s)[0] != 0, "MOR_E_STATE without a message");
        uint8_t *after = save(s, &after_n);
        FZ_CHECK(after_n == before_n && memcmp(after, before, before_n) == 0,
                 "a refused load changed the session");
        free(after);
    } else {
        FZ_CHECK(mor_session_n_past(s) >= 0 && mor_session_n_past(s) <= mor_session_n_ctx(s), "n_past %d, n_ctx %d",
                 mor_session_n_past(s), mor_session_n_ctx(s));
        for (int32_t p = 0; p < mor_session_n_past(s); p++) {
            int32_t t = -1;
            FZ_STATUS(mor_session_token_at(s, p, &t), MOR_OK);
            FZ_CHECK(t >= 0 && t < n_vocab, "token %d at %d", t, p);
        }
        // The loaded state saves and reloads.
        uint8_t *again = save(s, &after_n);
        FZ_STATUS(mor_session_state_load(s, again, after_n), MOR_OK);
        free(again);
    }
    // Usable: a step (after a rewind when the context is full) and a sample.
    int32_t tok = 1;
    int ss = mor_session_step(s, &tok, 1);
    FZ_STATUS(ss, MOR_OK, MOR_E_CONTEXT_FULL);
    if (ss != MOR_OK) {
        FZ_STATUS(mor_session_rewind(s, 0), MOR_OK);
        FZ_STATUS(mor_session_step(s, &tok, 1), MOR_OK);
    }
    tok = -1;
    FZ_STATUS(mor_session_sample(s, &tok), MOR_OK);
    FZ_CHECK(tok >= 0 && tok < n_vocab, "sampled %d of %d", tok, n_vocab);
    free(before);
    free(st);
    mor_session_free(s);
    return 0;
}
