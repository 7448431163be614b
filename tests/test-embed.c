// test-embed.c: what a host embedding the library needs around one session: an abort callback
// that bounds and cancels a step (and resuming gives the same logits, bit for bit), constrained
// sampling (logit bias, allowed-token set), the debug log messages for load, session create
// and policy changes, and stop strings over the streaming detokenizer (mor_stop_*).
#include "harness.h"
#include "mor.h"
#include "support/session.h"

static mor_model *load_model(const char *name) {
    char path[512], err[256];
    mor_model *m = NULL;
    if (mor_model_load(test_path(path, sizeof path, name), NULL, &m, err, sizeof err) != MOR_OK) {
        printf("# load failed: %s\n", err);
        return NULL;
    }
    return m;
}

// A 40-token prompt of ordinary ids (stories260K has 512 tokens).
#define NP 40
static void make_prompt(int32_t *p) {
    p[0] = 1;
    for (int i = 1; i < NP; i++) p[i] = 260 + (i * 37) % 240;
}

// ---- abort callback ------------------------------------------------------------------------

typedef struct {
    int32_t stop_done;   // stop at layer `stop_layer` once n_done >= stop_done (-1: never)
    int32_t stop_layer;
    int     calls;
    int32_t last_done, last_total, last_layer, n_layer;
    mor_session *s;      // when set: try to change the session from the callback
    int     busy_status;
} abort_ctl;

static int32_t on_abort(void *user, int32_t n_done, int32_t n_total, int32_t layer, int32_t n_layer) {
    abort_ctl *c = user;
    c->calls++;
    c->last_done = n_done, c->last_total = n_total, c->last_layer = layer, c->n_layer = n_layer;
    if (c->s) c->busy_status = mor_session_rewind(c->s, 0);
    return c->stop_done >= 0 && n_done >= c->stop_done && layer == c->stop_layer;
}

// The logits of the last prompt token stepped in one uncancelled call.
static int reference_logits(mor_model *m, const int32_t *prompt, int32_t n_batch, float *out, int V) {
    mor_session *s = test_session(m, 128, n_batch, 0);
    if (!s || mor_session_step(s, prompt, NP) != MOR_OK) return -1;
    memcpy(out, mor_session_logits(s, -1), (size_t)V * sizeof(float));
    mor_session_free(s);
    return 0;
}

// Cancel after the first chunk (at the start of the second pass, and in the middle of it),
// resume, and get exactly the logits of an uncancelled step.
TEST(abort_after_first_chunk_resume_bit_identical) {
    mor_model *m = load_model("stories260K.gguf");
    ASSERT(m);
    const int V = (int)mor_model_n_vocab(m);
    int32_t prompt[NP];
    make_prompt(prompt);
    float *ref = malloc((size_t)V * sizeof(float));
    ASSERT(ref);
    ASSERT_EQ(reference_logits(m, prompt, 8, ref, V), 0);
    for (int layer = 0; layer <= 2; layer += 2) {  // between passes; between layers of a pass
        mor_session *s = test_session(m, 128, 8, 0);
        ASSERT(s);
        abort_ctl c = {.stop_done = 8, .stop_layer = layer};
        ASSERT_OK(mor_session_set_abort(s, on_abort, &c));
        ASSERT_STATUS(mor_session_step(s, prompt, NP), MOR_E_CANCELLED);
        ASSERT_STR_CONTAINS(mor_session_last_error(s), "after 8 of 40 tokens");
        ASSERT_EQ(c.last_done, 8);
        ASSERT_EQ(c.last_total, NP);
        ASSERT_EQ(c.last_layer, layer);
        ASSERT_EQ(c.n_layer, 5);
        // As if the first 8 tokens had been stepped: n_past, n_last, logits of token 7.
        ASSERT_EQ(mor_session_n_past(s), 8);
        ASSERT_EQ(mor_session_n_last(s), 8);
        ASSERT(mor_session_logits(s, -1) != NULL);
        ASSERT(mor_session_depth(s, 7) == 1);
        mor_session *t = test_session(m, 128, 8, 0);
        ASSERT(t);
        ASSERT_OK(mor_session_step(t, prompt, 8));
        ASSERT(memcmp(mor_session_logits(t, -1), mor_session_logits(s, -1), (size_t)V * sizeof(float)) == 0);
        mor_session_free(t);
        int32_t tok;
        ASSERT_OK(mor_session_token_at(s, 7, &tok));
        ASSERT_EQ(tok, prompt[7]);
        ASSERT_STATUS(mor_session_token_at(s, 8, &tok), MOR_E_INVALID);
        // Resume with the rest.
        c.stop_done = -1;
        ASSERT_OK(mor_session_step(s, prompt + 8, NP - 8));
        ASSERT_EQ(mor_session_n_past(s), NP);
        ASSERT(memcmp(mor_session_logits(s, -1), ref, (size_t)V * sizeof(float)) == 0);
        // Generation afterwards matches too (the callback keeps being called, harmlessly).
        int calls = c.calls;
        int32_t next;
        ASSERT_OK(mor_session_sample(s, &next));
        ASSERT_OK(mor_session_step(s, &next, 1));
        ASSERT_EQ(c.calls, calls + 5);  // one call per layer of the one pass
        mor_session_free(s);
    }
    free(ref);
    mor_model_free(m);
}

// A callback that stops at once: nothing changes, the previous step's logits stay.
TEST(abort_immediately) {
    mor_model *m = load_model("stories260K.gguf");
    ASSERT(m);
    const int V = (int)mor_model_n_vocab(m);
    int32_t prompt[NP];
    make_prompt(prompt);
    mor_session *s = test_session(m, 128, 16, 0);
    ASSERT(s);
    ASSERT_OK(mor_session_step(s, prompt, 4));
    float *before = malloc((size_t)V * sizeof(float));
    ASSERT(before);
    memcpy(before, mor_session_logits(s, -1), (size_t)V * sizeof(float));
    size_t sz = mor_session_state_size(s);
    abort_ctl c = {.stop_done = 0, .stop_layer = 0};
    ASSERT_OK(mor_session_set_abort(s, on_abort, &c));
    ASSERT_STATUS(mor_session_step(s, prompt + 4, NP - 4), MOR_E_CANCELLED);
    ASSERT_EQ(c.calls, 1);
    ASSERT_EQ(c.last_done, 0);
    ASSERT_EQ(mor_session_n_past(s), 4);
    ASSERT_EQ(mor_session_n_last(s), 4);
    ASSERT(mor_session_logits(s, -1) && memcmp(mor_session_logits(s, -1), before, (size_t)V * sizeof(float)) == 0);
    ASSERT_EQ(mor_session_state_size(s), sz);
    // Stopped in the middle of the first pass: the pass is dropped, the K/V with it.
    c = (abort_ctl){.stop_done = 0, .stop_layer = 3};
    ASSERT_STATUS(mor_session_step(s, prompt + 4, NP - 4), MOR_E_CANCELLED);
    ASSERT_EQ(mor_session_n_past(s), 4);
    ASSERT_EQ(mor_session_state_size(s), sz);
    ASSERT(memcmp(mor_session_logits(s, -1), before, (size_t)V * sizeof(float)) == 0);
    // The callback cannot change the session (MOR_E_BUSY); removing it lets the step run.
    c = (abort_ctl){.stop_done = -1, .s = s};
    ASSERT_OK(mor_session_step(s, prompt + 4, 1));
    ASSERT_STATUS(c.busy_status, MOR_E_BUSY);
    ASSERT_OK(mor_session_set_abort(s, NULL, NULL));
    ASSERT_OK(mor_session_step(s, prompt + 5, NP - 5));
    ASSERT_EQ(mor_session_n_past(s), NP);
    free(before);
    mor_session_free(s);
    mor_model_free(m);
}

// A budget of K tokens per call: a 40-token prompt in 5 calls of 8, same logits.
static int32_t budget8(void *user, int32_t n_done, int32_t n_total, int32_t layer, int32_t n_layer) {
    (void)user, (void)n_total, (void)n_layer;
    return n_done >= 8 && layer == 0;
}

TEST(abort_budget_per_call) {
    mor_model *m = load_model("stories260K.gguf");
    ASSERT(m);
    const int V = (int)mor_model_n_vocab(m);
    int32_t prompt[NP];
    make_prompt(prompt);
    float *ref = malloc((size_t)V * sizeof(float));
    ASSERT(ref);
    ASSERT_EQ(reference_logits(m, prompt, 8, ref, V), 0);
    mor_session *s = test_session(m, 128, 8, 0);
    ASSERT(s);
    ASSERT_OK(mor_session_set_abort(s, budget8, NULL));
    int calls = 0, st;
    do {
        int32_t done = mor_session_n_past(s);
        st = mor_session_step(s, prompt + done, NP - done);
        calls++;
        ASSERT(st == MOR_OK || st == MOR_E_CANCELLED);
    } while (st == MOR_E_CANCELLED && calls < 10);
    ASSERT_EQ(calls, 5);
    ASSERT_EQ(mor_session_n_past(s), NP);
    ASSERT(memcmp(mor_session_logits(s, -1), ref, (size_t)V * sizeof(float)) == 0);
    free(ref);
    mor_session_free(s);
    mor_model_free(m);
}

// Freeing the session from its abort callback: the step stops and frees it.
static int32_t free_me(void *user, int32_t n_done, int32_t n_total, int32_t layer, int32_t n_layer) {
    (void)n_done, (void)n_total, (void)layer, (void)n_layer;
    mor_session_free(user);
    return 0;
}

TEST(abort_bad_arguments_and_free) {
    mor_model *m = load_model("stories260K.gguf");
    ASSERT(m);
    ASSERT_STATUS(mor_session_set_abort(NULL, on_abort, NULL), MOR_E_INVALID);
    mor_session *s = test_session(m, 64, 8, 0);
    ASSERT(s);
    ASSERT_OK(mor_session_set_abort(s, free_me, s));
    int32_t prompt[NP];
    make_prompt(prompt);
    ASSERT_STATUS(mor_session_step(s, prompt, 20), MOR_E_CANCELLED);  // s is gone now
    mor_model_free(m);
}

// ---- constrained sampling ------------------------------------------------------------------

TEST(allowed_set_greedy_and_random) {
    mor_model *m = load_model("stories260K.gguf");
    ASSERT(m);
    int32_t prompt[NP];
    make_prompt(prompt);
    mor_session *s = test_session(m, 256, 16, 0);
    ASSERT(s);
    const int32_t allowed[] = {300, 301, 450, 7};
    ASSERT_OK(mor_session_set_allowed_tokens(s, allowed, 4));
    ASSERT_OK(mor_session_step(s, prompt, NP));
    // Greedy: the allowed id with the largest logit.
    const float *l = mor_session_logits(s, -1);
    int32_t best = allowed[0];
    for (int i = 1; i < 4; i++)
        if (l[allowed[i]] > l[best]) best = allowed[i];
    int32_t tok;
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT_EQ(tok, best);
    // Random sampling at a high temperature: only allowed ids, and more than one of them.
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    sp.temperature = 5.0f;
    sp.top_k = 0;
    sp.top_p = 1.0f;
    sp.min_p = 0.0f;
    ASSERT_OK(mor_session_set_sampler(s, &sp));
    int seen[4] = {0};
    for (int i = 0; i < 200; i++) {
        ASSERT_OK(mor_session_sample(s, &tok));
        int k = -1;
        for (int j = 0; j < 4; j++)
            if (tok == allowed[j]) k = j;
        ASSERT(k >= 0);
        seen[k] = 1;
    }
    ASSERT(seen[0] + seen[1] + seen[2] + seen[3] >= 2);
    // Steps between samples (a generation loop) keep the constraint.
    for (int i = 0; i < 10; i++) {
        ASSERT_OK(mor_session_sample(s, &tok));
        ASSERT(tok == 300 || tok == 301 || tok == 450 || tok == 7);
        ASSERT_OK(mor_session_step(s, &tok, 1));
    }
    // Clearing it allows every token again; the logits themselves were never changed.
    ASSERT_OK(mor_session_set_allowed_tokens(s, NULL, 0));
    ASSERT_OK(mor_session_set_sampler(s, NULL));
    l = mor_session_logits(s, -1);
    int32_t am = 0;
    for (int i = 1; i < 512; i++)
        if (l[i] > l[am]) am = i;
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT_EQ(tok, am);
    mor_session_free(s);
    mor_model_free(m);
}

TEST(logit_bias) {
    mor_model *m = load_model("stories260K.gguf");
    ASSERT(m);
    int32_t prompt[NP];
    make_prompt(prompt);
    mor_session *s = test_session(m, 128, 16, 0);
    ASSERT(s);
    ASSERT_OK(mor_session_step(s, prompt, NP));
    int32_t top, tok;
    ASSERT_OK(mor_session_sample(s, &top));
    // -inf bans the greedy choice: the second best comes.
    const float *l = mor_session_logits(s, -1);
    int32_t second = top == 0 ? 1 : 0;
    for (int i = 0; i < 512; i++)
        if (i != top && l[i] > l[second]) second = i;
    const int32_t ban[] = {top};
    const float minf[] = {-INFINITY};
    ASSERT_OK(mor_session_set_logit_bias(s, ban, minf, 1));
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT_EQ(tok, second);
    // Random sampling never draws the banned token.
    mor_sampler_params sp;
    mor_sampler_params_init(&sp);
    sp.temperature = 3.0f, sp.top_k = 0, sp.top_p = 1.0f, sp.min_p = 0.0f;
    ASSERT_OK(mor_session_set_sampler(s, &sp));
    for (int i = 0; i < 300; i++) {
        ASSERT_OK(mor_session_sample(s, &tok));
        ASSERT_NE(tok, top);
    }
    ASSERT_OK(mor_session_set_sampler(s, NULL));
    // A large positive bias makes a token the greedy choice; an id given twice adds up.
    const int32_t push[] = {42, 42};
    const float plus[] = {500.0f, 500.0f};
    ASSERT_OK(mor_session_set_logit_bias(s, push, plus, 2));
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT_EQ(tok, 42);
    // Bias and allowed set together: every allowed token banned is an error, not a pick.
    const float minf2[] = {-INFINITY, -INFINITY};
    const int32_t two[] = {42, 43};
    ASSERT_OK(mor_session_set_logit_bias(s, two, minf2, 2));
    ASSERT_OK(mor_session_set_allowed_tokens(s, two, 2));
    ASSERT_STATUS(mor_session_sample(s, &tok), MOR_E_INVALID);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "every token is excluded");
    ASSERT_OK(mor_session_set_logit_bias(s, NULL, NULL, 0));  // bias cleared: 42 or 43
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT(tok == 42 || tok == 43);
    mor_session_free(s);
    mor_model_free(m);
}

TEST(constraint_errors) {
    mor_model *m = load_model("stories260K.gguf");
    ASSERT(m);
    mor_session *s = test_session(m, 64, 8, 0);
    ASSERT(s);
    const int32_t bad[] = {5, 512};
    const float b2[] = {1.0f, 1.0f};
    ASSERT_STATUS(mor_session_set_allowed_tokens(s, bad, 2), MOR_E_TOKEN);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "token 512 at index 1");
    ASSERT_STATUS(mor_session_set_logit_bias(s, bad, b2, 2), MOR_E_TOKEN);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "token 512 at index 1");
    const int32_t neg[] = {-3};
    ASSERT_STATUS(mor_session_set_allowed_tokens(s, neg, 1), MOR_E_TOKEN);
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "token -3");
    const int32_t one[] = {5};
    ASSERT_STATUS(mor_session_set_allowed_tokens(s, one, 0), MOR_E_INVALID);  // empty set
    ASSERT_STR_CONTAINS(mor_session_last_error(s), "at least one");
    ASSERT_STATUS(mor_session_set_allowed_tokens(s, NULL, 3), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_set_allowed_tokens(s, one, -1), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_set_allowed_tokens(NULL, one, 1), MOR_E_INVALID);
    const float nan1[] = {NAN}, pinf[] = {INFINITY};
    ASSERT_STATUS(mor_session_set_logit_bias(s, one, nan1, 1), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_set_logit_bias(s, one, pinf, 1), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_set_logit_bias(s, NULL, b2, 1), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_set_logit_bias(s, one, b2, -1), MOR_E_INVALID);
    ASSERT_STATUS(mor_session_set_logit_bias(NULL, one, b2, 1), MOR_E_INVALID);
    // A refused call changed nothing: greedy is as without constraints.
    int32_t prompt[NP];
    make_prompt(prompt);
    ASSERT_OK(mor_session_step(s, prompt, 8));
    const float *l = mor_session_logits(s, -1);
    int32_t am = 0, tok;
    for (int i = 1; i < 512; i++)
        if (l[i] > l[am]) am = i;
    ASSERT_OK(mor_session_sample(s, &tok));
    ASSERT_EQ(tok, am);
    mor_session_free(s);
    mor_model_free(m);
}

// ---- debug log messages --------------------------------------------------------------------

typedef struct {
    int  n_load, n_create, n_policy, n_other_debug, n_above_debug;
    char load[1024], create[1024], policy[1024];
} log_seen;

static void on_log(int32_t level, const char *msg, void *user) {
    log_seen *l = user;
    if (level != MOR_LOG_DEBUG) {
        l->n_above_debug++;
        return;
    }
    if (strstr(msg, "model load: ")) l->n_load++, snprintf(l->load, sizeof l->load, "%s", msg);
    else if (strstr(msg, "session create ")) l->n_create++, snprintf(l->create, sizeof l->create, "%s", msg);
    else if (strstr(msg, "exit policy ")) l->n_policy++, snprintf(l->policy, sizeof l->policy, "%s", msg);
    else l->n_other_debug++;
}

// Load, create a session and change its policy; what the callback saw goes to *l.
static int log_run(log_seen *l, int32_t max_level) {
    memset(l, 0, sizeof *l);
    mor_log_set(on_log, l, max_level);
    mor_model *m = load_model("middle_cycle.gguf");
    if (!m) return -1;
    mor_session_params sp;
    mor_session_params_init(&sp);
    sp.n_ctx = 64, sp.n_batch = 8;
    mor_session *s = NULL;
    int st = mor_session_create(m, &sp, &s, NULL, 0);
    mor_exit_policy ep;
    mor_exit_policy_init(&ep);
    ep.policy = MOR_EXIT_FIXED, ep.depth = 1;
    if (!st) st = mor_session_set_exit_policy(s, &ep);
    mor_log_set(NULL, NULL, 0);
    mor_session_free(s);
    mor_model_free(m);
    return st;
}

TEST(debug_logs) {
    log_seen l;
    ASSERT_OK(log_run(&l, MOR_LOG_DEBUG));
    ASSERT_EQ(l.n_load, 1);
    ASSERT_STR_CONTAINS(l.load, "middle_cycle.gguf");
    ASSERT_STR_CONTAINS(l.load, "arch mor");
    ASSERT_STR_CONTAINS(l.load, "MiB of weights");
    ASSERT_STR_CONTAINS(l.load, " ms");
    ASSERT_EQ(l.n_create, 1);
    ASSERT_STR_CONTAINS(l.create, "n_ctx 64, n_batch 8, n_threads 1");
    ASSERT_STR_CONTAINS(l.create, "MiB");
    ASSERT(l.n_policy >= 1);
    ASSERT_STR_CONTAINS(l.policy, "-> fixed (depth 1");
    // At INFO and above, none of them is even formatted.
    ASSERT_OK(log_run(&l, MOR_LOG_INFO));
    ASSERT_EQ(l.n_load + l.n_create + l.n_policy + l.n_other_debug, 0);
    ASSERT_OK(log_run(&l, MOR_LOG_ERROR));
    ASSERT_EQ(l.n_load + l.n_create + l.n_policy + l.n_other_debug + l.n_above_debug, 0);
    // A model from memory names its size.
    memset(&l, 0, sizeof l);
    char path[512];
    FILE *f = fopen(test_path(path, sizeof path, "stories260K.gguf"), "rb");
    ASSERT(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    ASSERT(buf && fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    mor_log_set(on_log, &l, MOR_LOG_DEBUG);
    mor_model *m = NULL;
    ASSERT_OK(mor_model_load_memory(buf, (size_t)n, NULL, &m, NULL, 0));
    mor_log_set(NULL, NULL, 0);
    char want[64];
    snprintf(want, sizeof want, "memory image of %ld bytes: arch llama", n);
    ASSERT_STR_CONTAINS(l.load, want);
    mor_model_free(m);
    free(buf);
}

// ---- stop strings --------------------------------------------------------------------------

// Push `text` in the pieces given by cuts (piece lengths), collect the output; returns matched.
static int32_t stop_run(mor_stop *st, const char *text, const size_t *cuts, int n_cuts, char *got, size_t *n_got) {
    size_t off = 0, n = 0, len = strlen(text);
    int32_t which = -1;
    for (int i = 0; i <= n_cuts && off <= len; i++) {
        size_t piece = i < n_cuts ? cuts[i] : len - off;
        if (piece > len - off) piece = len - off;
        size_t m = 0;
        if (mor_stop_push(st, text + off, piece, got + n, 4096, &m, &which) != MOR_OK) return -2;
        n += m, off += piece;
        if (which >= 0) break;
    }
    if (which < 0) {
        size_t m = 0;
        if (mor_stop_flush(st, got + n, 4096, &m) != MOR_OK) return -2;
        n += m;
    }
    got[n] = 0;
    *n_got = n;
    return which;
}

TEST(stop_strings_span_pieces) {
    const char *stops[] = {"END", "\n\n"};
    mor_stop *st = NULL;
    ASSERT_OK(mor_stop_create(stops, 2, NULL, &st));
    char got[8192];
    size_t n = 0;
    const size_t cuts[] = {5, 1, 6};  // "abc E" "N" "D more"
    ASSERT_EQ(stop_run(st, "abc END more", cuts, 3, got, &n), 0);
    ASSERT(strcmp(got, "abc ") == 0);
    // Held bytes that turn out not to start a stop string come out later, in order.
    mor_stop_reset(st);
    char out[64];
    size_t m;
    int32_t which;
    ASSERT_OK(mor_stop_push(st, "xyzE", 4, out, sizeof out, &m, &which));
    ASSERT_EQ(m, 3);
    ASSERT(memcmp(out, "xyz", 3) == 0 && which == -1);
    ASSERT_OK(mor_stop_push(st, "N", 1, out, sizeof out, &m, &which));
    ASSERT_EQ(m, 0);
    ASSERT_OK(mor_stop_push(st, "x\n", 2, out, sizeof out, &m, &which));
    ASSERT_EQ(m, 3);
    ASSERT(memcmp(out, "ENx", 3) == 0);
    ASSERT_OK(mor_stop_flush(st, out, sizeof out, &m));
    ASSERT_EQ(m, 1);
    ASSERT_EQ(out[0], '\n');
    // After a match nothing more comes out, and the index is reported again.
    mor_stop_reset(st);
    ASSERT_OK(mor_stop_push(st, "a\n\nb", 4, out, sizeof out, &m, &which));
    ASSERT_EQ(which, 1);
    ASSERT_EQ(m, 1);
    ASSERT_OK(mor_stop_push(st, "more", 4, out, sizeof out, &m, &which));
    ASSERT_EQ(m, 0);
    ASSERT_EQ(which, 1);
    // A small buffer: the size needed, nothing consumed.
    mor_stop_reset(st);
    ASSERT_STATUS(mor_stop_push(st, "hello", 5, out, 2, &m, &which), MOR_E_BUFFER_SMALL);
    ASSERT_EQ(m, 5);
    ASSERT_OK(mor_stop_push(st, "hello", 5, out, sizeof out, &m, &which));
    ASSERT_EQ(m, 5);
    mor_stop_free(st);
    // The earliest occurrence wins; on a tie, the first listed.
    const char *two[] = {"bc", "ab"}, *tie[] = {"abc", "ab"};
    ASSERT_OK(mor_stop_create(two, 2, NULL, &st));
    ASSERT_EQ(stop_run(st, "xabcd", NULL, 0, got, &n), 1);
    ASSERT(strcmp(got, "x") == 0);
    mor_stop_free(st);
    ASSERT_OK(mor_stop_create(tie, 2, NULL, &st));
    ASSERT_EQ(stop_run(st, "xabcd", NULL, 0, got, &n), 0);
    mor_stop_free(st);
    // No stop strings: everything passes through.
    ASSERT_OK(mor_stop_create(NULL, 0, NULL, &st));
    ASSERT_EQ(stop_run(st, "all of it", NULL, 0, got, &n), -1);
    ASSERT(strcmp(got, "all of it") == 0);
    mor_stop_free(st);
    // Bad arguments.
    const char *empty[] = {""}, *null1[] = {NULL};
    ASSERT_STATUS(mor_stop_create(empty, 1, NULL, &st), MOR_E_INVALID);
    ASSERT_STATUS(mor_stop_create(null1, 1, NULL, &st), MOR_E_INVALID);
    ASSERT_STATUS(mor_stop_create(NULL, 1, NULL, &st), MOR_E_INVALID);
    ASSERT_STATUS(mor_stop_create(two, -1, NULL, &st), MOR_E_INVALID);
    ASSERT_STATUS(mor_stop_create(two, 2, NULL, NULL), MOR_E_INVALID);
    ASSERT_STATUS(mor_stop_push(NULL, "a", 1, out, sizeof out, &m, &which), MOR_E_INVALID);
    ASSERT_STATUS(mor_stop_flush(NULL, out, sizeof out, &m), MOR_E_INVALID);
    mor_stop_free(NULL);
    mor_stop_reset(NULL);
}

// Generated text through the streaming detokenizer, then the matcher: whatever the pieces, the
// output is the text up to the first stop string. Random cuts of the same text agree.
TEST(stop_strings_over_detokenizer) {
    mor_model *m = load_model("stories260K.gguf");
    ASSERT(m);
    mor_session *s = test_session(m, 256, 16, 0);
    ASSERT(s);
    int32_t ids[64];
    size_t n_ids = 0;
    ASSERT_OK(mor_tokenize(m, "Once upon a time", 16, ids, 64, MOR_TOKENIZE_ADD_SPECIAL, &n_ids));
    ASSERT_OK(mor_session_step(s, ids, (int32_t)n_ids));
    int32_t gen[80];
    for (int i = 0; i < 80; i++) {
        ASSERT_OK(mor_session_sample(s, &gen[i]));
        ASSERT_OK(mor_session_step(s, &gen[i], 1));
    }
    static char full[8192];
    size_t n_full = 0;
    ASSERT_OK(mor_detokenize(m, gen, 80, full, sizeof full - 1, 0, &n_full));
    full[n_full] = 0;
    ASSERT(n_full > 40);
    // A stop string from the middle of the text: 6 bytes starting at byte 20.
    char stop_str[8];
    memcpy(stop_str, full + 20, 6);
    stop_str[6] = 0;
    const char *first = strstr(full, stop_str);
    ASSERT(first);
    const size_t want = (size_t)(first - full);
    const char *stops[] = {"no such text at all", stop_str};
    mor_stop *st = NULL;
    ASSERT_OK(mor_stop_create(stops, 2, NULL, &st));
    mor_detok *d = NULL;
    ASSERT_OK(mor_detok_create(m, 0, &d));
    static char got[8192];
    size_t n_got = 0;
    int32_t which = -1;
    for (int i = 0; i < 80 && which < 0; i++) {
        char piece[256];
        size_t np = 0, no = 0;
        ASSERT_OK(mor_detok_push(d, gen[i], piece, sizeof piece, &np));
        ASSERT_OK(mor_stop_push(st, piece, np, got + n_got, sizeof got - n_got, &no, &which));
        n_got += no;
    }
    ASSERT_EQ(which, 1);
    ASSERT_EQ(n_got, want);
    ASSERT(memcmp(got, full, want) == 0);
    // Random cuts of the same text, one byte to 9 at a time.
    uint64_t r = test__seed;
    for (int trial = 0; trial < 50; trial++) {
        size_t cuts[8192], nc = 0, tot = 0;
        while (tot < n_full) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            cuts[nc] = 1 + (size_t)(r >> 60) % 9;
            tot += cuts[nc++];
        }
        mor_stop_reset(st);
        size_t n = 0;
        ASSERT_EQ(stop_run(st, full, cuts, (int)nc, got, &n), 1);
        ASSERT_EQ(n, want);
        ASSERT(memcmp(got, full, want) == 0);
    }
    mor_detok_free(d);
    mor_stop_free(st);
    mor_session_free(s);
    mor_model_free(m);
}

TEST_MAIN(abort_after_first_chunk_resume_bit_identical, abort_immediately, abort_budget_per_call,
          abort_bad_arguments_and_free, allowed_set_greedy_and_random, logit_bias, constraint_errors, debug_logs,
          stop_strings_span_pieces, stop_strings_over_detokenizer)
