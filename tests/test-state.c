// test-state.c: session state save/load against bad input:
// - sampler settings in a state obey the rules of mor_session_set_sampler (one check for both);
// - a state saved from another model of the same shape is refused (model fingerprint), in
//   both directions, for every pair of same-shape test models; the same file loaded twice, or
//   with its tensor table reordered, is the same model;
// - format version 3 (no fingerprint) still loads; other versions do not;
// - a refused load leaves the whole observable session as it was: tokens, logits, depths,
//   telemetry, statistics, policy, sampler and RNG (the saved bytes), the budget window and
//   FREE's learned threshold (stepping afterwards equals a twin session that saw no load);
// - every truncation and byte flips of a valid state: MOR_OK or MOR_E_STATE, never a crash,
//   and the session unchanged on refusal.
#include "harness.h"
#include "mor.h"
#include "support/session.h"

// Offsets in the version 4 layout (src/state.c): eight u32 header words, the u64 model
// fingerprint, 13 policy words, the sampler (6 words + u64 seed), the u64 RNG.
#define OFF_VERSION   4
#define OFF_FP        32
#define OFF_POLICY    40
#define OFF_SAMPLER   92
#define OFF_TEMP      (OFF_SAMPLER + 0)
#define OFF_TOP_K     (OFF_SAMPLER + 4)
#define OFF_TOP_P     (OFF_SAMPLER + 8)
#define OFF_MIN_P     (OFF_SAMPLER + 12)
#define OFF_PENALTY   (OFF_SAMPLER + 16)
#define OFF_LAST_N    (OFF_SAMPLER + 20)
#define OFF_TOKENS    132

static mor_model *load(const char *file) {
    char path[512], err[256];
    mor_model *m = NULL;
    if (mor_model_load(test_path(path, sizeof path, file), NULL, &m, err, sizeof err) != MOR_OK)
        printf("# %s: %s\n", file, err);
    return m;
}

static const int32_t prompt[] = {93, 111, 58, 100, 8, 29, 84, 105, 83, 108, 21, 116, 18, 81, 95, 105};
#define NP ((int32_t)(sizeof prompt / sizeof prompt[0]))

// Prompt, then n greedy (or sampled) tokens one at a time.
static int run(mor_session *s, int32_t np, int n) {
    if (mor_session_step(s, prompt, np)) return -1;
    for (int i = 0; i < n; i++) {
        int32_t t;
        if (mor_session_sample(s, &t) || mor_session_step(s, &t, 1)) return -1;
    }
    return 0;
}

static unsigned char *save(const mor_session *s, size_t *n) {
    *n = mor_session_state_size(s);
    unsigned char *buf = malloc(*n);
    if (buf && mor_session_state_save(s, buf, *n, NULL) != MOR_OK) {
        free(buf);
        buf = NULL;
    }
    return buf;
}

static void put32(unsigned char *b, size_t off, uint32_t v) {
    for (int i = 0; i < 4; i++) b[off + (size_t)i] = (unsigned char)(v >> (8 * i));
}
static void putf(unsigned char *b, size_t off, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put32(b, off, u);
}

// ---- the observable session --------------------------------------------------------------

// Everything the API shows of a session: its saved bytes (tokens, K/V, policy, sampler, RNG,
// telemetry, stack), the last step's logits and depths, per-position telemetry, statistics.
typedef struct {
    int32_t            n_past, n_last, rolled_back;
    unsigned char     *state;
    size_t             n_state;
    float             *logits;   // [n_last][V], rows the session keeps; others NaN-free zero
    unsigned char     *has_row;  // [n_last]
    int32_t           *depth;    // [n_last]
    int32_t           *info;     // [n_past][3]: depth, score bits, kv
    mor_session_stats  st;
} snap;

static void snap_free(snap *p) {
    free(p->state);
    free(p->logits);
    free(p->has_row);
    free(p->depth);
    free(p->info);
    memset(p, 0, sizeof *p);
}

static int snap_take(const mor_session *s, int32_t V, snap *p) {
    memset(p, 0, sizeof *p);
    p->n_past = mor_session_n_past(s);
    p->n_last = mor_session_n_last(s);
    p->rolled_back = mor_session_rollback(s);
    p->state = save(s, &p->n_state);
    size_t rows = p->n_last > 0 ? (size_t)p->n_last : 1;
    p->logits = calloc(rows * (size_t)V, sizeof(float));
    p->has_row = calloc(rows, 1);
    p->depth = calloc(rows, sizeof(int32_t));
    p->info = calloc((size_t)(p->n_past > 0 ? p->n_past : 1) * 3, sizeof(int32_t));
    if (!p->state || !p->logits || !p->has_row || !p->depth || !p->info) return -1;
    for (int32_t i = 0; i < p->n_last; i++) {
        const float *l = mor_session_logits(s, i);
        if (l) memcpy(p->logits + (size_t)i * V, l, (size_t)V * sizeof(float)), p->has_row[i] = 1;
        p->depth[i] = mor_session_depth(s, i);
    }
    for (int32_t i = 0; i < p->n_past; i++) {
        float sc;
        int32_t *e = p->info + 3 * (size_t)i;
        if (mor_session_token_info(s, i, &e[0], &sc, &e[2]) != MOR_OK) return -1;
        memcpy(&e[1], &sc, 4);
    }
    memset(&p->st, 0, sizeof p->st);
    p->st.size = sizeof p->st;
    return mor_session_get_stats(s, &p->st);
}

// NULL when equal, else what differs.
static const char *snap_diff(const snap *a, const snap *b, int32_t V) {
    if (a->n_past != b->n_past) return "n_past";
    if (a->n_last != b->n_last) return "n_last";
    if (a->rolled_back != b->rolled_back) return "rollback";
    if (a->n_state != b->n_state || memcmp(a->state, b->state, a->n_state)) return "saved state bytes";
    for (int32_t i = 0; i < a->n_last; i++) {
        if (a->has_row[i] != b->has_row[i]) return "logits present";
        if (memcmp(a->logits + (size_t)i * V, b->logits + (size_t)i * V, (size_t)V * sizeof(float))) return "logits";
        if (a->depth[i] != b->depth[i]) return "depths";
    }
    if (memcmp(a->info, b->info, (size_t)a->n_past * 3 * sizeof(int32_t))) return "token info";
    if (memcmp(&a->st, &b->st, sizeof a->st)) return "stats";
    return NULL;
}

// 1 when the session shows exactly what snapshot `want` holds.
static int same_as(const mor_session *s, const snap *want, int32_t V) {
    snap now;
    int ok = snap_take(s, V, &now) == MOR_OK;
    const char *d = ok ? snap_diff(want, &now, V) : "snapshot failed";
    if (d) printf("#   session changed: %s\n", d);
    snap_free(&now);
    return d == NULL;
}

// Steps both sessions through one given token and then n sampled ones (sampled by each, RNGs
// in step) and compares everything after each token (statistics too when with_stats), then
// resets both and runs the prompt again (FREE refits its threshold from what it collected).
// 1 when they never differ.
static int same_future(mor_session *a, mor_session *b, int32_t V, int n, int with_stats) {
    snap sa, sb;
    int32_t first = 42;
    if (mor_session_step(a, &first, 1) || mor_session_step(b, &first, 1)) return printf("#   step failed\n"), 0;
    for (int i = 0; i <= n + 1; i++) {
        int32_t ta = 0, tb = 0;
        if (i == n) {
            mor_session_reset(a);
            mor_session_reset(b);
        }
        if (i < n) {
            if (mor_session_sample(a, &ta) || mor_session_sample(b, &tb)) return printf("#   sample failed\n"), 0;
            if (ta != tb) return printf("#   token %d: sampled %d and %d\n", i, ta, tb), 0;
            if (mor_session_step(a, &ta, 1) || mor_session_step(b, &tb, 1)) return printf("#   step failed\n"), 0;
        } else if (i == n + 1) {
            if (run(a, NP, 8) || run(b, NP, 8)) return printf("#   run failed\n"), 0;
        }
        if (snap_take(a, V, &sa) || snap_take(b, V, &sb)) return printf("#   snapshot failed\n"), 0;
        if (!with_stats) memset(&sa.st, 0, sizeof sa.st), memset(&sb.st, 0, sizeof sb.st);
        const char *d = snap_diff(&sa, &sb, V);
        snap_free(&sa);
        snap_free(&sb);
        if (d) return printf("#   after token %d: %s differ\n", i, d), 0;
    }
    return 1;
}

// ---- 8: sampler settings ------------------------------------------------------------------

typedef struct {
    size_t      off;
    int         is_float;
    float       f;
    int32_t     i;
    const char *field;
} bad_setting;

TEST(sampler_rules_shared_by_state_load) {
    mor_model *m = load("cycle.gguf");
    ASSERT(m);
    int32_t V = mor_model_get_int(m, MOR_INFO_N_VOCAB);
    mor_session *s = test_session(m, 64, 16, 0), *t = test_session(m, 64, 16, 0);
    ASSERT(s && t);
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    sp.temperature = 0.8f;
    sp.seed = 77;
    ASSERT_OK(mor_session_set_sampler(s, &sp));
    ASSERT_OK(mor_session_set_sampler(t, &sp));
    ASSERT_EQ(run(s, NP, 4), 0);
    ASSERT_EQ(run(t, 6, 2), 0);
    size_t n;
    unsigned char *good = save(s, &n), *bad = malloc(n);
    ASSERT(good && bad);
    const bad_setting cases[] = {
        {OFF_TEMP, 1, NAN, 0, "temperature"},       {OFF_TEMP, 1, INFINITY, 0, "temperature"},
        {OFF_TEMP, 1, -INFINITY, 0, "temperature"}, {OFF_TOP_P, 1, 2.0f, 0, "top_p"},
        {OFF_TOP_P, 1, 0.0f, 0, "top_p"},           {OFF_TOP_P, 1, -0.5f, 0, "top_p"},
        {OFF_TOP_P, 1, NAN, 0, "top_p"},            {OFF_MIN_P, 1, -1.0f, 0, "min_p"},
        {OFF_MIN_P, 1, 1.5f, 0, "min_p"},           {OFF_MIN_P, 1, NAN, 0, "min_p"},
        {OFF_PENALTY, 1, 0.0f, 0, "repeat_penalty"}, {OFF_PENALTY, 1, -2.0f, 0, "repeat_penalty"},
        {OFF_PENALTY, 1, INFINITY, 0, "repeat_penalty"}, {OFF_PENALTY, 1, NAN, 0, "repeat_penalty"},
        {OFF_LAST_N, 0, 0, -1, "repeat_last_n"},    {OFF_LAST_N, 0, 0, INT32_MIN, "repeat_last_n"},
    };
    snap before;
    ASSERT_OK(snap_take(t, V, &before));
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const bad_setting *k = &cases[c];
        // mor_session_set_sampler refuses it ...
        mor_sampler_params q = sp;
        if (k->off == OFF_TEMP) q.temperature = k->f;
        if (k->off == OFF_TOP_P) q.top_p = k->f;
        if (k->off == OFF_MIN_P) q.min_p = k->f;
        if (k->off == OFF_PENALTY) q.repeat_penalty = k->f;
        if (k->off == OFF_LAST_N) q.repeat_last_n = k->i;
        ASSERT_STATUS(mor_session_set_sampler(t, &q), MOR_E_INVALID);
        ASSERT_STR_CONTAINS(mor_session_last_error(t), k->field);
        // ... and so does a state carrying it, leaving the session as it was.
        memcpy(bad, good, n);
        if (k->is_float) putf(bad, k->off, k->f);
        else put32(bad, k->off, (uint32_t)k->i);
        ASSERT_STATUS(mor_session_state_load(t, bad, n), MOR_E_STATE);
        ASSERT_STR_CONTAINS(mor_session_last_error(t), "sampler");
        ASSERT_STR_CONTAINS(mor_session_last_error(t), k->field);
        ASSERT(same_as(t, &before, V));
    }
    // Values both accept: greedy (temperature <= 0), every top_k, the ends of the ranges.
    memcpy(bad, good, n);
    putf(bad, OFF_TEMP, -1.0f);
    put32(bad, OFF_TOP_K, (uint32_t)-5);
    putf(bad, OFF_TOP_P, 1.0f);
    putf(bad, OFF_MIN_P, 0.0f);
    put32(bad, OFF_LAST_N, 0);
    ASSERT_OK(mor_session_state_load(t, bad, n));
    // The loaded good state samples like the session it came from.
    ASSERT_OK(mor_session_state_load(t, good, n));
    int32_t tok = 7;
    for (int i = 0; i < 10; i++) {
        int32_t a, b;
        ASSERT_OK(mor_session_step(s, &tok, 1));
        ASSERT_OK(mor_session_step(t, &tok, 1));
        ASSERT_OK(mor_session_sample(s, &a));
        ASSERT_OK(mor_session_sample(t, &b));
        ASSERT_EQ(a, b);
        tok = a;
    }
    snap_free(&before);
    free(good);
    free(bad);
    mor_session_free(s);
    mor_session_free(t);
    mor_model_free(m);
}

// ---- 9: model fingerprint -----------------------------------------------------------------

static int same_shape(const mor_model *a, const mor_model *b) {
    const int keys[] = {MOR_INFO_N_VOCAB, MOR_INFO_N_EMBD, MOR_INFO_N_HEAD_KV, MOR_INFO_HEAD_DIM, MOR_INFO_N_LAYER};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (mor_model_get_int(a, keys[i]) != mor_model_get_int(b, keys[i])) return 0;
    return 1;
}

// A state of model `from` (FULL policy, KV strategy of that model) into a session of `to`.
static int cross_load(const char *from, const char *to) {
    mor_model *a = load(from), *b = load(to);
    int ok = 0;
    mor_session *sa = NULL, *sb = NULL;
    unsigned char *buf = NULL;
    snap before = {0};
    if (!a || !b) goto done;
    if (!same_shape(a, b)) {
        printf("#   %s and %s differ in shape\n", from, to);
        goto done;
    }
    int32_t V = mor_model_get_int(b, MOR_INFO_N_VOCAB);
    sa = test_session(a, 64, 16, 0), sb = test_session(b, 64, 16, 0);
    if (!sa || !sb) goto done;
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_FULL;
    if (mor_session_set_exit_policy(sa, &ep) || mor_session_set_exit_policy(sb, &ep)) goto done;
    if (run(sa, NP, 3) || run(sb, 5, 1) || snap_take(sb, V, &before)) goto done;
    size_t n;
    buf = save(sa, &n);
    if (!buf) goto done;
    int st = mor_session_state_load(sb, buf, n);
    if (st != MOR_E_STATE) {
        printf("#   %s -> %s: status %s\n", from, to, mor_status_name(st));
        goto done;
    }
    if (!strstr(mor_session_last_error(sb), "different model")) {
        printf("#   %s -> %s: message \"%s\"\n", from, to, mor_session_last_error(sb));
        goto done;
    }
    ok = same_as(sb, &before, V);
done:
    snap_free(&before);
    free(buf);
    mor_session_free(sa);
    mor_session_free(sb);
    mor_model_free(a);
    mor_model_free(b);
    return ok;
}

TEST(state_of_another_model_is_refused) {
    // Pairs of test models with the same shape (layers, K/V width, vocabulary, width) that
    // differ in sharing, tied output, KV sharing, RoPE, tensor types, overrides, router.
    static const char *pairs[][2] = {
        {"cycle.gguf", "sequence.gguf"},
        {"vanilla.gguf", "vanilla-tied.gguf"},
        {"middle_cycle.gguf", "middle_sequence.gguf"},
        {"middle_cycle.gguf", "middle_cycle-kvshare.gguf"},
        {"middle_cycle.gguf", "middle_cycle-norm.gguf"},
        {"middle_cycle.gguf", "middle_cycle-f16.gguf"},
        {"middle_cycle-f16.gguf", "middle_cycle-bf16.gguf"},
        {"middle_cycle.gguf", "middle_cycle-untied.gguf"},
        {"middle_cycle.gguf", "middle_cycle-lora.gguf"},
        {"middle_cycle-lora.gguf", "middle_sequence-lora.gguf"},
        {"cycle-lora.gguf", "sequence-lora.gguf"},
        {"middle_cycle.gguf", "expert.gguf"},
        {"middle_cycle.gguf", "token.gguf"},
        {"token.gguf", "token-recenc.gguf"},  // recursion encodings (and F16 matrices)
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
        if (!cross_load(pairs[i][0], pairs[i][1])) TEST__FAIL("%s -> %s not refused", pairs[i][0], pairs[i][1]);
        if (!cross_load(pairs[i][1], pairs[i][0])) TEST__FAIL("%s -> %s not refused", pairs[i][1], pairs[i][0]);
    }
}

TEST(same_model_file_loads_anywhere) {
    // Two loads of one file (mapped, and read into memory) are the same model.
    char path[512], err[256];
    mor_model *a = load("middle_cycle.gguf"), *b = NULL;
    ASSERT(a);
    mor_model_params mp;
    mor_model_params_init(&mp);
    mp.flags = MOR_MODEL_NO_MMAP;
    ASSERT_OK(mor_model_load(test_path(path, sizeof path, "middle_cycle.gguf"), &mp, &b, err, sizeof err));
    mor_session *sa = test_session(a, 64, 16, 0), *sb = test_session(b, 64, 16, 0);
    ASSERT(sa && sb);
    ASSERT_EQ(run(sa, NP, 4), 0);
    size_t n;
    unsigned char *buf = save(sa, &n);
    ASSERT(buf);
    ASSERT_OK(mor_session_state_load(sb, buf, n));
    int32_t t = 3;
    ASSERT_OK(mor_session_step(sa, &t, 1));
    ASSERT_OK(mor_session_step(sb, &t, 1));
    ASSERT(memcmp(mor_session_logits(sa, -1), mor_session_logits(sb, -1),
                  (size_t)mor_model_get_int(a, MOR_INFO_N_VOCAB) * sizeof(float)) == 0);
    // The fingerprint is part of the saved bytes: a changed one is a different model.
    buf[OFF_FP] ^= 0x40;
    ASSERT_STATUS(mor_session_state_load(sb, buf, n), MOR_E_STATE);
    ASSERT_STR_CONTAINS(mor_session_last_error(sb), "different model");
    free(buf);
    mor_session_free(sa);
    mor_session_free(sb);
    mor_model_free(a);
    mor_model_free(b);
}

// ---- a GGUF image with its tensor table in reverse order ----------------------------------

static uint64_t rd(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

// Skips one GGUF value of type t at *off (bounds-checked); 0 on failure.
static int skip_value(const unsigned char *b, size_t n, size_t *off, uint32_t t, int depth) {
    static const int fixed[13] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (t > 12) return 0;
    if (t == 8) {  // string
        if (n - *off < 8) return 0;
        uint64_t len = rd(b + *off, 8);
        if (len > n - *off - 8) return 0;
        *off += 8 + (size_t)len;
        return 1;
    }
    if (t == 9) {  // array: element type, count, elements
        if (depth > 0 || n - *off < 12) return 0;
        uint32_t et = (uint32_t)rd(b + *off, 4);
        uint64_t cnt = rd(b + *off + 4, 8);
        *off += 12;
        for (uint64_t i = 0; i < cnt; i++)
            if (!skip_value(b, n, off, et, depth + 1)) return 0;
        return 1;
    }
    if (n - *off < (size_t)fixed[t]) return 0;
    *off += (size_t)fixed[t];
    return 1;
}

// A copy of the GGUF image `b` whose tensor info records are in reverse order (the tensor
// data stays where it is: the records keep their offsets, and the section keeps its size).
static unsigned char *reverse_tensor_table(const unsigned char *b, size_t n) {
    if (n < 24 || memcmp(b, "GGUF", 4)) return NULL;
    uint64_t n_t = rd(b + 8, 8), n_kv = rd(b + 16, 8);
    size_t off = 24;
    for (uint64_t i = 0; i < n_kv; i++) {
        if (!skip_value(b, n, &off, 8, 0) || n - off < 4) return NULL;  // key, then type
        uint32_t t = (uint32_t)rd(b + off, 4);
        off += 4;
        if (!skip_value(b, n, &off, t, 0)) return NULL;
    }
    size_t start = off, *rec = malloc((size_t)(n_t + 1) * sizeof(size_t));
    unsigned char *out = malloc(n);
    if (!rec || !out) return free(rec), free(out), NULL;
    for (uint64_t i = 0; i < n_t; i++) {
        rec[i] = off;
        if (!skip_value(b, n, &off, 8, 0) || n - off < 4) return free(rec), free(out), NULL;
        uint32_t nd = (uint32_t)rd(b + off, 4);
        if (nd > 4 || n - off < 4 + 8 * (size_t)nd + 12) return free(rec), free(out), NULL;
        off += 4 + 8 * (size_t)nd + 12;  // n_dims, dims, type, offset
    }
    rec[n_t] = off;
    memcpy(out, b, n);
    size_t w = start;
    for (uint64_t i = n_t; i-- > 0;) {
        memcpy(out + w, b + rec[i], rec[i + 1] - rec[i]);
        w += rec[i + 1] - rec[i];
    }
    free(rec);
    return out;
}

static unsigned char *read_file(const char *file, size_t *n) {
    char path[512];
    FILE *f = fopen(test_path(path, sizeof path, file), "rb");
    if (!f) return NULL;
    unsigned char *b = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long sz = ftell(f);
        if (sz > 0 && fseek(f, 0, SEEK_SET) == 0 && (b = malloc((size_t)sz)) && fread(b, 1, (size_t)sz, f) != (size_t)sz)
            free(b), b = NULL;
        *n = (size_t)sz;
    }
    fclose(f);
    return b;
}

TEST(tensor_order_does_not_matter) {
    // The same model with its tensor table written in the opposite order is the same model.
    size_t n;
    unsigned char *img = read_file("middle_cycle-lora.gguf", &n), *rev = img ? reverse_tensor_table(img, n) : NULL;
    ASSERT(rev);
    ASSERT(memcmp(img, rev, n) != 0);
    mor_model *a = NULL, *b = NULL;
    char err[256];
    ASSERT_OK(mor_model_load_memory(img, n, NULL, &a, err, sizeof err));
    ASSERT_OK(mor_model_load_memory(rev, n, NULL, &b, err, sizeof err));
    int32_t V = mor_model_get_int(a, MOR_INFO_N_VOCAB);
    mor_session *sa = test_session(a, 64, 16, 0), *sb = test_session(b, 64, 16, 0);
    ASSERT(sa && sb);
    ASSERT_EQ(run(sa, NP, 3), 0);
    size_t ns;
    unsigned char *st = save(sa, &ns);
    ASSERT(st);
    ASSERT_OK(mor_session_state_load(sb, st, ns));
    ASSERT(same_future(sa, sb, V, 4, 0));
    free(st);
    mor_session_free(sa);
    mor_session_free(sb);
    mor_model_free(a);
    mor_model_free(b);
    free(img);
    free(rev);
}

// Version 3 is version 4 without the fingerprint.
static unsigned char *to_v3(const unsigned char *v4, size_t n, size_t *n3) {
    unsigned char *b = malloc(n - 8);
    if (!b) return NULL;
    memcpy(b, v4, OFF_FP);
    memcpy(b + OFF_FP, v4 + OFF_FP + 8, n - OFF_FP - 8);
    put32(b, OFF_VERSION, 3);
    *n3 = n - 8;
    return b;
}

TEST(version_3_still_loads) {
    mor_model *m = load("middle_cycle.gguf"), *other = load("middle_sequence.gguf");
    ASSERT(m && other);
    int32_t V = mor_model_get_int(m, MOR_INFO_N_VOCAB);
    mor_session *a = test_session(m, 64, 16, 0), *b = test_session(m, 64, 16, 0), *c = test_session(other, 64, 16, 0);
    ASSERT(a && b && c);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_FIXED;
    ep.depth = 2;
    ASSERT_OK(mor_session_set_exit_policy(a, &ep));
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    sp.temperature = 0.7f;
    ASSERT_OK(mor_session_set_sampler(a, &sp));
    ASSERT_EQ(run(a, NP, 5), 0);
    size_t n, n3;
    unsigned char *v4 = save(a, &n), *v3 = v4 ? to_v3(v4, n, &n3) : NULL;
    ASSERT(v3);
    ASSERT_EQ(v4[OFF_VERSION], 4);
    // Same model: restored exactly (the saved bytes equal after the load).
    ASSERT_OK(mor_session_state_load(b, v3, n3));
    size_t nb;
    unsigned char *again = save(b, &nb);
    ASSERT(again && nb == n && memcmp(again, v4, n) == 0);
    free(again);
    ASSERT(same_future(a, b, V, 6, 0));  // b's statistics start at the load
    // A version 3 state carries no fingerprint: only the shape is checked (documented).
    ASSERT_OK(mor_session_state_load(c, v3, n3));
    ASSERT_STATUS(mor_session_state_load(c, v4, n), MOR_E_STATE);
    // Other versions are refused.
    const uint32_t vers[] = {0, 1, 2, 5, 0xffffffffu};
    for (size_t i = 0; i < sizeof vers / sizeof vers[0]; i++) {
        put32(v4, OFF_VERSION, vers[i]);
        ASSERT_STATUS(mor_session_state_load(b, v4, n), MOR_E_STATE);
        ASSERT_STR_CONTAINS(mor_session_last_error(b), "version");
    }
    free(v4);
    free(v3);
    mor_session_free(a);
    mor_session_free(b);
    mor_session_free(c);
    mor_model_free(m);
    mor_model_free(other);
}

// ---- 10: a refused load changes nothing ---------------------------------------------------

// States the loads below refuse: valid up to a late point (the policy and sampler pass), then
// wrong. `src` holds a policy unlike the target's (another FREE threshold, a budget).
static int refuse_all(mor_session *s, const mor_session *src, int32_t V) {
    size_t n;
    unsigned char *good = save(src, &n), *b = good ? malloc(n + 4) : NULL;
    if (!b) return free(good), 0;
    snap before;
    int ok = snap_take(s, V, &before) == MOR_OK;
    for (int k = 0; ok && k < 5; k++) {
        size_t len = n;
        memcpy(b, good, n);
        switch (k) {
        case 0: len = n - 1; break;                          // last slot truncated
        case 1: b[n] = 0, len = n + 1; break;                // a trailing byte
        case 2: put32(b, OFF_TOKENS, (uint32_t)V); break;    // token outside the vocabulary
        case 3: len = OFF_TOKENS + 4; break;                 // token list truncated
        case 4: putf(b, OFF_TEMP, NAN); break;               // sampler (after the policy)
        }
        int st = mor_session_state_load(s, b, len);
        if (st != MOR_E_STATE) printf("#   refusal %d: status %s\n", k, mor_status_name(st)), ok = 0;
        else if (!same_as(s, &before, V)) printf("#   refusal %d (%s) changed the session\n", k, mor_session_last_error(s)), ok = 0;
    }
    snap_free(&before);
    free(good);
    free(b);
    return ok;
}

static int set_policy(mor_session *s, int policy, float thr, int adaptive, float budget, int32_t window) {
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = policy;
    ep.threshold = thr;
    ep.adaptive = adaptive;
    ep.budget = budget;
    ep.budget_window = window;
    int st = mor_session_set_exit_policy(s, &ep);
    if (st) printf("# policy: %s\n", mor_session_last_error(s));
    return st;
}

TEST(refused_load_changes_nothing_free) {
    // FREE with the learned threshold: pairs collected, a refit at reset, a live sequence with
    // a stack of exited tokens. b is a's twin that sees no load.
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    int32_t V = mor_model_get_int(m, MOR_INFO_N_VOCAB);
    mor_session *a = test_session(m, 128, 16, 0), *b = test_session(m, 128, 16, 0), *src = test_session(m, 128, 16, 0);
    ASSERT(a && b && src);
    ASSERT_OK(set_policy(a, MOR_EXIT_FREE, 0.05f, 1, 0, 0));
    ASSERT_OK(set_policy(b, MOR_EXIT_FREE, 0.05f, 1, 0, 0));
    ASSERT_OK(set_policy(src, MOR_EXIT_FREE, 0.37f, 0, 0, 0));
    ASSERT_EQ(run(src, NP, 4), 0);
    for (int pass = 0; pass < 2; pass++) {
        mor_session_reset(a);
        mor_session_reset(b);
        ASSERT_EQ(run(a, NP, 24), 0);
        ASSERT_EQ(run(b, NP, 24), 0);
    }
    mor_session_stats st;
    memset(&st, 0, sizeof st);
    st.size = sizeof st;
    ASSERT_OK(mor_session_get_stats(a, &st));
    printf("# FREE learned threshold %.3f, %lld deep passes\n", st.threshold, (long long)st.deep_passes);
    ASSERT(refuse_all(a, src, V));
    ASSERT(same_future(a, b, V, 20, 1));
    mor_session_free(a);
    mor_session_free(b);
    mor_session_free(src);
    mor_model_free(m);
}

TEST(refused_load_changes_nothing_budget) {
    // A depth budget over a window of 8 tokens: the window's contents decide the next caps.
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    int32_t V = mor_model_get_int(m, MOR_INFO_N_VOCAB);
    mor_session *a = test_session(m, 128, 16, 0), *b = test_session(m, 128, 16, 0), *src = test_session(m, 128, 16, 0);
    ASSERT(a && b && src);
    ASSERT_OK(set_policy(a, MOR_EXIT_FULL, 0.5f, 0, 1.5f, 8));
    ASSERT_OK(set_policy(b, MOR_EXIT_FULL, 0.5f, 0, 1.5f, 8));
    ASSERT_OK(set_policy(src, MOR_EXIT_FULL, 0.5f, 0, 2.5f, 5));
    ASSERT_EQ(run(src, NP, 4), 0);
    ASSERT_EQ(run(a, NP, 11), 0);
    ASSERT_EQ(run(b, NP, 11), 0);
    ASSERT(refuse_all(a, src, V));
    ASSERT(same_future(a, b, V, 12, 1));
    mor_session_free(a);
    mor_session_free(b);
    mor_session_free(src);
    mor_model_free(m);
}

// ---- corrupt states ------------------------------------------------------------------------

// Loads truncations and byte flips of a good state into `t`: each is MOR_OK or MOR_E_STATE; a
// refusal leaves t as it was; an accepted one can be stepped (sanitizers watch), then t is
// restored from the good state. Every length and every byte of the first 2048 bytes (header,
// policy, sampler, tokens, telemetry, stack), then one in `stride`. Returns the failures.
static int corrupt_all(mor_session *t, const unsigned char *good, size_t n, int32_t V, size_t stride,
                       int *n_ok, int *n_refused) {
    int fails = 0;
    unsigned char *b = malloc(n);
    snap want;
    if (!b || mor_session_state_load(t, good, n) != MOR_OK || snap_take(t, V, &want)) return free(b), 1;
    for (size_t len = 0; len < n && fails < 5; len += len < 2048 ? 1 : stride) {
        int st = mor_session_state_load(t, good, len);
        if (st != MOR_E_STATE) printf("#   truncated to %zu: %s\n", len, mor_status_name(st)), fails++;
        else if (!same_as(t, &want, V)) printf("#   truncated to %zu: session changed\n", len), fails++;
        (*n_refused)++;
    }
    static const unsigned char flips[] = {0x01, 0x80, 0xff};
    for (size_t i = 0; i < n && fails < 5; i += i < 2048 ? 1 : stride) {
        for (size_t f = 0; f < sizeof flips && fails < 5; f++) {
            if (i >= 256 && f != 2) continue;  // past header, policy and sampler: one flip per byte
            memcpy(b, good, n);
            b[i] ^= flips[f];
            int st = mor_session_state_load(t, b, n);
            if (st == MOR_E_STATE) {
                (*n_refused)++;
                if (!same_as(t, &want, V)) printf("#   byte %zu ^ %02x: session changed\n", i, flips[f]), fails++;
                continue;
            }
            if (st != MOR_OK) {
                printf("#   byte %zu ^ %02x: %s\n", i, flips[f], mor_status_name(st));
                fails++;
                continue;
            }
            // Step it: every time the header, policy or sampler changed, else one in four (the
            // rest is mostly floats: stacked states, K/V).
            int32_t tok = 1, out;
            if ((i < 256 || *n_ok % 4 == 0) && mor_session_step(t, &tok, 1) == MOR_OK) mor_session_sample(t, &out);
            (*n_ok)++;
            snap_free(&want);
            if (mor_session_state_load(t, good, n) != MOR_OK || snap_take(t, V, &want)) {
                fails++;
                break;
            }
        }
    }
    snap_free(&want);
    free(b);
    return fails;
}

TEST(corrupt_states) {
    mor_model *m = load("middle_cycle.gguf");
    ASSERT(m);
    int32_t V = mor_model_get_int(m, MOR_INFO_N_VOCAB);
    // FREE with a stack of exited tokens (KV_SYNC), a sampler, the learned threshold; an F16
    // session for the packed K/V format.
    for (int f16 = 0; f16 < 2; f16++) {
        uint32_t flags = f16 ? MOR_SESSION_KV_F16 : 0;
        mor_session *s = test_session(m, 48, 8, flags), *t = test_session(m, 48, 8, flags);
        ASSERT(s && t);
        ASSERT_OK(set_policy(s, MOR_EXIT_FREE, 0.05f, 1, 0, 0));
        mor_sampler_params sp;
        mor_sampler_params_init(&sp);
        sp.temperature = 0.9f;
        sp.repeat_penalty = 1.1f;
        ASSERT_OK(mor_session_set_sampler(s, &sp));
        ASSERT_EQ(run(s, 6, 6), 0);
        size_t n;
        unsigned char *good = save(s, &n);
        ASSERT(good);
        int n_ok = 0, n_refused = 0;
        int fails = corrupt_all(t, good, n, V, 53, &n_ok, &n_refused);
        printf("# %s K/V: state of %zu bytes, %d corrupt loads refused, %d accepted\n", f16 ? "F16" : "F32", n,
               n_refused, n_ok);
        ASSERT_EQ(fails, 0);
        free(good);
        mor_session_free(s);
        mor_session_free(t);
    }
    mor_model_free(m);
}

// A state of a model with relaxations continues exactly: they hold nothing per token (DoRA
// scales and prompt keys are the model's), so a restored session computes what the saved one
// computes, logit for logit.
TEST(relaxation_models_resume) {
    static const char *files[] = {"cycle-adapt.gguf", "middle_cycle-dora.gguf", "token-recenc.gguf"};
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        mor_model *m = load(files[f]);
        ASSERT(m);
        int32_t V = (int32_t)mor_model_get_int(m, MOR_INFO_N_VOCAB);
        mor_session *s = test_session(m, 64, 16, 0), *t = test_session(m, 64, 16, 0);
        ASSERT(s && t);
        ASSERT_EQ(run(s, NP, 5), 0);
        size_t n;
        unsigned char *buf = save(s, &n);
        ASSERT(buf);
        ASSERT_OK(mor_session_state_load(t, buf, n));
        for (int i = 0; i < 8; i++) {  // the saved session's greedy tokens, fed to both
            int32_t a;
            ASSERT_OK(mor_session_sample(s, &a));
            ASSERT_OK(mor_session_step(s, &a, 1));
            ASSERT_OK(mor_session_step(t, &a, 1));
            ASSERT(memcmp(mor_session_logits(s, -1), mor_session_logits(t, -1), (size_t)V * sizeof(float)) == 0);
            ASSERT_EQ(mor_session_depth(s, -1), mor_session_depth(t, -1));
        }
        free(buf);
        mor_session_free(s);
        mor_session_free(t);
        mor_model_free(m);
    }
}

static const test_entry tests_[] = {TEST_LIST(sampler_rules_shared_by_state_load, state_of_another_model_is_refused,
                                              same_model_file_loads_anywhere, tensor_order_does_not_matter, version_3_still_loads,
                                              refused_load_changes_nothing_free, refused_load_changes_nothing_budget,
                                              corrupt_states, relaxation_models_resume)};
TEST_MAIN_LIST(tests_)
