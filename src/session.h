// session.h: per-sequence mutable state: KV cache, work buffers, logits, sampler, policy.
//
// Everything a step needs is allocated once by mor_session_create(): the decode and prefill
// hot path does not allocate. A session is used by one thread at a time.
//
// KV cache layout: one slot per unrolled layer l. A slot holds up to n_ctx entries, each the
// post-RoPE key and the value of one token (n_head_kv * head_dim floats each) and that
// token's absolute position. Entries are appended in increasing position order, so a slot is
// always sorted by position and the entries a query at position p may attend to are a prefix
// (those with pos <= p). Slots of recursions that only some tokens reach hold only those
// tokens; each slot has its own length. With KV sharing, layers at recursion >= 1 own no slot
// and read the slot of the recursion-0 layer of the same stored layer.
// session.h: per-sequence mutable state, in named parts: the K/V cache (kv.h), the rows of
// a pass and the routing scratch (route.h), the KV_SYNC stack, the policy state, the
// sampler, the telemetry and the compute workspace (work.h).
//
// mor_session_create() plans every buffer once (session_plan in session.c) and carves them
// from one allocation, which also holds this struct; the step and prefill paths never
// allocate. The exceptions: the compute threads (thread.c), and the exit-head logits of a
// group of rows, which grow once when a confidence policy is installed (policy.c). A session
// is used by one thread at a time.
#ifndef MOR_SESSION_H
#define MOR_SESSION_H

#include "kv.h"
#include "layer.h"
#include "route.h"

// Rows whose exit-head logits a session computes in one product (confidence policies reading
// the head of many prompt rows): the head is read once for them.
#define MOR__CONF_GROUP 8

// The state of a pass in progress over a session's rows (forward.c).
typedef struct {
    int32_t T, R;          // new rows, all rows (new + stacked)
    int     force;         // the KV_SYNC stack is full: every new row goes deep
    int     any_new;       // some new row runs the current step
    int     logits_all;
    int32_t l;             // next unrolled layer to run (n_layer: done)
    int32_t k;             // current step
    int32_t n_act;         // rows in the current step
    int     seen_steps;    // the steps are behind (a unique last layer follows)
    int     gathered;      // the unique layer runs on gathered rows (scatter back after)
    int     active;        // a pass is in progress
} mor__pass;

typedef struct {
    float    temperature, top_p, min_p, repeat_penalty;
    int32_t  top_k, repeat_last_n;
    uint64_t seed;
} mor__sampler;

// Beta-mixture calibration data for the FREE adaptive threshold.
#define MOR__BMM_CAP 4096
typedef struct {
    float   conf[MOR__BMM_CAP];
    uint8_t agree[MOR__BMM_CAP];
    int32_t n, next;      // pairs held, ring write index
    int32_t n_fits;       // refits done (frozen after 300, as the reference schedule)
    float   lambda;       // current threshold (the static one until the first fit)
} mor__bmm;

// Tokens that exited early and wait for the next deep pass (KV_SYNC), by increasing position.
typedef struct {
    int32_t  n;
    int32_t *pos, *step, *top;  // [n_batch] position, steps run, shallow argmax
    float   *conf;              // [n_batch] shallow confidence
    float   *h;                 // [n_batch][n_embd] state to resume from
} mor__stack;

// Per-position telemetry, kept for the whole sequence.
typedef struct {
    int8_t  *depth;       // [n_ctx]
    float   *score;       // [n_ctx]
    uint8_t *kv;          // [n_ctx] MOR_KVSTAT_*
    uint8_t *given;       // [n_ctx] 1: stepped as part of a multi-token step (a prompt), so
                          // never replaced by a rollback
} mor__trace;

// Counters since the last reset (mor_session_get_stats).
typedef struct {
    int64_t tokens, steps, evals, evals_full, deep, rollbacks;
    int64_t hist[MOR_STATS_MAX_DEPTH + 1];
} mor__stats;

// Whoever runs the session's steps instead of the caller (a scheduler): set by the owner,
// which the session reaches only through these hooks.
typedef struct {
    void  *owner;                                  // NULL: the caller steps the session
    int  (*busy)(const void *owner);               // 1 while the owner runs callbacks
    void (*detach)(void *owner, mor_session *s);   // the session is being freed
} mor__session_owner;

struct mor_session {
    mor_allocator       alloc;       // the session's one block (and the exceptions) come from it
    uint64_t            block_bytes; // size of that block (this struct is at its start)
    const mor_model    *model;
    const mor__kernels *kern;
    int32_t             n_ctx, n_batch, n_threads;
    uint32_t            flags;
    // the sequence
    int32_t             n_past;
    int32_t            *tokens;      // [n_ctx]
    mor__kv             kv;
    mor__trace          trace;
    // the last step
    int32_t             n_last;      // tokens in the last step
    int32_t             n_logits;    // rows in logits (1, or n_last with LOGITS_ALL)
    int32_t             logit_row0;  // first row of `logits` a pass writes
    float              *logits;      // [n_batch or 1][n_vocab]
    int32_t            *depths;      // [n_batch] depth of each token of the last chunk
    int32_t            *depth_all;   // [n_batch] depths of the whole last step (first n_batch)
    int32_t             rolled_back; // tokens removed by the last step's rollback
    int32_t             rollback_to; // set by a pass: position to roll back to, or -1
    // the pass
    mor__pass           ps;
    mor__rows           r;
    mor__route_tmp      rt;
    mor__stack          stack;
    mor__stack          stack_next;  // the stack being rebuilt at the end of a pass
    mor__work           w;
    mor__pool          *pool;        // compute threads (n_threads - 1 workers)
    float              *vocab_buf;   // [conf_group][n_vocab] exit-head logits: vocab_row, or a
                                     // group allocated by policy.c
    float              *vocab_row;   // [n_vocab] in the session's block
    int32_t             conf_group;  // 1, or up to MOR__CONF_GROUP rows for confidence policies
    const float        *conf_logits; // exit-head logits of the rows ending a step, computed by a
                                     // scheduler for many sessions at once (NULL: compute here)
    // policy
    mor_exit_policy     policy;      // resolved: policy never -1, kv never AUTO (policy.c)
    mor__budget         budget;
    mor__bmm           *bmm;
    mor_router_i        router;
    void               *router_user;
    int                 has_router;
    mor__router_hook    hook;        // the router as route.c calls it
    // sampling
    mor__sampler        sampler;
    uint64_t            rng;
    float              *probs;       // [n_vocab] sampling scratch
    int32_t            *cand;        // [n_vocab] sampling scratch
    // sampling constraints (mor_session_set_logit_bias / _set_allowed_tokens): allocated the
    // first time one is set (outside the block), freed with the session
    float              *bias;        // [n_vocab] additive bias, or NULL
    uint8_t            *allowed;     // [n_vocab] 1: may be sampled, or NULL
    int                 has_bias;    // some bias is non-zero
    int32_t             n_allowed;   // ids in the allowed set; 0: every id is allowed
    // cancelling a step (mor_session_set_abort)
    mor_abort_fn        abort_fn;
    void               *abort_user;
    mor__stats          st;
    // ownership and re-entry: a router callback runs inside a step; what it may call is in mor.h
    mor__session_owner  owner;
    int                 busy;        // > 0 while one of the session's callbacks runs
    int                 free_pending;// mor_session_free() came from a callback: freed on return
    int                 model_ref;   // holds a reference to the model (mor__model_ref)
    char                err[256];
};

// Forward pass over T <= n_batch new tokens at positions n_past .. n_past+T-1, plus the
// stacked tokens of KV_SYNC (forward.c). Writes the logits of the last new token (every new
// token if logits_all), the per-token depths and the telemetry. On error (a router callback),
// returns the status; the caller abandons the pass (mor__session_abort).
int  mor__forward(mor_session *s, const int32_t *tokens, int32_t T, int logits_all);
// mor__forward asking stop(ctx, layer) before every layer after the first; a non-zero answer
// drops the pass (nothing of it stays), sets *stopped and returns MOR_OK.
int  mor__forward_until(mor_session *s, const int32_t *tokens, int32_t T, int logits_all,
                        int (*stop)(void *ctx, int32_t layer), void *ctx, int *stopped);

// The same pass, one layer at a time, so that a scheduler can batch the layers of several
// sessions (forward.c). The new tokens must already be in s->tokens[n_past .. n_past+T-1].
// begin and advance return a status (a router callback failed: mor__session_abort()).
int     mor__pass_begin(mor_session *s, int32_t T, int logits_all);
int32_t mor__pass_next(const mor_session *s);                // next layer, -1 when done
void    mor__pass_rows(mor_session *s, mor__layer_rows *p);  // the rows of that layer
int     mor__pass_advance(mor_session *s);                   // after the layer ran
void    mor__pass_finish(mor_session *s);                    // logits, telemetry, stack
// For batching the output projection of several sessions: 1 and the normalized state of the
// session's one output row in xn (d floats) when its logits come from the final head (one new
// token, no LOGITS_ALL); 0 otherwise. mor__pass_finish_with() then takes those logits.
int     mor__pass_head_row(mor_session *s, float *xn);
void    mor__pass_finish_with(mor_session *s, const float *logits);
// Rows whose exit-head logits the next mor__pass_advance() reads (the layer just run ends a
// step and the policy measures confidence): their count, the head in *head (-1: the final
// head), and, when xn is not NULL, their states normalized for that head, one row each.
// mor__pass_conf_logits() hands over the logits of exactly those rows, in that order, for the
// next advance (which would otherwise compute them one row at a time).
int32_t mor__pass_conf_rows(mor_session *s, float *xn, int32_t *head);
void    mor__pass_conf_logits(mor_session *s, const float *logits);

// Stepping in pieces (session.c), shared by mor_session_step and the scheduler: validate a
// request of n tokens (queued: tokens already waiting), the size of the next pass, copy its
// tokens in, and commit a finished pass (returns 1 after a rollback). A pass that fails or is
// dropped is abandoned by mor__session_abandon(): what it appended goes, the session is as
// after its last finished token; mor__session_abort() also sets the error (status st).
int     mor__session_check(mor_session *s, const int32_t *tokens, int32_t n, int32_t queued);
int32_t mor__session_chunk(const mor_session *s, int32_t n, int32_t off);
void    mor__session_prepare(mor_session *s, const int32_t *tokens, int32_t T, int given, int32_t off);
void    mor__session_abandon(mor_session *s);
int     mor__session_abort(mor_session *s, int st);
int     mor__session_commit(mor_session *s, int32_t T, int32_t off);
// Drops the K/V entries and stacked tokens at positions >= n_keep.
void    mor__session_truncate(mor_session *s, int32_t n_keep);

// Refit the FREE threshold from the collected pairs (policy.c).
void mor__bmm_refit(mor_session *s);
// The model's default policy and the rules of a policy: mor__policy_default and
// mor__policy_check (exit.c, model.h). The rule that a session holding tokens keeps its KV
// strategy is the caller's.
// Makes a checked policy the session's: slot map, budget window restarted, FREE calibration
// restarted when FREE or its threshold is new (policy.c).
void mor__policy_install(mor_session *s, const mor_exit_policy *np);
// "router" for MOR_EXIT_ROUTER and so on (policy.c); "?" for an unknown value.
const char *mor__policy_name(int32_t policy);
const char *mor__kv_name(int32_t kv);
// Validation of sampler settings (the rules of mor_session_set_sampler); the message goes to
// err. Returns MOR_OK or MOR_E_INVALID (sampler.c).
int  mor__sampler_check(const mor__sampler *sp, char *err, size_t err_n);

// Points the router hook (what route.c calls) at the session's custom router (forward.c).
void mor__session_hook_router(mor_session *s);
// Hands the custom router back to its owner (its free callback, if any, with the session busy).
void mor__router_release(mor_session *s);
// Calls that change a session are refused (MOR_E_BUSY) while one of its callbacks runs.
#define MOR__REFUSE_BUSY(s)                                                                      \
    do {                                                                                         \
        if ((s)->busy) return mor__session_fail((s), MOR_E_BUSY, "%s() called from a callback of the same session", __func__); \
    } while (0)

// Sets the session's error message and returns status.
int  mor__session_fail(mor_session *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
